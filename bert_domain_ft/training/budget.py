"""How a run's optimizer steps divide: the head-only steps of fresh heads, the main phase, and the plan line.

The run's steps are ``--max_steps``, or the steps of its epochs (``loop.total_optimizer_steps``). A checkpoint
without its pretraining heads first trains only them, encoder frozen (``loop.TrainingLoop.warm_up_heads``); those
head-only steps are part of the run's steps, never added to them (``plan_head_warmup``: a share of them when
automatic, a request of all of them refused), and the main phase, with its learning-rate schedule, has the rest.
The head-only steps read the run's first micro-batches (``head_only_batches``), and the main phase reads on from
there (``main_phase_start``), so the epochs are read once whatever the split. Before the first step one line says
all of it (``describe_plan``): "plan: 142 steps (--max_steps): 35 head-only, 107 main; held-out evaluations …".

    plan = plan_head_warmup(None, fresh_heads=("mlm",), with_nsp=False, budget_steps=142)   # 35 head-only steps
    print(describe_plan(142, plan.steps, budget_words(142, 3, plan.steps), evaluation_steps(107, 20)))
"""

from __future__ import annotations

from dataclasses import dataclass

from bert_domain_ft.data.loader import EpochSource, micro_batches_per_epoch, optimizer_steps_per_epoch
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.pretraining import MLM_HEAD, NSP_HEAD
from bert_domain_ft.training.checkpoints import TrainingPosition


@dataclass(frozen=True)
class HeadWarmupPlan:
    """How many head-only steps (of the run's), for which heads, and why (the one log line)."""

    steps: int
    heads: tuple[str, ...]
    reason: str


NO_HEAD_WARMUP = HeadWarmupPlan(0, (), "no head-only steps")


# Automatic length: AUTO_FRACTION of the run's optimizer steps, at least AUTO_MIN_STEPS, at most AUTO_MAX_STEPS,
# and never more than AUTO_MAX_SHARE of them: the head-only steps are part of the run's, not added to it.
# Measured on MiniLM-L6 with the demo corpus (cached encoder features, lr 3e-3): a fresh MLM head's held-out loss
# goes 10.8 → 6.7 in 26 steps, 6.5 in 60, 6.3 in 160: most of the way in the first few dozen steps. A quarter of a
# short run reaches that knee (25 of 100 steps) and leaves three quarters to the encoder; from 250 steps on the 20%
# rule is the smaller, as before. A head-only step costs about half a full one (forward only through the encoder).
AUTO_FRACTION = 0.2
AUTO_MIN_STEPS = 50
AUTO_MAX_STEPS = 1000
AUTO_MAX_SHARE = 0.25


def auto_warmup_steps(budget_steps: int) -> int:
    """``AUTO_FRACTION`` of the run's ``budget_steps``, clamped to [``AUTO_MIN_STEPS``, ``AUTO_MAX_STEPS``], and at
    most ``AUTO_MAX_SHARE`` of them (rounded down: 1 of 4, none of 3)."""
    rule = min(max(round(AUTO_FRACTION * budget_steps), AUTO_MIN_STEPS), AUTO_MAX_STEPS)
    return min(rule, int(AUTO_MAX_SHARE * budget_steps))


def plan_head_warmup(
    requested: int | None,
    fresh_heads: tuple[str, ...],
    with_nsp: bool,
    budget_steps: int,
    fresh_rows: int = 0,
    budget_flag: str = "--max_steps",
) -> HeadWarmupPlan:
    """The head-only steps for ``--head_warmup_steps requested`` (None: automatic) out of the run's
    ``budget_steps``, given the heads the checkpoint lacked and the number of fresh vocabulary rows; a request of
    ``budget_steps`` or more is a ``UserError`` naming ``budget_flag`` (where the budget comes from).

    The NSP head is left out when the data has no NSP labels (it is frozen and unused then).
    """
    if requested and requested >= budget_steps:
        raise UserError(
            f"--head_warmup_steps {requested}: the head-only steps are part of the run's {budget_steps} optimizer "
            f"steps ({budget_flag}), so there must be fewer of them; lower --head_warmup_steps (or leave it out: "
            f"automatic), or raise {budget_flag}"
        )
    heads = tuple(head for head in fresh_heads if head == MLM_HEAD or (head == NSP_HEAD and with_nsp))
    names = " and ".join(
        [head.upper() for head in heads] + ([f"{fresh_rows} new vocabulary rows"] if fresh_rows else [])
    )
    if not heads and not fresh_rows:
        return HeadWarmupPlan(0, (), "no head-only steps: no pretraining head starts fresh on a trained encoder")
    if requested == 0:
        return HeadWarmupPlan(0, heads, f"no head-only steps (--head_warmup_steps 0): the fresh {names} train at once")
    if requested is not None:
        return HeadWarmupPlan(requested, heads, f"head-only steps: {requested} (--head_warmup_steps)")
    steps = auto_warmup_steps(budget_steps)
    if steps == 0:
        return HeadWarmupPlan(0, heads, f"no head-only steps: {budget_steps} steps are too few; the fresh {names} "
                                        "train at once")  # fmt: skip
    why = (f"{AUTO_FRACTION:.0%} of the {budget_steps} steps, at least {AUTO_MIN_STEPS} and at most {AUTO_MAX_STEPS}, "
           f"but at most {AUTO_MAX_SHARE:.0%} of them")  # fmt: skip
    return HeadWarmupPlan(steps, heads, f"head-only steps: {steps} (automatic: {why})")


