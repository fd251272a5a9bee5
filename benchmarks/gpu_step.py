"""The training step on a GPU: a plain step, the Hugging Face `run_mlm` recipe and ours, in one run.

    python benchmarks/gpu_step.py --tokenizer DIR --corpus FILE [--cases 128:bf16,128:fp16,512:bf16,512:fp16]
                                  [--compile_cases 128:bf16] [--steps 20] [--warmup 5] [--json FILE]

A BERT-base-shaped model (random init, 12 layers, hidden 768, the tokenizer's vocabulary: 30,522 for BERT's),
the same batch (256 × 128 or 64 × 512 tokens) and the same text in every variant:
  (a) plain: ``BertForPreTraining(..., labels=…)`` (logits over the whole vocabulary at every position), torch's
      AdamW, autocast (+ gradient scaler in fp16), clipping; batches prebuilt on the GPU, so no data cost;
  (b) the `run_mlm` recipe: ``Trainer`` with ``DataCollatorForLanguageModeling`` on ``BertForMaskedLM``, its
      defaults (fused AdamW, no data workers), on the text cut the way run_mlm cuts it: ``group_texts`` (lines
      tokenized, concatenated and cut into full blocks, its default) and ``--line_by_line --pad_to_max_length``
      (each line its own row, padded: the mode many users run);
  (c) ours: ``bert-domain-ft finetune`` itself (``--from_scratch``), reading epochs pregenerated from the same
      text with ``--dynamic_masking`` (fresh masks per batch, like the collator's), with and without --compile.
Per variant: sequences/s, real (non-padding) tokens/s, peak GPU memory, MFU (model FLOPs as
``bert_domain_ft.training.throughput`` defines them, over the bf16 matrix-product peak measured at the start)
and for (c) the share of step time spent waiting for data; medians over the timed steps, each step timed to a
synchronised end. Ratios are real tokens/s against (b) with group_texts, the recipe's default.
Goals (H200): (c) ≥ 2× (b) at 128 bf16, MFU ≥ 40%. ``--tiny`` runs a 2-layer model on the CPU (a smoke test).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

TINY_OVERRIDES = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
BATCH_TOKENS = 32768  # sequences per batch: this many tokens / sequence length (256 × 128, 64 × 512)
MASKED_LM_PROB = 0.15


@dataclass(frozen=True)
class Case:
    seq_len: int
    precision: str  # "bf16" or "fp16"
    batch_size: int

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float16


@dataclass
class Result:
    case: str
    variant: str
    sequences_per_second: float
    tokens_per_second: float  # real tokens: padding left out
    peak_memory_gb: float
    mfu: float | None
    data_wait_share: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Rows:
    """Token rows cut from the corpus one way, as plain lists (what run_mlm's datasets hold)."""

    rows: list[dict[str, list[int]]]
    real_tokens: float  # per row, mean
    squared_lengths: float  # per row, mean of len²
    maskable: float  # per row, mean of non-special tokens


def parse_cases(text: str, tiny: bool) -> list[Case]:
    cases = []
    for item in filter(None, text.split(",")):
        length, precision = item.split(":")
        batch = 8 if tiny else BATCH_TOKENS // int(length)
        cases.append(Case(int(length), precision, batch))
    return cases


def model_config(tokenizer: Any, tiny: bool) -> Any:
    from transformers import BertConfig

    overrides = TINY_OVERRIDES if tiny else {}
    return BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **overrides)


