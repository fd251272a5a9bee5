"""What a domain vocabulary buys: ``vocab extend`` against the base tokenizer, measured in one run.

1. Fragmentation on held-out text. Each domain text is split by documents (every 10th held out); ``vocab extend``
   chooses its words from the other nine tenths; the held-out tenth is measured with the base and the extended
   tokenizer: tokens, pieces per word, continuation share, sequences of 128 per MB. Domains: the Python
   documentation's reST sources (the ``pydocs`` task of ``benchmarks/adaptation.py``) and, with ``--docs FILE``,
   any other text in the corpus format (the README's first row: 5.8 MB of Python documentation). With the 994 [unused] slots of the MiniLM /
   bert-base-uncased vocabulary, and with ``--grow`` words (slots, then growth).
2. Training and the probe, on ``benchmarks/adaptation.py``'s pydocs task and machinery (its ``adapt``,
   ``pregenerated`` and the probe): DAPT with masked LM (``dapt_mlm``) from the base model, and the same recipe
   from the model extended with words of the pydocs corpus (the new rows warm up with the fresh MLM head), at the
   same budget (``--steps`` × ``--batch_size`` sequences). Reported: sequences per epoch of the pregenerated data,
   training sequences/s (of the two runs, and of short runs of both models in alternation, which see the same load
   on shared cores), the probe of base / adapted / extended + adapted (5 seeds) with paired 95% intervals,
   extended + adapted against adapted included, and the adapted model's masked-LM loss on known text before and
   right after ``vocab extend``.

    python benchmarks/vocabulary.py --work_dir /tmp/vocabulary_benchmark            # ~25 min on 2 cores
    python benchmarks/vocabulary.py --work_dir /tmp/vocabulary_benchmark --skip_training   # part 1 only, ~1 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import adaptation  # noqa: E402  (the task, adaptation and probe machinery)

from bert_domain_ft.evaluation.heldout import render_table  # noqa: E402

SLOTS = 994  # [unused] slots of the bert-base-uncased vocabulary (and MiniLM's)
HELD_OUT_EVERY = 10  # every 10th document is held out


def split_documents(corpus: Path, work: Path) -> tuple[Path, Path]:
    """(training part, held-out part) of a corpus-format file: every ``HELD_OUT_EVERY``-th document held out."""
    train, held_out = work / f"{corpus.stem}.train.txt", work / f"{corpus.stem}.heldout.txt"
    if not held_out.exists():
        documents = [doc.strip() for doc in corpus.read_text(encoding="utf-8").split("\n\n") if doc.strip()]
        parts: tuple[list[str], list[str]] = ([], [])
        for index, document in enumerate(documents):
            parts[index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1].append(document)
        train.write_text("\n\n".join(parts[0]) + "\n", encoding="utf-8")
        held_out.write_text("\n\n".join(parts[1]) + "\n", encoding="utf-8")
    return train, held_out


def extended(model: str, corpus: Path, add: int, output: Path) -> Path:
    """``vocab extend`` of ``model`` with ``add`` words of ``corpus`` (cached in ``output``)."""
    from bert_domain_ft.corpus.config import VocabExtendConfig
    from bert_domain_ft.corpus.vocabulary_extension import extend_vocabulary

    if not (output / "vocabulary_extension.json").exists():
        report = extend_vocabulary(
            VocabExtendConfig(
                corpus=corpus, bert_model=model, add=add, output=output, overwrite=True, show_progress=False
            )
        )
        print(
            f"  extended {Path(model).name} with {add} words of {corpus.name}: {report.vocab_size_before} → "
            f"{report.vocab_size} rows, {report.parameters_before:,} → {report.parameters:,} parameters"
        )
    return output


def fragmentation(tokenizer_dir: str, text: Path) -> Any:
    from bert_domain_ft.corpus.config import VocabAnalyseConfig
    from bert_domain_ft.corpus.vocabulary import analyse_vocabulary

    return analyse_vocabulary(VocabAnalyseConfig(corpus=text, bert_model=tokenizer_dir, top=0, show_progress=False))


def fragmentation_table(model: str, corpus: Path, work: Path, grow: int) -> str:
    """Held-out fragmentation of ``corpus`` with the base tokenizer, the 994 slots, and ``grow`` words."""
    train, held_out = split_documents(corpus, work)
    columns = {"base": fragmentation(model, held_out)}
    for add in (SLOTS, grow):
        directory = extended(model, train, add, work / f"{corpus.stem}_ext{add}")
        columns[f"+{add} words"] = fragmentation(str(directory), held_out)
    base = columns["base"]
    rows = [["held-out " + corpus.stem, *columns, *(f"{name} / base" for name in list(columns)[1:])]]
    for label, value in (
        ("tokens", lambda r: r.tokens),
        ("pieces per word", lambda r: r.pieces_per_word),
        ("continuation share", lambda r: r.continuation_share),
        ("sequences of 128 per MB", lambda r: r.sequences_per_mb),
        ("words that became [UNK]", lambda r: r.unknown_words),
    ):
        cells = [f"{value(r):.4g}" if isinstance(value(r), float) else str(value(r)) for r in columns.values()]
        ratios = [f"{value(r) / value(base):.3f}" if value(base) else "-" for r in list(columns.values())[1:]]
        rows.append([label, *cells, *ratios])
    return render_table(rows)


def sequences_per_epoch(data: Path) -> int:
    return int(json.loads((data / "manifest.json").read_text())["epochs"][0]["num_instances"])


def training_speed(run: Path, kind: str = "train") -> float:
    """Median sequences/s of the ``kind`` records in ``metrics.jsonl`` (``train``: main phase, ``head_warmup``)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["sequences_per_second"] for r in records if r.get("kind") == kind and "sequences_per_second" in r]
    return statistics.median(speeds) if speeds else float("nan")


