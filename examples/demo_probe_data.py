"""The demo's labelled task: which area of the Python standard library a docstring sentence comes from.

Eight classes, each a group of standard-library packages and modules (``DEMO_CLASSES``). A module is one
document, as in the demo corpus. Within a class, whole modules go either to the training side or to the test side,
so no test sentence shares a document with a training sentence and the probe measures generalisation to unseen
documents. Sentences (Punkt, trained on these docstrings, as in ``demo_corpus``) of ``MIN_WORDS``..``MAX_WORDS``
words are kept; a sentence that occurs more than once anywhere (boilerplate such as "Return the value.") is
dropped. Sampling uses ``numpy.random.default_rng(seed)`` over sorted inputs: the same Python gives the same files.

    task = build_demo_probe_task(Path("demo_output/probe"))   # -> train.csv, test.csv (columns text, label, module)
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from demo_corpus import docstring_paragraphs, module_docstrings, stdlib_directory, stdlib_modules

from bert_domain_ft.corpus.sentences import SentenceSplitter, train_punkt
from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import write_text_atomic

logger = logging.getLogger(__name__)

# Class name → top-level standard-library packages/modules whose docstrings make up the class.
DEMO_CLASSES: dict[str, tuple[str, ...]] = {
    "gui": ("tkinter", "idlelib", "turtle"),
    "mail": ("email", "mailbox", "smtplib", "imaplib", "poplib", "nntplib", "mimetypes"),
    "concurrency": ("asyncio", "concurrent", "threading", "multiprocessing", "queue", "subprocess", "sched"),
    "networking": (
        "http",
        "urllib",
        "xmlrpc",
        "wsgiref",
        "cgi",
        "ftplib",
        "socketserver",
        "telnetlib",
        "ssl",
        "socket",
    ),
    "markup": ("xml", "html", "json"),
    "imports": ("importlib", "distutils", "pkgutil", "zipimport", "runpy", "modulefinder", "ensurepip", "venv", "site"),
    "testing": ("unittest", "doctest", "pdb", "bdb", "trace", "profile", "cProfile", "pstats", "timeit", "traceback"),
    "numbers": ("_pydecimal", "fractions", "statistics", "numbers", "random", "datetime", "calendar", "_strptime"),
}
MIN_WORDS = 6  # shorter sentences are mostly bare names and fragments
MAX_WORDS = 48  # longer ones are lists and tables; the probe reads 64 tokens anyway
TRAIN_FILE = "train.csv"
TEST_FILE = "test.csv"


@dataclass(frozen=True)
class DemoProbeTask:
    """Where the labelled files were written and what they hold."""

    train: Path
    test: Path
    classes: tuple[str, ...]
    train_sentences: int
    test_sentences: int
    train_modules: int
    test_modules: int

    def describe(self) -> str:
        return (
            f"{len(self.classes)} classes, {self.train_sentences} training sentences from {self.train_modules} "
            f"modules, {self.test_sentences} test sentences from {self.test_modules} other modules"
        )


def module_class(stdlib: Path, path: Path) -> str | None:
    """The class of a standard-library file (by its top-level package or module name), or None."""
    top = path.relative_to(stdlib).parts[0].removesuffix(".py")
    return next((label for label, names in DEMO_CLASSES.items() if top in names), None)


def _module_name(stdlib: Path, path: Path) -> str:
    return ".".join(path.relative_to(stdlib).with_suffix("").parts)


def read_module_sentences(stdlib: Path) -> dict[str, dict[str, list[str]]]:
    """class → module name → its sentences (in source order), for every module of a demo class with prose."""
    paragraphs: dict[tuple[str, str], list[str]] = {}
    for path in stdlib_modules(stdlib):
        label = module_class(stdlib, path)
        if label is not None:
            found = [text for docstring in module_docstrings(path) for text in docstring_paragraphs(docstring)]
            if found:
                paragraphs[(label, _module_name(stdlib, path))] = found
    splitter = SentenceSplitter(train_punkt(text for texts in paragraphs.values() for text in texts))
    sentences: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for (label, module), texts in paragraphs.items():
        kept = [s for text in texts for s in splitter.split(text) if MIN_WORDS <= len(s.split()) <= MAX_WORDS]
        if kept:
            sentences[label][module] = kept
    return dict(sentences)


def _without_repeats(sentences: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, list[str]]]:
    counts = Counter(s for modules in sentences.values() for texts in modules.values() for s in texts)
    return {
        label: {module: [s for s in texts if counts[s] == 1] for module, texts in modules.items()}
        for label, modules in sentences.items()
    }


def split_modules(modules: list[str], test_share: float, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Modules of one class dealt to (train, test) in a seeded order: ``test_share`` of them (at least one, when
    there are two) go to the test side, the rest to the training side; none to both."""
    names = sorted(modules)
    order = [names[index] for index in rng.permutation(len(names))]
    test_count = min(max(1, round(test_share * len(names))), len(names) - 1) if len(names) > 1 else 0
    return sorted(order[test_count:]), sorted(order[:test_count])


