"""The model card: a ``README.md`` in every final model directory, saying what the model is and how it scored.

It opens with the metadata block the Hugging Face Hub reads (``base_model``, ``library_name: transformers``,
``pipeline_tag: fill-mask``, ``tags``, ``license: other`` as a placeholder to replace), then states the run's
facts, all read back from what the run left in the directory: ``training_args.json`` (base model, settings,
precision), ``metrics.jsonl`` (steps trained, the first and last held-out evaluations as the before/after table
of ``heldout.format_before_after_table``, the probe's scores per step), the pregenerated data's ``manifest.json``
or the ``simple`` corpus (corpus size), and the command that reproduces the run. ``huggingface_hub.ModelCard``
loads it (tested); nothing here needs the network.

    write_model_card(Path("run"), command="bert-domain-ft finetune --pregenerated_data data --output_dir run …")
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.heldout import format_before_after_table, render_table, run_before_after
from bert_domain_ft.evaluation.plots import has_step, parse_metrics_line
from bert_domain_ft.evaluation.probe_report import paired_difference
from bert_domain_ft.files import write_text_atomic
from bert_domain_ft.model.files import looks_like_a_path

CARD_FILE = "README.md"
TAGS = ("bert_domain_ft", "fill-mask", "domain-adaptation", "continued-pretraining")
_ARGUMENTS_FILE = "training_args.json"  # written by training.recipe (named there too; evaluation may not import it)
_METRICS_FILE = "metrics.jsonl"
# The console scripts of setup.cfg whose command lines are repeated as they were given.
CONSOLE_SCRIPTS = ("bert-domain-ft", "finetune-on-pregenerated", "simple-lm-finetuning")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _records(run_dir: Path) -> list[dict[str, Any]]:
    """Every readable record of ``metrics.jsonl`` with a step (a line cut short by a crash is skipped; NaN and
    infinite numbers are read as missing, see ``parse_metrics_line``)."""
    path = run_dir / _METRICS_FILE
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            record, _ = parse_metrics_line(line)
        except ValueError:
            continue
        if has_step(record):
            records.append(record)
    return records


def hub_model_id(model: str | None) -> str | None:
    """``model`` when it names a Hub model (not a local directory), else the Hub id its ``config.json`` recorded
    (``_name_or_path``) when that is one; None when neither is."""
    if not model:
        return None
    candidates = [model]
    if Path(model).exists():
        config = _read_json(Path(model) / "config.json") or {}
        candidates = [str(config.get("_name_or_path") or "")]
    for candidate in candidates:
        if candidate and not Path(candidate).exists() and not looks_like_a_path(candidate):
            return candidate
    return None


def _metadata(base_model: str | None) -> str:
    lines = ["---"]
    if base_model:
        lines.append(f"base_model: {json.dumps(base_model)}")
    lines += ["library_name: transformers", "pipeline_tag: fill-mask"]
    lines.append("license: other  # a placeholder: set the license of the base model and of your corpus")
    lines += ["tags:", *(f"- {tag}" for tag in TAGS), "---"]
    return "\n".join(lines)


def _training_settings(arguments: dict[str, Any]) -> dict[str, Any]:
    """The ``FinetuneConfig`` part of ``training_args.json`` (``simple`` nests it under ``training``)."""
    nested = arguments.get("training")
    return nested if isinstance(nested, dict) else arguments


def _precision(training: dict[str, Any]) -> str:
    if training.get("bf16"):
        return "bf16 mixed precision (autocast)"
    if training.get("fp16"):
        return "fp16 mixed precision (autocast and a gradient scaler)"
    return "fp32"


def _corpus_facts(arguments: dict[str, Any], training: dict[str, Any]) -> str:
    """The corpus in one line: the pregenerated data's totals, or the ``simple`` corpus file's size."""
    if arguments.get("stage") == "simple":
        corpus = Path(str(arguments.get("train_corpus", "")))
        size = f", {corpus.stat().st_size:,} bytes" if corpus.is_file() else ""
        return f"`{corpus}`{size} (pairs made on the fly by `simple`)"
    data = Path(str(training.get("pregenerated_data", "")))
    manifest = _read_json(data / "manifest.json") or {}
    totals = manifest.get("corpus") or {}
    if not totals:
        return f"pregenerated data `{data}`"
    corpora = manifest.get("corpora")
    names = (
        ", ".join(str(entry.get("name")) for entry in corpora) if isinstance(corpora, list) and len(corpora) > 1 else ""
    )
    parts = [f"{int(totals.get(key, 0)):,} {key}" for key in ("documents", "sentences", "tokens") if key in totals]
    epochs = manifest.get("epochs") or []
    instances = sum(int(epoch.get("num_instances", 0)) for epoch in epochs)
    text = f"{', '.join(parts)} (pregenerated data `{data}`: {len(epochs)} epochs, {instances:,} instances"
    return text + (f"; corpora: {names})" if names else ")")


def _steps(records: list[dict[str, Any]]) -> int:
    steps = [int(record.get("step", 0)) for record in records if record.get("kind") in ("train", "eval")]
    return max(steps, default=0)


def _heldout_section(run_dir: Path) -> list[str]:
    pair = run_before_after(run_dir)
    if pair is None:
        return ["No held-out set was evaluated in this run (pregenerate with `--holdout_fraction` to get one)."]
    before, after = pair
    table = format_before_after_table(before, after, title=f"step {before['step']} → {after['step']}")
    return ["Masked-LM loss, perplexity and accuracy on held-out text of the domain, before and after:", "",
            "```text", table, "```"]  # fmt: skip


def format_probe_records(records: list[dict[str, Any]]) -> str | None:
    """The probe's scores per step (mean ± std over seeds) and each step's paired difference to step 0."""
    scored = [r for r in records if r.get("kind") == "probe" and all(isinstance(r.get(key), (int, float)) for key in
              ("step", "accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std"))]  # fmt: skip
    by_step = {int(r["step"]): r for r in scored}
    if not by_step:
        return None
    start = by_step.get(0)
    rows = [["step", "accuracy", "macro-F1", "vs step 0, paired (95% interval)"]]
    for step, record in sorted(by_step.items()):
        accuracy = f"{100 * record['accuracy_mean']:.2f}% ± {100 * record['accuracy_std']:.2f}"
        f1 = f"{100 * record['macro_f1_mean']:.2f}% ± {100 * record['macro_f1_std']:.2f}"
        change = "-"
        if start is not None and step != 0 and record.get("seeds") == start.get("seeds"):
            paired = paired_difference(record["accuracy_per_seed"], start["accuracy_per_seed"])
            change = f"{paired.describe_points()} {paired.verdict}"
        rows.append([str(step), accuracy, f1, change])
    seeds = len(next(iter(by_step.values())).get("seeds", []))
    return f"({seeds} seeds per step)\n" + render_table(rows)


def _facts_section(arguments: dict[str, Any], records: list[dict[str, Any]], base: str) -> list[str]:
    training = _training_settings(arguments)
    warmup = [r for r in records if r.get("kind") == "head_warmup" and isinstance(r.get("warmup_step", 0), int)]
    lines = [
        f"- **Base model**: {base}",
        f"- **Corpus**: {_corpus_facts(arguments, training)}",
        f"- **Steps**: {_steps(records):,} optimizer steps of {training.get('train_batch_size')} sequences"
        + (f", after a head warm-up of {max(int(r.get('warmup_step', 0)) for r in warmup)} steps" if warmup else ""),
        f"- **Precision**: {_precision(training)}",
        f"- **Learning rate**: {training.get('learning_rate')} (peak; linear warm-up and decay)",
        f"- **Seed**: {training.get('seed')}",
    ]
    if training.get("anchor_weight"):
        lines.append(f"- **Anchor (L2-SP)**: λ = {training['anchor_weight']}")
    return lines


def model_card_text(run_dir: Path, command: str, best: dict[str, Any] | None = None) -> str:
    """The card of the run in ``run_dir`` (see the module docstring); ``best`` (``best.json``) when the card is
    for the ``best/`` model of the run."""
    arguments = _read_json(run_dir / _ARGUMENTS_FILE)
    if not isinstance(arguments, dict):
        raise UserError(f"{run_dir / _ARGUMENTS_FILE}: missing or not JSON; a model card describes a finished run")
    training = _training_settings(arguments)
    model = training.get("bert_model")
    hub_id = hub_model_id(model)
    base = f"`{hub_id}`" if hub_id else (f"the local model `{model}`" if model else "none (trained from scratch)")
    title = f"{Path(run_dir).resolve().name}: {hub_id or 'BERT'} adapted to a domain by continued pretraining"
    records = _records(run_dir)
    sections = [_metadata(hub_id), "", f"# {title}", ""]
    if best is not None:
        sections += [f"This is the run's best model: step {best.get('step')} by {best.get('metric')} "
                     f"({best.get('value')}).", ""]  # fmt: skip
    sections += ["Continued pretraining (masked LM, with next-sentence prediction where the base model has a trained "
                 "head) with bert_domain_ft: the same encoder, moved towards the corpus below.", ""]  # fmt: skip
    sections += ["## Training", "", *_facts_section(arguments, records, base), ""]
    sections += ["## Held-out evaluation", "", *_heldout_section(run_dir), ""]
    probe = format_probe_records(records)
    if probe is not None:
        sections += ["## Downstream probe", "", "A classifier fine-tuned from each checkpoint on the labelled task "
                     "(the same seeds for every step):", "", "```text", probe, "```", ""]  # fmt: skip
    sections += ["## Reproduce", "", "```bash", command, "```", "",
                 "All settings are in `training_args.json`; `metrics.jsonl` holds every logged value.", ""]  # fmt: skip
    sections += ["## Use", "", "```python", "from transformers import pipeline", "",
                 'fill = pipeline("fill-mask", model="PATH_OR_HUB_ID")',
                 'print(fill(f"A sentence of the domain with one {fill.tokenizer.mask_token} word."))',
                 "```", ""]  # fmt: skip
    return "\n".join(sections)


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process, to reproduce the run (``sys.argv``, shell-quoted); a note pointing at
    ``training_args.json`` when the run was started from Python rather than by a command."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name if argv else ""
    if program == "__main__.py":  # python -m bert_domain_ft (torchrun too)
        return shlex.join(["python", "-m", "bert_domain_ft", *argv[1:]])
    if program in CONSOLE_SCRIPTS:
        return shlex.join([program, *argv[1:]])
    return "# started from Python, not a command line: the run's settings are in training_args.json"


def write_model_card(run_dir: Path, command: str) -> Path:
    """Write ``run_dir/README.md`` (and ``run_dir/best/README.md`` when the run kept a best model), atomically."""
    run_dir = Path(run_dir)
    path = run_dir / CARD_FILE
    write_text_atomic(path, model_card_text(run_dir, command))
    best = _read_json(run_dir / "best" / "best.json")
    if isinstance(best, dict):
        write_text_atomic(run_dir / "best" / CARD_FILE, model_card_text(run_dir, command, best))
    return path