def interleaved_speed(models: dict[str, tuple[str, Path]], work: Path, steps: int, batch: int, rounds: int = 2) -> str:
    """Main-phase sequences/s of each (model, data), measured in alternation (``rounds`` × ``steps`` steps each, no
    warm-up) so that both see the same load on shared cores: the adaptation runs' own figures need not."""
    from bert_domain_ft.training import FinetuneConfig, finetune

    speeds: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(rounds):
        for name, (model, data) in models.items():
            output = work / "speed" / f"{name}_{round_index}"
            finetune(FinetuneConfig(pregenerated_data=data, output_dir=output, bert_model=model, max_steps=steps,
                                    train_batch_size=batch, bf16=True, head_warmup_steps=0, do_eval=False,
                                    logging_steps=5, overwrite_output_dir=True, show_progress=False))  # fmt: skip
            speeds[name].append(training_speed(output))
    first = statistics.median(next(iter(speeds.values())))
    rows = [["main-phase seq/s, alternating runs", *(f"round {i + 1}" for i in range(rounds)), "median", "ratio"]]
    for name, values in speeds.items():
        median = statistics.median(values)
        rows.append([name, *(f"{value:.2f}" for value in values), f"{median:.2f}", f"{median / first:.3f}"])
    return render_table(rows)


def known_text_loss(adapted: Path, extension: Path, task_corpus: Path, data: Path, work: Path) -> str:
    """The adapted model (a trained MLM head) and the same model given ``extension``'s words by ``vocab extend``
    (no training after): masked-LM loss on the same token ids of the base tokenizer (so no new token in them)."""
    from bert_domain_ft.corpus.config import VocabExtendConfig
    from bert_domain_ft.corpus.vocabulary_extension import extend_vocabulary
    from bert_domain_ft.evaluation.config import EvaluateConfig
    from bert_domain_ft.evaluation.evaluate import evaluate_model

    words = [entry["token"] for entry in json.loads((extension / "vocabulary_extension.json").read_text())["added"]]
    word_file, output = work / "pydocs_ext994_words.txt", work / "adapted_then_extended"
    word_file.write_text("\n".join(words) + "\n", encoding="utf-8")
    if not (output / "vocabulary_extension.json").exists():
        extend_vocabulary(
            VocabExtendConfig(
                corpus=task_corpus,
                bert_model=str(adapted),
                add=len(words),
                words=word_file,
                output=output,
                overwrite=True,
                show_progress=False,
            )
        )
    losses = {}
    for name, model in (("adapted", adapted), ("adapted, then extended (no training)", output)):
        config = EvaluateConfig(
            model=str(model), tokenizer=str(adapted), data=data, epoch=0, max_instances=1024, show_progress=False
        )
        losses[name] = evaluate_model(config).mlm_loss
    first = next(iter(losses.values()))
    rows = [["known text (base tokenizer's ids)", "MLM loss", "difference"]]
    rows += [[name, f"{loss:.5f}", f"{loss - first:+.5f}"] for name, loss in losses.items()]
    return render_table(rows)


