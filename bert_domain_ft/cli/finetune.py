"""``bert-domain-ft finetune`` and the classic ``finetune-on-pregenerated`` script: flags → FinetuneConfig → finetune.

Accepts every flag of the original ``finetune_on_pregenerated.py`` plus the new ones. Launch several processes
with ``torchrun --nproc_per_node N -m bert_domain_ft finetune …`` (add ``--nnodes`` for several machines).

    bert-domain-ft finetune --pregenerated_data epochs/ --bert_model bert-base-uncased --output_dir out/ --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from bert_domain_ft.cli.common import config_from_arguments, run_classic_script
from bert_domain_ft.training.config import FinetuneConfig

HELP = "continue pretraining a model on pregenerated epochs (masked LM, + NSP for BERT), or pretrain one from scratch"

_DEFAULTS = {field.name: field.default for field in dataclasses.fields(FinetuneConfig)}


def _add_data_and_model(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data and model")
    group.add_argument(
        "--pregenerated_data",
        type=Path,
        required=True,
        default=argparse.SUPPRESS,
        help="output directory of `pregenerate` (or of the original script: its epoch_N.json files are converted once)",
    )
    group.add_argument(
        "--output_dir",
        type=Path,
        required=True,
        default=argparse.SUPPRESS,
        help="where the model, metrics and checkpoints go",
    )
    group.add_argument(
        "--bert_model",
        default=argparse.SUPPRESS,
        help="model directory or hub id to start from: BERT, RoBERTa, XLM-R, DistilBERT, DeBERTa… (or --from_scratch)",
    )
    group.add_argument(
        "--do_lower_case",
        action="store_true",
        default=argparse.SUPPRESS,
        help="insist the tokenizer lower-cases (default: follow the tokenizer; a mismatch is an error)",
    )
    group.add_argument(
        "--reduce_memory", action="store_true", help="accepted for compatibility; epochs are always memory-mapped"
    )
    group.add_argument(
        "--verify",
        "--verify_checksums",
        dest="verify_checksums",
        action="store_true",
        help="before training, check every epoch array's SHA-256 against the manifest (reads all data once); "
        "sizes and shapes are always checked",
    )


def add_optimisation_arguments(parser: argparse.ArgumentParser) -> None:
    """Epochs, batch size, learning rate and schedule flags: shared by ``finetune`` and ``simple``."""
    group = parser.add_argument_group("optimisation")
    group.add_argument(
        "--epochs",
        type=int,
        default=_DEFAULTS["epochs"],
        help="training epochs (data epochs are reused in turn when fewer were pregenerated)",
    )
    group.add_argument(
        "--max_steps",
        type=int,
        default=_DEFAULTS["max_steps"],
        help="train exactly this many optimizer steps, looping over the epochs as needed (overrides --epochs; 0: off)",
    )
    group.add_argument(
        "--train_batch_size",
        type=int,
        default=_DEFAULTS["train_batch_size"],
        help="total sequences per optimizer step in each process, as in the original script: it is "
        "divided by --gradient_accumulation_steps into micro-batches; with N processes the global "
        "batch is N times this",
    )
    group.add_argument(
        "--gradient_accumulation_steps",
        type=int,
        default=_DEFAULTS["gradient_accumulation_steps"],
        help="micro-batches accumulated per optimizer step",
    )
    group.add_argument("--learning_rate", type=float, default=_DEFAULTS["learning_rate"], help="peak AdamW rate")
    group.add_argument(
        "--warmup_proportion",
        type=float,
        default=_DEFAULTS["warmup_proportion"],
        help="share of steps with linear warm-up; linear decay follows",
    )
    group.add_argument(
        "--weight_decay",
        type=float,
        default=_DEFAULTS["weight_decay"],
        help="AdamW weight decay (never on biases and LayerNorm weights)",
    )
    group.add_argument("--adam_epsilon", type=float, default=_DEFAULTS["adam_epsilon"], help="AdamW epsilon")
    group.add_argument(
        "--max_grad_norm",
        type=float,
        default=_DEFAULTS["max_grad_norm"],
        help="clip gradients to this L2 norm (0: no clipping)",
    )
    group.add_argument("--seed", type=int, default=_DEFAULTS["seed"], help="seed of python, numpy, torch and order")
    _add_fresh_heads(group)


def steps_or_auto(text: str) -> int | None:
    """``--head_warmup_steps``: a whole number of steps, or ``auto`` (None)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps or 'auto', got {text!r}") from None