def corpus_lines(corpus: Path) -> list[str]:
    with corpus.open(encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _summarise(rows: list[dict[str, list[int]]]) -> Rows:
    lengths = [sum(row["attention_mask"]) for row in rows]
    maskable = [sum(1 - flag for flag in row["special_tokens_mask"]) for row in rows]
    return Rows(rows, statistics.fmean(lengths), statistics.fmean(n * n for n in lengths), statistics.fmean(maskable))


KEYS = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask")


def encode_lines(tokenizer: Any, lines: list[str]) -> list[dict[str, list[int]]]:
    """Every line tokenized with its special tokens, as run_mlm's ``tokenize_function`` does (once per run)."""
    encoded = tokenizer(lines, return_special_tokens_mask=True)
    return [{key: encoded[key][i] for key in KEYS} for i in range(len(lines))]


def group_texts(encoded: list[dict[str, list[int]]], seq_len: int, count: int) -> Rows:
    """run_mlm's default: the tokenized lines ([CLS] … [SEP] each) concatenated and cut into full blocks."""
    rows, block = [], {key: [] for key in KEYS}
    for line in encoded:
        for key in KEYS:
            block[key].extend(line[key])
        while len(block["input_ids"]) >= seq_len and len(rows) < count:
            rows.append({key: block[key][:seq_len] for key in KEYS})
            block = {key: block[key][seq_len:] for key in KEYS}
        if len(rows) == count:
            break
    return _summarise(rows)


def line_by_line(encoded: list[dict[str, list[int]]], seq_len: int, count: int, pad_id: int) -> Rows:
    """run_mlm --line_by_line --pad_to_max_length: one row per line, cut to ``seq_len`` (its [SEP] kept last) and
    padded to it."""
    rows = []
    for line in encoded[:count]:
        cut = {
            key: line[key][: seq_len - 1] + line[key][-1:] if len(line[key]) > seq_len else line[key] for key in KEYS
        }
        padding = seq_len - len(cut["input_ids"])
        fill = {"input_ids": pad_id, "token_type_ids": 0, "attention_mask": 0, "special_tokens_mask": 1}
        rows.append({key: cut[key] + [fill[key]] * padding for key in KEYS})
    return _summarise(rows)


def fresh_gpu_state(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.set_float32_matmul_precision("highest")  # torch's default: the baselines run as users run them


def peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_flops(config: Any) -> Any:
    """The package's FLOP counter for this model shape (one definition for every variant)."""
    from transformers import BertForPreTraining

    from bert_domain_ft.training.throughput import FlopCounter

    return FlopCounter.of(BertForPreTraining(config))


def rates(
    rows: Rows, batch: int, seconds: float, counter: Any, peak: float | None
) -> tuple[float, float, float | None]:
    """(sequences/s, real tokens/s, MFU) of one step of ``batch`` rows taking ``seconds``."""
    masked = MASKED_LM_PROB * rows.maskable * batch
    flops = counter.step_flops(rows.real_tokens * batch, rows.squared_lengths * batch, masked)
    return batch / seconds, rows.real_tokens * batch / seconds, (flops / seconds / peak) if peak else None


def run_plain(config: Any, rows: Rows, tokenizer: Any, case: Case, steps: int, warmup: int, device: torch.device):
    """(a): BertForPreTraining(labels=…) with full logits, torch AdamW, clipping; batches prebuilt on the device."""
    from transformers import BertForPreTraining, DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MASKED_LM_PROB)
    batches = []
    for start in range(warmup + steps):
        chunk = rows.rows[(start * case.batch_size) % len(rows.rows) :][: case.batch_size]
        batch = collator([dict(row) for row in chunk])
        batch["next_sentence_label"] = torch.zeros(len(chunk), dtype=torch.long)
        batches.append({key: value.to(device) for key, value in batch.items()})
    torch.manual_seed(0)
    model = BertForPreTraining(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=case.precision == "fp16")
    times = []
    for batch in batches:
        synchronise(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=case.dtype):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        synchronise(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[warmup:])


def run_trainer(config: Any, rows: Rows, tokenizer: Any, case: Case, steps: int, warmup: int, device: torch.device):
    """(b): the run_mlm recipe: Trainer + DataCollatorForLanguageModeling + BertForMaskedLM, its defaults."""
    from transformers import (
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            synchronise(device)
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as output:
        arguments = TrainingArguments(
            output_dir=output, per_device_train_batch_size=case.batch_size, max_steps=warmup + steps,
            learning_rate=1e-4, bf16=case.precision == "bf16", fp16=case.precision == "fp16", save_strategy="no",
            logging_steps=10_000, report_to="none", disable_tqdm=True, use_cpu=device.type == "cpu", seed=0,
        )  # fmt: skip
        torch.manual_seed(0)
        trainer = Trainer(
            model=BertForMaskedLM(config), args=arguments, train_dataset=rows.rows,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=MASKED_LM_PROB),
            callbacks=[StepEnds()],
        )  # fmt: skip
        trainer.train()
        del trainer
    intervals = [later - earlier for earlier, later in zip(ends, ends[1:])]
    return statistics.median(intervals[warmup:])


def pregenerated(corpus: Path, tokenizer_dir: str, seq_len: int, output: Path) -> Path:
    from bert_domain_ft.data.config import PregenerateConfig
    from bert_domain_ft.data.pregenerate import pregenerate

    pregenerate(PregenerateConfig(holdout_fraction=0.0,
        train_corpus=corpus, output_dir=output, bert_model=tokenizer_dir, epochs_to_generate=1, max_seq_len=seq_len,
        objective="mlm", dynamic_masking=True, show_progress=False, overwrite=True, num_workers=8,
    ))  # fmt: skip
    return output


def run_ours(data: Path, tokenizer_dir: str, case: Case, steps: int, warmup: int, compiled: bool, tiny: bool) -> dict:
    """(c): ``finetune`` from scratch on the pregenerated epochs; one metrics record per step."""
    from bert_domain_ft.training.config import FinetuneConfig
    from bert_domain_ft.training.recipe import finetune

    overrides = ",".join(f"{key}={value}" for key, value in TINY_OVERRIDES.items()) if tiny else ""
    with tempfile.TemporaryDirectory() as output:
        config = FinetuneConfig(
            pregenerated_data=data, output_dir=Path(output), from_scratch=True, model_type="bert", epochs=1,
            tokenizer=tokenizer_dir, config_overrides=overrides, objective="mlm", max_steps=warmup + steps,
            train_batch_size=case.batch_size, learning_rate=1e-4, bf16=case.precision == "bf16",
            fp16=case.precision == "fp16", logging_steps=1, do_eval=False, show_progress=False, compile=compiled,
            no_cuda=tiny,
        )  # fmt: skip
        torch.manual_seed(0)
        finetune(config)
        lines = (Path(output) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [record for record in map(json.loads, lines) if record.get("kind") == "train"]
    timed = [record for record in records if record["step"] > warmup]
    return {key: statistics.median(record.get(key, float("nan")) for record in timed)
            for key in ("sequences_per_second", "tokens_per_second", "mfu", "data_wait_share", "padding_share")}  # fmt: skip


def measured(name: str, case: Case, device: torch.device, action: Callable[[], Any]) -> tuple[Any, float]:
    fresh_gpu_state(device)
    started = time.perf_counter()
    value = action()
    logging.getLogger("gpu_step").info("%s %d:%s done in %.0f s", name, case.seq_len, case.precision,
                                       time.perf_counter() - started)  # fmt: skip
    return value, peak_gb(device)


def run_case(case: Case, setup: dict[str, Any]) -> list[Result]:
    device, tokenizer, config, counter, peak = (setup[key] for key in ("device", "tokenizer", "config", "counter",
                                                                       "peak"))  # fmt: skip
    steps, warmup, label = setup["steps"], setup["warmup"], f"{case.seq_len}:{case.precision}"
    needed = (steps + warmup) * case.batch_size
    grouped = group_texts(setup["encoded"], case.seq_len, needed)
    padded = line_by_line(setup["encoded"], case.seq_len, needed, tokenizer.pad_token_id)
    results = []
    for name, rows, runner in (("(a) BertForPreTraining + AdamW", grouped, run_plain),
                               ("(b) run_mlm, group_texts", grouped, run_trainer),
                               ("(b) run_mlm, line_by_line padded", padded, run_trainer)):  # fmt: skip
        seconds, memory = measured(name, case, device, lambda r=rows, f=runner: f(config, r, tokenizer, case, steps,
                                                                                    warmup, device))  # fmt: skip
        sequences, tokens, mfu = rates(rows, case.batch_size, seconds, counter, peak)
        note = f"{1 - rows.real_tokens / case.seq_len:.0%} padding" if rows is padded else ""
        results.append(Result(label, name, sequences, tokens, memory, mfu, note=note))
    results.append(run_ours_case(case, setup, compiled=False))
    return results


def run_ours_case(case: Case, setup: dict[str, Any], compiled: bool) -> Result:
    """(c) on ``case``; with ``compiled``, a failure of the compiler is a row of the table, not the end of the run."""
    device, steps, warmup = setup["device"], setup["steps"], setup["warmup"]
    name, label = "(c) ours --compile" if compiled else "(c) ours", f"{case.seq_len}:{case.precision}"
    data = setup["pregenerated"](case.seq_len)
    try:
        figures, memory = measured(name, case, device, lambda: run_ours(
            data, setup["tokenizer_dir"], case, steps, warmup, compiled, setup["tiny"]))  # fmt: skip
    except Exception as error:  # noqa: BLE001 - reported in the table; the other figures stand
        if not compiled:
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:60]
        return Result(label, name, float("nan"), float("nan"), float("nan"), None, None, f"failed: {first}")
    return Result(label, name, figures["sequences_per_second"], figures["tokens_per_second"], memory,
                  figures["mfu"] if setup["peak"] else None, figures["data_wait_share"],
                  f"{figures['padding_share']:.1%} padding")  # fmt: skip


def write_json(path: Path | None, results: list[Result]) -> None:
    if path is not None:
        path.write_text(json.dumps([asdict(result) for result in results], indent=1), encoding="utf-8")


def print_table(results: list[Result], peak: float | None, header: str) -> None:
    print(header)
    cases = list(dict.fromkeys(result.case for result in results))
    results = sorted(results, key=lambda result: cases.index(result.case))  # the --compile rows beside their case
    print(f"{'case':<9} {'variant':<34} {'seq/s':>9} {'real tok/s':>12} {'peak GB':>8} {'MFU':>6} "
          f"{'data wait':>9} {'× (b)':>6}  note")  # fmt: skip
    for result in results:
        base = next(r for r in results if r.case == result.case and r.variant == "(b) run_mlm, group_texts")
        mfu = f"{result.mfu:.1%}" if result.mfu is not None else "-"
        wait = f"{result.data_wait_share:.1%}" if result.data_wait_share is not None else "-"
        ratio = result.tokens_per_second / base.tokens_per_second
        print(f"{result.case:<9} {result.variant:<34} {result.sequences_per_second:>9,.0f} "
              f"{result.tokens_per_second:>12,.0f} {result.peak_memory_gb:>8.1f} {mfu:>6} {wait:>9} {ratio:>5.2f}×"
              f"  {result.note}")  # fmt: skip
    goal_case = [r for r in results if r.case == "128:bf16"]
    if goal_case and peak:
        base = next(r for r in goal_case if r.variant == "(b) run_mlm, group_texts")
        best = max((r for r in goal_case if r.variant.startswith("(c)")), key=lambda r: r.tokens_per_second)
        ratio = best.tokens_per_second / base.tokens_per_second
        print(f"goal at 128:bf16, ours ≥ 2× run_mlm's real tokens/s: {'MET' if ratio >= 2 else 'MISSED'} "
              f"({ratio:.2f}×, {best.variant}); MFU ≥ 40%: {'MET' if (best.mfu or 0) >= 0.4 else 'MISSED'} "
              f"({(best.mfu or 0):.1%})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="BERT tokenizer directory (its vocabulary sizes the model)")
    parser.add_argument("--corpus", type=Path, required=True, help="text in the corpus format (one sentence a line)")
    parser.add_argument("--cases", default="128:bf16,128:fp16,512:bf16,512:fp16", help="seq_len:precision, …")
    parser.add_argument("--compile_cases", default="128:bf16", help="cases that also run (c) with --compile, last")
    parser.add_argument(
        "--compile_after_s",
        type=float,
        default=300.0,
        help="skip the --compile runs when the others took longer than this (default 300)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU, to check the script runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("bert_domain_ft").setLevel(logging.WARNING)
    from transformers import AutoTokenizer

    from bert_domain_ft.training.throughput import matmul_peak_flops

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("no CUDA GPU here: run with --tiny for a CPU smoke test")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    config = model_config(tokenizer, args.tiny)
    peak = matmul_peak_flops(device)
    with tempfile.TemporaryDirectory() as work:
        setup = {
            "device": device, "tokenizer": tokenizer, "tokenizer_dir": args.tokenizer, "config": config,
            "counter": model_flops(config), "peak": peak, "steps": args.steps, "warmup": args.warmup,
            "encoded": encode_lines(tokenizer, corpus_lines(args.corpus)), "tiny": args.tiny,
            "pregenerated": lambda length: pregenerated(args.corpus, args.tokenizer, length, Path(work, f"d{length}")),
        }  # fmt: skip
        started, results = time.perf_counter(), []
        for case in parse_cases(args.cases, args.tiny):
            results += run_case(case, setup)
            write_json(args.json, results)
        for case in parse_cases(args.compile_cases, args.tiny):  # last: the compiler's minute comes after the rest
            if time.perf_counter() - started > args.compile_after_s:
                print(f"--compile runs skipped: the others took over {args.compile_after_s:.0f} s", file=sys.stderr)
                break
            results.append(run_ours_case(case, setup, compiled=True))
            write_json(args.json, results)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (--tiny)"
    import transformers

    peak_text = f"{peak / 1e12:.0f} TFLOP/s" if peak else "not measured"
    print_table(results, peak, f"GPU step on {name}: torch {torch.__version__}, transformers "
                f"{transformers.__version__}, bf16 matmul peak {peak_text}; medians of {args.steps} steps after "
                f"{args.warmup}")  # fmt: skip


if __name__ == "__main__":
    main()