def training_and_probe(model: str, work: Path, steps: int, batch: int, seeds: int, seed: int) -> None:
    from bert_domain_ft.evaluation.config import ProbeConfig
    from bert_domain_ft.evaluation.probe import run_probe
    from bert_domain_ft.evaluation.probe_report import format_paired_table, format_probe_table

    task = adaptation.build_pydocs_task(work)
    print(f"task {task.name}: {task.description}", flush=True)
    ext_model = str(extended(model, task.corpus, SLOTS, work / "pydocs_ext994"))
    recipe = adaptation.RECIPES["dapt_mlm"]
    runs = {}
    for name, start, data_name in (("dapt_mlm", model, "domain"), ("ext994_dapt_mlm", ext_model, "domain_ext994")):
        started = time.perf_counter()
        arm = adaptation.Recipe(data_name, recipe.objective, recipe.learning_rate)  # same recipe, own data dir
        runs[name] = adaptation.adapt(start, task, name, arm, steps, batch, work, seed)
        print(f"  {name}: {time.perf_counter() - started:.0f} s (adaptation, data included if not cached)", flush=True)
    data = {
        name: work / "data" / f"{d}_mlm" for name, d in (("dapt_mlm", "domain"), ("ext994_dapt_mlm", "domain_ext994"))
    }
    rows = [["pydocs, masked LM", "sequences per epoch", "seq/s, main phase (median)", "seq/s, warm-up (median)"]]
    rows += [
        [
            name,
            str(sequences_per_epoch(data[name])),
            f"{training_speed(runs[name]):.2f}",
            f"{training_speed(runs[name], 'head_warmup'):.2f}",
        ]
        for name in runs
    ]
    print(render_table(rows))
    ratio = sequences_per_epoch(data["ext994_dapt_mlm"]) / sequences_per_epoch(data["dapt_mlm"])
    print(f"sequences per epoch, extended / base: {ratio:.3f}")
    config = ProbeConfig(
        models=[model, *map(str, runs.values())],
        train=task.train,
        test=task.test,
        seeds=seeds,
        json_output=work / "probe_results.json",
        show_progress=False,
    )
    results = run_probe(config, names=["base", "adapted (DAPT, MLM)", "extended 994 + adapted"])
    print(format_probe_table(results, title=f"pydocs, {steps} steps × {batch}"))
    print()
    print(format_paired_table(results[1:], title="extended + adapted vs adapted"))
    print()
    models = {"base": (model, data["dapt_mlm"]), "extended 994": (ext_model, data["ext994_dapt_mlm"])}
    print(interleaved_speed(models, work, 30, batch), flush=True)
    print()
    print(known_text_loss(runs["dapt_mlm"], work / "pydocs_ext994", task.corpus, data["dapt_mlm"], work), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", type=Path, default=Path("vocabulary_benchmark"))
    parser.add_argument("--docs", type=Path, help="another domain text to measure first (corpus format)")
    parser.add_argument("--grow", type=int, default=2000, help="a second extension: this many words")
    parser.add_argument("--steps", type=int, default=142, help="optimizer steps of each adaptation (equal budget)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=5, help="probe classifiers per model")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip_training", action="store_true", help="fragmentation only")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    work = args.work_dir / "pydocs"
    work.mkdir(parents=True, exist_ok=True)
    model = adaptation.minilm()
    pydocs = adaptation.build_pydocs_task(work).corpus
    for corpus in ([args.docs] if args.docs else []) + [pydocs]:
        print(fragmentation_table(model, corpus, args.work_dir, args.grow), "\n", flush=True)
    if not args.skip_training:
        training_and_probe(model, work, args.steps, args.batch_size, args.seeds, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