PLAN_STEPS_LISTED = 8  # evaluation steps the plan line lists in full; longer lists show their ends


def evaluation_steps(main_steps: int, eval_steps: int) -> list[int]:
    """The main steps after which the held-out set is evaluated: 0, every ``eval_steps`` (0: none), the last."""
    between = range(eval_steps, main_steps, eval_steps) if eval_steps else range(0)
    return [0, *between, main_steps] if main_steps else [0]


def describe_plan(
    total_steps: int, head_only_steps: int, budget: str, evaluations: list[int] | None, estimate_follows: bool = True
) -> str:
    """The ``plan:`` line a run starts with: its steps (``budget`` says where they come from), how many are
    head-only and main, the main steps ``evaluations`` of the held-out set (None: there is none)."""
    line = f"plan: {total_steps} steps ({budget}): {head_only_steps} head-only, {total_steps - head_only_steps} main; "
    if evaluations is None:
        line += "no held-out evaluations"
    else:
        shown = [str(step) for step in evaluations]
        if len(shown) > PLAN_STEPS_LISTED:
            shown = [*shown[:3], "…", *shown[-2:]]
        before = "before the head-only steps and " if head_only_steps else ""
        line += f"held-out evaluations {before}at main steps {', '.join(shown)}"
    return line + ("; the time follows once the first steps are measured" if estimate_follows else "")


def budget_words(max_steps: int, epochs: int, head_only_steps: int) -> str:
    """Where a run's steps come from, for the plan line: --max_steps, or its epochs (the head-only steps inside)."""
    if max_steps:
        return "--max_steps"
    inside = "them" if epochs > 1 else "it"
    epochs_words = f"{epochs} epoch" + ("s" if epochs > 1 else "")
    return f"{epochs_words}; the head-only steps are inside {inside}" if head_only_steps else epochs_words


def head_only_batches(
    source: EpochSource, steps: int, micro_batch_size: int, accumulation: int, world_size: int
) -> list[tuple[int, int]]:
    """(epoch, micro-batches) that the run's first ``steps`` optimizer steps read: whole epochs, then the first
    accumulation groups of the next. The head-only steps read them, and the main phase reads on from there."""
    spans: list[tuple[int, int]] = []
    epoch = 0
    while steps > 0:
        micro_batches = micro_batches_per_epoch(source.epoch_size(epoch), micro_batch_size, world_size)
        in_epoch = optimizer_steps_per_epoch(micro_batches, accumulation)
        if in_epoch == 0:
            break
        taken = min(steps, in_epoch)
        spans.append((epoch, micro_batches if taken == in_epoch else taken * accumulation))
        steps, epoch = steps - taken, epoch + 1
    return spans


def main_phase_start(
    spans: list[tuple[int, int]], source: EpochSource, micro_batch_size: int, world_size: int
) -> TrainingPosition:
    """Where a fresh run's main phase starts: global step 0, right after the micro-batches of ``spans``."""
    if not spans:
        return TrainingPosition()
    epoch, read = spans[-1]
    if read == micro_batches_per_epoch(source.epoch_size(epoch), micro_batch_size, world_size):
        return TrainingPosition(0, epoch + 1, 0)
    return TrainingPosition(0, epoch, read)