def sample_round_robin(
    modules: dict[str, list[str]], names: list[str], count: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """Up to ``count`` (sentence, module) pairs taking one sentence from each module in turn (seeded orders), so
    a few long modules cannot fill a side on their own."""
    ordered = sorted(names)
    ordered = [ordered[index] for index in rng.permutation(len(ordered))]  # who goes first when count runs out
    queues = {name: [modules[name][i] for i in rng.permutation(len(modules[name]))] for name in ordered}
    chosen: list[tuple[str, str]] = []
    while len(chosen) < count and any(queues.values()):
        for name in [name for name in queues if queues[name]]:
            if len(chosen) == count:
                break
            chosen.append((queues[name].pop(), name))
    return chosen


def _csv_text(rows: list[tuple[str, str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label", "module"])
    writer.writerows(rows)
    return buffer.getvalue()


def build_demo_probe_task(
    output_dir: Path, train_per_class: int = 48, test_per_class: int = 32, seed: int = 0, stdlib: Path | None = None
) -> DemoProbeTask:
    """Write ``output_dir/train.csv`` and ``test.csv`` (text, label, module) from the standard library."""
    stdlib = Path(stdlib) if stdlib is not None else stdlib_directory()
    sentences = _without_repeats(read_module_sentences(stdlib) if stdlib.is_dir() else {})
    rng = np.random.default_rng(seed)
    test_share = test_per_class / (train_per_class + test_per_class)
    train_rows, test_rows = [], []
    module_counts = [0, 0]
    for label in sorted(sentences):
        modules = {name: texts for name, texts in sentences[label].items() if texts}
        train_names, test_names = split_modules(list(modules), test_share, rng)
        if not train_names or not test_names:
            logger.info("demo probe: class %s has too few modules with prose here; left out", label)
            continue
        train_pairs = sample_round_robin(modules, train_names, train_per_class, rng)
        test_pairs = sample_round_robin(modules, test_names, test_per_class, rng)
        train_rows += [(text, label, module) for text, module in train_pairs]
        test_rows += [(text, label, module) for text, module in test_pairs]
        module_counts[0] += len({module for _, module in train_pairs})
        module_counts[1] += len({module for _, module in test_pairs})
    classes = tuple(sorted({label for _, label, _ in train_rows}))
    if len(classes) < 2:
        raise UserError(at_location(stdlib, None, "too few documented modules here to build the demo's probe task"))
    output_dir = Path(output_dir)
    write_text_atomic(output_dir / TRAIN_FILE, _csv_text(train_rows))
    write_text_atomic(output_dir / TEST_FILE, _csv_text(test_rows))
    return DemoProbeTask(
        output_dir / TRAIN_FILE,
        output_dir / TEST_FILE,
        classes,
        len(train_rows),
        len(test_rows),
        module_counts[0],
        module_counts[1],
    )
