"""How a model was made: the chain of commands of its stages, read back from the records each stage leaves.

prepare → select → pregenerate → finetune (or simple). The run's ``training_args.json`` names its data; the
pregenerated data's ``manifest.json`` holds the command that wrote it (``command``, recorded since this version;
its settings under ``generation`` always) and the corpora it read; beside a corpus, ``select`` leaves
``<output>.json`` (its settings, from which its command is rebuilt) and ``prepare`` leaves
``<output>.punkt.json`` (its sentence splitter, but neither its command line nor its inputs). A step that left no
record is said to have left none, never guessed. The model card prints the steps as its "Reproduce" section.

    for step in reproduction_steps(json.loads(Path("run/training_args.json").read_text()), command_line()):
        print("#", step.note, step.command or "", sep="\n")
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_domain_ft.corpus.config import METHODS, PUNKT_PARAMETERS_SUFFIX, SelectConfig
from bert_domain_ft.data.config import TASK_CORPUS_NAME
from bert_domain_ft.data.epoch_format import MANIFEST_NAME

SELECTION_RECORD_SUFFIX = ".json"  # select writes its settings to <output>.json (SelectConfig.output)
MAX_CORPUS_STEPS = 8  # a selection from a selection…: steps followed back at most
_SELECT_SETTINGS = ("tokens", "fraction", "method", "bert_model", "k1", "b", "seed")  # flags rebuilt when not default


@dataclass(frozen=True)
class Step:
    """One step of the chain: what it was and where its record is (or that it left none), and its command."""

    note: str
    command: str | None = None


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; None when it cannot be read (a record is optional: its absence is said)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def reproduction_steps(arguments: dict[str, Any], command: str | None) -> list[Step]:
    """The steps that made a run's model, earliest first: each corpus's prepare/select, pregenerate (finetune
    runs), then the run itself (``command``, None when it was started from Python). ``arguments`` is the run's
    ``training_args.json``."""
    if arguments.get("stage") == "simple":
        steps = corpus_history(Path(str(arguments.get("train_corpus") or "")))
        stage = "simple"
    else:
        steps = pregenerated_data_history(Path(str(arguments.get("pregenerated_data") or "")))
        stage = "finetune"
    if command:
        steps.append(Step(f"{stage}: this run", command))
    else:
        steps.append(Step(f"{stage}: this run, started from Python (no command line); its settings are in "
                          "training_args.json"))  # fmt: skip
    return list(dict.fromkeys(steps))  # corpora made by the same steps: each step once


def pregenerated_data_history(data: Path) -> list[Step]:
    """The steps that made pregenerated ``data``: those of each corpus it read (the task's texts are the user's),
    then pregenerate, from its ``manifest.json``."""
    manifest = read_json(data / MANIFEST_NAME)
    generation = manifest.get("generation") if isinstance(manifest, dict) else None
    corpora = generation.get("train_corpus") if isinstance(generation, dict) else None
    named = corpora.items() if isinstance(corpora, dict) else []
    paths = [Path(str(path)) for name, path in named if name != TASK_CORPUS_NAME]
    return [*(step for path in paths for step in corpus_history(path)), _pregenerate_step(data, manifest)]


def corpus_history(corpus: Path, depth: int = 0) -> list[Step]:
    """The steps that made ``corpus``, from the records beside it: select's (then the corpus it selected from),
    or prepare's; a step that says so when there is none."""
    if not corpus.name:
        return [Step("the corpus: not recorded")]
    record_path = corpus.with_name(corpus.name + SELECTION_RECORD_SUFFIX)
    selection = read_json(record_path)
    if isinstance(selection, dict) and selection.get("method") in METHODS and selection.get("corpus"):
        source = Path(str(selection["corpus"]))
        earlier = corpus_history(source, depth + 1) if depth < MAX_CORPUS_STEPS else []
        note = f"select: rebuilt from `{record_path}`, the settings it recorded (it does not record --text_column)"
        return [*earlier, Step(note, select_command(selection, corpus))]
    punkt = corpus.with_name(corpus.name + PUNKT_PARAMETERS_SUFFIX)
    if punkt.is_file():
        return [Step(f"prepare: `{corpus}` was written by `bert-domain-ft prepare` (its sentence splitter is "
                     f"`{punkt}`), which records neither its command line nor its inputs")]  # fmt: skip
    return [Step(f"`{corpus}`: no record of how it was made (prepare and select leave one beside their output)")]


def select_command(record: dict[str, Any], output: Path) -> str:
    """``bert-domain-ft select`` with the settings of its record (those at their default left out)."""
    defaults = {field.name: field.default for field in dataclasses.fields(SelectConfig)}
    words = ["bert-domain-ft", "select", "--task_data", str(record.get("task_data")), "--corpus",
             str(record.get("corpus")), "--output", str(output)]  # fmt: skip
    for name in _SELECT_SETTINGS:
        value = record.get(name)
        if value is not None and value != defaults.get(name):
            words += [f"--{name}", str(value)]
    if record.get("keep_stopwords"):
        words.append("--keep_stopwords")
    return shlex.join(words)


def _pregenerate_step(data: Path, manifest: Any) -> Step:
    manifest_path = data / MANIFEST_NAME
    if not isinstance(manifest, dict):
        return Step(f"pregenerate: `{manifest_path}` is missing or unreadable, so the data's record is lost")
    command = manifest.get("command")
    if isinstance(command, str) and command:
        return Step(f"pregenerate: as recorded in `{manifest_path}`", command)
    return Step(f"pregenerate: `{manifest_path}` does not record its command (written by an older version, from "
                'Python, or converted from the original format); its settings are under "generation" there')  # fmt: skip
