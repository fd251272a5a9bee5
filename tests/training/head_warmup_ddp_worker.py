"""One process of the 2-process head warm-up test (launched by torch.distributed.run from test_head_warmup_ddp.py).

Runs finetune from an encoder-only checkpoint up to the end of the head warm-up, saves this rank's weights, exits.
Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 head_warmup_ddp_worker.py DATA MODEL OUT REPORTS
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from training_helpers import save_rank_weights

from bert_domain_ft.training.config import FinetuneConfig
from bert_domain_ft.training.loop import TrainingLoop
from bert_domain_ft.training.recipe import finetune


def main() -> None:
    data, model, output, reports = (Path(argument) for argument in sys.argv[1:5])
    rank = int(os.environ["RANK"])

    def keep_weights_after_warmup(self: TrainingLoop, start):  # type: ignore[no-untyped-def]
        save_rank_weights(self.setup.model, reports, rank)
        return start  # the main phase is not what this test is about

    TrainingLoop.run = keep_weights_after_warmup  # type: ignore[method-assign]
    config = FinetuneConfig(
        pregenerated_data=data,
        output_dir=output,
        bert_model=str(model),
        epochs=1,
        train_batch_size=8,
        head_warmup_steps=4,
        logging_steps=2,
        do_eval=False,
        show_progress=False,
        no_cuda=True,
    )
    finetune(config)


if __name__ == "__main__":
    main()
