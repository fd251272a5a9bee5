"""Helpers shared by the training tests: tiny pregenerated data, quiet configs, weight comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bert_domain_ft.cli import main
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
from bert_domain_ft.training.config import FinetuneConfig


def make_pregenerated(
    corpus: Path, bert_dir: Path, output_dir: Path, epochs: int = 2, max_seq_len: int = 64, **options: Any
) -> Path:
    """Pregenerate ``epochs`` epochs of the tiny corpus for the tiny BERT (a few hundred instances each)."""
    config = PregenerateConfig(
        train_corpus=corpus,
        output_dir=output_dir,
        bert_model=str(bert_dir),
        epochs_to_generate=epochs,
        max_seq_len=max_seq_len,
        show_progress=False,
        **{"holdout_fraction": 0.0, **options},
    )
    pregenerate(config)
    return output_dir


def quick_config(data: Path, model: Path, output_dir: Path, **overrides: Any) -> FinetuneConfig:
    """A fast CPU configuration: small batches, no progress bars, no evaluation."""
    values: dict[str, Any] = {
        "pregenerated_data": data,
        "output_dir": output_dir,
        "bert_model": str(model),
        "epochs": 1,
        "train_batch_size": 32,
        "logging_steps": 2,
        "show_progress": False,
        "no_cuda": True,
    }
    values.update(overrides)
    return FinetuneConfig(**values)


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load_weights(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def assert_identical_weights(first: dict[str, Any], second: dict[str, Any]) -> None:
    import torch

    assert first.keys() == second.keys()
    differing = [name for name in first if not torch.equal(first[name], second[name])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def run_two_gloo_processes(worker: Path, *arguments: Path) -> None:
    """Launch ``worker`` with ``arguments`` in 2 CPU processes through torch.distributed.run; fail with its
    stderr unless both exit cleanly."""
    import os
    import subprocess
    import sys

    # One OpenMP thread per process: two processes on two cores must not oversubscribe them.
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker)]
    command += [str(argument) for argument in arguments]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def save_rank_weights(model: Any, reports: Path, rank: int) -> None:
    """``reports/weights-rank{rank}.safetensors``: the model's state as this rank holds it (for DDP workers)."""
    from safetensors.torch import save_file

    # Clones: tied tensors share storage, which safetensors refuses.
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    save_file(weights, str(reports / f"weights-rank{rank}.safetensors"))


def write_smaller_tokenizer(directory: Path, vocab_size: int) -> Path:
    """A lower-casing WordPiece tokenizer with the first ``vocab_size`` tokens of the tiny BERT's vocabulary (a
    tokenizer whose size differs from the model's embeddings)."""
    from tiny_assets import vocabulary
    from transformers import BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tokens = vocabulary()[:vocab_size]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    try:  # transformers 5 takes the vocabulary itself
        tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=True)
    except TypeError:  # transformers 4 reads vocab.txt
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def run_cli(capsys: pytest.CaptureFixture[str], arguments: list[str]) -> tuple[int, str, str]:
    """``bert-domain-ft ARGUMENTS`` in this process: (exit status, the one ``error:`` line or "", all stderr)."""
    capsys.readouterr()
    status = main(arguments)
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) <= 1, stderr
    return status, errors[0] if errors else "", stderr
