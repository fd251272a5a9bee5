"""The data path alone, on one CPU thread: is it fast enough that a GPU never waits for it?

    python benchmarks/data_path.py [--corpus FILE] [--model DIR] [--batch_size 256] [--seconds 3]

From pregenerated epochs of 128-token instances (memory-mapped) to the batch the model takes: rows gathered,
masked, collated into int64 tensors and, where CUDA is available, pinned for an asynchronous copy; measured
  (1) with the masks pregenerated (static masking),
  (2) with masks drawn per batch (``pregenerate --dynamic_masking``: every epoch sees fresh masks),
against the baseline (3), what a `run_mlm` user's `Trainer` does per batch on the same token rows:
transformers' ``DataCollatorForLanguageModeling`` (padding, special-token mask, 80/10/10 masking).
BERT-base at sequence length 128 trains at a few thousand sequences a second on an H100-class GPU, so the target
is ≥ 15,000 sequences/s per CPU thread for both (1) and (2). The last line is ``data path: N sequences/s``, the
slower of the two.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one CPU thread, before torch and numpy start their pools

import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _measure import default_model, standard_library_corpus  # noqa: E402

MAX_SEQ_LEN = 128
TARGET = 15_000


def pregenerated(corpus: Path, model: str, output: Path, dynamic: bool) -> Path:
    from bert_domain_ft.data.config import PregenerateConfig
    from bert_domain_ft.data.pregenerate import pregenerate

    config = PregenerateConfig(holdout_fraction=0.0,
        train_corpus=corpus, output_dir=output, bert_model=model, epochs_to_generate=1, max_seq_len=MAX_SEQ_LEN,
        objective="mlm", dynamic_masking=dynamic, show_progress=False, overwrite=True,
    )  # fmt: skip
    pregenerate(config)
    return output


def pin(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the loader's prefetch thread does on CUDA (here only when CUDA is available)."""
    if not torch.cuda.is_available():
        return batch
    return {name: tensor.pin_memory() for name, tensor in batch.items()}


def rate(make_batch: Callable[[np.ndarray], Any], batches: list[np.ndarray], seconds: float) -> float:
    """Sequences per second of ``make_batch`` over the batches, cycled until ``seconds`` have passed."""
    make_batch(batches[0])  # warm-up: first-touch page faults of the memmaps, lazy imports
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for indices in batches:
            make_batch(indices)
            done += len(indices)
    return done / (time.perf_counter() - started)


def ours(directory: Path, model: str, batch_size: int, seconds: float) -> tuple[float, int]:
    """(sequences/s, instances) of the loader's own path: PregeneratedSource's fetch, then pinning."""
    from transformers import AutoTokenizer

    from bert_domain_ft.data.epoch_format import read_manifest
    from bert_domain_ft.data.loader import PregeneratedSource, plan_epoch
    from bert_domain_ft.data.masking import DynamicMasking

    manifest = read_manifest(directory)
    masking = None
    if manifest["masking"] == "dynamic":
        masking = DynamicMasking.from_manifest(manifest, seed=42, tokenizer=AutoTokenizer.from_pretrained(model))
    source = PregeneratedSource(directory, manifest, training_epochs=1, masking=masking)
    fetch = source.open_epoch(0)
    plan = plan_epoch(source.epoch_size(0), batch_size, seed=42, epoch=0)
    return rate(lambda indices: pin(fetch(indices)), plan, seconds), source.epoch_size(0)


def huggingface(directory: Path, model: str, batch_size: int, seconds: float) -> float:
    """Sequences/s of transformers' MLM collator on the same rows, as `run_mlm`'s Trainer calls it."""
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from bert_domain_ft.data.epoch_format import open_epoch, read_manifest

    arrays = open_epoch(directory, read_manifest(directory), 0)
    rows = [
        {"input_ids": arrays.input_ids[index, : arrays.lengths[index]].tolist()}
        for index in range(arrays.num_instances)
    ]
    collator = DataCollatorForLanguageModeling(AutoTokenizer.from_pretrained(model), mlm_probability=0.15)
    order = np.random.default_rng(42).permutation(len(rows))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    return rate(lambda indices: pin(collator([rows[index] for index in indices])), batches, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="corpus file (default: the standard library's docstrings)")
    parser.add_argument("--model", help="model directory whose tokenizer is used (default: the MiniLM package)")
    parser.add_argument("--batch_size", type=int, default=256, help="sequences per batch (default 256)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time each variant this long (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = args.model or default_model()
    with tempfile.TemporaryDirectory() as work:
        corpus = args.corpus or standard_library_corpus(Path(work))
        static, instances = ours(pregenerated(corpus, model, Path(work, "static"), False), model,
                                 args.batch_size, args.seconds)  # fmt: skip
        directory = pregenerated(corpus, model, Path(work, "dynamic"), True)
        dynamic, _ = ours(directory, model, args.batch_size, args.seconds)
        baseline = huggingface(directory, model, args.batch_size, args.seconds)
    pinned = "pinned" if torch.cuda.is_available() else "not pinned: no CUDA here"
    print(f"data path: {instances:,} instances of ≤ {MAX_SEQ_LEN} tokens, batches of {args.batch_size}, "
          f"one CPU thread ({pinned})")  # fmt: skip
    print(f"  (1) static masks (pregenerated)        {static:>12,.0f} sequences/s  {static / baseline:6.1f}× (3)")
    print(f"  (2) dynamic masks (drawn per batch)    {dynamic:>12,.0f} sequences/s  {dynamic / baseline:6.1f}× (3)")
    print(f"  (3) transformers' MLM collator         {baseline:>12,.0f} sequences/s  (baseline)")
    slower = min(static, dynamic)
    print(f"target ≥ {TARGET:,} sequences/s on one thread: {'MET' if slower >= TARGET else 'MISSED'}")
    print(f"data path: {slower:.0f} sequences/s")


if __name__ == "__main__":
    main()
