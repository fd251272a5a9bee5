"""``prepare``: raw text in, the corpus format out (one sentence per line, a blank line between documents).

Streaming in bounded memory: inputs are read paragraph by paragraph (``reading.iter_text_blocks``), normalised (Unicode NFC,
control characters removed, whitespace collapsed), split into sentences with Punkt (trained on the first
``punkt_sample_bytes`` of the text, see ``sentences``) and written to ``<output>.partial``, renamed to
``output`` only when complete. Exact-duplicate documents are found through 16-byte hashes (never by keeping texts)
and removed by truncating the output back to where the duplicate began. Nothing is dropped without being counted.

    report = prepare_corpus(PrepareConfig(inputs=(Path("raw/"),), output=Path("corpus.txt")))
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from tqdm.auto import tqdm

from bert_domain_ft.corpus.config import PrepareConfig
from bert_domain_ft.corpus.reading import InputOptions, TextBlock, discover_input_files, iter_text_blocks
from bert_domain_ft.corpus.records import input_bytes
from bert_domain_ft.corpus.sentences import (
    SentenceSplitter,
    load_pretrained_punkt,
    load_punkt_parameters,
    save_punkt_parameters,
    split_long_sentence,
    train_punkt,
)
from bert_domain_ft.errors import UserError, at_location
from bert_domain_ft.files import atomic_output, temporaries_of

if TYPE_CHECKING:
    from nltk.tokenize.punkt import PunktParameters

logger = logging.getLogger(__name__)

# Control characters that are not whitespace (whitespace ones become spaces when whitespace is collapsed), plus
# the invisible byte-order mark and zero-width space, which would otherwise glue to words as unknown tokens.
_REMOVED_CHARACTERS = {
    code: None for code in (*range(0x00, 0x20), *range(0x7F, 0xA0), 0xFEFF, 0x200B) if not chr(code).isspace()
}


def normalise_text(text: str) -> str:
    """Control characters removed, Unicode NFC, every run of whitespace (newlines too) made one space."""
    return " ".join(unicodedata.normalize("NFC", text.translate(_REMOVED_CHARACTERS)).split())


@dataclass
class PrepareReport:
    """What ``prepare`` did; every dropped or changed piece of text is counted here."""

    output: str
    punkt_parameters: str
    punkt_source: str = ""
    abbreviations_known: int = 0
    input_files: int = 0
    documents_written: int = 0
    sentences_written: int = 0
    duplicate_documents_removed: int = 0
    empty_documents_dropped: int = 0
    short_sentences_dropped: int = 0
    long_sentences_split: int = 0
    pieces_from_long_sentences: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        rows = [(name.replace("_", " "), value) for name, value in self.to_json().items() if name != "warnings"]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        return "\n".join(lines + [f"warning: {warning}" for warning in self.warnings])


class _CorpusWriter:
    """Writes documents sentence by sentence; a document that turns out empty or duplicate is taken back out."""

    def __init__(self, handle: BinaryIO, report: PrepareReport):
        self.handle = handle
        self.report = report
        self.seen_documents: set[bytes] = set()  # blake2b-128 digests of written documents: 16 bytes each
        self.document_open = False
        self.document_start = 0
        self.document_sentences = 0
        self.document_hash = hashlib.blake2b(digest_size=16)

    def start_document(self) -> None:
        self.finish_document()
        self.document_open = True
        self.document_start = self.handle.tell()
        self.document_sentences = 0
        self.document_hash = hashlib.blake2b(digest_size=16)

    def add_sentence(self, sentence: str) -> None:
        if not self.document_open:
            self.start_document()
        if self.document_sentences == 0 and self.document_start > 0:
            self.handle.write(b"\n")  # the blank line that separates documents
        data = sentence.encode("utf-8") + b"\n"
        self.handle.write(data)
        self.document_hash.update(data)
        self.document_sentences += 1

    def finish_document(self) -> None:
        if not self.document_open:
            return
        self.document_open = False
        if self.document_sentences == 0:
            self.report.empty_documents_dropped += 1
            return
        digest = self.document_hash.digest()
        if digest in self.seen_documents:
            self.handle.seek(self.document_start)
            self.handle.truncate()
            self.report.duplicate_documents_removed += 1
            return
        self.seen_documents.add(digest)
        self.report.documents_written += 1
        self.report.sentences_written += self.document_sentences


def _write_sentence(sentence: str, limits: tuple[int, int], writer: _CorpusWriter, rest_of_cut: bool) -> None:
    """Write one sentence, cut into pieces when longer than ``limits[1]``; a short one (below ``limits[0]``) is
    dropped. ``rest_of_cut``: the end of a sentence whose first pieces are written already (counted there)."""
    report = writer.report
    if len(sentence) < limits[0] and not rest_of_cut:
        report.short_sentences_dropped += 1
        return
    pieces = split_long_sentence(sentence, limits[1])
    if len(pieces) > 1 or rest_of_cut:
        report.long_sentences_split += not rest_of_cut
        report.pieces_from_long_sentences += len(pieces)
    for piece in pieces:
        writer.add_sentence(piece)


def _write_all_but_the_last_piece(sentence: str, max_sentence_chars: int, writer: _CorpusWriter, cut: bool) -> str:
    """Write the pieces of a long, unfinished ``sentence`` but its last, which is returned to be continued (the
    same pieces as when it is cut whole). ``cut``: its first pieces were written (and counted) already."""
    pieces = split_long_sentence(sentence, max_sentence_chars)
    writer.report.long_sentences_split += not cut
    writer.report.pieces_from_long_sentences += len(pieces) - 1
    for piece in pieces[:-1]:
        writer.add_sentence(piece)
    return pieces[-1]


def _write_sentences(
    blocks: Iterable[TextBlock],
    splitter: SentenceSplitter,
    min_sentence_chars: int,
    max_sentence_chars: int,
    writer: _CorpusWriter,
) -> None:
    limits = (min_sentence_chars, max_sentence_chars)
    carry = ""  # the last, possibly unfinished, sentence of a paragraph that continues in the next block
    carry_is_cut = False  # carry is the rest of a long sentence whose first pieces are written
    for block in blocks:
        if block.starts_document:
            writer.start_document()
        text = f"{carry} {block.text}".strip() if carry else block.text
        sentences = splitter.split(text) if text else []
        carry = sentences.pop() if block.continues_paragraph and sentences else ""
        for number, sentence in enumerate(sentences):
            _write_sentence(sentence, limits, writer, rest_of_cut=carry_is_cut and number == 0)
        carry_is_cut = carry_is_cut and not sentences
        if len(carry) > max_sentence_chars:  # a sentence running on over blocks: bounded memory and time
            carry, carry_is_cut = _write_all_but_the_last_piece(carry, max_sentence_chars, writer, carry_is_cut), True
    writer.finish_document()


def _punkt_parameters(
    punkt: str, language: str, sample_limit: int, blocks: Iterator[TextBlock]
) -> tuple[PunktParameters, dict[str, Any], Iterator[TextBlock]]:
    """The Punkt parameters to use (``punkt``: "pretrained" for ``language``'s, "train" on the first
    ``sample_limit`` bytes, or a parameters file), how they were obtained, and the block stream to go on with
    (the sample replayed)."""
    if punkt == "pretrained":
        return load_pretrained_punkt(language), {"source": "pretrained", "language": language}, blocks
    if punkt != "train":
        return load_punkt_parameters(Path(punkt)), {"source": "file", "path": str(punkt)}, blocks
    sample: list[TextBlock] = []  # held in memory (at most punkt_sample_bytes of text) and replayed for writing
    sample_bytes = 0
    for block in blocks:
        sample.append(block)
        sample_bytes += len(block.text.encode("utf-8")) + 2
        if sample_bytes >= sample_limit:
            break
    logger.info("training Punkt on the first %.1f MB of text", sample_bytes / 1e6)
    parameters = train_punkt(block.text for block in sample if block.text)
    return parameters, {"source": "trained", "sample_bytes": sample_bytes}, itertools.chain(sample, blocks)


def _describe_punkt_source(provenance: dict[str, Any]) -> str:
    if provenance["source"] == "trained":
        return f"trained on {provenance['sample_bytes']} bytes of the input"
    if provenance["source"] == "pretrained":
        return f"pretrained NLTK model ({provenance['language']})"
    return f"loaded from {provenance['path']}"


def _check_output_free(output: Path, punkt: str, punkt_parameters_path: Path, overwrite: bool) -> None:
    """Refuse to replace ``output`` or the Punkt parameters beside it without ``overwrite`` (unless they are the
    parameters file the run reads)."""
    if overwrite:
        return
    reused = punkt not in ("train", "pretrained") and Path(punkt).resolve() == punkt_parameters_path.resolve()
    for path in (output, None if reused else punkt_parameters_path):
        if path is not None and path.exists():
            raise UserError(
                at_location(path, None, "already exists; pass --overwrite to replace it or choose another --output")
            )


def prepare_corpus(config: PrepareConfig) -> PrepareReport:
    """Turn ``config.inputs`` into ``config.output`` in the corpus format; return (and log) what was done."""
    _check_output_free(config.output, config.punkt, config.punkt_parameters_path, config.overwrite)
    assert config.glob is not None
    # Our own outputs (and a temporary left by a crash) may sit inside an input directory: never read them back.
    own_files = [config.output, *temporaries_of(config.output)]
    files = discover_input_files(config.inputs, config.glob, exclude=[*own_files, config.punkt_parameters_path])
    report = PrepareReport(
        output=str(config.output), punkt_parameters=str(config.punkt_parameters_path), input_files=len(files)
    )
    options = InputOptions(config.text_field, config.doc_break == "paragraph", config.encoding)
    total_bytes = sum(input_bytes(path) for path in files)
    progress = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="preparing", disable=not config.show_progress)
    with progress, atomic_output(config.output) as handle:
        raw_blocks = iter_text_blocks(files, options, on_bytes=progress.update)
        blocks = (dataclasses.replace(block, text=normalise_text(block.text)) for block in raw_blocks)
        parameters, provenance, blocks = _punkt_parameters(
            config.punkt, config.punkt_language, config.punkt_sample_bytes, blocks
        )
        writer = _CorpusWriter(handle, report)
        _write_sentences(
            blocks, SentenceSplitter(parameters), config.min_sentence_chars, config.max_sentence_chars, writer
        )
        # Saved before the corpus appears, so a finished corpus always has the parameters that split it beside it.
        if provenance["source"] != "file" or Path(config.punkt).resolve() != config.punkt_parameters_path.resolve():
            save_punkt_parameters(config.punkt_parameters_path, parameters, provenance)
    report.punkt_source = _describe_punkt_source(provenance)
    report.abbreviations_known = len(parameters.abbrev_types)
    if report.documents_written < 2:
        report.warnings.append(
            f"only {report.documents_written} document(s) written; pregeneration needs at least two "
            "(use --doc_break paragraph, or give more files / records)"
        )
        logger.warning("%s", report.warnings[-1])
    logger.info(
        "wrote %d documents, %d sentences to %s (%d duplicate and %d empty documents removed)",
        report.documents_written,
        report.sentences_written,
        config.output,
        report.duplicate_documents_removed,
        report.empty_documents_dropped,
    )
    return report
