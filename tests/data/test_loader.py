"""Epoch order, sharding and resumable plans; epoch sources; the background batch prefetcher."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from training_helpers import make_pregenerated

from bert_domain_ft.data.epoch_format import open_epoch, read_manifest
from bert_domain_ft.data.loader import (
    BatchPrefetcher,
    DatasetSource,
    PregeneratedSource,
    epoch_permutation,
    micro_batches_per_epoch,
    optimizer_steps_per_epoch,
    plan_epoch,
)
from bert_domain_ft.data.masking import DynamicMasking
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.pretraining import IGNORE_INDEX


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    return make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path_factory.mktemp("data") / "pregenerated", epochs=2)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch() -> None:
    assert np.array_equal(epoch_permutation(7, 3, 100), epoch_permutation(7, 3, 100))
    assert not np.array_equal(epoch_permutation(7, 3, 100), epoch_permutation(7, 4, 100))  # reshuffled per epoch
    assert not np.array_equal(epoch_permutation(7, 3, 100), epoch_permutation(8, 3, 100))
    assert sorted(epoch_permutation(7, 3, 100)) == list(range(100))


@settings(max_examples=60, deadline=None)
@given(
    num_instances=st.integers(1, 300),
    micro_batch_size=st.integers(1, 40),
    world_size=st.integers(1, 4),
    epoch=st.integers(0, 5),
)
def test_processes_together_see_every_instance_once_in_equally_many_batches(
    num_instances: int, micro_batch_size: int, world_size: int, epoch: int
) -> None:
    if num_instances < world_size:
        with pytest.raises(UserError, match="fewer than the"):
            plan_epoch(num_instances, micro_batch_size, 1, epoch, 0, world_size)
        return
    plans = [plan_epoch(num_instances, micro_batch_size, 1, epoch, rank, world_size) for rank in range(world_size)]
    seen = np.concatenate([batch for plan in plans for batch in plan])
    assert sorted(seen.tolist()) == list(range(num_instances))
    assert {len(plan) for plan in plans} == {micro_batches_per_epoch(num_instances, micro_batch_size, world_size)}
    assert all(len(batch) >= 1 for plan in plans for batch in plan)
    assert all(len(batch) <= micro_batch_size + 1 for plan in plans for batch in plan)


def test_plan_is_reproducible_so_resuming_at_batch_k_is_its_suffix() -> None:
    full = plan_epoch(500, 16, seed=3, epoch=2)
    again = plan_epoch(500, 16, seed=3, epoch=2)
    assert all(np.array_equal(a, b) for a, b in zip(full[7:], again[7:]))
    assert len(full) == 32 and len(full[-1]) == 500 - 31 * 16


def test_optimizer_steps_count_a_partial_accumulation_group() -> None:
    assert optimizer_steps_per_epoch(10, 3) == 4
    assert optimizer_steps_per_epoch(9, 3) == 3


def test_training_epochs_loop_over_fewer_data_epochs_with_one_warning(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = read_manifest(data_dir)
    with caplog.at_level(logging.WARNING):
        source = PregeneratedSource(data_dir, manifest, training_epochs=5)
        sizes = [source.epoch_size(epoch) for epoch in range(5)]
    warnings = [record for record in caplog.records if "reused" in record.getMessage()]
    assert len(warnings) == 1 and "2 epoch(s) of data but 5 training epochs" in warnings[0].getMessage()
    assert [source.data_epoch(epoch) for epoch in range(5)] == [0, 1, 0, 1, 0]
    assert sizes == [manifest["epochs"][epoch % 2]["num_instances"] for epoch in range(5)]


def test_pregenerated_batches_mark_unused_label_slots_as_ignored(data_dir: Path) -> None:
    manifest = read_manifest(data_dir)
    fetch = PregeneratedSource(data_dir, manifest, training_epochs=1).open_epoch(0)
    arrays = open_epoch(data_dir, manifest, 0)
    indices = np.array([5, 0, 17, 3])
    batch = fetch(indices)
    labels = batch["masked_lm_labels"]
    for row, index in enumerate(indices):
        count = int(arrays.num_masked[index])
        assert torch.equal(labels[row, :count], torch.from_numpy(arrays.masked_labels[index, :count].astype(np.int64)))
        assert (labels[row, count:] == IGNORE_INDEX).all()
    assert batch["next_sentence_label"].tolist() == arrays.is_random_next[indices].tolist()


def test_dataset_source_collates_instances_of_any_length() -> None:
    instances = [list(range(length)) for length in (3, 9, 5, 1)]

    def collate(rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(row) for row in rows)
        return {"input_ids": torch.tensor([row + [0] * (width - len(row)) for row in rows])}

    source = DatasetSource(lambda epoch: instances, collate)
    batch = source.open_epoch(0)(np.array([1, 3]))
    assert source.epoch_size(0) == 4 and batch["input_ids"].shape == (2, 9)


def test_prefetcher_yields_batches_in_plan_order() -> None:
    plan = [np.array([index]) for index in range(20)]
    with BatchPrefetcher(lambda indices: {"i": torch.from_numpy(indices)}, plan, torch.device("cpu")) as batches:
        assert [int(batch["i"]) for batch in batches] == list(range(20))
        assert batches.wait_seconds >= 0.0


def test_prefetcher_reraises_a_fetch_error_in_the_training_thread() -> None:
    def fetch(indices: np.ndarray) -> dict[str, torch.Tensor]:
        if indices[0] == 3:
            raise UserError("epoch_000/input_ids.npy: unreadable")
        return {"i": torch.from_numpy(indices)}

    plan = [np.array([index]) for index in range(10)]
    with pytest.raises(UserError, match="unreadable"), BatchPrefetcher(fetch, plan, torch.device("cpu")) as batches:
        list(batches)


def test_prefetcher_thread_ends_when_the_loop_stops_early() -> None:
    plan = [np.array([index]) for index in range(1000)]
    with BatchPrefetcher(lambda indices: {"i": torch.from_numpy(indices)}, plan, torch.device("cpu")) as batches:
        next(iter(batches))
    assert not any(thread.name == "batch-prefetch" and thread.is_alive() for thread in threading.enumerate())


def test_dynamic_masks_are_fresh_each_training_epoch_and_stable_within_one(
    tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path
) -> None:
    data = make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path / "dynamic", epochs=1, dynamic_masking=True)
    manifest = read_manifest(data)
    masking = DynamicMasking.from_manifest(manifest, seed=3)
    source = PregeneratedSource(data, manifest, training_epochs=2, masking=masking)
    indices = np.array([4, 1, 9, 30])
    first, again, next_epoch = (
        source.open_epoch(0)(indices),
        source.open_epoch(0)(indices),
        source.open_epoch(1)(indices),
    )
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["masked_lm_positions"], next_epoch["masked_lm_positions"])
    assert (first["masked_lm_labels"] != IGNORE_INDEX).any()
