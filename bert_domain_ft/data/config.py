"""The pregeneration settings: one dataclass, every field documented and checked. A field's ``metadata`` says what its
command-line flag needs beyond its type and default (see ``bert_domain_ft.cli.flags``).

config = PregenerateConfig(train_corpus=Path("corpus.txt"), output_dir=Path("out"), bert_model="bert-dir")
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bert_domain_ft.corpus.check import validate_max_seq_len
from bert_domain_ft.corpus.records import input_bytes, input_fingerprint, is_dataset_directory
from bert_domain_ft.corpus.task_files import holds_records
from bert_domain_ft.data.epoch_format import FORMAT_VERSION
from bert_domain_ft.errors import UserError, check_not_empty, check_seed
from bert_domain_ft.files import nonempty_path, refuse_empty_paths

TASK_CORPUS_NAME = "task"  # the corpus name of --task_data in the manifest
TASK_CORPUS_FILE = "task_corpus.txt"  # where --task_data's texts are written, in the output directory
RECORDS_CORPUS_SUFFIX = "_corpus.txt"  # records in train_corpus are written as NAME_corpus.txt in the output
# A corpus name becomes part of a file name (NAME_corpus.txt): letters, digits, '_', '-' and '.', never first, so
# that no name ("../../x", "/tmp/x") reaches outside the output directory.
_CORPUS_NAME = re.compile(r"[\w-][\w.-]*")


def check_corpus_name(name: str) -> None:
    """A ``ValueError`` unless ``name`` is safe inside a file name (see ``_CORPUS_NAME``)."""
    if not _CORPUS_NAME.fullmatch(name):
        raise ValueError(
            f"--train_corpus: the corpus name {name!r} may hold only letters, digits, '_', '-' and '.' (not first): "
            f"it names the file NAME{RECORDS_CORPUS_SUFFIX} in --output_dir"
        )


def corpora_from_text(values: list[str]) -> Path | dict[str, Path]:
    """``train_corpus`` as the command line gives it: ``FILE``, ``NAME=FILE …`` or a directory of ``train.NAME``
    files → a path or named paths."""
    if len(values) == 1 and "=" not in values[0]:
        try:
            nonempty_path(values[0], "train_corpus")  # "" (an unset variable) would be the current directory
        except ValueError as error:
            raise UserError(str(error)) from None
    if len(values) == 1 and "=" not in values[0] and (not Path(values[0]).is_dir() or is_dataset_directory(values[0])):
        return Path(values[0])
    if len(values) == 1 and "=" not in values[0]:
        named = {file.suffix.lstrip("."): file for file in sorted(Path(values[0]).glob("train.*")) if file.is_file()}
        if not named:
            raise UserError(f"{values[0]}: a directory of corpora needs files named train.NAME (e.g. train.zul)")
        return named
    pairs = [value.partition("=") for value in values]
    for value, (name, separator, file) in zip(values, pairs):
        if not separator or not name or not file:
            raise UserError(f"--train_corpus {value}: with several corpora give each as NAME=FILE")
        if [pair[0] for pair in pairs].count(name) > 1:
            raise UserError(f"--train_corpus: the name {name!r} is given twice")
    return {name: Path(file) for name, _, file in pairs}


@dataclass
class PregenerateConfig:
    train_corpus: Path | dict[str, Path] = field(metadata={"nargs": "+"})
    """Corpus file: one sentence per line, a blank line between documents (see bert-domain-ft prepare); or records,
    one document per row: a parquet file, a datasets save_to_disk directory or JSON lines (.jsonl; see text_field,
    document_field); or several corpora, NAME=FILE … or a directory of train.NAME files, mixed by
    sampling_exponent. In Python: a path, or a dict of names to paths."""
    output_dir: Path
    """Directory for manifest.json and the epoch_XXX/ arrays."""
    bert_model: str | None = None
    """Model directory or hub id whose tokenizer is used (the model must later be trained on this data)."""
    text_field: str = "text"
    """Records in train_corpus (parquet, datasets directory, JSON lines): the column holding the text. Each row is
    split into sentences (Punkt trained on the rows) and written as a corpus to ``output_dir/NAME_corpus.txt``."""
    document_field: str | None = None
    """Records in train_corpus: consecutive rows with the same value in this column make one document (rows that
    are sentences or paragraphs of a text); without it, every row is a document."""
    tokenizer: str | None = None
    """A tokenizer directory other than the model's own (e.g. one trained with ``bert-domain-ft tokenizer``)."""
    objective: str = field(default="auto", metadata={"choices": ("auto", "nsp", "mlm")})
    """"nsp" (BERT pairs), "mlm" (packed text, no NSP), or "auto": "nsp" for BERT checkpoints with a trained NSP
    head (and for a WordPiece tokenizer alone), "mlm" for everything else, BERT encoders saved without heads included."""
    dynamic_masking: bool = False
    """Store unmasked text; the trainer draws fresh masks for every batch (RoBERTa-style)."""
    no_cross_document: bool = False
    """"mlm" only: never let a sequence run on into the next document."""
    do_lower_case: bool | None = None
    """Insist that the tokenizer lower-cases (an uncased model; an error says so if it does not); without the
    flag, the tokenizer decides."""
    do_whole_word_mask: bool = False
    """Mask all WordPiece pieces of a word together (needs a WordPiece tokenizer)."""
    reduce_memory: bool = False
    """Keep the tokenized corpus on disk as memmaps: peak RAM stays flat whatever the corpus size."""
    num_workers: int = 1
    """Processes generating shards in parallel; the output does not depend on it."""
    epochs_to_generate: int = 3
    """Epochs of data, each with fresh pairs and masks."""
    max_seq_len: int = 128
    """Tokens per instance, special tokens included."""
    short_seq_prob: float = 0.1
    """Probability that an instance aims at a random shorter length (teaches short inputs)."""
    masked_lm_prob: float = 0.15
    """Fraction of each instance's tokens to mask."""
    max_predictions_per_seq: int = 20
    """Upper bound on masked tokens per instance."""
    seed: int = 42
    """Seed of every random choice; same seed and corpus → identical bytes."""
    holdout_fraction: float = 0.05
    """Fraction of each corpus's documents set aside (chosen by seed) as the held-out set that finetune, evaluate
    and the model card measure (0 turns it off). A corpus too small to keep two documents on each side gives none,
    with a warning."""
    overwrite: bool = False
    """Replace what an earlier run left in output_dir."""
    resume: bool = False
    """Keep complete epochs of an interrupted run with the same settings and generate only the missing ones."""
    sampling_exponent: float = 1.0
    """Several corpora: corpus i is sampled ∝ (n_i/Σn)^α (1 = proportional, 0 = uniform, XLM-R used 0.3)."""
    task_data: Path | None = None
    """The task's own texts (CSV/TSV/JSON lines/parquet/a datasets directory/plain text, labels never read),
    added as a corpus named "task" (task-adaptive pretraining). They are read as ``corpus.task_files`` says,
    written to ``output_dir/task_corpus.txt``, one document per row. All of it is training text: ``holdout_fraction`` never
    picks task documents. For TAPT alone, write it with ``bert-domain-ft select``/``corpus.task_files`` and pass
    that file as ``train_corpus`` instead."""
    task_text_column: str = "text"
    """The column (CSV/TSV header, JSON key) holding the task's text; ignored for plain text."""
    task_share: float = 0.5
    """Fraction of each epoch's training draws taken from the task text, in (0, 1]; the other corpora share the
    rest by ``sampling_exponent``. Each epoch holds several copies of the task text, each paired and masked
    afresh (``mixing.task_copies``), so its repeats do not see the same masks; 1 trains on the task text only."""
    show_progress: bool = field(default=True, metadata={"flag": "no_progress"})
    """Show progress bars."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        if self.bert_model is None and self.tokenizer is None:
            raise ValueError("give --bert_model (its tokenizer is used) or --tokenizer")
        check_not_empty("--bert_model", self.bert_model)
        check_not_empty("--tokenizer", self.tokenizer)
        check_seed(self.seed)
        if self.objective not in ("auto", "nsp", "mlm"):
            raise ValueError("--objective must be auto, nsp or mlm")
        if self.no_cross_document and self.objective == "nsp":
            raise ValueError("--no_cross_document applies to --objective mlm (NSP pairs never cross documents)")
        if isinstance(self.train_corpus, dict):
            if not self.train_corpus:
                raise ValueError("--train_corpus names no corpus")
            self.train_corpus = {str(name): Path(path) for name, path in self.train_corpus.items()}
            for name in self.train_corpus:
                check_corpus_name(name)
        else:
            self.train_corpus = Path(self.train_corpus)
        if not math.isfinite(self.sampling_exponent) or self.sampling_exponent < 0:  # NaN passes "< 0"
            raise ValueError(
                "--sampling_exponent must be a finite number ≥ 0 (1 = proportional to size, 0 = uniform), "
                f"got {self.sampling_exponent}"
            )
        self.output_dir = Path(self.output_dir)
        if self.epochs_to_generate < 1:
            raise ValueError("--epochs_to_generate must be at least 1")
        if self.num_workers < 1:
            raise ValueError("--num_workers must be at least 1 (1 generates in this process)")
        validate_max_seq_len(self.max_seq_len)
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError("--short_seq_prob must be between 0 and 1")
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ValueError("--masked_lm_prob must be between 0 and 1 (BERT uses 0.15)")
        if not 1 <= self.max_predictions_per_seq <= self.max_seq_len:
            raise ValueError("--max_predictions_per_seq must be between 1 and --max_seq_len")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError("--holdout_fraction must be in [0, 1), e.g. 0.05 for 5% of the documents")
        if self.task_data is not None:
            self.task_data = Path(self.task_data)
            if any(name == TASK_CORPUS_NAME for name, _ in self.named_corpora()):
                raise ValueError(f"--train_corpus: the name {TASK_CORPUS_NAME!r} is kept for --task_data; rename it")
        if not 0.0 < self.task_share <= 1.0:
            raise ValueError(f"--task_share must be in (0, 1], e.g. 0.5 for half of each epoch, got {self.task_share}")
        if not self.task_text_column:
            raise ValueError("--task_text_column must name a column")
        if not self.text_field or self.document_field == "":
            raise ValueError("--text_field and --document_field must name a column")
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume contradict each other: choose one")

    def generation_record(self, tokenizer_fingerprint: str) -> dict[str, Any]:
        """What determines the bytes of the output (everything but workers, memory mode and progress)."""
        record = {key: value for key, value in asdict(self).items() if key not in _NOT_AFFECTING_OUTPUT}
        record["train_corpus"] = {name: str(path) for name, path in self.named_corpora()}
        record["corpus_bytes"] = {name: input_bytes(path) for name, path in self.named_corpora()}
        record["corpus_fingerprint"] = {name: input_fingerprint(path) for name, path in self.named_corpora()}
        record["vocab_fingerprint"] = tokenizer_fingerprint
        # The format version too: --resume must not mix epochs of two versions (2 added NSP labels for "none").
        record["format_version"] = FORMAT_VERSION
        if any(holds_records(path) for _, path in self.named_corpora()):  # these fields shape records' text only
            record["records"] = {"text_field": self.text_field, "document_field": self.document_field}
        if self.task_data is not None:  # the raw task file: --resume names it when it was edited
            record["task_data"] = str(self.task_data)
            record["train_corpus"][TASK_CORPUS_NAME] = str(self.task_data)
            record["corpus_bytes"][TASK_CORPUS_NAME] = input_bytes(self.task_data)
            record["corpus_fingerprint"][TASK_CORPUS_NAME] = input_fingerprint(self.task_data)
        return record

    def named_corpora(self) -> list[tuple[str, Path]]:
        """(name, path) of every corpus; a single corpus is named "corpus"."""
        if isinstance(self.train_corpus, dict):
            return list(self.train_corpus.items())
        return [("corpus", Path(self.train_corpus))]


_NOT_AFFECTING_OUTPUT = {
    "text_field",  # recorded under "records" when a corpus is records
    "document_field",
    "output_dir",
    "num_workers",
    "reduce_memory",
    "overwrite",
    "resume",
    "show_progress",
    "do_lower_case",
}
