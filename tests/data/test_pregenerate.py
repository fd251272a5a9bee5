"""Pregeneration end to end: the format, determinism across workers and memory modes, errors, the classic CLI."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bert_domain_ft.cli import main
from bert_domain_ft.cli import pregenerate_training_data as classic_main
from bert_domain_ft.data.document_store import build_document_store
from bert_domain_ft.data.epoch_format import NO_NSP_LABEL, open_epoch, read_manifest
from bert_domain_ft.data.loader import collate_rows
from bert_domain_ft.data.masking import IGNORE_INDEX
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.tokenizer import describe_tokenizer, load_tokenizer

EPOCH_FILES = (
    "input_ids",
    "lengths",
    "segment_a_lengths",
    "masked_positions",
    "masked_labels",
    "num_masked",
    "is_random_next",
)


def run(corpus: Path, tokenizer: Path, output: Path, **options) -> dict:
    settings = {"epochs_to_generate": 2, "max_seq_len": 64, "show_progress": False, **options}
    return pregenerate(
        PregenerateConfig(
            train_corpus=corpus, output_dir=output, bert_model=str(tokenizer), **{"holdout_fraction": 0.0, **settings}
        )
    )


def epoch_bytes(output: Path, epoch: int) -> dict[str, bytes]:
    directory = output / f"epoch_{epoch:03d}"
    return {name: (directory / f"{name}.npy").read_bytes() for name in EPOCH_FILES}


@pytest.fixture(scope="module")
def generated(tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("pregenerated")
    run(tiny_corpus, tiny_tokenizer_dir, output, epochs_to_generate=3)
    return output


def unmasked_rows(epoch) -> np.ndarray:
    rows = np.array(epoch.input_ids)
    for i in range(epoch.num_instances):
        count = epoch.num_masked[i]
        rows[i, epoch.masked_positions[i, :count]] = epoch.masked_labels[i, :count]
    return rows


def test_manifest_describes_epochs_and_arrays_open_as_memmaps(generated: Path) -> None:
    manifest = read_manifest(generated)
    assert manifest["objective"] == "nsp" and manifest["max_seq_len"] == 64 and len(manifest["epochs"]) == 3
    epoch = open_epoch(generated, manifest, 2, verify_checksum=True)
    assert isinstance(epoch.input_ids, np.memmap) and epoch.input_ids.dtype == np.uint16
    assert epoch.input_ids.shape == (manifest["epochs"][2]["num_instances"], 64)
    assert epoch.masked_positions.shape[1] == manifest["max_predictions_per_seq"]


def test_instances_fit_and_have_the_bert_layout(generated: Path, tiny_tokenizer_dir: Path) -> None:
    facts = describe_tokenizer(load_tokenizer(str(tiny_tokenizer_dir)), "tiny")
    manifest = read_manifest(generated)
    epoch = open_epoch(generated, manifest, 0)
    rows = unmasked_rows(epoch)
    index = np.arange(epoch.num_instances)
    assert np.all(epoch.lengths <= 64)
    assert np.all(rows[:, 0] == facts.cls_token_id)
    assert np.all(rows[index, epoch.segment_a_lengths - 1] == facts.sep_token_id)
    assert np.all(rows[index, epoch.lengths - 1] == facts.sep_token_id)
    assert np.all(rows[np.arange(64)[None, :] >= epoch.lengths[:, None]] == facts.pad_token_id)
    # Exactly three special tokens per instance: packing never glues in stray [CLS]/[SEP].
    special = np.isin(rows, facts.special_token_ids) & (rows != facts.pad_token_id)
    assert np.all(special.sum(axis=1) == 3)


def test_pairs_reconstruct_from_the_document_store(
    generated: Path, tiny_corpus: Path, tiny_tokenizer_dir: Path
) -> None:
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    store = build_document_store(tiny_corpus, tokenizer, describe_tokenizer(tokenizer, "tiny"), show_progress=False)
    documents = [store.document_tokens(d).tobytes() for d in range(store.num_documents)]

    def documents_containing(segment: np.ndarray) -> set[int]:
        needle = segment.astype(np.uint16).tobytes()
        return {d for d, text in enumerate(documents) if _aligned_find(text, needle)}

    epoch = open_epoch(generated, read_manifest(generated), 1)
    rows = unmasked_rows(epoch)
    for i in range(epoch.num_instances):
        a = rows[i, 1 : epoch.segment_a_lengths[i] - 1]
        b = rows[i, epoch.segment_a_lengths[i] : epoch.lengths[i] - 1]
        docs_a, docs_b = documents_containing(a), documents_containing(b)
        assert docs_a and docs_b, f"instance {i}: A or B is not a contiguous run of one document"
        if epoch.is_random_next[i]:
            assert docs_b - docs_a or docs_a - docs_b, f"instance {i}: random B must come from another document"
        else:
            assert docs_a & docs_b, f"instance {i}: 'is next' B must come from A's document"


def _aligned_find(haystack: bytes, needle: bytes) -> bool:
    start = haystack.find(needle)
    while start != -1:
        if start % 2 == 0:
            return True
        start = haystack.find(needle, start + 1)
    return False


def test_statistics_are_sane_and_recorded(generated: Path) -> None:
    for record in read_manifest(generated)["epochs"]:
        statistics = record["statistics"]
        assert 0.4 < statistics["random_next_fraction"] < 0.7
        assert statistics["packing_fill"] > 0.7
        assert 3 < statistics["mean_masked_per_instance"] <= 20


def test_instances_without_an_nsp_label_reach_the_loss_as_ignored_and_the_statistics_count_them(
    generated: Path,
) -> None:
    manifest = read_manifest(generated)
    epoch = open_epoch(generated, manifest, 0)
    labels = np.asarray(epoch.is_random_next).astype(np.int64)
    unlabelled = labels == NO_NSP_LABEL
    assert 0 < unlabelled.sum() < len(labels)  # the tiny corpus has one-sentence documents and chunks
    statistics = manifest["epochs"][0]["statistics"]
    assert statistics["mlm_only_instances"] == int(unlabelled.sum())
    assert statistics["random_next_fraction"] == pytest.approx(float(labels[~unlabelled].mean()))
    batch = collate_rows(epoch, np.arange(len(labels)))
    expected = np.where(unlabelled, IGNORE_INDEX, labels).astype(np.int64)
    assert np.array_equal(batch["next_sentence_label"].numpy(), expected)


def test_epochs_of_format_version_one_still_load_with_their_label_range(generated: Path, tmp_path: Path) -> None:
    older = tmp_path / "v1"
    shutil.copytree(generated, older)
    manifest = json.loads((older / "manifest.json").read_text(encoding="utf-8"))
    manifest["format_version"] = 1  # version 1 had labels 0 and 1 only
    (older / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    labels = np.load(older / "epoch_000" / "is_random_next.npy", mmap_mode="r+")
    labels[labels == NO_NSP_LABEL] = 1
    labels.flush()
    del labels
    epoch = open_epoch(older, read_manifest(older), 0)
    assert set(np.unique(epoch.is_random_next).tolist()) == {0, 1}
    labels = np.load(older / "epoch_001" / "is_random_next.npy", mmap_mode="r+")
    labels[labels == 0] = 1
    labels[5] = NO_NSP_LABEL
    labels.flush()
    del labels
    with pytest.raises(UserError, match=r"is_random_next.npy: row 5 holds 2, not a next-sentence label \(0 or 1\)"):
        open_epoch(older, read_manifest(older), 1)
    manifest["format_version"] = 3
    (older / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(UserError, match="format version 3"):
        read_manifest(older)


def test_each_epoch_draws_differently(generated: Path) -> None:
    assert epoch_bytes(generated, 0)["input_ids"] != epoch_bytes(generated, 1)["input_ids"]


def test_same_seed_gives_identical_bytes_across_workers_and_memory_modes(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    run(tiny_corpus, tiny_tokenizer_dir, tmp_path / "one", seed=7)
    run(tiny_corpus, tiny_tokenizer_dir, tmp_path / "two", seed=7, num_workers=2, reduce_memory=True)
    run(tiny_corpus, tiny_tokenizer_dir, tmp_path / "other", seed=8)
    for epoch in (0, 1):
        assert epoch_bytes(tmp_path / "one", epoch) == epoch_bytes(tmp_path / "two", epoch)
        assert epoch_bytes(tmp_path / "one", epoch) != epoch_bytes(tmp_path / "other", epoch)
    assert not (tmp_path / "two" / "document_store.partial").exists(), "the on-disk store is cleaned up"


def test_many_shards_give_the_same_bytes_with_two_workers(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bert_domain_ft.data import epoch_writer

    monkeypatch.setattr(epoch_writer, "TOKENS_PER_SHARD", 500)  # ~20 shards per epoch
    run(tiny_corpus, tiny_tokenizer_dir, tmp_path / "one")
    run(tiny_corpus, tiny_tokenizer_dir, tmp_path / "two", num_workers=2)
    assert epoch_bytes(tmp_path / "one", 1) == epoch_bytes(tmp_path / "two", 1)


def test_whole_word_masking_keeps_words_whole(tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir))
    continuation = {i for token, i in tokenizer.get_vocab().items() if token.startswith("##")}
    run(tiny_corpus, tiny_tokenizer_dir, tmp_path, do_whole_word_mask=True, epochs_to_generate=1)
    epoch = open_epoch(tmp_path, read_manifest(tmp_path), 0)
    rows = unmasked_rows(epoch)
    split_words = 0
    for i in range(epoch.num_instances):
        chosen = set(epoch.masked_positions[i, : epoch.num_masked[i]].tolist())
        for position in range(2, epoch.lengths[i] - 1):
            if rows[i, position] in continuation and position - 1 != epoch.segment_a_lengths[i] - 1:
                split_words += (position in chosen) != (position - 1 in chosen)
    assert split_words == 0


def test_classic_flags_of_the_original_script_work(tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    status = classic_main(
        [
            "--train_corpus", str(tiny_corpus), "--output_dir", str(tmp_path / "out"),
            "--bert_model", str(tiny_tokenizer_dir), "--do_lower_case", "--do_whole_word_mask", "--reduce_memory",
            "--num_workers", "2", "--epochs_to_generate", "2", "--max_seq_len", "32", "--short_seq_prob", "0.2",
            "--masked_lm_prob", "0.2", "--max_predictions_per_seq", "6", "--seed", "3", "--no_progress",
        ]
    )  # fmt: skip
    assert status == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest["max_seq_len"] == 32 and manifest["generation"]["masked_lm_prob"] == 0.2
    assert len(manifest["epochs"]) == 2


def test_the_manifest_records_the_command_line_that_wrote_it(
    generated: Path, tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arguments = ["pregenerate", "--train_corpus", str(tiny_corpus), "--bert_model", str(tiny_tokenizer_dir),
                 "--output_dir", str(tmp_path / "out"), "--epochs_to_generate", "1", "--max_seq_len", "32",
                 "--no_progress"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["bert-domain-ft", *arguments])  # as the console script starts
    assert main(arguments) == 0
    assert read_manifest(tmp_path / "out")["command"] == shlex.join(["bert-domain-ft", *arguments])
    assert read_manifest(generated)["command"] is None  # pregenerate() called from Python: no command line


# Bad input: one clear message naming the file (and line), exit status 2 from the command line.


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "corpus is empty"),
        (b"Only one document.\nWith two sentences.\n", "only one document"),
        (b"\n\n  \n", "no document"),
        (b"First document.\n\nSecond \xff document.\n", "corpus.txt:3: byte 8 of this line is not valid UTF-8"),
    ],
)
def test_bad_corpora_get_one_line_errors(
    content: bytes, expected: str, tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus = write(tmp_path / "corpus.txt", content)
    status = classic_main(
        ["--train_corpus", str(corpus), "--output_dir", str(tmp_path / "out"), "--bert_model", str(tiny_tokenizer_dir)]
    )
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 2 and expected in message and str(tmp_path) in message
    assert "Traceback" not in capsys.readouterr().err


def test_missing_corpus_is_named(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.txt: corpus file not found"):
        run(tmp_path / "missing.txt", tiny_tokenizer_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is created before the input is known to be good"


def test_crlf_and_blank_runs_are_one_document_break(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    corpus = write(tmp_path / "c.txt", b"\xef\xbb\xbfThe kernel.\r\nThe page.\r\n\r\n\r\n \r\nA lock.\r\nA file.\r\n")
    manifest = run(corpus, tiny_tokenizer_dir, tmp_path / "out", epochs_to_generate=1)
    assert manifest["corpus"]["documents"] == 2 and manifest["corpus"]["sentences"] == 4


def cli(corpus: Path, tokenizer: Path, output: Path | str, *flags: str) -> list[str]:
    """`bert-domain-ft pregenerate` of one short epoch."""
    return ["pregenerate", "--train_corpus", str(corpus), "--bert_model", str(tokenizer), "--output_dir",
            str(output), "--epochs_to_generate", "1", "--max_seq_len", "64", "--no_progress", *flags]  # fmt: skip


def test_an_output_directory_holding_the_users_files_is_refused_naming_them(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    (output / "effective_config.yaml").write_text("mine: 1\n")
    assert main(cli(tiny_corpus, tiny_tokenizer_dir, output)) == 2
    error = capsys.readouterr().err
    assert "keep.txt" in error and "effective_config.yaml" in error and "--overwrite" in error
    assert (output / "effective_config.yaml").read_text() == "mine: 1\n"
    with caplog.at_level(logging.WARNING):
        assert main(cli(tiny_corpus, tiny_tokenizer_dir, output, "--overwrite")) == 0
    deleting = [record.getMessage() for record in caplog.records if "deleting" in record.getMessage()]
    assert len(deleting) == 1 and "keep.txt" in deleting[0] and "effective_config.yaml" in deleting[0], deleting
    assert not (output / "keep.txt").exists() and (output / "manifest.json").is_file()


def test_overwrite_swaps_the_new_data_in_whole_over_a_symlinked_epoch(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old data stays whole until the new is in place: no manifest deleted first, a link unlinked, not followed."""
    output, moved = tmp_path / "out", tmp_path / "moved"
    assert main(cli(tiny_corpus, tiny_tokenizer_dir, output, "--epochs_to_generate", "2")) == 0
    (output / "epoch_001").rename(moved)
    (output / "epoch_001").symlink_to(moved)
    kept = {path.name: path.read_bytes() for path in moved.iterdir()}
    assert main(cli(tiny_corpus, tiny_tokenizer_dir, output, "--overwrite", "--seed", "7")) == 0, capsys.readouterr()
    manifest = read_manifest(output)
    assert manifest["generation"]["seed"] == 7 and len(manifest["epochs"]) == 1
    assert sorted(path.name for path in output.glob("epoch_*")) == ["epoch_000"]
    assert {path.name: path.read_bytes() for path in moved.iterdir()} == kept, "the link's target is left alone"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["moved", "out"], "nothing left beside"


