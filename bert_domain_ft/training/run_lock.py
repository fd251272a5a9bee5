"""One writer per training output directory, under DDP too: rank 0 holds ``<output_dir>.lock`` for the run.

Only rank 0 writes ``output_dir``, so only rank 0 takes the lock (``output_lock.hold_output_lock``). Whether it
got it is broadcast, so when another run holds the directory every process raises the same ``UserError``
instead of the other ranks waiting forever at the next barrier.

    with hold_run_lock(context, config.output_dir, "finetune"):
        prepare_output_dir(config, context); ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import UserError
from ..output_lock import hold_output_lock
from .distributed import DistributedContext, broadcast_object


@contextmanager
def hold_run_lock(context: DistributedContext, output_dir: Path, command: str) -> Iterator[None]:
    """Hold the output lock on rank 0 for the ``with`` body; every rank raises rank 0's refusal, if any."""
    with ExitStack() as stack:
        refusal = None
        if context.is_main:
            try:
                stack.enter_context(hold_output_lock(Path(output_dir), command))
            except UserError as error:
                refusal = str(error)
        refusal = broadcast_object(context, refusal)
        if refusal is not None:
            raise UserError(refusal)
        yield
