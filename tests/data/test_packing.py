"""Masked-LM-only pregeneration: full packing, the tokenizer's own special tokens, the document flag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bert_domain_ft.data.epoch_format import open_epoch, open_holdout, read_manifest
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
from bert_domain_ft.model.tokenizer import describe_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def bpe_tokenizer_dir(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A RoBERTa-style byte-level BPE tokenizer: <s> … </s>, no WordPiece pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer.train([str(tiny_corpus)], trainers.BpeTrainer(vocab_size=400, special_tokens=specials))
    directory = tmp_path_factory.mktemp("bpe")
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def generate(corpus: Path, tokenizer: Path, output: Path, **options) -> dict:
    config = PregenerateConfig(
        train_corpus=corpus, output_dir=output, tokenizer=str(tokenizer), epochs_to_generate=2, max_seq_len=64,
        show_progress=False, **{"holdout_fraction": 0.0, **options},
    )  # fmt: skip
    return pregenerate(config)


def test_auto_objective_is_mlm_for_a_bpe_tokenizer_and_rows_use_its_specials(
    tiny_corpus: Path, bpe_tokenizer_dir: Path, tmp_path: Path
) -> None:
    manifest = generate(tiny_corpus, bpe_tokenizer_dir, tmp_path)
    assert manifest["objective"] == "mlm"
    facts = describe_tokenizer(load_tokenizer(str(bpe_tokenizer_dir)), "bpe")
    assert (facts.cls_token_id, facts.sep_token_id, facts.pad_token_id) == (0, 2, 1)
    epoch = open_epoch(tmp_path, manifest, 0)
    assert epoch.is_random_next is None
    assert np.array_equal(epoch.segment_a_lengths, epoch.lengths)
    rows = np.array(epoch.input_ids)
    for i in range(epoch.num_instances):
        count = epoch.num_masked[i]
        rows[i, epoch.masked_positions[i, :count]] = epoch.masked_labels[i, :count]
    assert np.all(rows[:, 0] == facts.cls_token_id)
    assert np.all(rows[np.arange(len(rows)), epoch.lengths - 1] == facts.sep_token_id)
    assert np.all(epoch.lengths[:-1] == 64), "every sequence but the last is full"
    assert manifest["epochs"][0]["statistics"]["packing_fill"] > 0.98


def test_sequences_cross_documents_only_after_the_separator(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    crossing = generate(tiny_corpus, tiny_tokenizer_dir, tmp_path / "cross", objective="mlm", dynamic_masking=True)
    apart = generate(
        tiny_corpus, tiny_tokenizer_dir, tmp_path / "apart", objective="mlm", dynamic_masking=True,
        no_cross_document=True,
    )  # fmt: skip
    cross_epoch = open_epoch(tmp_path / "cross", crossing, 0)
    apart_epoch = open_epoch(tmp_path / "apart", apart, 0)
    assert cross_epoch.masked_positions is None, "dynamic masking stores no masks"
    separators_inside = lambda epoch: int((np.asarray(epoch.input_ids)[:, 1:-1] == 3).sum())  # noqa: E731
    assert separators_inside(cross_epoch) > 0
    # Apart: every row holds one document; its only [SEP] is the last token.
    assert np.all((np.asarray(apart_epoch.input_ids) == 3).sum(axis=1) == 1)
    assert crossing["epochs"][0]["statistics"]["packing_fill"] > 0.98
    assert apart["epochs"][0]["statistics"]["packing_fill"] < crossing["epochs"][0]["statistics"]["packing_fill"]
    # The same tokens go into both: packing loses nothing.
    assert crossing["epochs"][0]["statistics"]["num_tokens"] - 2 * cross_epoch.num_instances == (
        apart["epochs"][0]["statistics"]["num_tokens"]
        - 2 * apart_epoch.num_instances
        + crossing["corpus"]["documents"]
        - 1
    )


def test_mlm_epochs_differ_and_the_holdout_is_written(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    manifest = generate(tiny_corpus, tiny_tokenizer_dir, tmp_path, objective="mlm", holdout_fraction=0.1)
    first, second = (np.asarray(open_epoch(tmp_path, manifest, e).input_ids) for e in (0, 1))
    assert not np.array_equal(first, second)
    assert open_holdout(tmp_path) is not None and manifest["holdout"]["num_instances"] > 0
    assert read_manifest(tmp_path)["masking"] == "static"


def test_dynamic_masking_still_masks_the_holdout_once(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    manifest = generate(
        tiny_corpus, tiny_tokenizer_dir, tmp_path, objective="mlm", dynamic_masking=True, holdout_fraction=0.1
    )
    assert open_epoch(tmp_path, manifest, 0).masked_positions is None
    holdout = open_holdout(tmp_path)
    assert holdout is not None and holdout.masked_positions is not None and holdout.num_masked.min() >= 1
