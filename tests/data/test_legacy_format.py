"""The original script's JSON epochs: converted once to memmaps, exactly, and trainable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from training_helpers import make_pregenerated, quick_config, read_metrics

from bert_domain_ft.data.epoch_format import open_epoch, read_manifest
from bert_domain_ft.data.legacy_format import CONVERTED_DIRECTORY, convert_legacy_directory, is_legacy_directory
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.tokenizer import describe_tokenizer, load_tokenizer
from bert_domain_ft.training.recipe import finetune

NAMES = ("input_ids", "lengths", "segment_a_lengths", "num_masked", "is_random_next")


@pytest.fixture(scope="module")
def source_data(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path, tiny_bert_dir: Path) -> Path:
    return make_pregenerated(tiny_corpus, tiny_bert_dir, tmp_path_factory.mktemp("data") / "pregenerated", epochs=2)


def write_legacy(source: Path, destination: Path, tokenizer_dir: Path, rows: int = 60) -> Path:
    """The first ``rows`` instances of each epoch of ``source``, written as the original script did."""
    destination.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(source)
    id_to_token = {index: token for token, index in load_tokenizer(str(tokenizer_dir)).get_vocab().items()}
    for epoch_index in range(len(manifest["epochs"])):
        epoch = open_epoch(source, manifest, epoch_index)
        lines = []
        for row in range(rows):
            length, segment_a, count = (
                int(epoch.lengths[row]),
                int(epoch.segment_a_lengths[row]),
                int(epoch.num_masked[row]),
            )
            instance = {
                "tokens": [id_to_token[int(i)] for i in epoch.input_ids[row, :length]],
                "segment_ids": [0] * segment_a + [1] * (length - segment_a),
                "is_random_next": bool(epoch.is_random_next[row]),
                "masked_lm_positions": [int(p) for p in epoch.masked_positions[row, :count]],
                "masked_lm_labels": [id_to_token[int(i)] for i in epoch.masked_labels[row, :count]],
            }
            lines.append(json.dumps(instance))
        (destination / f"epoch_{epoch_index}.json").write_text("\n".join(lines) + "\n")
        metrics = {"num_training_examples": rows, "max_seq_len": manifest["max_seq_len"]}
        (destination / f"epoch_{epoch_index}_metrics.json").write_text(json.dumps(metrics))
    return destination


def _convert(legacy: Path, tokenizer_dir: Path) -> Path:
    tokenizer = load_tokenizer(str(tokenizer_dir))
    return convert_legacy_directory(legacy, tokenizer, describe_tokenizer(tokenizer, str(tokenizer_dir)), False)


def test_conversion_reproduces_the_arrays_exactly(tmp_path: Path, source_data: Path, tiny_bert_dir: Path) -> None:
    legacy = write_legacy(source_data, tmp_path / "legacy", tiny_bert_dir)
    assert is_legacy_directory(legacy)
    converted = _convert(legacy, tiny_bert_dir)
    assert converted == legacy / CONVERTED_DIRECTORY
    original_manifest, manifest = read_manifest(source_data), read_manifest(converted)
    assert manifest["tokenizer"] == original_manifest["tokenizer"] and len(manifest["epochs"]) == 2
    for index in range(2):
        original, ours = open_epoch(source_data, original_manifest, index), open_epoch(converted, manifest, index, True)
        for name in NAMES:
            expected = getattr(original, name)[:60]
            if name == "is_random_next":  # the original format has no "no NSP label": write_legacy made it true
                expected = np.minimum(expected, 1)
            assert np.array_equal(getattr(ours, name), expected), name
        width = ours.masked_positions.shape[1]
        assert np.array_equal(ours.masked_positions, original.masked_positions[:60, :width])
        assert np.array_equal(ours.masked_labels, original.masked_labels[:60, :width])


def test_conversion_happens_once_and_again_when_the_files_change(
    tmp_path: Path, source_data: Path, tiny_bert_dir: Path
) -> None:
    legacy = write_legacy(source_data, tmp_path / "legacy", tiny_bert_dir, rows=10)
    first = _convert(legacy, tiny_bert_dir)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert (_convert(legacy, tiny_bert_dir) / "manifest.json").stat().st_mtime_ns == stamp
    write_legacy(source_data, legacy, tiny_bert_dir, rows=12)
    assert read_manifest(_convert(legacy, tiny_bert_dir))["epochs"][0]["num_instances"] == 12


def test_unknown_token_names_file_and_line(tmp_path: Path, source_data: Path, tiny_bert_dir: Path) -> None:
    legacy = write_legacy(source_data, tmp_path / "legacy", tiny_bert_dir, rows=5)
    lines = (legacy / "epoch_1.json").read_text().splitlines()
    instance = json.loads(lines[2])
    instance["tokens"][1] = "zebra"
    lines[2] = json.dumps(instance)
    (legacy / "epoch_1.json").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"epoch_1\.json:3: token 'zebra' is not in the model's vocabulary"):
        _convert(legacy, tiny_bert_dir)
    assert not (legacy / CONVERTED_DIRECTORY).exists()


def test_instance_count_must_match_the_metrics_file(tmp_path: Path, source_data: Path, tiny_bert_dir: Path) -> None:
    legacy = write_legacy(source_data, tmp_path / "legacy", tiny_bert_dir, rows=5)
    (legacy / "epoch_0_metrics.json").write_text(json.dumps({"num_training_examples": 7, "max_seq_len": 64}))
    with pytest.raises(UserError, match="5 instances but epoch_0_metrics.json says 7"):
        _convert(legacy, tiny_bert_dir)


def test_finetune_trains_on_the_original_format(tmp_path: Path, source_data: Path, tiny_bert_dir: Path) -> None:
    legacy = write_legacy(source_data, tmp_path / "legacy", tiny_bert_dir)
    output = finetune(quick_config(legacy, tiny_bert_dir, tmp_path / "out", train_batch_size=16, epochs=1))
    assert (output / "model.safetensors").is_file()
    assert [record["step"] for record in read_metrics(output)][-1] == 4  # 60 instances / 16 per step
