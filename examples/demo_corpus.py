"""The demo's domain corpus: the docstrings of the Python standard library, which every Python install carries.

One module is one document; its docstrings (module, classes, functions, in source order) are cleaned of doctest
and code lines, split into paragraphs, and the paragraphs into sentences with Punkt trained on this same text
(``bert_domain_ft.corpus.sentences``), so no download is needed. Modules are read in sorted order and nothing
random is involved: the same Python gives the same corpus byte for byte. The result is cached next to a small JSON
description and rebuilt only when the Python version, the library directory or the builder changes.

    corpus = cached_demo_corpus(Path("demo_work"))   # -> DemoCorpus(path=demo_work/stdlib_docstrings.txt, ...)
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import logging
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from bert_domain_ft.corpus.sentences import SentenceSplitter, split_long_sentence, train_punkt
from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

BUILDER_VERSION = 1  # bump when the extraction changes, so cached corpora are rebuilt
CORPUS_FILE = "stdlib_docstrings.txt"
DESCRIPTION_FILE = "stdlib_docstrings.json"
MAX_SENTENCE_CHARACTERS = 600  # longer "sentences" (tables, run-on lists) are cut at a safe point
MIN_PARAGRAPH_WORDS = 3  # shorter paragraphs are headings or bare names, not prose
# Directories of the library that are tests, demos, bundled third-party code or GUI resources: not its prose.
_SKIPPED_PARTS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "turtledemo", "__pycache__"}
)
_DOCTEST_LINE = re.compile(r"^\s*(>>>|\.\.\.)(\s|$)")
_RULE_LINE = re.compile(r"^\s*([-=~^*+#`:_.])\1{2,}\s*$")  # "=====" underlines and separators
_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class DemoCorpus:
    """Where the corpus was written and how big it is."""

    path: Path
    documents: int
    sentences: int
    characters: int

    def describe(self) -> str:
        return f"{self.documents:,} documents, {self.sentences:,} sentences, {self.characters / 1e6:.1f} M characters"


def stdlib_directory() -> Path:
    """The directory of this Python's standard library source files."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_modules(stdlib: Path) -> list[Path]:
    """The library's ``.py`` files in sorted order, without tests, demos and third-party packages."""
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        if not _SKIPPED_PARTS.intersection(path.relative_to(stdlib).parts):
            files.append(path)
    return files


def module_docstrings(path: Path) -> list[str]:
    """The cleaned docstrings of a module, its own first, then classes and functions in source order."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # invalid escapes in old modules are not our concern
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError) as error:
        logger.debug("%s", at_location(path, None, f"skipped ({error})"))
        return []
    owners = sorted((node for node in ast.walk(tree) if isinstance(node, _DOCSTRING_OWNERS)), key=_source_position)
    docstrings = (ast.get_docstring(node, clean=True) for node in owners)
    return [docstring for docstring in docstrings if docstring]


def _source_position(node: ast.AST) -> tuple[int, int]:
    return getattr(node, "lineno", 0), getattr(node, "col_offset", 0)


def docstring_paragraphs(docstring: str) -> list[str]:
    """Prose paragraphs of a docstring, each on one line: doctests, rules and near-empty paragraphs dropped."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", docstring):
        lines = [line for line in block.splitlines() if not _DOCTEST_LINE.match(line) and not _RULE_LINE.match(line)]
        words = " ".join(lines).split()  # also folds tabs, form feeds and indentation into single spaces
        if len(words) >= MIN_PARAGRAPH_WORDS and any(character.isalpha() for character in words[0]):
            paragraphs.append(" ".join(words))
    return paragraphs


def iter_module_paragraphs(modules: list[Path], show_progress: bool) -> Iterator[list[str]]:
    """The paragraphs of each module (one list per module, empty lists for modules without prose)."""
    for path in tqdm(modules, desc="reading docstrings", unit="module", disable=not show_progress):
        yield [paragraph for docstring in module_docstrings(path) for paragraph in docstring_paragraphs(docstring)]


def _corpus_text(documents: list[list[str]], splitter: SentenceSplitter) -> tuple[str, int]:
    blocks, sentences = [], 0
    for paragraphs in documents:
        lines = [
            piece
            for paragraph in paragraphs
            for sentence in splitter.split(paragraph)
            for piece in split_long_sentence(sentence, MAX_SENTENCE_CHARACTERS)
        ]
        if lines:
            blocks.append("\n".join(lines))
            sentences += len(lines)
    return ("\n\n".join(blocks) + "\n" if blocks else ""), sentences


def build_demo_corpus(
    output_path: Path, stdlib: Path | None = None, max_documents: int | None = None, show_progress: bool = True
) -> DemoCorpus:
    """Write the standard-library docstring corpus (corpus format) to ``output_path``.

    ``max_documents`` keeps the first modules in sorted order (a smaller, still deterministic corpus).
    """
    stdlib = Path(stdlib) if stdlib is not None else stdlib_directory()
    modules = stdlib_modules(stdlib) if stdlib.is_dir() else []
    with_prose = (paragraphs for paragraphs in iter_module_paragraphs(modules, show_progress) if paragraphs)
    documents = list(itertools.islice(with_prose, max_documents))
    if len(documents) < 2:
        raise UserError(
            at_location(
                stdlib,
                None,
                "no Python source files with docstrings here (a zipped standard library?); "
                "give the demo your own text with --corpus FILE",
            )
        )
    splitter = SentenceSplitter(train_punkt(paragraph for paragraphs in documents for paragraph in paragraphs))
    text, sentences = _corpus_text(documents, splitter)
    write_text_atomic(Path(output_path), text)
    return DemoCorpus(Path(output_path), documents=text.count("\n\n") + 1, sentences=sentences, characters=len(text))


def _cache_key(stdlib: Path, max_documents: int | None) -> dict[str, object]:
    return {
        "builder_version": BUILDER_VERSION,
        "python": sys.version.split()[0],
        "stdlib": str(stdlib.resolve()),
        "max_documents": max_documents,
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached_demo_corpus(
    work_dir: Path, stdlib: Path | None = None, max_documents: int | None = None, show_progress: bool = True
) -> DemoCorpus:
    """``build_demo_corpus`` into ``work_dir``, reusing the corpus built there before for the same Python."""
    work_dir = Path(work_dir)
    stdlib = Path(stdlib) if stdlib is not None else stdlib_directory()
    corpus_path, description_path = work_dir / CORPUS_FILE, work_dir / DESCRIPTION_FILE
    key = _cache_key(stdlib, max_documents)
    if corpus_path.is_file() and description_path.is_file():
        try:
            description = json.loads(description_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            description = {}
        if description.get("key") == key and description.get("sha256") == _sha256(corpus_path):
            logger.info("reusing the demo corpus %s", corpus_path)
            return DemoCorpus(corpus_path, **description["statistics"])
    work_dir.mkdir(parents=True, exist_ok=True)
    corpus = build_demo_corpus(corpus_path, stdlib, max_documents, show_progress)
    statistics = {name: value for name, value in asdict(corpus).items() if name != "path"}
    write_json_atomic(description_path, {"key": key, "sha256": _sha256(corpus_path), "statistics": statistics})
    return corpus
