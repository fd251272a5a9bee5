"""Training-step throughput and memory: the plain BertForPreTraining step against our loop, in one run.

    python benchmarks/train_step.py [--model DIR] [--corpus FILE] [--steps 20] [--warmup 5] [--rounds 2]

With a BERT of MiniLM-L6-H384 shape (default: the real one), batch 16, max_seq_len 128, on this CPU, measures
sequences/s and peak RSS (while training: VmHWM after the last timed step) of
  (a) baseline: ``BertForPreTraining(..., labels=..., next_sentence_label=...)`` (logits over the full vocabulary at
      every position), fp32, torch AdamW with default settings, gradient clipping; batches prebuilt, so no data cost;
  (b) our training loop (``finetune``: memmapped epochs, prefetch thread, masked-position logits fused with the
      cross-entropy, memory-light attention, fast dropout masks, recomputed GELU, fused AdamW), fp32;
  (c) the same with --bf16;
and, for (b) and (c), the share of step time spent waiting for data. Every variant runs in its own process (RSS
is per variant) and rounds interleave the variants (drifting machine load hits all alike). Speed targets use
each variant's best round (other processes can only slow a round down; medians are printed too), memory and
data-wait targets the worst round; the machine's load average is printed with every round. Sequences per CPU
second (all threads' CPU time per step, median) is printed too: with --threads 1 it is what an idle machine's
sequences/s would be, whatever else runs. "growth MB" is how much the peak rose over the timed steps: a
training step that keeps allocating different sizes grows the heap step after step (it should stay near 0).
All variants train on the same pregenerated epoch (made first from a slice of the corpus).
Targets: (b) ≥ 1.8× (a); (c) ≥ 3× (a); data wait ≤ 3% of step time; our peak RSS ≤ 50% of the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _measure import default_model, run_measured, standard_library_corpus

BATCH_SIZE = 16
MAX_SEQ_LEN = 128
CORPUS_BYTES = 700_000  # enough text for ~500 instances of 128 tokens
VARIANTS = ("baseline", "ours_fp32", "ours_bf16")


def peak_rss_mb() -> float:
    """This process's peak resident set so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def corpus_slice(corpus: Path, destination: Path) -> Path:
    """The first ~CORPUS_BYTES of the corpus, cut at a document boundary (blank line)."""
    text = corpus.read_text(encoding="utf-8")
    cut = text.find("\n\n", CORPUS_BYTES)
    destination.write_text(text[: cut if cut > 0 else len(text)] + "\n", encoding="utf-8")
    return destination


def pregenerate_epoch(corpus: Path, model: str, output: Path) -> int:
    from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate

    config = PregenerateConfig(
        holdout_fraction=0.0,
        train_corpus=corpus,
        output_dir=output,
        bert_model=model,
        epochs_to_generate=1,
        max_seq_len=MAX_SEQ_LEN,
        objective="nsp",  # the baseline is BertForPreTraining with both losses, whatever heads the model has
    )
    return int(pregenerate(config)["epochs"][0]["num_instances"])


