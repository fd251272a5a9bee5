"""Settings of the training stages, validated on construction: ``finetune`` (continued pretraining on pregenerated
epochs) and ``simple`` (two-sentence pairs made on the fly, plus finetune's training settings).

Field names match the original ``finetune_on_pregenerated.py`` flags, so the CLI maps flags onto fields 1:1. The
training half of a ``SimpleConfig`` is a ``FinetuneConfig`` (same optimizer, schedule, precision, checkpoints,
fresh-head handling), so the two commands cannot drift apart; its ``pregenerated_data`` names the corpus there.
Importing this module does not import torch (the CLI builds a config before deciding to train). A field's
``metadata`` says what its command-line flag needs beyond its type and default (see ``bert_domain_ft.cli.flags``).

    config = FinetuneConfig(pregenerated_data=Path("epochs"), output_dir=Path("out"), bert_model="bert-base-uncased")
    config = SimpleConfig.create(train_corpus=Path("corpus.txt"), output_dir=Path("out"), bert_model="bert", epochs=1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bert_domain_ft.errors import UserError, check_finite, check_not_empty, check_seed
from bert_domain_ft.files import refuse_empty_paths
from bert_domain_ft.model.saving import is_hub_id

REPORT_TO_CHOICES = ("none", "tensorboard", "wandb", "mlflow")


def report_to_names(value: str | Sequence[str]) -> tuple[str, ...]:
    """``--report_to`` as a tuple of distinct tracker names: "a,b", ["a", "b"] and ["a,b"] alike; "none" alone
    (or nothing) means no tracker; an unknown name is a ``ValueError``."""
    items = [value] if isinstance(value, str) else list(value)
    names = [name.strip().lower() for item in items for name in str(item).split(",") if name.strip()]
    unknown = [name for name in names if name not in REPORT_TO_CHOICES]
    if unknown:
        raise ValueError(f"--report_to {unknown[0]}: choose from {', '.join(REPORT_TO_CHOICES)} (several allowed)")
    chosen = tuple(dict.fromkeys(name for name in names if name != "none"))
    return chosen or ("none",)


@dataclass
class FinetuneConfig:
    """Everything ``finetune(config)`` needs; ``__post_init__`` rejects impossible combinations."""

    pregenerated_data: Path
    """Directory written by ``bert-domain-ft pregenerate`` (or by the original script: converted once)."""
    output_dir: Path
    """Where the final model, tokenizer, ``training_args.json``, ``metrics.jsonl`` and checkpoints go."""
    bert_model: str | None = None
    """Local model directory or hub id to start from (any AutoModelForMaskedLM: BERT, RoBERTa, XLM-R,
    DistilBERT, DeBERTa…); its tokenizer must be the one the data was made with. None with from_scratch."""
    base_model_id: str | None = None
    """The Hub id (org/name) of the model bert_model holds, for the model card's base_model when bert_model is a
    local directory (e.g. sentence-transformers/all-MiniLM-L6-v2 for a downloaded copy); a Hub id given as
    bert_model is named there without it."""
    do_lower_case: bool | None = None
    """Insist that the tokenizer lower-cases (an uncased model), checked against it and the data, never silent;
    without the flag, the tokenizer decides. In Python, False insists that it does not."""
    tokenizer: str | None = None
    """Tokenizer directory to use instead of the model's own (required with from_scratch); saved with the model."""
    objective: str = dataclasses.field(default="auto", metadata={"choices": ("auto", "nsp", "mlm")})
    """"nsp" (masked LM + next-sentence prediction, BERT only), "mlm" (masked LM only; NSP labels in the data are
    ignored) or "auto": the data's objective (simple's pairs can always be NSP pairs), or "mlm" when the model has
    no NSP head, a BERT saved without a trained one included (a fresh NSP head rewrites the pooler that downstream
    classifiers read; said in one line)."""
    from_scratch: bool = False
    """Start from a randomly initialised model of model_type (sized by config_overrides) instead of bert_model."""
    model_type: str | None = None
    """With from_scratch: the transformers model type to build (bert, roberta, distilbert, deberta-v2, …)."""
    config_overrides: str = ""
    """With from_scratch: "key=value,…" settings of the new model's config, e.g. "hidden_size=256,num_hidden_layers=4"
    (checked: unknown keys, sizes, heads dividing the hidden size)."""
    batch_from_one_corpus: bool = False
    """Data with several corpora: every optimizer step's batch comes from a single corpus (drawn with the
    manifest's sampling probabilities); the default mixes corpora within a batch. Deterministic under the seed."""
    reduce_memory: bool = False
    """Accepted for the original flag; epochs are always memory-mapped, so it changes nothing."""
    epochs: int = 3
    """Training epochs. Training epoch e reads data epoch e mod (generated epochs), looping when there are fewer."""
    max_steps: int = 0
    """Train exactly this many optimizer steps in all, head-only steps included (see head_warmup_steps), reading
    the epochs in turn and starting them again as often as needed, instead of a number of epochs (0: the epochs,
    the head-only steps inside them). For a fixed budget whatever the corpus size, and for comparisons at an equal
    budget; the learning-rate schedule spans the steps after the head-only ones."""
    train_batch_size: int = 32
    """Total sequences per optimizer step in each process, as in the original script: it is divided by
    --gradient_accumulation_steps into micro-batches; with N processes the global batch is N times this."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; each holds train_batch_size / this sequences."""
    learning_rate: float = 3e-5
    """Peak learning rate of AdamW, reached after warm-up."""
    warmup_proportion: float = 0.1
    """The learning-rate ramp: share of the main phase's optimizer steps over which the learning rate rises
    linearly (it then decays linearly); nothing to do with the head-only steps of head_warmup_steps."""
    weight_decay: float = 0.01
    """Decoupled weight decay, applied to every weight except biases and LayerNorm weights."""
    adam_epsilon: float = 1e-8
    """AdamW's epsilon (denominator guard)."""
    warmup_steps: int | None = None
    """The learning-rate ramp as a number of optimizer steps instead of a share (the --warmup_steps of the
    pytorch-transformers 1.x scripts): when given it replaces warmup_proportion and must be below the run's main
    steps. Not the head-only steps of head_warmup_steps."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm before each step (0 turns clipping off)."""
    head_warmup_steps: int | None = dataclasses.field(default=None, metadata={"auto": True})
    """Head-only steps: the run's first optimizer steps, part of its steps (max_steps, or the epochs'), not added
    to them, train only the pretraining heads the checkpoint lacks, the encoder frozen (auto: 20% of the steps, at
    least 50 and at most 1000, but at most a quarter of them; 0: off). The main phase's learning-rate schedule
    spans the rest; as many as the run has are refused; a checkpoint that has its heads skips them."""
    head_learning_rate: float = 3e-3
    """Learning rate of the head-only steps (linear ramp over their first 10%, then constant): new heads start from
    nothing, so it is ~100× BERT's usual rate; the encoder is frozen, so it cannot be torn."""
    layerwise_lr_decay: float = 1.0
    """ULMFiT's discriminative fine-tuning: encoder layer l of L trains at learning_rate × decay^(L − l), the
    embeddings (l = 0) lowest, pooler and heads at learning_rate. 1.0 is off; 0.8-0.95 are usual."""
    anchor_weight: float = 0.0
    """L2-SP guard against forgetting, λ: after each optimizer step every weight that came from the checkpoint
    (fresh heads excepted) moves back towards its starting value, θ ← θ − lr_t·λ·(θ − θ₀), lr_t its group's
    scheduled rate (decoupled, like AdamW's weight decay). 0 is off. The starting weights are kept as a float32
    copy on the training device, even at 0 (metrics.jsonl then still logs the drift ‖θ − θ₀‖): 4 bytes per
    pretrained parameter, ~440 MB for BERT-base, ~90 MB for MiniLM-L6. lr·λ must stay at most 1."""
    seed: int = 42
    """Seeds python, numpy and torch; the data order of epoch e is a pure function of (seed, e)."""
    fp16: bool = False
    """Mixed precision with float16 autocast and a gradient scaler (CUDA only)."""
    bf16: bool = False
    """Mixed precision with bfloat16 autocast (CUDA, or a CPU with bf16 units); no scaler needed."""
    loss_scale: float = 0.0
    """With --fp16: 0 scales the loss dynamically, a positive value is a static loss scale."""
    cpu_kernels: bool = dataclasses.field(default=True, metadata={"flag": "stock_kernels"})
    """On the CPU, train with bert_domain_ft's memory-light attention, faster dropout masks and recomputed
    feed-forward activation (same functions and gradients, less memory, faster); the --stock_kernels flag keeps
    transformers' own."""
    no_cuda: bool = False
    """Train on the CPU even when CUDA is available."""
    compile: bool = False
    """On a GPU, compile the encoder with ``torch.compile`` (fused element-wise kernels): the first steps of each
    new batch width wait for the compiler (about a minute for BERT-base), later ones run faster; see the README's
    GPU figures for when it pays. Ignored on the CPU, whose own kernels are used instead."""
    tf32: bool = dataclasses.field(default=True, metadata={"flag": "no_tf32"})
    """On a GPU with TensorFloat-32 units (Ampere and later), float32 matrix products use them (10-bit mantissa,
    float32 range, several times faster); the --no_tf32 flag keeps strict float32. Mixed precision is unaffected."""
    deterministic: bool = False
    """Bit-identical runs on a GPU: deterministic cuBLAS and kernels, and the attention computed by plain matrix
    products instead of the fused (non-deterministic backward) kernels. Slower; for checking, not for speed.
    On the CPU runs are deterministic anyway."""
    report_to: tuple[str, ...] = dataclasses.field(default=("none",), metadata={"metavar": "TRACKER"})
    """Also send every metrics.jsonl record (losses, perplexity, learning rate, throughput, evaluations, probe scores)
    and the run's settings to experiment trackers: one or more of tensorboard, wandb, mlflow (space- or
    comma-separated; each installed separately, e.g. pip install 'bert_domain_ft[tensorboard]'), from the main
    process only; "none" writes metrics.jsonl alone. Where each writes: ``bert_domain_ft.training.trackers``."""
    local_rank: int = -1
    """Set by the old torch.distributed.launch; torchrun's LOCAL_RANK environment variable takes precedence."""
    save_steps: int = 0
    """Also write a checkpoint every this many optimizer steps (0: only at the end of each epoch and of the run)."""
    save_total_limit: int = 0
    """Keep only the newest this-many checkpoints (0 keeps all)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in output_dir (mid-epoch, exactly where it stopped)."""
    overwrite_output_dir: bool = False
    """Delete checkpoints and metrics of an earlier run in output_dir instead of refusing to start."""
    stop_after_steps: int = 0
    """Stop (with a checkpoint) after this many optimizer steps in total; the schedule still spans all epochs,
    so a later --resume continues as if never stopped. For time-boxed jobs. 0 runs to the end."""
    logging_steps: int = 10
    """Write a metrics.jsonl record and refresh the progress bar every this many optimizer steps."""
    verify_checksums: bool = dataclasses.field(default=False, metadata={"aliases": ("verify",)})
    """Check the SHA-256 of every epoch array against its epoch.json before training (reads all data once)."""
    do_eval: bool = dataclasses.field(default=True, metadata={"flag": "no_eval"})
    """Evaluate on held-out data when there is some (see holdout_data) and an evaluator is available."""
    holdout_data: Path | None = None
    """A pregenerated directory whose held-out set is evaluated; without it, the training data's own."""
    general_holdout: Path | None = None
    """General (not domain) text evaluated beside the domain's held-out set at every evaluation, so forgetting
    shows as "general_*" metrics: a corpus file (pregenerated once with the run's tokenizer, objective and
    max_seq_len into output_dir/general_holdout/, reused on --resume) or a pregenerated directory (its held-out
    set, else its first epoch). All of it is evaluated each time: a few thousand sentences are plenty."""
    eval_steps: int = 0
    """Evaluate every this many optimizer steps (besides before the first step and at the end); 0: only those."""
    eval_batch_size: int = 64
    """Sequences per evaluation batch."""
    save_best: bool = False
    """Keep the model with the best held-out score as output_dir/best/: the lowest held-out MLM loss, or the
    highest probe accuracy when probe_train and probe_test are given."""
    probe_train: Path | None = None
    """Labelled sentences (CSV/JSON lines/parquet/a datasets directory, columns text and label) for the downstream
    probe run on every saved checkpoint (``bert-domain-ft probe``); needs probe_test."""
    probe_test: Path | None = None
    """Labelled test sentences of the probe, same classes as probe_train."""
    probe_seeds: int = 5
    """Classifiers (seeds) the probe trains per checkpoint."""
    probe_epochs: int = 4
    """Passes over probe_train per classifier."""
    show_progress: bool = dataclasses.field(default=True, metadata={"flag": "no_progress"})
    """Show progress bars."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        self.pregenerated_data = Path(self.pregenerated_data)
        self.output_dir = Path(self.output_dir)
        if self.holdout_data is not None:
            self.holdout_data = Path(self.holdout_data)
        if self.general_holdout is not None:
            self.general_holdout = Path(self.general_holdout)
        check_finite(self, *_OPTIMIZER_VALUES)
        self._check_positive("epochs", "train_batch_size", "gradient_accumulation_steps", "logging_steps")
        self._check_positive("eval_batch_size")
        self._check_not_negative("save_steps", "save_total_limit", "stop_after_steps", "eval_steps", "max_steps")
        self._check_not_negative("loss_scale", "weight_decay", "max_grad_norm")
        if self.train_batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"train_batch_size {self.train_batch_size} is not divisible by gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps}; choose a batch size that is a multiple of it"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.warmup_proportion < 1.0:
            raise ValueError(f"warmup_proportion must be in [0, 1), got {self.warmup_proportion}")
        self._check_warmup_steps()
        if not self.adam_epsilon > 0:
            raise ValueError(f"adam_epsilon must be positive, got {self.adam_epsilon}")
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16 were both given; choose one")
        self.report_to = report_to_names(self.report_to)
        if self.loss_scale and not self.fp16:
            raise ValueError("--loss_scale only applies with --fp16; add --fp16 or drop --loss_scale")
        check_seed(self.seed)
        self._check_head_warmup_and_probe()
        self._check_model_source()
        self._check_anchor()
        if self.general_holdout is not None and not self.do_eval:
            raise ValueError("--general_holdout is evaluated with the held-out set: drop --no_eval (or the holdout)")
        self._check_evaluation_wanted()
        if self.resume and self.overwrite_output_dir:
            raise ValueError("--resume and --overwrite_output_dir contradict each other; choose one")

    def _check_warmup_steps(self) -> None:
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must not be negative (0: no ramp), got {self.warmup_steps}")
        if self.warmup_steps is not None and 0 < self.max_steps <= self.warmup_steps:
            raise ValueError(
                f"--warmup_steps {self.warmup_steps} ramps the learning rate up over the whole run of --max_steps "
                f"{self.max_steps}: give fewer warm-up steps (or --warmup_proportion, a share of the steps)"
            )

    def _check_head_warmup_and_probe(self) -> None:
        if self.head_warmup_steps is not None and self.head_warmup_steps < 0:
            raise ValueError(
                "head_warmup_steps must not be negative: 0 turns the head warm-up off, leave it out for auto"
            )
        if not self.head_learning_rate > 0:
            raise ValueError(f"head_learning_rate must be positive, got {self.head_learning_rate}")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ValueError(f"layerwise_lr_decay must be in (0, 1] (1 is off), got {self.layerwise_lr_decay}")
        self.probe_train = Path(self.probe_train) if self.probe_train is not None else None
        self.probe_test = Path(self.probe_test) if self.probe_test is not None else None
        if (self.probe_train is None) != (self.probe_test is None):
            raise ValueError("the probe needs both probe_train and probe_test (labelled CSV or JSON-lines files)")
        self._check_positive("probe_seeds", "probe_epochs")
        if self.probe_train is not None:  # the probe's classifiers take seeds seed, seed + 1, …
            check_seed(self.seed + self.probe_seeds - 1, "--seed + --probe_seeds - 1 (the probe's last seed)")

    def _check_model_source(self) -> None:
        for flag in ("bert_model", "tokenizer", "model_type"):
            check_not_empty(f"--{flag}", getattr(self, flag))
        if self.objective not in ("auto", "nsp", "mlm"):
            raise ValueError(f"objective must be auto, nsp or mlm, got {self.objective!r}")
        if self.base_model_id is not None and not is_hub_id(self.base_model_id):
            raise ValueError(f"--base_model_id {self.base_model_id!r} is not a Hub id; write it as org/name")
        if not self.from_scratch:
            if self.bert_model is None:
                raise ValueError("give --bert_model (the model to adapt), or --from_scratch with --model_type")
            if self.model_type is not None or self.config_overrides:
                raise ValueError("--model_type and --config_overrides describe a new model: add --from_scratch")
            return
        if self.bert_model is not None:
            raise ValueError("--from_scratch builds a new model: drop --bert_model (or drop --from_scratch)")
        if self.base_model_id is not None:
            raise ValueError("--base_model_id names the model bert_model holds; --from_scratch has none: drop it")
        if self.model_type is None or self.tokenizer is None:
            raise ValueError("--from_scratch needs --model_type (e.g. roberta) and --tokenizer (its directory)")
        if self.probe_train is not None:
            raise ValueError("the probe compares checkpoints with --bert_model, which --from_scratch has none of")

    def _check_evaluation_wanted(self) -> None:
        """What needs the held-out evaluation, which --no_eval turns off (never blamed on a missing set)."""
        if self.holdout_data is not None and not self.do_eval:
            raise ValueError("--holdout_data is evaluated, which --no_eval turns off: drop one of them")
        if self.save_best and not self.do_eval and self.probe_train is None:
            raise ValueError(
                "--save_best keeps the model with the best held-out loss, which --no_eval turns off: drop --no_eval, "
                "or give --probe_train and --probe_test to keep the best by the probe"
            )

    def _check_anchor(self) -> None:
        if not self.anchor_weight >= 0:
            raise ValueError(f"anchor_weight must not be negative (0 is off), got {self.anchor_weight}")
        if self.anchor_weight and self.from_scratch:
            raise ValueError("--anchor_weight pulls towards the starting checkpoint, which --from_scratch has none of")
        if self.anchor_weight * self.learning_rate > 1.0:
            raise ValueError(
                f"anchor_weight × learning_rate is {self.anchor_weight * self.learning_rate:g}: above 1 the pull "
                "overshoots the starting weights; lower --anchor_weight"
            )

    def _check_positive(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def _check_not_negative(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")

    @property
    def micro_batch_size(self) -> int:
        """Sequences per forward/backward pass in one process."""
        return self.train_batch_size // self.gradient_accumulation_steps

    def to_json(self) -> dict[str, Any]:
        """The settings as plain JSON values (paths as strings), as saved in ``training_args.json``."""
        values = dataclasses.asdict(self)
        return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}


# Settings of the optimizer and its loss: a NaN or infinite one passes every range check (NaN < 0 is False) and
# only shows steps later, as a NaN loss blamed on the learning rate.
_OPTIMIZER_VALUES = ("learning_rate", "warmup_proportion", "weight_decay", "adam_epsilon", "max_grad_norm")
_OPTIMIZER_VALUES += ("head_learning_rate", "layerwise_lr_decay", "anchor_weight", "loss_scale")


MIN_SEQ_LEN = 8  # [CLS] A [SEP] B [SEP] with a few tokens of each sentence

# The flags ``simple`` takes from its FinetuneConfig: all but those about pregenerated data and held-out sets.
_NOT_SIMPLE_FLAGS = ("pregenerated_data", "tokenizer", "from_scratch", "model_type", "config_overrides")
_NOT_SIMPLE_FLAGS += ("batch_from_one_corpus", "reduce_memory", "verify_checksums", "do_eval", "holdout_data")
_NOT_SIMPLE_FLAGS += ("general_holdout", "eval_steps", "eval_batch_size")
SIMPLE_TRAINING_FLAGS = {"exclude": _NOT_SIMPLE_FLAGS, "required": ("output_dir", "bert_model")}


@dataclass
class SimpleConfig:
    """Everything ``simple_finetune(config)`` needs; ``__post_init__`` rejects impossible values."""

    train_corpus: Path
    """Corpus file: one sentence per line, a blank line between documents (see ``bert-domain-ft prepare``); or
    records: a parquet file, a ``datasets`` save_to_disk directory or JSON lines (``.jsonl``), each row a document
    (see ``text_field``, ``document_field``), written as a corpus to ``output_dir/train_corpus.txt`` first."""
    training: FinetuneConfig = dataclasses.field(metadata={"nested": SIMPLE_TRAINING_FLAGS})
    """output_dir, bert_model, epochs, batch size, optimizer, precision, checkpoints: exactly as for finetune."""
    text_field: str = "text"
    """Records as train_corpus: the column holding the text (split into sentences by Punkt trained on the rows)."""
    document_field: str | None = None
    """Records as train_corpus: consecutive rows with the same value in this column make one document; without
    it, every row is a document."""
    on_memory: bool = False
    """Keep the tokenized corpus in RAM. Without it the tokens stay on disk (under output_dir, removed at the end)
    and only the sentence/document offsets are in RAM, so corpora far larger than memory train fine."""
    max_seq_len: int = dataclasses.field(default=128, metadata={"aliases": ("max_seq_length",)})
    """Tokens per pair at most, [CLS] and the two [SEP] included; longer pairs are truncated (the original
    script's --max_seq_length)."""
    group_by_length: bool = dataclasses.field(default=True, metadata={"negatable": True})
    """Batch pairs of similar length together (sorted within runs of 100 shuffled batches, the batches then
    shuffled), so short pairs pay little padding. Deterministic in the seed."""
    masked_lm_prob: float = 0.15
    """Share of each pair's tokens (special tokens counted in the length, never masked) to predict."""
    max_predictions_per_seq: int = 20
    """At most this many masked tokens per pair."""
    do_whole_word_mask: bool = False
    """Mask all WordPiece pieces of a word together."""
    task_data: Path | None = None
    """The task's own texts (CSV/TSV/JSON lines/parquet/a datasets directory/plain text, labels never read)
    trained on beside the corpus (task-adaptive pretraining). They are read as ``corpus.task_files`` says, written
    to ``output_dir/task_corpus.txt``, one document per row, and tokenized after the corpus (which is not copied).
    See ``simple_pairs`` for how its pairs are made."""
    task_text_column: str = "text"
    """The column (CSV/TSV header, JSON key) holding the task's text; ignored for plain text."""
    task_share: float = 0.5
    """Fraction of each epoch's pairs that start in the task text, in (0, 1]: the corpus still gives its usual
    pairs and the task's are added (repeated as needed) to make this share; 1 trains on the task text only."""

    def __post_init__(self) -> None:
        refuse_empty_paths(self)
        self.train_corpus = Path(self.train_corpus)
        if not isinstance(self.training, FinetuneConfig):
            raise ValueError("training must be a FinetuneConfig; build the config with SimpleConfig.create(...)")
        if self.max_seq_len < MIN_SEQ_LEN:
            raise ValueError(f"max_seq_len must be at least {MIN_SEQ_LEN}, got {self.max_seq_len}")
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ValueError(f"masked_lm_prob must be between 0 and 1 (e.g. 0.15), got {self.masked_lm_prob}")
        if self.task_data is not None:
            self.task_data = Path(self.task_data)
        if not 0.0 < self.task_share <= 1.0:
            raise ValueError(f"--task_share must be in (0, 1], e.g. 0.5 for half of each epoch, got {self.task_share}")
        if not self.task_text_column:
            raise ValueError("--task_text_column must name a column")
        if not self.text_field or self.document_field == "":
            raise ValueError("--text_field and --document_field must name a column")
        if self.max_predictions_per_seq < 1:
            raise ValueError(f"max_predictions_per_seq must be at least 1, got {self.max_predictions_per_seq}")

    @classmethod
    def create(cls, train_corpus: Path, output_dir: Path, bert_model: str, **options: Any) -> SimpleConfig:
        """Build from flat keyword options: this class's fields go here, every other one to ``FinetuneConfig``."""
        own = {field.name for field in dataclasses.fields(cls)} - {"train_corpus", "training"}
        mine = {key: value for key, value in options.items() if key in own}
        training_options = {key: value for key, value in options.items() if key not in own}
        training = FinetuneConfig(
            pregenerated_data=Path(train_corpus), output_dir=output_dir, bert_model=bert_model, **training_options
        )
        return cls(train_corpus=Path(train_corpus), training=training, **mine)

    @property
    def output_dir(self) -> Path:
        return self.training.output_dir

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values, as saved in ``training_args.json``: the pair settings and the training settings."""
        values: dict[str, Any] = {"stage": "simple"}
        for field in dataclasses.fields(self):
            if field.name != "training":
                value = getattr(self, field.name)
                values[field.name] = str(value) if isinstance(value, Path) else value
        values["training"] = self.training.to_json()
        return values


@dataclass
class OriginalTrainingFlags:
    """Flags of the pytorch-transformers 1.x ``finetune_on_pregenerated.py`` and ``simple_lm_finetuning.py`` that
    set nothing here, so their command lines work."""

    fp16_opt_level: str | None = None
    """Accepted for apex's mixed-precision level (O0 to O3) and ignored, with a note: --fp16 uses torch.amp
    (float16 autocast with a gradient scaler), which has no levels."""


@dataclass
class OriginalSimpleFlags:
    """Flags of the original ``simple_lm_finetuning.py`` that set nothing of their own, so its command lines work."""

    do_train: bool = False
    """Accepted for compatibility: training is what ``simple`` does."""
    num_train_epochs: float | None = None
    """The original script's name for --epochs, which it overrides (a whole number, e.g. 3.0)."""

    def epochs(self, epochs: int) -> int:
        """``epochs``, or ``num_train_epochs`` when given; a ``UserError`` unless that is a whole number."""
        if self.num_train_epochs is None:
            return int(epochs)
        value = float(self.num_train_epochs)
        if value != int(value) or value < 1:
            raise UserError(f"--num_train_epochs {value:g}: give a whole number of epochs (e.g. 3)")
        return int(value)
