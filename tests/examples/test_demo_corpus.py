"""The demo corpus: standard-library docstrings in the corpus format, deterministic, cached."""

from __future__ import annotations

from pathlib import Path

import demo_corpus
import pytest
from demo_corpus import build_demo_corpus, cached_demo_corpus, docstring_paragraphs

from bert_domain_ft.corpus.reading import iter_documents
from bert_domain_ft.errors import UserError

MODULE_A = '''"""Tools for reading configuration files.

The parser reads sections and keys. Values are kept as strings until asked for.

>>> parse("x = 1")
{'x': '1'}
"""


class Parser:
    """A parser of configuration text. It keeps the order of the sections."""

    def read(self, path):
        """Read the file at path. Missing files are ignored silently."""
'''

MODULE_B = '''"""Helpers for working with temporary directories.

Each directory is removed when the context ends. Files inside it go too.
"""


def make():
    """Create a fresh directory and return its name. The name is unique for the process."""
'''

MODULE_NO_DOCSTRING = "x = 1\n"
TEST_MODULE = '"""This test module must never reach the corpus because tests are skipped."""\n'
BROKEN_MODULE = 'def broken(:\n    """Never parsed, so this sentence is absent."""\n'


@pytest.fixture()
def fake_stdlib(tmp_path: Path) -> Path:
    root = tmp_path / "lib"
    (root / "test").mkdir(parents=True)
    (root / "site-packages" / "thirdparty").mkdir(parents=True)
    (root / "configreader.py").write_text(MODULE_A)
    (root / "tempdirs.py").write_text(MODULE_B)
    (root / "constants.py").write_text(MODULE_NO_DOCSTRING)
    (root / "broken.py").write_text(BROKEN_MODULE)
    (root / "test" / "test_configreader.py").write_text(TEST_MODULE)
    (root / "site-packages" / "thirdparty" / "__init__.py").write_text(TEST_MODULE)
    return root


def test_each_module_with_docstrings_is_one_document_of_sentences(fake_stdlib: Path, tmp_path: Path):
    corpus = build_demo_corpus(tmp_path / "corpus.txt", stdlib=fake_stdlib, show_progress=False)
    documents = [[line.text for line in document] for document in iter_documents(corpus.path)]
    assert corpus.documents == len(documents) == 2  # sorted: configreader, then tempdirs
    assert documents[0][0] == "Tools for reading configuration files."
    assert "The parser reads sections and keys." in documents[0]
    assert "Read the file at path." in documents[0]  # method docstrings follow in source order
    assert documents[1][-1] == "The name is unique for the process."
    assert corpus.sentences == sum(len(document) for document in documents)


def test_doctests_tests_and_unparsable_modules_are_left_out(fake_stdlib: Path, tmp_path: Path):
    text = build_demo_corpus(tmp_path / "corpus.txt", stdlib=fake_stdlib, show_progress=False).path.read_text()
    assert ">>>" not in text and "{'x': '1'}" not in text
    assert "must never reach the corpus" not in text
    assert "Never parsed" not in text


def test_the_corpus_is_the_same_bytes_every_time(fake_stdlib: Path, tmp_path: Path):
    first = build_demo_corpus(tmp_path / "a.txt", stdlib=fake_stdlib, show_progress=False)
    second = build_demo_corpus(tmp_path / "b.txt", stdlib=fake_stdlib, show_progress=False)
    assert first.path.read_bytes() == second.path.read_bytes()


def test_the_cached_corpus_is_reused_until_it_is_altered(fake_stdlib: Path, tmp_path: Path, monkeypatch):
    built = cached_demo_corpus(tmp_path / "work", stdlib=fake_stdlib, show_progress=False)
    calls = []
    original = demo_corpus.build_demo_corpus
    monkeypatch.setattr(demo_corpus, "build_demo_corpus", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert cached_demo_corpus(tmp_path / "work", stdlib=fake_stdlib, show_progress=False) == built
    assert calls == []
    built.path.write_text("tampered\n\nfile\n")
    rebuilt = cached_demo_corpus(tmp_path / "work", stdlib=fake_stdlib, show_progress=False)
    assert calls == [1] and rebuilt.path.read_text().startswith("Tools for reading")


def test_max_documents_keeps_the_first_modules(fake_stdlib: Path, tmp_path: Path):
    (fake_stdlib / "zlast.py").write_text(MODULE_B.replace("temporary", "scratch"))
    corpus = build_demo_corpus(tmp_path / "corpus.txt", stdlib=fake_stdlib, max_documents=2, show_progress=False)
    assert corpus.documents == 2 and "scratch" not in corpus.path.read_text()


def test_a_library_without_docstrings_is_a_user_error(tmp_path: Path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "only.py").write_text(MODULE_A)
    with pytest.raises(UserError, match="--corpus"):
        build_demo_corpus(tmp_path / "corpus.txt", stdlib=tmp_path / "lib", show_progress=False)


def test_paragraph_cleaning_drops_rules_doctests_and_fragments():
    docstring = "Title\n=====\n\nA real paragraph that\nwraps over lines.\n\n>>> code()\n... more\n\nx\n\n:param a:"
    assert docstring_paragraphs(docstring) == ["A real paragraph that wraps over lines."]


def test_the_real_standard_library_gives_prose(tmp_path: Path):
    corpus = build_demo_corpus(tmp_path / "corpus.txt", max_documents=5, show_progress=False)
    documents = list(iter_documents(corpus.path))
    assert len(documents) == 5
    assert all(line.text.strip() == line.text and line.text for document in documents for line in document)
    assert corpus.sentences > 20
