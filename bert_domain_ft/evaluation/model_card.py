"""The model card: a ``README.md`` in every final model directory, saying what the model is and how it scored.

It opens with the metadata block the Hugging Face Hub reads (``base_model`` only when it is known for certain: the
Hub id given as ``--bert_model``, or ``--base_model_id`` for a local copy, never a checkpoint's own
``_name_or_path``; ``library_name: transformers``, ``pipeline_tag: fill-mask``, ``tags``, ``license: other`` as a
placeholder to replace), then states the run's facts, all read back from what the run left in the directory:
``training_args.json`` (the base model as the user named it, settings, precision), ``metrics.jsonl`` (the objective
trained, the head warm-up, steps trained, the first and last held-out evaluations as the before/after table of
``heldout.format_before_after_table``, the probe's scores per step), the saved ``config.json`` (``BertForMaskedLM``
for masked LM only), the pregenerated data's ``manifest.json`` or the ``simple`` corpus (corpus size, data mix),
and the chain of commands that made the model (``provenance``). ``huggingface_hub.ModelCard`` loads it (tested);
nothing here needs the network.

    write_model_card(Path("run"), command="bert-domain-ft finetune --pregenerated_data data --output_dir run …")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bert_domain_ft.errors import UserError
from bert_domain_ft.evaluation.heldout import format_before_after_table, render_table, run_before_after
from bert_domain_ft.evaluation.plots import has_step, parse_metrics_line
from bert_domain_ft.evaluation.probe_report import paired_difference
from bert_domain_ft.evaluation.provenance import read_json, reproduction_steps
from bert_domain_ft.files import command_line as command_line  # the command of this process (recipe passes it)
from bert_domain_ft.files import write_text_atomic
from bert_domain_ft.model.files import MODEL_CONFIG_NAME
from bert_domain_ft.model.saving import is_hub_id

CARD_FILE = "README.md"
TAGS = ("bert_domain_ft", "fill-mask", "domain-adaptation", "continued-pretraining")
_ARGUMENTS_FILE = "training_args.json"  # written by training.recipe (named there too; evaluation may not import it)
_METRICS_FILE = "metrics.jsonl"


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
    """``model`` when the user gave a Hub id (``name`` or ``org/name``, not an existing local path); else None. A
    local directory's ``config.json`` is never asked: its ``_name_or_path`` names whatever it was made from (for
    all-MiniLM-L6-v2, its grandparent)."""
    if not model or Path(model).exists() or not is_hub_id(model):
        return None
    return model


def base_model_names(training: dict[str, Any]) -> tuple[str | None, str]:
    """(the card's ``base_model``: a Hub id known for certain, or None; the base as the text names it)."""
    model, given_id = training.get("bert_model"), training.get("base_model_id")
    hub_id = hub_model_id(model)
    if not model:
        return None, "none: trained from scratch"
    if hub_id and given_id in (None, hub_id):
        return hub_id, f"`{hub_id}` (Hugging Face Hub)"
    if given_id:
        where = f"`{model}`" if hub_id else f"the local model `{model}`"
        return given_id, f"{where}, a copy of `{given_id}` (as `--base_model_id` says)"
    return None, f"the local model `{model}` (pass `--base_model_id org/name` to name its Hub id in the metadata)"


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
    manifest = read_json(data / "manifest.json") or {}
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
    text = f"{', '.join(parts)} (pregenerated data `{data}`: {len(epochs)} epoch{'s' * (len(epochs) != 1)}, "
    text += f"{instances:,} instances"
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


def objective_trained(run_dir: Path, records: list[dict[str, Any]]) -> str:
    """What the run trained, in words: from the logged losses (an NSP loss is logged only when NSP trains), else
    from the saved model's class (an MLM-only BERT is saved as ``BertForMaskedLM``)."""
    trained = [record for record in records if record.get("kind") in ("train", "head_warmup")]
    config = read_json(Path(run_dir) / MODEL_CONFIG_NAME)
    architectures = [str(name) for name in config.get("architectures") or []] if isinstance(config, dict) else []
    if trained:
        with_nsp = any("nsp_loss" in record for record in trained)
    elif architectures:
        with_nsp = any(name.endswith("ForPreTraining") for name in architectures)
    else:
        return "not recorded (no training record in metrics.jsonl, no config.json)"
    text = "masked LM + next-sentence prediction (NSP)" if with_nsp else "masked LM only, no next-sentence prediction"
    return text + _saved_as(architectures)


def _saved_as(architectures: list[str]) -> str:
    return f"; saved as `{architectures[0]}`" if architectures else ""


def _head_warmup(records: list[dict[str, Any]], training: dict[str, Any]) -> str:
    warmup = [record.get("warmup_step") for record in records if record.get("kind") == "head_warmup"]
    warmup = [step for step in warmup if isinstance(step, int)]  # a value logged as NaN is read back as missing
    if warmup:
        return f"{max(warmup)} steps training only the heads the base lacked (encoder frozen), before the main steps"
    if training.get("head_warmup_steps") == 0:
        return "none (turned off with `--head_warmup_steps 0`)"
    return "none (the base's heads were trained already)"


def _data_mix(arguments: dict[str, Any], training: dict[str, Any]) -> str:
    """Where the training instances came from: the corpus alone, or with the task's texts (their share), or
    several named corpora (their sampling probabilities)."""
    if arguments.get("stage") == "simple":
        if not arguments.get("task_data"):
            return "the corpus alone"
        share = float(arguments.get("task_share") or 0)
        return f"the corpus and the task's texts `{arguments['task_data']}`: {share:.0%} of each epoch's pairs start in them"
    manifest = read_json(Path(str(training.get("pregenerated_data", ""))) / "manifest.json")
    if not isinstance(manifest, dict):
        return "not recorded (no readable manifest.json in the data)"
    corpora = [entry for entry in manifest.get("corpora") or [] if isinstance(entry, dict)]
    task = manifest.get("task_data") if isinstance(manifest.get("task_data"), dict) else None
    if len(corpora) < 2:
        return "the corpus alone"
    shares = ", ".join(f"{entry.get('name')} {float(entry.get('sampling_probability') or 0):.0%}" for entry in corpora)
    text = f"{len(corpora)} corpora by sampling probability ({shares})"
    if task is not None:
        share = float(task.get("task_share") or 0)
        text += f"; the task's texts `{task.get('source')}` with a task share of {share:.0%}"
    return text + ("; each batch from one corpus" if training.get("batch_from_one_corpus") else "")


def _facts_section(run_dir: Path, arguments: dict[str, Any], records: list[dict[str, Any]], base: str) -> list[str]:
    training = _training_settings(arguments)
    lines = [
        f"- **Base model**: {base}",
        f"- **Objective**: {objective_trained(run_dir, records)}",
        f"- **Head warm-up**: {_head_warmup(records, training)}",
        f"- **Corpus**: {_corpus_facts(arguments, training)}",
        f"- **Data mix**: {_data_mix(arguments, training)}",
        f"- **Steps**: {_steps(records):,} optimizer steps of {training.get('train_batch_size')} sequences",
        f"- **Precision**: {_precision(training)}",
        f"- **Learning rate**: {training.get('learning_rate')} (peak; linear warm-up and decay)",
        f"- **Seed**: {training.get('seed')}",
    ]
    if training.get("anchor_weight"):
        lines.append(f"- **Anchor (L2-SP)**: λ = {training['anchor_weight']}")
    return lines


def _reproduce_section(arguments: dict[str, Any], command: str | None) -> list[str]:
    lines = ["The commands that made this model, earliest first, from the records each step left (paths as each "
             "command was given them, from the directory it ran in):", "", "```bash"]  # fmt: skip
    for step in reproduction_steps(arguments, command):
        lines += [f"# {step.note}", *([step.command] if step.command else [])]
    return [*lines, "```", "", "All settings are in `training_args.json`; `metrics.jsonl` holds every logged value."]


def _use_section(run_dir: Path) -> list[str]:
    lines = ["```python", "from transformers import pipeline", "",
             'fill = pipeline("fill-mask", model="PATH_OR_HUB_ID")',
             'print(fill(f"A sentence of the domain with one {fill.tokenizer.mask_token} word."))', "```"]  # fmt: skip
    if (Path(run_dir) / "modules.json").is_file():
        lines += ["", "The base's sentence-transformers files came along (its pooling), so it also loads as a "
                  "sentence encoder: `SentenceTransformer(\"PATH_OR_HUB_ID\")`."]  # fmt: skip
    return lines


def model_card_text(run_dir: Path, command: str | None, best: dict[str, Any] | None = None) -> str:
    """The card of the run in ``run_dir`` (see the module docstring); ``command`` is the one that ran it (None
    from Python); ``best`` (``best.json``) when the card is for the ``best/`` model of the run."""
    arguments = read_json(run_dir / _ARGUMENTS_FILE)
    if not isinstance(arguments, dict):
        raise UserError(f"{run_dir / _ARGUMENTS_FILE}: missing or not JSON; a model card describes a finished run")
    training = _training_settings(arguments)
    base_model, base = base_model_names(training)
    model = training.get("bert_model")
    name = base_model or (Path(model).name if model else "a new model")
    title = f"{Path(run_dir).resolve().name}: {name} adapted to a domain by continued pretraining"
    records = _records(run_dir)
    sections = [_metadata(base_model), "", f"# {title}", ""]
    if best is not None:
        sections += [f"This is the run's best model: step {best.get('step')} by {best.get('metric')} "
                     f"({best.get('value')}).", ""]  # fmt: skip
    sections += ["Continued pretraining with bert_domain_ft: the same encoder, moved towards the corpus below.", ""]
    sections += ["## Training", "", *_facts_section(run_dir, arguments, records, base), ""]
    sections += ["## Held-out evaluation", "", *_heldout_section(run_dir), ""]
    probe = format_probe_records(records)
    if probe is not None:
        sections += ["## Downstream probe", "", "A classifier fine-tuned from each checkpoint on the labelled task "
                     "(the same seeds for every step):", "", "```text", probe, "```", ""]  # fmt: skip
    sections += ["## Reproduce", "", *_reproduce_section(arguments, command), ""]
    sections += ["## Use", "", *_use_section(run_dir), ""]
    return "\n".join(sections)


def write_model_card(run_dir: Path, command: str | None) -> Path:
    """Write ``run_dir/README.md`` (and ``run_dir/best/README.md`` when the run kept a best model), atomically;
    ``command`` is the one that ran the run (``command_line()``; None from Python)."""
    run_dir = Path(run_dir)
    path = run_dir / CARD_FILE
    write_text_atomic(path, model_card_text(run_dir, command))
    best = read_json(run_dir / "best" / "best.json")
    if isinstance(best, dict):
        write_text_atomic(run_dir / "best" / CARD_FILE, model_card_text(run_dir, command, best))
    return path
