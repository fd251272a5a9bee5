"""Settings of the simple stage: how two-sentence pairs are made on the fly, plus finetune's training settings.

The training half is a ``FinetuneConfig`` (same optimizer, schedule, precision, checkpoints, fresh-head handling
as ``finetune``), so the two commands cannot drift apart; its ``pregenerated_data`` names the corpus here.
Importing this module does not import torch (the CLI builds it before deciding to train).

    config = SimpleConfig.create(train_corpus=Path("corpus.txt"), output_dir=Path("out"), bert_model="bert", epochs=1)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .training.config import FinetuneConfig

MIN_SEQ_LEN = 8  # [CLS] A [SEP] B [SEP] with a few tokens of each sentence


@dataclass
class SimpleConfig:
    """Everything ``simple_finetune(config)`` needs; ``__post_init__`` rejects impossible values."""

    train_corpus: Path
    """Corpus file: one sentence per line, a blank line between documents (see ``bert-domain-ft prepare``)."""
    training: FinetuneConfig
    """output_dir, bert_model, epochs, batch size, optimizer, precision, checkpoints: exactly as for finetune."""
    on_memory: bool = False
    """Keep the tokenized corpus in RAM. Without it the tokens stay on disk (under output_dir, removed at the end)
    and only the sentence/document offsets are in RAM, so corpora far larger than memory train fine."""
    max_seq_len: int = 128
    """Tokens per pair at most, [CLS] and the two [SEP] included; longer pairs are truncated (the original
    script's --max_seq_length)."""
    group_by_length: bool = True
    """Batch pairs of similar length together (sorted within runs of 100 shuffled batches, the batches then
    shuffled), so short pairs pay little padding. Deterministic in the seed."""
    masked_lm_prob: float = 0.15
    """Share of each pair's tokens (special tokens counted in the length, never masked) to predict."""
    max_predictions_per_seq: int = 20
    """At most this many masked tokens per pair."""
    do_whole_word_mask: bool = False
    """Mask all WordPiece pieces of a word together."""
    task_data: Path | None = None
    """The task's own texts (CSV/TSV/JSON lines/plain text, labels never read; see ``task_text``) trained on
    beside the corpus (task-adaptive pretraining): written to ``output_dir/task_corpus.txt``, one document per
    row, and tokenized after the corpus (which is not copied). See ``simple_pairs`` for how its pairs are made."""
    task_text_column: str = "text"
    """The column (CSV/TSV header, JSON key) holding the task's text; ignored for plain text."""
    task_share: float = 0.5
    """Fraction of each epoch's pairs that start in the task text, in (0, 1]: the corpus still gives its usual
    pairs and the task's are added (repeated as needed) to make this share; 1 trains on the task text only."""

    def __post_init__(self) -> None:
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
