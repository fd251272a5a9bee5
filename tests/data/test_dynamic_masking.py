"""Batch-time (dynamic) masking: pregeneration's rules, fresh masks every epoch, the same masks on every rebuild."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bert_domain_ft.data.epoch_format import EpochArrays, open_epoch
from bert_domain_ft.data.loader import collate_rows
from bert_domain_ft.data.masking import DynamicMasking
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
from bert_domain_ft.model.tokenizer import load_tokenizer

MAX_SEQ_LEN = 64


def _pregenerate(corpus: Path, tokenizer_dir: Path, output_dir: Path, **options: Any) -> dict[str, Any]:
    config = PregenerateConfig(
        train_corpus=corpus, output_dir=output_dir, bert_model=str(tokenizer_dir), objective="mlm",
        dynamic_masking=True, epochs_to_generate=1, max_seq_len=MAX_SEQ_LEN, show_progress=False, **{"holdout_fraction": 0.0, **options},
    )  # fmt: skip
    return pregenerate(config)


@pytest.fixture(scope="module")
def unmasked(tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("dynamic")
    manifest = _pregenerate(tiny_corpus, tiny_tokenizer_dir, directory)
    return manifest, open_epoch(directory, manifest, 0)


def _batch(epoch: EpochArrays, masking: DynamicMasking, training_epoch: int, indices: np.ndarray):
    return collate_rows(epoch, indices, masking.for_epoch(training_epoch))


def test_the_data_is_stored_unmasked_and_the_batch_gets_masks(unmasked) -> None:
    manifest, epoch = unmasked
    assert manifest["masking"] == "dynamic" and epoch.masked_positions is None
    masking = DynamicMasking.from_manifest(manifest, seed=3)
    batch = _batch(epoch, masking, 0, np.arange(8))
    assert {"masked_lm_positions", "masked_lm_labels"} <= batch.keys()
    assert "masked_lm_labels" not in collate_rows(epoch, np.arange(8)), "no masker, no masks"


def test_two_epochs_see_different_masks_and_a_rebuilt_batch_the_same(unmasked) -> None:
    manifest, epoch = unmasked
    masking = DynamicMasking.from_manifest(manifest, seed=3)
    indices = np.array([9, 2, 30, 14])
    first = _batch(epoch, masking, 0, indices)
    again = _batch(epoch, masking, 0, indices)
    later = _batch(epoch, masking, 1, indices)
    assert all(torch.equal(first[name], again[name]) for name in first), "exact resume needs identical batches"
    assert not torch.equal(first["masked_lm_positions"], later["masked_lm_positions"])
    other_seed = _batch(epoch, DynamicMasking.from_manifest(manifest, seed=4), 0, indices)
    assert not torch.equal(first["masked_lm_positions"], other_seed["masked_lm_positions"])
    shuffled = _batch(epoch, masking, 0, indices[[2, 0, 3, 1]])
    assert torch.equal(shuffled["input_ids"], first["input_ids"][[2, 0, 3, 1]]), "masks follow the instance"


def test_masks_follow_the_80_10_10_rule_and_never_touch_special_tokens(unmasked) -> None:
    manifest, epoch = unmasked
    facts = manifest["tokenizer"]
    special = set(facts["special_token_ids"])
    masking = DynamicMasking.from_manifest(manifest, seed=0)
    outcomes = {"mask": 0, "kept": 0, "random": 0}
    for training_epoch in range(6):
        for start in range(0, epoch.num_instances - 16, 16):
            indices = np.arange(start, start + 16)
            batch = _batch(epoch, masking, training_epoch, indices)
            original = np.asarray(epoch.input_ids[indices, : batch["input_ids"].shape[1]], dtype=np.int64)
            masked = batch["input_ids"].numpy()
            for row, index in enumerate(indices):
                labels = batch["masked_lm_labels"][row].numpy()
                real = labels != -100
                positions = batch["masked_lm_positions"][row].numpy()[real]
                length = int(epoch.lengths[index])
                expected = min(manifest["max_predictions_per_seq"], max(1, round(length * 0.15)))
                assert real.sum() == expected
                assert np.all(np.diff(positions) > 0) and np.all(positions < length)
                assert np.array_equal(labels[real], original[row, positions])
                assert not special & set(labels[real].tolist()), "a special token was masked"
                untouched = np.setdiff1d(np.arange(masked.shape[1]), positions)
                assert np.array_equal(masked[row, untouched], original[row, untouched])
                values = masked[row, positions]
                outcomes["mask"] += int((values == facts["mask_token_id"]).sum())
                outcomes["kept"] += int((values == labels[real]).sum())
                outcomes["random"] += int(((values != facts["mask_token_id"]) & (values != labels[real])).sum())
                assert not special & set(values[values != facts["mask_token_id"]].tolist())
    total = sum(outcomes.values())
    assert total > 5000
    assert outcomes["mask"] / total == pytest.approx(0.8, abs=0.02)
    # A random replacement can hit the original token: "kept" is 10% plus a little.
    assert outcomes["kept"] / total == pytest.approx(0.1, abs=0.02)
    assert outcomes["random"] / total == pytest.approx(0.1, abs=0.02)


def test_whole_word_dynamic_masking_masks_every_piece_of_a_word(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    manifest = _pregenerate(tiny_corpus, tiny_tokenizer_dir, tmp_path, do_whole_word_mask=True)
    epoch = open_epoch(tmp_path, manifest, 0)
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    masking = DynamicMasking.from_manifest(manifest, seed=0, tokenizer=tokenizer)
    assert masking.whole_word
    continuation = masking.tables.is_continuation
    indices = np.arange(min(64, epoch.num_instances))
    batch = _batch(epoch, masking, 0, indices)
    pieces_checked = 0
    for row, index in enumerate(indices):
        original = np.asarray(epoch.input_ids[index], dtype=np.int64)
        chosen = set(batch["masked_lm_positions"][row][batch["masked_lm_labels"][row] != -100].tolist())
        for position in range(1, int(epoch.lengths[index])):
            if continuation[original[position]] and not masking.tables.is_special[original[position - 1]]:
                # A continuation piece is chosen exactly when the piece before it (same word) is.
                assert (position in chosen) == (position - 1 in chosen)
                pieces_checked += 1
    assert pieces_checked > 50
    with pytest.raises(Exception, match="tokenizer"):
        DynamicMasking.from_manifest(manifest, seed=0)
