"""Settings of the evaluation stage's commands, one dataclass each, every field documented and checked on
construction: ``evaluate`` (held-out masked-LM loss of models) and ``probe`` (a classifier fine-tuned from each model
on the user's labelled data), ``plot`` (a run's training curves) and ``fill-mask`` (models' predictions for masked
words, side by side). Importing it does not import torch. A field's
``metadata`` says what its command-line flag needs beyond its type and default (see ``bert_domain_ft.cli.flags``).

    config = ProbeConfig(models=["bert-base-uncased", "out/"], train=Path("train.csv"), test=Path("test.csv"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bert_domain_ft.errors import check_finite, check_not_empty, check_seed
from bert_domain_ft.files import refuse_empty_paths


@dataclass
class EvaluateConfig:
    model: str = field(metadata={"flag": "bert_model", "aliases": ("model",)})
    """Directory (or hub id) of the model to evaluate (BERT, RoBERTa, DistilBERT… any masked-LM model);
    pretraining heads it lacks start at random (seeded)."""
    tokenizer: str | None = None
    """Tokenizer directory the data was made with, when it is not the model's own (e.g. a model trained from
    scratch with ``--tokenizer``; finetune saves it next to the model, so usually not needed)."""
    data: Path | None = field(
        default=None,
        metadata={"one_of": "source", "flag": "holdout_data", "aliases": ("data", "pregenerated_data")},
    )
    """A pregenerated directory whose held-out set (pregenerate's --holdout_fraction) is evaluated, as
    finetune's --holdout_data is."""
    corpus: Path | None = field(default=None, metadata={"one_of": "source"})
    """Corpus file to pregenerate on the fly (fixed seed) and evaluate as a whole, instead of --holdout_data."""
    epoch: int | None = None
    """With --holdout_data: evaluate that directory's training epoch N (counted from 0) instead of its held-out
    set."""
    batch_size: int = 64
    """Instances per forward pass; only memory and speed depend on it."""
    max_seq_len: int = 128
    """With --corpus: tokens per instance, special tokens included."""
    max_instances: int | None = None
    """Evaluate only the first N instances (the same ones every time); without it, all of them."""
    json_output: Path | None = field(default=None, metadata={"flag": "json", "metavar": "FILE"})
    """Also write the results as JSON to this file (on the command line, ``-`` prints them instead of the table)."""
    bf16: bool = False
    """Run the forward passes under bfloat16 autocast (fast on recent CPUs and GPUs)."""
    no_cuda: bool = False
    """Stay on the CPU even when a GPU is available."""
    show_progress: bool = field(default=True, metadata={"flag": "no_progress"})
    """Show progress bars."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        self.data = Path(self.data) if self.data is not None else None
        self.corpus = Path(self.corpus) if self.corpus is not None else None
        self.json_output = Path(self.json_output) if self.json_output is not None else None
        if (self.data is None) == (self.corpus is None):
            raise ValueError(
                "give exactly one of --holdout_data (a pregenerated directory) or --corpus (a corpus file)"
            )
        check_not_empty("--bert_model", self.model)
        check_not_empty("--tokenizer", self.tokenizer)
        if self.epoch is not None and self.data is None:
            raise ValueError("--epoch needs --holdout_data: it picks a training epoch of a pregenerated directory")
        if self.epoch is not None and self.epoch < 0:
            raise ValueError("--epoch counts from 0; give 0 for the first epoch")
        if self.batch_size < 1:
            raise ValueError("--batch_size must be at least 1")
        if self.max_instances is not None and self.max_instances < 1:
            raise ValueError("--max_instances must be at least 1 (leave it out to evaluate everything)")
        if not 8 <= self.max_seq_len <= 65535:
            raise ValueError("--max_seq_len must be between 8 and 65535 (BERT uses 128 or 512)")


DEFAULT_PROBE_PLOT = Path("probe.png")


@dataclass
class ProbeConfig:
    """Everything ``run_probe`` needs; ``__post_init__`` rejects impossible values."""

    models: list[str] = field(metadata={"metavar": "MODEL", "aliases": ("model", "bert_model")})
    """Model directories (or hub ids) to compare, in display order; the first is the reference (e.g. the base)."""
    train: Path
    """Labelled training sentences: CSV with a header row, JSON lines, parquet or a ``datasets`` save_to_disk
    directory."""
    test: Path
    """Labelled test sentences, same format and exactly the same classes; ideally from other documents."""
    names: list[str] | None = field(default=None, metadata={"metavar": "NAME"})
    """Short names for the models in the table and the chart, one per model in the same order; without it, each
    model's last path component (more of the path where two would look alike)."""
    text_column: str = "text"
    """Column (CSV) or key (JSON lines) holding the sentence."""
    label_column: str = "label"
    """Column or key holding the class name."""
    seeds: int = 5
    """Classifiers trained per model, with seeds --seed, --seed + 1, …; the spread over them is the ± in the table and
    the paired 95% interval against the first model needs at least 2 (5 tells a few points apart on ~100 tests)."""
    seed: int = 0
    """First seed."""
    epochs: int = 4
    """Passes over the training sentences per classifier."""
    batch_size: int = 16
    """Training sentences per optimizer step."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate of the classifier (whole model), with 10% linear warm-up then linear decay."""
    max_seq_len: int = 64
    """Tokens per sentence, [CLS] and [SEP] included; longer sentences are cut."""
    tokenizer: str | None = None
    """Tokenizer for every model; without it, each model's own (finetune saves it next to the model)."""
    json_output: Path | None = field(default=None, metadata={"flag": "json", "metavar": "FILE"})
    """Also write the results as a JSON list (one object per model) to this file."""
    plot_output: Path | None = field(
        default=None, metadata={"flag": "plot", "metavar": "FILE", "cli_default": DEFAULT_PROBE_PLOT}
    )
    """Also draw a bar chart with error bars into this PNG (needs matplotlib). In Python the default draws none;
    the command line draws probe.png."""
    no_cuda: bool = False
    """Stay on the CPU even when a GPU is available."""
    show_progress: bool = field(default=True, metadata={"flag": "no_progress"})
    """Show progress bars."""
    no_plot: bool = False
    """Draw no chart, even with plot_output (then matplotlib is not needed)."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        self.models = [str(model) for model in self.models]
        self.train, self.test = Path(self.train), Path(self.test)
        self.json_output = Path(self.json_output) if self.json_output is not None else None
        self.plot_output = Path(self.plot_output) if self.plot_output is not None and not self.no_plot else None
        if not self.models:
            raise ValueError("give at least one model to probe with --models (e.g. the base model and your run)")
        check_not_empty("--models", *self.models)
        check_not_empty("--tokenizer", self.tokenizer)
        if len(set(self.models)) != len(self.models):
            raise ValueError("--models lists a model twice; give each model once")
        for name in ("seeds", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        check_seed(self.seed)
        check_seed(self.seed_list[-1], "--seed + --seeds - 1 (the last classifier's seed)")
        check_finite(self, "learning_rate")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 8 <= self.max_seq_len <= 65535:
            raise ValueError("--max_seq_len must be between 8 and 65535 (sentences rarely need more than 128)")
        if not self.text_column or not self.label_column or self.text_column == self.label_column:
            raise ValueError("--text_column and --label_column must name two different columns")
        self._check_names()

    def _check_names(self) -> None:
        if self.names is None:
            return
        self.names = [str(name) for name in self.names]
        check_not_empty("--names", *self.names)
        if len(self.names) != len(self.models):
            raise ValueError(
                f"--names: {len(self.names)} given for {len(self.models)} models; give one name per model, in order"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError("--names gives a name twice; each model needs a name of its own")

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + offset for offset in range(self.seeds)]


@dataclass
class PlotConfig:
    """What ``bert-domain-ft plot`` draws: ``plot_run(run_dir, output)``."""

    run_dir: Path = field(metadata={"positional": True, "metavar": "RUN_DIR"})
    """A finetune run's output directory, holding its metrics.jsonl."""
    output: Path | None = None
    """The PNG to write; without it, RUN_DIR/training_curves.png."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)


MASK_PLACEHOLDERS = ("[MASK]", "<mask>")  # written in a text where the word to predict goes, for any model


@dataclass
class FillMaskConfig:
    """What ``bert-domain-ft fill-mask`` shows: each model's top predictions for masked words, side by side."""

    models: list[str] = field(metadata={"metavar": "MODEL", "aliases": ("model", "bert_model")})
    """Model directories (or hub ids) to compare, in column order, e.g. the base model and the adapted run."""
    texts: list[str] = field(default_factory=list, metadata={"positional": True, "metavar": "TEXT", "nargs": "*"})
    """Texts with [MASK] (or <mask>) where a word is to be predicted; may also follow --models directly (every
    value holding a mask is a text)."""
    from_holdout: int = 0
    """Also take this many held-out sentences and mask one whole word in each (a word the tokenizer keeps in one
    piece, chosen by seed), showing the word that was there."""
    holdout_data: Path | None = None
    """A pregenerated directory whose held-out set from_holdout reads; without it, the run's own: the pregenerated
    data named in the last model's training_args.json."""
    top_k: int = 5
    """Predictions shown per model and mask, most probable first, with their probabilities."""
    seed: int = 0
    """Seed of the held-out sentences and words chosen."""
    no_cuda: bool = False
    """Stay on the CPU even when a GPU is available."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        given = [str(value) for value in self.models]
        self.models = [value for value in given if not any(mask in value for mask in MASK_PLACEHOLDERS)]
        self.texts = [value for value in given if value not in self.models] + [str(text) for text in self.texts]
        self.holdout_data = Path(self.holdout_data) if self.holdout_data is not None else None
        if not self.models:
            raise ValueError("give the models to compare with --models (e.g. the base model and your run)")
        check_not_empty("--models", *self.models)
        check_seed(self.seed)
        if len(set(self.models)) != len(self.models):
            raise ValueError("--models lists a model twice; give each model once")
        if self.from_holdout < 0 or self.top_k < 1:
            raise ValueError("--from_holdout must not be negative and --top_k must be at least 1")
        if not self.texts and not self.from_holdout:
            raise ValueError('give texts with [MASK] (e.g. "The [MASK] was reset.") or --from_holdout N')
        for text in self.texts:
            if not any(mask in text for mask in MASK_PLACEHOLDERS):
                raise ValueError(f"{text!r}: has no [MASK]; write [MASK] where the word to predict goes")
