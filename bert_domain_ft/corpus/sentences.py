"""Sentence splitting for ``prepare``: NLTK Punkt trained on the user's own text, its parameters kept as JSON.

Punkt is unsupervised: it learns the domain's abbreviations ("Fig.", "approx.", "e.g."), collocations, frequent
sentence starters and the orthographic context of each word from raw text, so it needs no download. The learned
parameters are saved as plain JSON (never pickle, which can run code when loaded) so a later run can split the
same way. Sentences longer than a bound are cut at a safe point instead of being dropped.

    splitter = SentenceSplitter(train_punkt(paragraphs))
    sentences = [piece for s in splitter.split(paragraph) for piece in split_long_sentence(s, 1000)]
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import write_json_atomic

if TYPE_CHECKING:  # nltk is imported where it is used: `bert-domain-ft --help` should not wait for it
    from nltk.tokenize.punkt import PunktParameters

# Text handed to PunktTrainer per call: it materialises every token of a call in a list, so chunks bound its RAM.
TRAINING_CHUNK_CHARACTERS = 1_000_000
PUNKT_FORMAT = "bert_domain_ft.punkt"
PUNKT_FORMAT_VERSION = 1
_LANGUAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z_-]*$")
# Preferred cut points for an over-long sentence, best first: after a semicolon, a colon, a comma, then any space.
_SAFE_SEPARATORS = ("; ", ": ", ", ")


def train_punkt(paragraphs: Iterable[str]) -> PunktParameters:
    """Train Punkt on ``paragraphs`` (normalised text, one paragraph per item), fed in bounded chunks.

    Paragraphs are joined with blank lines so Punkt sees where paragraphs start (a strong sentence-start signal).
    """
    from nltk.tokenize.punkt import PunktTrainer

    trainer = PunktTrainer()
    chunk: list[str] = []
    chunk_characters = 0
    for paragraph in paragraphs:
        chunk.append(paragraph)
        chunk_characters += len(paragraph) + 2
        if chunk_characters >= TRAINING_CHUNK_CHARACTERS:
            trainer.train("\n\n".join(chunk), finalize=False)
            chunk, chunk_characters = [], 0
    if chunk:
        trainer.train("\n\n".join(chunk), finalize=False)
    return trainer.get_params()


def load_pretrained_punkt(language: str) -> PunktParameters:
    """The Punkt model NLTK ships for ``language`` (``punkt_tab`` data), or a ``UserError`` saying how to get it."""
    if not _LANGUAGE_NAME.match(language):
        raise UserError(f"--punkt_language {language!r} is not a Punkt model name; use e.g. english, german, french")
    from nltk.data import find
    from nltk.tokenize.punkt import load_punkt_params

    try:
        return load_punkt_params(find(f"tokenizers/punkt_tab/{language}/"))
    except LookupError:
        raise UserError(
            f"no pretrained Punkt model for {language!r} is installed; install it with "
            "`python -c \"import nltk; nltk.download('punkt_tab')\"` or drop --punkt pretrained to train Punkt "
            "on your own text (the default)"
        ) from None


def punkt_parameters_to_json(parameters: PunktParameters) -> dict[str, Any]:
    """Plain, sorted (hence reproducible) JSON form of Punkt's four learned tables."""
    return {
        "format": PUNKT_FORMAT,
        "format_version": PUNKT_FORMAT_VERSION,
        "abbreviations": sorted(parameters.abbrev_types),
        "collocations": sorted([first, second] for first, second in parameters.collocations),
        "sentence_starters": sorted(parameters.sent_starters),
        # bit flags per word type (NLTK's _ORTHO_* constants): seen upper/lower case at sentence start/middle/unknown
        "orthographic_context": {word: int(flags) for word, flags in sorted(parameters.ortho_context.items())},
    }


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def punkt_parameters_from_json(value: Any, source: Path) -> PunktParameters:
    """Rebuild ``PunktParameters`` from ``punkt_parameters_to_json`` output; ``UserError`` naming ``source`` if bad."""

    def invalid(problem: str) -> UserError:
        return UserError(
            at_location(source, None, f"{problem}; give a file written by `bert-domain-ft prepare` (*.punkt.json)")
        )

    if not isinstance(value, dict) or value.get("format") != PUNKT_FORMAT:
        raise invalid(f'not a saved Punkt parameter file (no "format": "{PUNKT_FORMAT}")')
    if value.get("format_version") != PUNKT_FORMAT_VERSION:
        raise invalid(f"format_version {value.get('format_version')!r} is not supported (expected 1)")
    for key in ("abbreviations", "sentence_starters"):
        if not _string_list(value.get(key)):
            raise invalid(f"{key!r} must be a list of strings")
    collocations = value.get("collocations")
    if not isinstance(collocations, list) or not all(_string_list(pair) and len(pair) == 2 for pair in collocations):
        raise invalid("'collocations' must be a list of [word, word] pairs")
    context = value.get("orthographic_context")
    if not isinstance(context, dict) or not all(type(flags) is int for flags in context.values()):
        raise invalid("'orthographic_context' must map words to integer flags")
    from nltk.tokenize.punkt import PunktParameters

    parameters = PunktParameters()
    parameters.abbrev_types = set(value["abbreviations"])
    parameters.collocations = {(first, second) for first, second in collocations}
    parameters.sent_starters = set(value["sentence_starters"])
    for word, flags in context.items():
        parameters.ortho_context[word] = flags
    return parameters