def _add_fresh_heads(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--head_warmup_steps",
        type=steps_or_auto,
        default="auto",
        help="when the checkpoint lacks its MLM/NSP head: first train only the new heads, encoder frozen, for "
        "this many steps; auto = 20%% of the main steps (50 to 1000); 0 turns it off",
    )
    group.add_argument(
        "--head_learning_rate",
        type=float,
        default=_DEFAULTS["head_learning_rate"],
        help="learning rate of the head warm-up (new heads start from nothing)",
    )
    group.add_argument(
        "--layerwise_lr_decay",
        type=float,
        default=_DEFAULTS["layerwise_lr_decay"],
        help="layer l of L trains at learning_rate × D^(L−l), embeddings lowest (ULMFiT); 1 is off, 0.8-0.95 usual",
    )
    group.add_argument(
        "--anchor_weight",
        type=float,
        default=_DEFAULTS["anchor_weight"],
        help="λ of L2-SP against forgetting: after each step pretrained weights move lr·λ of the way back to their "
        "start (fresh heads are free); costs a float32 copy of the model; 0 is off",
    )


def add_hardware_arguments(parser: argparse.ArgumentParser) -> None:
    """Precision, CPU kernels and device flags: shared by ``finetune`` and ``simple``."""
    group = parser.add_argument_group("precision and hardware")
    group.add_argument("--fp16", action="store_true", help="float16 autocast with a gradient scaler (CUDA)")
    group.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA, or a CPU with bf16 units)")
    group.add_argument(
        "--loss_scale",
        type=float,
        default=_DEFAULTS["loss_scale"],
        help="with --fp16: 0 for dynamic loss scaling, a positive power of 2 for a static scale",
    )
    group.add_argument(
        "--stock_kernels",
        action="store_true",
        help="on the CPU, keep transformers' attention, dropout and feed-forward blocks and glibc's default malloc "
        "settings instead of the memory-light kernels and step-to-step memory reuse (same results, more memory, "
        "slower)",
    )
    group.add_argument("--no_cuda", action="store_true", help="train on the CPU even when a GPU is available")
    group.add_argument(
        "--local_rank",
        type=int,
        default=_DEFAULTS["local_rank"],
        help="set by torch.distributed.launch; with torchrun the LOCAL_RANK variable is used",
    )


def _add_run_control(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("checkpoints, logging and evaluation")
    group.add_argument(
        "--save_steps",
        type=int,
        default=_DEFAULTS["save_steps"],
        help="also checkpoint every this many steps (0: at the end of each epoch and of the run)",
    )
    group.add_argument(
        "--save_total_limit",
        type=int,
        default=_DEFAULTS["save_total_limit"],
        help="keep only the newest this-many checkpoints (0: keep all)",
    )
    group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output_dir")
    group.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="delete the checkpoints and metrics of an earlier run in --output_dir",
    )
    group.add_argument(
        "--stop_after_steps",
        type=int,
        default=_DEFAULTS["stop_after_steps"],
        help="stop with a checkpoint after this many steps (the schedule still spans all epochs; "
        "continue with --resume); 0 runs to the end",
    )
    group.add_argument(
        "--logging_steps",
        type=int,
        default=_DEFAULTS["logging_steps"],
        help="write a metrics.jsonl record every this many steps",
    )
    group.add_argument(
        "--holdout_data",
        type=Path,
        default=argparse.SUPPRESS,
        help="pregenerated directory whose held-out set is evaluated (default: the training data's)",
    )
    group.add_argument(
        "--general_holdout",
        type=Path,
        default=argparse.SUPPRESS,
        help="general text (a corpus file, or a pregenerated directory) also evaluated at every evaluation, as "
        "general_* metrics: forgetting shows",
    )
    group.add_argument(
        "--eval_steps",
        type=int,
        default=_DEFAULTS["eval_steps"],
        help="evaluate every this many steps, besides before the first and at the end (0: only those)",
    )
    group.add_argument(
        "--eval_batch_size", type=int, default=_DEFAULTS["eval_batch_size"], help="sequences per evaluation batch"
    )
    group.add_argument("--no_eval", action="store_true", help="do not evaluate on held-out data")
    group.add_argument("--no_progress", action="store_true", help="hide progress bars")


