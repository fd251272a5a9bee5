"""``check``: validate a corpus file and describe it, before spending time on pregeneration.

Scans every line itself (rather than through ``reading.iter_corpus_lines``, which stops at the first bad line) so
that *all* lines that are not UTF-8 are reported with their numbers. "Pregeneration accepts it" follows the rules
of ``reading`` and ``data.document_store``: the file exists, is not empty, every line is valid UTF-8, and at least
two documents have text. With a tokenizer, "text" means at least one token, exactly as pregeneration counts it;
without one, at least one visible character (a close approximation).

    report = check_corpus(Path("corpus.txt"), tokenizer_name="bert-base-uncased", max_seq_len=128)
    print(report.format()); raise SystemExit(0 if report.accepted else 1)
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bert_domain_ft.corpus.reading import bounded_lines, require_regular_file, sample_lines
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.files import check_model_positions
from bert_domain_ft.model.tokenizer import encode_sentences, load_tokenizer, require_tokenizer_fits

# Line numbers kept per kind of finding (all are counted): bounds memory on a corpus that is wrong throughout.
MAX_LISTED_LINES = 100_000
# Line numbers shown per finding in the table (the JSON output has all that were kept).
LINES_SHOWN = 10
SENTENCES_PER_BATCH = 4096
# [CLS] sentence-A [SEP] sentence-B [SEP]: three places of every instance are not text.
SPECIAL_TOKENS_PER_INSTANCE = 3
_BYTE_ORDER_MARK = b"\xef\xbb\xbf"


@dataclass
class Finding:
    """How often a problem occurs and the 1-based line numbers where (the first ``MAX_LISTED_LINES``)."""

    count: int = 0
    lines: list[int] = field(default_factory=list)

    def add(self, line_number: int) -> None:
        self.count += 1
        if len(self.lines) < MAX_LISTED_LINES:
            self.lines.append(line_number)

    def describe(self) -> str:
        if not self.count:
            return "0"
        shown = ", ".join(str(line) for line in self.lines[:LINES_SHOWN])
        more = f", ... (+{self.count - LINES_SHOWN} more)" if self.count > LINES_SHOWN else ""
        return f"{self.count}  (line{'s' if self.count > 1 else ''} {shown}{more})"


@dataclass
class CheckReport:
    path: str
    tokenizer: str | None
    max_seq_len: int
    accepted: bool = False
    rejection_reasons: list[str] = field(default_factory=list)
    lines: int = 0
    documents: int = 0
    documents_with_text: int = 0
    sentences: int = 0
    sentences_per_document: dict[str, float] = field(default_factory=dict)  # min / median / max
    tokens: int | None = None  # None without a tokenizer
    sentences_too_long: Finding = field(default_factory=Finding)  # more than max_seq_len - 3 tokens
    empty_sentences: Finding = field(default_factory=Finding)  # no token (no visible character without tokenizer)
    empty_documents: Finding = field(default_factory=Finding)  # line of the document's first sentence
    single_sentence_documents: Finding = field(default_factory=Finding)
    invalid_utf8_lines: Finding = field(default_factory=Finding)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        spread = self.sentences_per_document
        per_document = f"min {spread['min']:g} / median {spread['median']:g} / max {spread['max']:g}" if spread else "-"
        tokens = f"{self.tokens}  ({self.tokenizer})" if self.tokens is not None else "not counted (give --bert_model)"
        too_long = self.sentences_too_long.describe() if self.tokenizer else "not counted (give --bert_model)"
        verdict = "yes" if self.accepted else "NO: " + "; ".join(self.rejection_reasons)
        rows = [
            ("corpus", self.path),
            ("lines", str(self.lines)),
            ("documents", str(self.documents)),
            ("documents with text", str(self.documents_with_text)),
            ("sentences", str(self.sentences)),
            ("sentences per document", per_document),
            ("tokens", tokens),
            (f"sentences over {self.max_seq_len - SPECIAL_TOKENS_PER_INSTANCE} tokens", too_long),
            ("empty sentences", self.empty_sentences.describe()),
            ("empty documents", self.empty_documents.describe()),
            ("single-sentence documents", self.single_sentence_documents.describe()),
            ("lines not valid UTF-8", self.invalid_utf8_lines.describe()),
            ("pregeneration accepts it", verdict),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def validate_max_seq_len(max_seq_len: int) -> None:
    """The ``--max_seq_len`` rule of pregeneration (``check`` applies it too, so both accept the same values)."""
    if not 8 <= max_seq_len <= 65535:
        raise ValueError(f"--max_seq_len must be between 8 and 65535 (BERT uses 128 or 512), got {max_seq_len}")


def _median(histogram: Counter[int]) -> float:
    total = sum(histogram.values())
    middle = ((total - 1) // 2, total // 2)  # the two middle ranks (equal when the total is odd)
    values: list[int] = []
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        while len(values) < 2 and seen > middle[len(values)]:
            values.append(value)
    return (values[0] + values[1]) / 2


class _Scanner:
    """Follows documents line by line; sentence lengths come in batches (tokenizing one line at a time is slow)."""

    def __init__(self, report: CheckReport, tokenizer: Any | None):
        self.report = report
        self.tokenizer = tokenizer
        self.pending: list[tuple[int, str | None, bool]] = []  # (line number, text or None if undecodable, starts doc)
        self.histogram: Counter[int] = Counter()  # sentences per document -> number of documents
        self.document_lines = 0
        self.document_text_sentences = 0
        self.document_first_line = 0
        self.document_sentence_line = 0

    def add(self, line_number: int, text: str | None, starts_document: bool) -> None:
        self.pending.append((line_number, text, starts_document))
        if len(self.pending) >= SENTENCES_PER_BATCH:
            self.flush()

    def _lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens per sentence with a tokenizer; without one, 1 for a line with a visible character, else 0."""
        if self.tokenizer is not None:
            return [len(ids) for ids in encode_sentences(self.tokenizer, texts)]
        return [int(any(char.isprintable() and not char.isspace() for char in text)) for text in texts]

    def flush(self) -> None:
        lengths = iter(self._lengths([text for _, text, _ in self.pending if text is not None]))
        limit = self.report.max_seq_len - SPECIAL_TOKENS_PER_INSTANCE
        for line_number, text, starts_document in self.pending:
            if starts_document:
                self.close_document()
                self.document_first_line = line_number
            self.document_lines += 1
            self.report.sentences += 1
            if text is None:
                continue
            length = next(lengths)
            if length == 0:
                self.report.empty_sentences.add(line_number)
                continue
            self.document_text_sentences += 1
            self.document_sentence_line = line_number
            if self.tokenizer is not None:
                self.report.tokens = (self.report.tokens or 0) + length  # 0 from the start: see check_corpus
                if length > limit:
                    self.report.sentences_too_long.add(line_number)
        self.pending.clear()

    def close_document(self) -> None:
        if not self.document_lines:
            return
        report = self.report
        report.documents += 1
        self.histogram[self.document_lines] += 1
        if self.document_text_sentences == 0:
            report.empty_documents.add(self.document_first_line)
        else:
            report.documents_with_text += 1
            if self.document_text_sentences == 1:
                report.single_sentence_documents.add(self.document_sentence_line)
        self.document_lines = self.document_text_sentences = 0

    def finish(self) -> None:
        self.flush()
        self.close_document()
        if self.histogram:
            self.report.sentences_per_document = {
                "min": min(self.histogram),
                "median": _median(self.histogram),
                "max": max(self.histogram),
            }