def run_baseline(data: str, model: str, warmup: int, steps: int) -> dict[str, Any]:
    """The plain step: full-vocabulary logits at every position, fp32, stock AdamW (foreach), clipping."""
    import time

    import numpy as np
    import torch

    from bert_domain_ft.data.epoch_format import read_manifest
    from bert_domain_ft.data.loader import PregeneratedSource, plan_epoch
    from bert_domain_ft.model.optimization import parameter_groups
    from bert_domain_ft.model.pretraining import IGNORE_INDEX, load_pretraining_model

    torch.manual_seed(42)
    loaded = load_pretraining_model(model)
    network = loaded.model.train()
    optimizer = torch.optim.AdamW(parameter_groups(network, 3e-5, 0.01), lr=3e-5, eps=1e-8)
    source = PregeneratedSource(Path(data), read_manifest(Path(data)), training_epochs=1)
    fetch = source.open_epoch(0)
    batches = []
    for indices in plan_epoch(source.epoch_size(0), BATCH_SIZE, 42, 0)[: warmup + steps]:
        batch = fetch(np.asarray(indices))
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        real = batch["masked_lm_labels"] != IGNORE_INDEX
        rows = torch.arange(labels.shape[0])[:, None].expand_as(real)
        labels[rows[real], batch["masked_lm_positions"][real]] = batch["masked_lm_labels"][real]
        batches.append((batch, labels))
    seconds, cpu_seconds, peaks = [], [], []
    for batch, labels in batches:
        started, cpu_started = time.perf_counter(), time.process_time()
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
        output = network(**inputs, labels=labels, next_sentence_label=batch["next_sentence_label"])
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        peaks.append(peak_rss_mb())
    return {
        "sequences_per_second": BATCH_SIZE / statistics.median(seconds[warmup:]),
        "sequences_per_cpu_second": BATCH_SIZE / statistics.median(cpu_seconds[warmup:]),
        "train_peak_rss_mb": peak_rss_mb(),
        "rss_growth_mb": peaks[-1] - peaks[warmup],
        "data_wait_share": 0.0,
    }


def run_ours(data: str, model: str, warmup: int, steps: int, bf16: bool, work: str) -> dict[str, Any]:
    """``finetune`` itself, stopped after warmup + steps; per-step records give speed, wait share and RSS."""
    import time

    from bert_domain_ft.training import metrics
    from bert_domain_ft.training.config import FinetuneConfig
    from bert_domain_ft.training.recipe import finetune

    records: list[dict[str, Any]] = []
    append = metrics.MetricsLog.append

    def recording_append(self: metrics.MetricsLog, record: dict[str, Any]) -> None:
        # VmHWM before any checkpoint is written; CPU time of all threads (the prefetch thread included).
        records.append({**record, "peak_rss_mb": peak_rss_mb(), "cpu_time": time.process_time()})
        append(self, record)

    metrics.MetricsLog.append = recording_append  # type: ignore[method-assign]
    config = FinetuneConfig(
        pregenerated_data=Path(data),
        output_dir=Path(tempfile.mkdtemp(dir=work)),
        bert_model=model,
        objective="nsp",  # like the baseline ("auto" would train MLM only on a checkpoint without an NSP head)
        epochs=1,
        train_batch_size=BATCH_SIZE,
        stop_after_steps=warmup + steps,
        logging_steps=1,
        bf16=bf16,
        show_progress=False,
        do_eval=False,
        head_warmup_steps=0,  # the baseline has none: measure the main training step only
    )
    finetune(config)
    train = [record for record in records if record["kind"] == "train"]
    measured = [record for record in train if record["step"] > warmup]
    cpu_per_step = [later["cpu_time"] - earlier["cpu_time"] for earlier, later in zip(train, train[1:])][warmup - 1 :]
    return {
        "sequences_per_cpu_second": BATCH_SIZE / statistics.median(cpu_per_step),
        "sequences_per_second": statistics.median(record["sequences_per_second"] for record in measured),
        "data_wait_share": statistics.mean(record["data_wait_share"] for record in measured),
        "train_peak_rss_mb": measured[-1]["peak_rss_mb"],
        "rss_growth_mb": measured[-1]["peak_rss_mb"] - measured[0]["peak_rss_mb"],
    }


def measure(
    variant: str, data: Path, model: str, warmup: int, steps: int, work: Path, threads: int
) -> dict[str, float]:
    here = str(Path(__file__).parent)
    if variant == "baseline":
        call = f"run_baseline({str(data)!r}, {model!r}, {warmup}, {steps})"
    else:
        call = f"run_ours({str(data)!r}, {model!r}, {warmup}, {steps}, {variant == 'ours_bf16'}, {str(work)!r})"
    code = f"import sys; sys.path.insert(0, {here!r})\nimport torch; torch.set_num_threads({threads})\n"
    code += f"import train_step\nREPORT = train_step.{call}\n"
    return run_measured(code)


