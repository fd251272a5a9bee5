"""Collating pregenerated rows into model batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bert_domain_ft.data.epoch_format import open_epoch
from bert_domain_ft.data.loader import collate_rows
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate


def test_unused_label_slots_are_ignore_index_and_rows_keep_their_order(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    config = PregenerateConfig(
        train_corpus=tiny_corpus, output_dir=tmp_path, bert_model=str(tiny_tokenizer_dir), epochs_to_generate=1,
        max_seq_len=64, show_progress=False,
        holdout_fraction=0.0,
    )  # fmt: skip
    epoch = open_epoch(tmp_path, pregenerate(config), 0)
    indices = np.array([7, 2, 11, 5])
    batch = collate_rows(epoch, indices)
    labels = batch["masked_lm_labels"]
    counts = epoch.num_masked[indices]
    for row, count in enumerate(counts):
        assert torch.all(labels[row, count:] == -100), "uint16 labels must not wrap -100 to 65436"
        assert torch.equal(
            labels[row, :count], torch.as_tensor(epoch.masked_labels[indices[row], :count].astype(np.int64))
        )
        length = int(epoch.lengths[indices[row]])
        assert torch.equal(
            batch["input_ids"][row, :length], torch.as_tensor(epoch.input_ids[indices[row], :length].astype(np.int64))
        )
        assert int(batch["attention_mask"][row].sum()) == length
        assert int(batch["token_type_ids"][row].sum()) == length - int(epoch.segment_a_lengths[indices[row]])
    assert batch["input_ids"].shape[1] % 8 == 0
    assert torch.equal(batch["next_sentence_label"], torch.as_tensor(epoch.is_random_next[indices].astype(np.int64)))