def _scan(path: Path, scanner: _Scanner, show_progress: bool) -> None:
    report = scanner.report
    next_starts_document = True
    with (
        open(path, "rb") as handle,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc="checking", disable=not show_progress
        ) as progress,
    ):
        for line_number, raw in enumerate(bounded_lines(handle, path), start=1):
            progress.update(len(raw))
            report.lines = line_number
            if line_number == 1 and raw.startswith(_BYTE_ORDER_MARK):
                raw = raw[len(_BYTE_ORDER_MARK) :]
            try:
                text: str | None = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                report.invalid_utf8_lines.add(line_number)
                text = None  # not blank: it is a sentence pregeneration cannot read
            if text == "":
                next_starts_document = True
                continue
            scanner.add(line_number, text, next_starts_document)
            next_starts_document = False
    scanner.finish()


def _rejection_reasons(path: Path, report: CheckReport) -> list[str]:
    if not path.exists():
        return ["the file does not exist"]
    if path.is_dir():
        return ["it is a directory, not a corpus file"]
    if path.stat().st_size == 0:
        return ["the file is empty"]
    reasons = []
    if report.invalid_utf8_lines.count:
        reasons.append(
            f"{report.invalid_utf8_lines.count} line(s) are not valid UTF-8 (first: line "
            f"{report.invalid_utf8_lines.lines[0]}); re-encode the file or run `bert-domain-ft prepare` on the raw text"
        )
    if report.documents_with_text < 2:
        reasons.append(
            f"{report.documents_with_text} document(s) with text; next-sentence prediction needs at least two: "
            "separate documents with a blank line"
        )
    return reasons


def check_corpus(
    path: Path, tokenizer_name: str | None = None, max_seq_len: int = 128, show_progress: bool = False
) -> CheckReport:
    """Describe the corpus at ``path`` and say whether pregeneration will accept it (``report.accepted``)."""
    path = Path(path)
    require_regular_file(path)
    try:  # the flags are judged by pregeneration's own rules, so "accepted" means pregenerate accepts them too
        validate_max_seq_len(max_seq_len)
    except ValueError as error:
        raise UserError(str(error)) from None
    check_model_positions(tokenizer_name, max_seq_len)
    tokenizer = load_tokenizer(tokenizer_name) if tokenizer_name else None
    if tokenizer is not None and path.is_file():
        require_tokenizer_fits(tokenizer, tokenizer_name or "", path, sample_lines(path))
    report = CheckReport(path=str(path), tokenizer=tokenizer_name, max_seq_len=max_seq_len)
    report.tokens = 0 if tokenizer is not None else None  # None: "not counted", distinct from "no tokens"
    if path.is_file():
        try:
            _scan(path, _Scanner(report, tokenizer), show_progress)
        except OSError as error:
            raise UserError(f"{path}: cannot read ({error.strerror}); check the file") from None
    report.rejection_reasons = _rejection_reasons(path, report)
    report.accepted = not report.rejection_reasons
    return report