def summarize(results: list[dict[str, float]]) -> dict[str, float]:
    """Speed: best and median round (other processes can only slow a round down); RSS and wait: the worst round."""
    speeds = [result["sequences_per_second"] for result in results]
    return {
        "best": max(speeds),
        "median": statistics.median(speeds),
        "cpu": statistics.median(result["sequences_per_cpu_second"] for result in results),
        "rss": max(result["train_peak_rss_mb"] for result in results),
        "wait": max(result["data_wait_share"] for result in results),
        "growth": max(result["rss_growth_mb"] for result in results),
    }


def report(results: dict[str, list[dict[str, float]]]) -> None:
    summary = {variant: summarize(results[variant]) for variant in VARIANTS}
    base = summary["baseline"]
    print(f"\n{'variant':10s} {'best seq/s':>10s} {'× (a)':>6s} {'median':>7s} {'× (a)':>6s} {'seq/CPU-s':>9s} "
          f"{'× (a)':>6s} {'peak RSS MB':>11s} {'÷ (a)':>6s} {'growth MB':>9s} {'data wait':>9s}")  # fmt: skip
    for variant in VARIANTS:
        row = summary[variant]
        print(
            f"{variant:10s} {row['best']:10.2f} {row['best'] / base['best']:6.2f} {row['median']:7.2f} "
            f"{row['median'] / base['median']:6.2f} {row['cpu']:9.2f} {row['cpu'] / base['cpu']:6.2f} "
            f"{row['rss']:11.0f} {row['rss'] / base['rss']:6.2f} {row['growth']:9.0f} {row['wait']:9.2%}"
        )
    ours = [summary[variant] for variant in VARIANTS[1:]]
    targets = [
        ("(b) fp32 ≥ 1.8× (a)", summary["ours_fp32"]["best"] / base["best"] >= 1.8),
        ("(c) bf16 ≥ 3× (a)", summary["ours_bf16"]["best"] / base["best"] >= 3.0),
        ("data wait ≤ 3% of step time", max(row["wait"] for row in ours) <= 0.03),
        ("our peak RSS ≤ 50% of (a)'s", max(row["rss"] for row in ours) <= 0.5 * base["rss"]),
    ]
    print("\n" + "\n".join(f"{'PASS' if ok else 'MISS'}  {name}" for name, ok in targets))
    print("\nper round:", json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="BERT directory (default: the MiniLM-L6-H384 in the venv)")
    parser.add_argument(
        "--corpus", type=Path, help="text in the corpus format (default: this Python's standard-library docstrings)"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (the heap settles meanwhile)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of all variants")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per process")
    arguments = parser.parse_args()
    model = arguments.model or default_model()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        corpus = arguments.corpus or standard_library_corpus(work)
        instances = pregenerate_epoch(corpus_slice(corpus, work / "corpus.txt"), model, work / "data")
        needed = (arguments.warmup + arguments.steps) * BATCH_SIZE
        if instances < needed:
            sys.exit(f"only {instances} instances pregenerated, {needed} needed; give a larger --corpus")
        print(
            f"{instances} instances of {MAX_SEQ_LEN} tokens; batch {BATCH_SIZE}; {arguments.threads} torch threads; "
            f"model {model}",
            flush=True,
        )
        results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
        for round_index in range(arguments.rounds):
            for variant in VARIANTS:
                data = work / "data"
                load_before = os.getloadavg()[0]
                result = measure(variant, data, model, arguments.warmup, arguments.steps, work, arguments.threads)
                result["load_average"] = round((load_before + os.getloadavg()[0]) / 2, 2)
                results[variant].append(result)
                print(f"round {round_index + 1} {variant}: {result['sequences_per_second']:.2f} seq/s, "
                      f"{result['train_peak_rss_mb']:.0f} MB, load {result['load_average']}", flush=True)  # fmt: skip
        report(results)


if __name__ == "__main__":
    main()
