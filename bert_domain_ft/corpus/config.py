"""Settings of the corpus stage's commands, one dataclass each, every field documented and checked on construction:
``prepare`` (raw text → corpus format), ``check`` (is a corpus usable), ``select`` (the corpus documents nearest to
a task) and ``tokenizer`` (a new vocabulary trained on the corpus). Torch-free, like the whole stage. A field's
``metadata`` says what its command-line flag needs beyond its type and default (see ``bert_domain_ft.cli.flags``).

    config = PrepareConfig(inputs=(Path("raw/"),), output=Path("corpus.txt"))
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass, field
from pathlib import Path

from bert_domain_ft.errors import check_not_empty, check_seed
from bert_domain_ft.files import refuse_empty_paths

# Punkt trains at roughly 1 MB/s on one core; 10 MB is enough to learn a domain's frequent abbreviations.
DEFAULT_PUNKT_SAMPLE_BYTES = 10_000_000


PUNKT_PARAMETERS_SUFFIX = ".punkt.json"


DOC_BREAKS = ("file", "paragraph")


@dataclass
class PrepareConfig:
    inputs: tuple[Path, ...] = field(metadata={"positional": True, "metavar": "INPUT"})
    """Plain-text files (one document each), directories (searched recursively with --glob), JSON-lines files
    when text_field is set, parquet files (.parquet) and datasets save_to_disk directories (one document per row).
    See ``corpus.records``."""
    output: Path
    """The corpus file to write; the Punkt parameters go beside it as ``<output>.punkt.json``."""
    doc_break: str = field(default="file", metadata={"choices": DOC_BREAKS})
    """What makes a document: ``file`` (a file, JSON record or row) or ``paragraph`` (each blank-line-separated one)."""
    glob: str | None = None
    """File name pattern inside input directories; left out: ``*.txt``, or ``*.jsonl`` with text_field."""
    text_field: str | None = None
    """Read plain inputs as JSON lines and take each record's text from this field; the column of parquet and
    datasets inputs (left out: "text")."""
    encoding: str = "utf-8"
    """Encoding of the inputs; must be ASCII-compatible (utf-8, latin-1, cp1252, ...). The output is always UTF-8."""
    punkt: str = field(default="train", metadata={"metavar": "{train,pretrained,FILE.punkt.json}"})
    """``train`` (Punkt learns from a sample of the input), ``pretrained`` (NLTK's punkt_tab model, if installed) or
    the path of a saved ``*.punkt.json`` to split exactly as an earlier run did."""
    punkt_language: str = "english"
    """The language of NLTK's model that punkt pretrained uses."""
    punkt_sample_bytes: int = DEFAULT_PUNKT_SAMPLE_BYTES
    """UTF-8 bytes of normalised text, from the start of the input, that Punkt trains on (about 1 MB/s)."""
    min_sentence_chars: int = 1
    """Sentences shorter than this many characters are dropped (and counted)."""
    max_sentence_chars: int = 1000
    """Sentences longer than this many characters are cut at a safe point (a semicolon, colon, comma or space)."""
    overwrite: bool = False
    """Replace an existing output file."""
    show_progress: bool = field(default=True, metadata={"flag": "no_progress"})
    """Show a progress bar (in input bytes)."""
    print_json: bool = field(default=False, metadata={"flag": "json"})
    """Print the report as JSON instead of a table. Command line only: ``prepare_corpus`` ignores it."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        self.inputs = tuple(Path(path) for path in self.inputs)
        self.output = Path(self.output)
        if not self.inputs:
            raise ValueError("no input given; name raw text files or directories")
        if self.doc_break not in DOC_BREAKS:
            raise ValueError(f"--doc_break must be one of {', '.join(DOC_BREAKS)}, got {self.doc_break!r}")
        if self.text_field is not None and not self.text_field:
            raise ValueError("--text_field is empty; name the JSON field that holds the text")
        if self.glob is None:
            self.glob = "*.jsonl" if self.text_field is not None else "*.txt"
        try:
            ascii_compatible = "a\n".encode(self.encoding) == b"a\n"
        except LookupError:
            raise ValueError(
                f"--encoding {self.encoding!r} is not a known encoding; use e.g. utf-8 or latin-1"
            ) from None
        if not ascii_compatible:
            name = codecs.lookup(self.encoding).name
            raise ValueError(f"--encoding {name} is not ASCII-compatible; convert the files first (iconv -t utf-8)")
        if not self.punkt:
            raise ValueError("--punkt is empty; use train, pretrained or the path of a saved *.punkt.json")
        if self.punkt_sample_bytes < 1:
            raise ValueError(f"--punkt_sample_bytes must be positive, got {self.punkt_sample_bytes}")
        if self.min_sentence_chars < 1:
            raise ValueError(f"--min_sentence_chars must be at least 1, got {self.min_sentence_chars}")
        if self.max_sentence_chars < max(20, 2 * self.min_sentence_chars):
            raise ValueError(
                f"--max_sentence_chars ({self.max_sentence_chars}) must be at least 20 and twice "
                f"--min_sentence_chars ({self.min_sentence_chars})"
            )

    @property
    def punkt_parameters_path(self) -> Path:
        return self.output.with_name(self.output.name + PUNKT_PARAMETERS_SUFFIX)


@dataclass
class CheckConfig:
    """What ``bert-domain-ft check`` validates; ``check_corpus(corpus, bert_model, max_seq_len, ...)`` takes it apart."""

    corpus: Path = field(metadata={"positional": True})
    """Corpus file to check (one sentence per line, a blank line between documents)."""
    bert_model: str | None = None
    """Model directory or hub id whose tokenizer counts tokens and finds over-long sentences."""
    max_seq_len: int = 128
    """Tokens per instance planned for pregeneration, special tokens included."""
    print_json: bool = field(default=False, metadata={"flag": "json"})
    """Print the report as JSON instead of a table."""
    show_progress: bool = field(default=True, metadata={"flag": "no_progress"})
    """Show a progress bar (in corpus bytes)."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        check_not_empty("--bert_model", self.bert_model)


METHODS = ("bm25", "embedding")


@dataclass
class SelectConfig:
    task_data: Path
    """The task's texts: CSV/TSV/JSON lines with a text column, or plain text. See ``corpus.task_files``."""
    corpus: Path
    """The domain corpus (corpus format: one sentence per line, a blank line between documents)."""
    output: Path
    """Where the kept documents go (corpus format); ``<output>.json`` records the selection."""
    tokens: int | None = field(default=None, metadata={"one_of": "budget"})
    """Budget in whitespace-separated words of kept documents (give this or --fraction)."""
    fraction: float | None = field(default=None, metadata={"one_of": "budget"})
    """Budget as a share of the corpus's words, in (0, 1]."""
    method: str = field(default="bm25", metadata={"choices": METHODS})
    """How documents are ranked for a task text: ``bm25`` (lexical) or ``embedding`` (``bert_model``'s vectors)."""
    bert_model: str | None = None
    """Model directory or hub id whose mean-pooled hidden states rank documents (with --method embedding)."""
    text_column: str = "text"
    """Column (CSV) or field (JSON lines) holding the task's text; labels are never read."""
    k1: float = 1.2
    """BM25 term-frequency saturation."""
    b: float = 0.75
    """BM25 document-length normalisation, in [0, 1]."""
    seed: int = 0
    """Seed of the order in which task texts take turns in each round. See ``query_turns``."""
    keep_stopwords: bool = False
    """Score common function words too (slower; BM25's idf gives them little weight anyway)."""
    overwrite: bool = False
    """Replace an existing output."""
    show_progress: bool = field(default=True, metadata={"flag": "no_progress"})
    """Show progress bars (in corpus bytes)."""
    print_json: bool = field(default=False, metadata={"flag": "json"})
    """Print the summary as JSON instead of a table. Command line only: ``select_documents`` ignores it."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        self.task_data, self.corpus, self.output = Path(self.task_data), Path(self.corpus), Path(self.output)
        if (self.tokens is None) == (self.fraction is None):
            raise ValueError("give exactly one budget: --tokens N (words) or --fraction F (share of the corpus)")
        if self.tokens is not None and self.tokens < 1:
            raise ValueError(f"--tokens must be positive, got {self.tokens}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "embedding" and not self.bert_model:
            raise ValueError("--method embedding needs --bert_model (the model whose vectors rank documents)")
        if not (math.isfinite(self.k1) and self.k1 >= 0 and 0 <= self.b <= 1):  # NaN fails every comparison
            raise ValueError(
                f"BM25 needs a finite --k1 >= 0 (1.2 is usual) and --b in [0, 1], got k1={self.k1}, b={self.b}"
            )
        check_seed(self.seed)
        check_not_empty("--bert_model", self.bert_model)
        check_not_empty("--text_column", self.text_column)
        written = {self.output.resolve(), selection_record_path(self.output).resolve()}
        for given, name in ((self.corpus, "the corpus"), (self.task_data, "the --task_data file")):
            if given.resolve() in written:  # resolved: a symlink or ``..`` names the same file
                raise ValueError(f"--output would overwrite {name} ({given}); choose another file")


def selection_record_path(output: Path) -> Path:
    """``<output>.json``, where ``select`` records what it kept."""
    return output.with_name(output.name + ".json")


BYTE_ALPHABET_SIZE = 256  # byte-level BPE starts from one token per byte value


_ROBERTA_ROLES = {
    "bos_token": "<s>",
    "cls_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


KINDS = ("wordpiece", "bpe", "unigram")


@dataclass(frozen=True)
class KindSpec:
    """The fixed facts of one kind of tokenizer."""

    special_tokens: tuple[str, ...]
    """Special tokens in id order: ``special_tokens[i]`` gets id ``i``."""
    roles: dict[str, str]
    """transformers' role names (``cls_token``...) → the token playing that role."""
    tokenizer_class: str
    """What ``tokenizer_config.json`` names, so AutoTokenizer picks the matching class."""
    alphabet_floor: int
    """Ordinary tokens every vocabulary holds whatever the corpus (256 bytes for byte-level BPE)."""


KIND_SPECS = {
    "wordpiece": KindSpec(
        special_tokens=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        roles={
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        },
        tokenizer_class="BertTokenizer",
        alphabet_floor=1,
    ),
    "bpe": KindSpec(
        ("<s>", "<pad>", "</s>", "<unk>", "<mask>"), _ROBERTA_ROLES, "RobertaTokenizer", BYTE_ALPHABET_SIZE
    ),
    "unigram": KindSpec(("<s>", "<pad>", "</s>", "<unk>", "<mask>"), _ROBERTA_ROLES, "XLMRobertaTokenizer", 1),
}


# Four times the largest vocabularies in use (XLM-R 250,002; Gemma 256,000): the trainers abort (in Rust, with a
# backtrace) on sizes they cannot allocate, and an embedding this wide (3 GB at hidden size 768) is already a mistake.
MAX_VOCAB_SIZE = 1_000_000


def minimum_vocab_size(kind: str) -> int:
    """The smallest ``vocab_size`` that can work for ``kind`` whatever the corpus."""
    spec = KIND_SPECS[kind]
    return len(spec.special_tokens) + spec.alphabet_floor


@dataclass
class TokenizerTrainingConfig:
    corpus: Path = field(metadata={"positional": True})
    """Corpus file in the corpus format; every non-blank line is one training sentence."""
    output: Path
    """Directory to write (tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocabulary files)."""
    kind: str = field(default="wordpiece", metadata={"choices": KINDS})
    """``wordpiece`` (BERT: [CLS]/[SEP], '##' pieces), ``bpe`` (RoBERTa: byte-level BPE, <s>/</s>) or ``unigram``
    (XLM-R: SentencePiece-style Unigram with '▁' marking word starts)."""
    vocab_size: int = 30522
    """Entries in the vocabulary, special tokens included (BERT-base: 30522, RoBERTa: 50265)."""
    lowercase: bool = False
    """Lower-case (and strip accents from) the text before splitting: an uncased model. WordPiece only."""
    min_frequency: int = 2
    """WordPiece/BPE: a merged piece must occur at least this often in the corpus (Unigram ignores it)."""
    model_max_length: int = 512
    """Longest input (in tokens) of the model the tokenizer is for; transformers truncates to it."""
    overwrite: bool = False
    """Replace the output directory when it already holds files (the whole directory is replaced)."""
    show_progress: bool = field(default=True, metadata={"flag": "no_progress"})
    """Show progress bars: one while counting the corpus (bytes), then the trainer's own."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        self.corpus = Path(self.corpus)
        self.output = Path(self.output)
        if self.kind not in KINDS:
            raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        minimum = minimum_vocab_size(self.kind)
        if self.vocab_size < minimum:
            floor = KIND_SPECS[self.kind].alphabet_floor
            alphabet = f" and the {floor} byte-level characters" if floor > 1 else " and at least one character"
            raise ValueError(
                f"--vocab_size {self.vocab_size} is too small for {self.kind}: its "
                f"{len(KIND_SPECS[self.kind].special_tokens)} special tokens{alphabet} need at least {minimum}; "
                "raise --vocab_size (BERT uses 30522)"
            )
        if self.vocab_size > MAX_VOCAB_SIZE:
            raise ValueError(
                f"--vocab_size {self.vocab_size:,} is above {MAX_VOCAB_SIZE:,}; BERT uses 30522, XLM-R 250002"
            )
        if self.lowercase and self.kind != "wordpiece":
            raise ValueError(
                f"--lowercase applies to --kind wordpiece only: transformers rebuilds {self.kind} tokenizers without "
                "a lower-casing step; lower-case the corpus itself instead"
            )
        if self.min_frequency < 1:
            raise ValueError(f"--min_frequency must be at least 1, got {self.min_frequency}")
        if self.model_max_length < 1:
            raise ValueError(f"--model_max_length must be positive, got {self.model_max_length}")


DEFAULT_MIN_PIECES = 2


@dataclass
class VocabAnalyseConfig:
    """What ``bert-domain-ft vocab analyse`` measures: how the tokenizer of ``bert_model`` splits a corpus."""

    corpus: Path = field(metadata={"positional": True})
    """Text to measure (the corpus format, or any UTF-8 text: every non-blank line counts)."""
    bert_model: str
    """Model directory or hub id whose tokenizer is measured."""
    max_seq_len: int = 128
    """Tokens per training sequence, special tokens included: sets "sequences per MB"."""
    top: int = 25
    """How many of the most fragmented frequent words (by frequency × pieces) to list."""
    print_json: bool = field(default=False, metadata={"flag": "json"})
    """Print the report as JSON instead of a table."""
    show_progress: bool = field(default=True, metadata={"flag": "no_progress"})
    """Show a progress bar (in corpus bytes)."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        self.corpus = Path(self.corpus)
        check_not_empty("--bert_model", self.bert_model)
        if self.max_seq_len < 8:
            raise ValueError(f"--max_seq_len must be at least 8, got {self.max_seq_len}")
        if self.top < 0:
            raise ValueError(f"--top must be 0 or more, got {self.top}")


@dataclass
class VocabExtendConfig:
    """What ``bert-domain-ft vocab extend`` adds to a model's vocabulary, and where the extended model goes."""

    corpus: Path = field(metadata={"positional": True})
    """Domain text whose frequent fragmented words are added (the corpus format, or any UTF-8 text)."""
    bert_model: str
    """Model directory (a BERT with a WordPiece tokenizer.json) to extend."""
    add: int
    """Number of words to add: BERT's [unusedX] slots are filled first, the vocabulary grows only beyond them."""
    output: Path
    """Directory for the extended model and tokenizer (any command accepts it as --bert_model)."""
    min_pieces: int = DEFAULT_MIN_PIECES
    """Only words the tokenizer splits into at least this many pieces are candidates."""
    min_count: int = 5
    """Only words that occur at least this often in the corpus are candidates."""
    words: Path | None = None
    """A file of words to add (one per line) instead of choosing them from the corpus; each must be one pre-token
    that the tokenizer splits, and none may repeat."""
    overwrite: bool = False
    """Replace the output directory when it already exists."""
    print_json: bool = field(default=False, metadata={"flag": "json"})
    """Print the report as JSON instead of a table."""
    show_progress: bool = field(default=True, metadata={"flag": "no_progress"})
    """Show a progress bar (in corpus bytes)."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        self.corpus, self.output = Path(self.corpus), Path(self.output)
        self.words = None if self.words is None else Path(self.words)
        check_not_empty("--bert_model", self.bert_model)
        if self.add < 1:
            raise ValueError(f"--add must be at least 1, got {self.add}")
        if self.min_pieces < 2:
            raise ValueError(f"--min_pieces must be at least 2 (a word of one piece is a token already), got {self.min_pieces}")  # fmt: skip
        if self.min_count < 1:
            raise ValueError(f"--min_count must be at least 1, got {self.min_count}")
        if Path(self.bert_model).resolve() == self.output.resolve():
            raise ValueError("--output is the model itself; write the extended model to a new directory")
