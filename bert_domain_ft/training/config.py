"""Settings of the finetune stage (continued pretraining on pregenerated epochs), validated on construction.

Field names match the original ``finetune_on_pregenerated.py`` flags, so the CLI maps flags onto fields 1:1.

    config = FinetuneConfig(pregenerated_data=Path("epochs"), output_dir=Path("out"), bert_model="bert-base-uncased")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class FinetuneConfig:
    """Everything ``finetune(config)`` needs; ``__post_init__`` rejects impossible combinations."""

    pregenerated_data: Path
    """Directory written by ``bert-domain-ft pregenerate`` (or by the original script: converted once)."""
    output_dir: Path
    """Where the final model, tokenizer, ``training_args.json``, ``metrics.jsonl`` and checkpoints go."""
    bert_model: str
    """Local model directory or hub id to start from; its tokenizer must be the one the data was made with."""
    do_lower_case: bool | None = None
    """None follows the tokenizer; True/False must agree with it and with the data (checked, never silent)."""
    reduce_memory: bool = False
    """Accepted for the original flag; epochs are always memory-mapped, so it changes nothing."""
    epochs: int = 3
    """Training epochs. Training epoch e reads data epoch e mod (generated epochs), looping when there are fewer."""
    train_batch_size: int = 32
    """Sequences per optimizer step in each process (split into --gradient_accumulation_steps micro-batches);
    with N processes the global batch is N × this, as in the original script."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; each holds train_batch_size / this sequences."""
    learning_rate: float = 3e-5
    """Peak learning rate of AdamW, reached after warm-up."""
    warmup_proportion: float = 0.1
    """Share of all optimizer steps spent warming the learning rate up linearly; it then decays linearly."""
    weight_decay: float = 0.01
    """Decoupled weight decay, applied to every weight except biases and LayerNorm weights."""
    adam_epsilon: float = 1e-8
    """AdamW's epsilon (denominator guard)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm before each step (0 turns clipping off)."""
    seed: int = 42
    """Seeds python, numpy and torch; the data order of epoch e is a pure function of (seed, e)."""
    fp16: bool = False
    """Mixed precision with float16 autocast and a gradient scaler (CUDA only)."""
    bf16: bool = False
    """Mixed precision with bfloat16 autocast (CUDA, or a CPU with bf16 units); no scaler needed."""
    loss_scale: float = 0.0
    """With --fp16: 0 scales the loss dynamically, a positive value is a static loss scale."""
    cpu_kernels: bool = True
    """On the CPU, train with bert_domain_ft's memory-light attention, faster dropout masks and recomputed
    feed-forward activation (same functions and gradients, less memory, faster); False keeps transformers' own."""
    no_cuda: bool = False
    """Train on the CPU even when CUDA is available."""
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
    verify_checksums: bool = False
    """Check the SHA-256 of every epoch array against its epoch.json before training (reads all data once)."""
    do_eval: bool = True
    """Evaluate on held-out data when there is some (see holdout_data) and an evaluator is available."""
    holdout_data: Path | None = None
    """A pregenerated directory whose held-out set is evaluated; None uses the training data's own holdout."""
    eval_steps: int = 0
    """Evaluate every this many optimizer steps (besides before the first step and at the end); 0: only those."""
    eval_batch_size: int = 64
    """Sequences per evaluation batch."""
    show_progress: bool = True
    """Show tqdm progress bars."""

    def __post_init__(self) -> None:
        self.pregenerated_data = Path(self.pregenerated_data)
        self.output_dir = Path(self.output_dir)
        if self.holdout_data is not None:
            self.holdout_data = Path(self.holdout_data)
        self._check_positive("epochs", "train_batch_size", "gradient_accumulation_steps", "logging_steps")
        self._check_positive("eval_batch_size")
        self._check_not_negative("save_steps", "save_total_limit", "stop_after_steps", "eval_steps")
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
        if not self.adam_epsilon > 0:
            raise ValueError(f"adam_epsilon must be positive, got {self.adam_epsilon}")
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16 were both given; choose one")
        if self.loss_scale and not self.fp16:
            raise ValueError("--loss_scale only applies with --fp16; add --fp16 or drop --loss_scale")
        if self.resume and self.overwrite_output_dir:
            raise ValueError("--resume and --overwrite_output_dir contradict each other; choose one")

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