def save_punkt_parameters(path: Path, parameters: PunktParameters, provenance: dict[str, Any]) -> None:
    """Write the parameters (plus how they were obtained) as JSON, atomically."""
    write_json_atomic(path, {**punkt_parameters_to_json(parameters), "provenance": provenance})


def load_punkt_parameters(path: Path) -> PunktParameters:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            at_location(path, None, "Punkt parameter file not found; give a *.punkt.json, 'train' or 'pretrained'")
        )
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(at_location(path, None, f"not valid JSON ({error}); give a saved *.punkt.json")) from None
    return punkt_parameters_from_json(value, path)


class SentenceSplitter:
    """Splits one paragraph of normalised text into sentences with the given Punkt parameters."""

    def __init__(self, parameters: PunktParameters):
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        self.parameters = parameters
        self._tokenizer = PunktSentenceTokenizer(parameters)

    def split(self, paragraph: str) -> list[str]:
        return [sentence.strip() for sentence in self._tokenizer.tokenize(paragraph) if sentence.strip()]


def _safe_cut(text: str, max_characters: int) -> tuple[int, int]:
    """Where to cut ``text`` (longer than ``max_characters``): (end of the first piece, start of the rest)."""
    lowest = max_characters // 2  # never leave a first piece shorter than half the bound
    for separator in _SAFE_SEPARATORS:
        # the first piece keeps the punctuation mark and must itself fit in the bound
        index = text.rfind(separator, lowest, max_characters + 1)
        if index >= 0:
            return index + 1, index + len(separator)
    index = text.rfind(" ", lowest, max_characters + 1)
    if index >= 0:
        return index, index + 1
    # No space at all (a URL, a hash, a long formula): cut hard, but not between a letter and its combining accent.
    cut = max_characters
    while cut > lowest and unicodedata.combining(text[cut]):
        cut -= 1
    return cut, cut


def split_long_sentence(sentence: str, max_characters: int) -> list[str]:
    """``[sentence]`` when it fits, else pieces of at most ``max_characters`` cut at the safest point available."""
    if max_characters < 2:
        raise ValueError(f"max_characters must be at least 2, got {max_characters}")
    pieces: list[str] = []
    rest = sentence
    while len(rest) > max_characters:
        end, start = _safe_cut(rest, max_characters)
        piece = rest[:end].strip()
        if piece:
            pieces.append(piece)
        rest = rest[start:].strip()
    if rest:
        pieces.append(rest)
    return pieces