def test_a_failed_swap_leaves_the_previous_data_whole(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out"
    run(tiny_corpus, tiny_tokenizer_dir, output, epochs_to_generate=2, seed=1)
    before = {str(path.relative_to(output)): path.read_bytes() for path in output.rglob("*") if path.is_file()}
    real_replace = os.replace

    def failing_publish(source: object, target: object) -> None:
        staging = output.with_name("out.partial")  # where --overwrite builds the new data
        if staging in (Path(str(source)), Path(str(source)).parent) and output in (
            Path(str(target)),
            Path(str(target)).parent,
        ):
            raise OSError(5, "Input/output error")  # moving the new data into place
        real_replace(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", failing_publish)
    with pytest.raises(UserError, match="Input/output error"):
        run(tiny_corpus, tiny_tokenizer_dir, output, epochs_to_generate=1, seed=2, overwrite=True)
    monkeypatch.undo()
    after = {str(path.relative_to(output)): path.read_bytes() for path in output.rglob("*") if path.is_file()}
    assert after == before and read_manifest(output)["generation"]["seed"] == 1


def test_links_planted_at_the_temporary_directories_are_never_followed(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, victim = tmp_path / "out", tmp_path / "victim"
    output.mkdir()
    victim.mkdir()
    for name in ("document_store.partial", "epoch_000.partial"):
        (output / name).symlink_to(victim)
    assert main(cli(tiny_corpus, tiny_tokenizer_dir, output, "--reduce_memory")) == 0, capsys.readouterr().err
    assert not list(victim.iterdir()), "nothing written through the links"
    assert read_manifest(output)["epochs"][0]["num_instances"] > 0


def test_an_empty_output_directory_is_ours_to_write(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    run(tiny_corpus, tiny_tokenizer_dir, tmp_path / "out", epochs_to_generate=1)
    with pytest.raises(UserError, match="already holds data; pass --overwrite"):
        run(tiny_corpus, tiny_tokenizer_dir, tmp_path / "out", epochs_to_generate=1)


def test_overwrite_replaces_a_finished_run_completely(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    run(tiny_corpus, tiny_tokenizer_dir, tmp_path / "out", epochs_to_generate=3, seed=1)
    run(tiny_corpus, tiny_tokenizer_dir, tmp_path / "out", epochs_to_generate=2, seed=2, overwrite=True)
    run(tiny_corpus, tiny_tokenizer_dir, tmp_path / "fresh", epochs_to_generate=2, seed=2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in (tmp_path / "fresh").iterdir()
    )
    for epoch in (0, 1):
        assert epoch_bytes(tmp_path / "out", epoch) == epoch_bytes(tmp_path / "fresh", epoch)
    assert read_manifest(tmp_path / "out")["generation"]["seed"] == 2
    assert not (tmp_path / "out.partial").exists()


def test_lower_case_flag_must_agree_with_the_tokenizer(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    cased = tmp_path / "cased"
    shutil.copytree(tiny_tokenizer_dir, cased)
    serialized = json.loads((cased / "tokenizer.json").read_text())
    serialized["normalizer"]["lowercase"] = False
    (cased / "tokenizer.json").write_text(json.dumps(serialized))
    with pytest.raises(UserError, match="--do_lower_case was given but this tokenizer keeps case"):
        run(tiny_corpus, cased, tmp_path / "out", do_lower_case=True)


def test_whole_word_masking_is_refused_for_a_tokenizer_without_wordpiece(tiny_corpus: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
    tokenizer.train([str(tiny_corpus)], trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    directory = tmp_path / "bpe"
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    with pytest.raises(UserError, match="--do_whole_word_mask needs a WordPiece tokenizer"):
        run(tiny_corpus, directory, tmp_path / "out", do_whole_word_mask=True)
    run(tiny_corpus, directory, tmp_path / "ok", epochs_to_generate=1)  # the same tokenizer works without it


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_workers": 0}, "--num_workers must be at least 1"),
        ({"max_seq_len": 4}, "--max_seq_len must be between 8"),
        ({"masked_lm_prob": 0.0}, "--masked_lm_prob must be between 0 and 1"),
        ({"overwrite": True, "resume": True}, "contradict"),
    ],
)
def test_invalid_settings_are_refused_up_front(options: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        PregenerateConfig(
            train_corpus=tmp_path / "c.txt",
            output_dir=tmp_path / "o",
            bert_model="m",
            **{"holdout_fraction": 0.0, **options},
        )


def test_max_seq_len_above_the_model_positions_is_refused(
    tiny_corpus: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="the model has 128 positions but --max_seq_len is 256"):
        run(tiny_corpus, tiny_bert_dir, tmp_path / "out", max_seq_len=256)


def test_the_data_stages_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bert_domain_ft.data.pregenerate, bert_domain_ft.corpus.prepare, bert_domain_ft.corpus.check; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ---------------------------------------------------------------------------- a held-out set by default


def test_a_held_out_set_is_set_aside_by_default_a_twentieth_of_the_documents(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "data"
    arguments = ["pregenerate", "--train_corpus", str(tiny_corpus), "--bert_model", str(tiny_tokenizer_dir)]
    assert main([*arguments, "--output_dir", str(output), "--epochs_to_generate", "1", "--no_progress"]) == 0
    manifest = read_manifest(output)
    assert manifest["generation"]["holdout_fraction"] == 0.05
    assert len(manifest["holdout"]["documents"]) == round(0.05 * 120)  # the tiny corpus has 120 documents
    assert open_epoch(output, manifest, 0).num_instances > 0 and (output / "holdout").is_dir()


def test_a_corpus_too_small_to_hold_out_two_documents_gives_none_and_says_so(
    tiny_tokenizer_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tiny_assets import write_corpus

    corpus = write_corpus(tmp_path / "small.txt", num_documents=20, min_sentences=2)
    config = PregenerateConfig(train_corpus=corpus, output_dir=tmp_path / "data", bert_model=str(tiny_tokenizer_dir),
                               epochs_to_generate=1, show_progress=False)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        manifest = pregenerate(config)
    assert manifest["holdout"] is None and not (tmp_path / "data" / "holdout").exists()
    warnings = [record.getMessage() for record in caplog.records if "too few to hold out" in record.getMessage()]
    assert warnings == [
        f"{corpus}: 20 documents are too few to hold out 5% with at least two documents on each side (NSP needs "
        "two): none of them is held out; add documents or change --holdout_fraction"
    ]
