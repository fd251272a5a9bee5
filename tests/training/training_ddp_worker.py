"""One process of the 2-process DDP test (launched by torch.distributed.run from test_training_ddp.py).

Records the instance indices this rank trains on per epoch (the head-only steps read the run's first batches, the
main phase the rest: each is read once) and its final weights, then exits.
Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 training_ddp_worker.py DATA MODEL OUT REPORTS
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from training_helpers import save_rank_weights

from bert_domain_ft.data import loader as training_data
from bert_domain_ft.training.config import FinetuneConfig
from bert_domain_ft.training.loop import TrainingLoop
from bert_domain_ft.training.recipe import finetune


def main() -> None:
    data, model, output, reports = (Path(argument) for argument in sys.argv[1:5])
    rank = int(os.environ["RANK"])
    seen: dict[int, list[int]] = {}
    open_epoch = training_data.PregeneratedSource.open_epoch

    def recording_open_epoch(self: training_data.PregeneratedSource, epoch: int) -> training_data.BatchFetcher:
        fetch = open_epoch(self, epoch)

        def recording_fetch(indices: np.ndarray) -> training_data.Batch:
            seen.setdefault(epoch, []).extend(int(index) for index in indices)
            return fetch(indices)

        return recording_fetch

    training_data.PregeneratedSource.open_epoch = recording_open_epoch  # type: ignore[method-assign]
    run = TrainingLoop.run

    def run_and_keep_weights(self: TrainingLoop, start):  # type: ignore[no-untyped-def]
        position = run(self, start)
        save_rank_weights(self.setup.model, reports, rank)
        return position

    TrainingLoop.run = run_and_keep_weights  # type: ignore[method-assign]
    config = FinetuneConfig(
        pregenerated_data=data,
        output_dir=output,
        bert_model=str(model),
        epochs=2,
        train_batch_size=16,
        logging_steps=3,
        show_progress=False,
        no_cuda=True,
    )
    finetune(config)
    (reports / f"indices-rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