def add_model_selection_arguments(parser: argparse.ArgumentParser, held_out: bool = True) -> None:
    """--save_best and the checkpoint probe flags: shared by ``finetune`` and ``simple`` (``held_out=False``: a
    stage without a held-out set, whose best model is the best by probe)."""
    group = parser.add_argument_group("choosing a checkpoint")
    best_by = (
        "lowest held-out MLM loss, or best probe accuracy with a probe"
        if held_out
        else "best probe accuracy (needs --probe_train and --probe_test)"
    )
    group.add_argument("--save_best", action="store_true", help=f"keep the best model as OUTPUT_DIR/best/: {best_by}")
    group.add_argument("--probe_train", type=Path, help="labelled sentences (CSV/JSON lines: text, label) to probe "
                       "every checkpoint with a downstream classifier (see `bert-domain-ft probe`)")  # fmt: skip
    group.add_argument("--probe_test", type=Path, help="labelled test sentences of the probe, same classes")
    group.add_argument("--probe_seeds", type=int, default=_DEFAULTS["probe_seeds"], help="probe classifiers per model")
    group.add_argument("--probe_epochs", type=int, default=_DEFAULTS["probe_epochs"], help="probe training epochs")


def _add_objective_and_new_models(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("objective, tokenizer, models from scratch, several corpora")
    group.add_argument(
        "--objective",
        choices=("auto", "nsp", "mlm"),
        default=_DEFAULTS["objective"],
        help="nsp: masked LM + next-sentence prediction (BERT); mlm: masked LM only; auto: the data's objective, "
        "or mlm when the model has no NSP head",
    )
    group.add_argument("--tokenizer", help="tokenizer directory to use instead of the model's (saved with the model)")
    group.add_argument(
        "--from_scratch",
        action="store_true",
        help="train a randomly initialised --model_type model (with --tokenizer) instead of --bert_model",
    )
    group.add_argument("--model_type", help="with --from_scratch: bert, roberta, distilbert, deberta-v2, …")
    group.add_argument(
        "--config_overrides",
        default=_DEFAULTS["config_overrides"],
        help="with --from_scratch: the new model's size, e.g. hidden_size=256,num_hidden_layers=4,"
        "num_attention_heads=4,intermediate_size=1024",
    )
    group.add_argument(
        "--batch_from_one_corpus",
        action="store_true",
        help="data from several corpora: each batch from a single corpus (default: corpora mixed within a batch)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_and_model(parser)
    _add_objective_and_new_models(parser)
    add_optimisation_arguments(parser)
    add_hardware_arguments(parser)
    _add_run_control(parser)
    add_model_selection_arguments(parser)


def config_from(arguments: argparse.Namespace) -> FinetuneConfig:
    return config_from_arguments(
        FinetuneConfig,
        arguments,
        do_eval=not arguments.no_eval,
        show_progress=not arguments.no_progress,
        cpu_kernels=not arguments.stock_kernels,
    )


def run(arguments: argparse.Namespace) -> int:
    config = config_from(arguments)
    from bert_domain_ft.training.recipe import finetune  # imports torch: only once the flags are known to be fine

    finetune(config)
    return 0


def classic_main(argv: Sequence[str] | None = None) -> int:
    """The ``finetune-on-pregenerated`` console script (the original script's name and flags)."""
    return run_classic_script("finetune-on-pregenerated", HELP, add_arguments, run, argv)
