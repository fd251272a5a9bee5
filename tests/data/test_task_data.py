"""--task_data (task-adaptive pretraining): the task's texts join pregeneration and ``simple`` as the corpus "task",
drawn at ``task_share`` of each epoch, labels never read, one-sentence rows still trained on, never held out."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tiny_assets
from test_pregenerate import unmasked_rows  # the stored rows with every masked token put back
from training_helpers import read_metrics, run_cli

from bert_domain_ft.cli import main
from bert_domain_ft.corpus.task_files import write_task_corpus
from bert_domain_ft.data.document_store import DocumentStore, build_document_store
from bert_domain_ft.data.epoch_format import NO_NSP_LABEL, open_epoch, open_epoch_directory, read_manifest
from bert_domain_ft.data.instances import RowLayout
from bert_domain_ft.data.loader import CorpusMixing
from bert_domain_ft.data.masking import IGNORE_INDEX, DynamicMasking, masking_tables
from bert_domain_ft.data.mixing import probabilities_with_task_share, sampling_probabilities, task_copies
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
from bert_domain_ft.data.simple_pairs import PairIndex, assemble_batch, sample_epoch_pairs
from bert_domain_ft.errors import UserError
from bert_domain_ft.model.tokenizer import describe_tokenizer, encode_sentences, load_tokenizer

EPOCHS = 3


def run(corpus: Path, task: Path | None, tokenizer: Path, output: Path, **options) -> dict:
    settings = {"epochs_to_generate": EPOCHS, "max_seq_len": 64, "show_progress": False, **options}
    config = PregenerateConfig(
        train_corpus=corpus,
        output_dir=output,
        bert_model=str(tokenizer),
        task_data=task,
        **{"holdout_fraction": 0.0, **settings},
    )
    return pregenerate(config)


def binomial_tolerance(share: float, draws: int) -> float:
    return 4 * np.sqrt(share * (1 - share) / draws)  # 4 standard deviations: a false alarm about once in 16 000


# ---- the pure functions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("exponent", [1.0, 0.3, 0.0])
def test_task_gets_exactly_its_share_and_the_others_keep_their_exponent_rule(exponent: float) -> None:
    sizes = np.array([900.0, 100.0, 30.0])
    probabilities = probabilities_with_task_share(sizes, exponent, 0.3)
    assert probabilities.sum() == pytest.approx(1.0) and probabilities[-1] == pytest.approx(0.3)
    np.testing.assert_allclose(probabilities[:-1] / 0.7, sampling_probabilities(sizes, exponent))
    assert probabilities_with_task_share(sizes, exponent, 1.0)[:-1].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        probabilities_with_task_share(sizes, exponent, 0.0)


def test_copies_make_the_other_corpora_drawn_about_once_per_epoch() -> None:
    # k copies of t task instances among o others: the task is drawn share·(o + k·t) times ≈ k·t.
    for share, other, task in [(0.5, 1000, 100), (0.3, 1000, 7), (0.9, 50, 400)]:
        copies = task_copies(other, task, share, max_copies=10_000)
        assert abs(share * (other + copies * task) - copies * task) <= task
    assert task_copies(1000, 100, 0.5, max_copies=4) == 4
    assert task_copies(10, 1000, 0.1, max_copies=4) == 1  # a task larger than the rest still appears once
    assert task_copies(1000, 100, 1.0, max_copies=100) == 10  # share 1: as many task instances as the others


# ---- pregeneration ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_assets.write_task_file(tmp_path_factory.mktemp("task") / "train.csv", num_rows=40, seed=3)


@pytest.fixture(scope="module", params=[0.3, 0.7])
def generated(
    request: pytest.FixtureRequest, tiny_corpus: Path, task_csv: Path, tiny_tokenizer_dir: Path, tmp_path_factory
) -> tuple[float, Path]:
    output = tmp_path_factory.mktemp(f"tapt_{request.param}")
    run(tiny_corpus, task_csv, tiny_tokenizer_dir, output, task_share=request.param, holdout_fraction=0.1)
    return request.param, output


def test_training_draws_the_task_at_its_share_over_several_epochs(generated: tuple[float, Path]) -> None:
    share, output = generated
    manifest = read_manifest(output)
    assert [corpus["name"] for corpus in manifest["corpora"]] == ["corpus", "task"]
    assert [corpus["sampling_probability"] for corpus in manifest["corpora"]] == pytest.approx([1 - share, share])
    mixing = CorpusMixing(seed=11, batch_size=8)
    task_draws = draws = 0
    for index in range(EPOCHS):
        corpus_ids = np.asarray(open_epoch(output, manifest, index).corpus_ids)
        order = mixing.order(corpus_ids, manifest, index)
        task_draws += int(np.count_nonzero(corpus_ids[order] == 1))
        draws += len(order)
    assert abs(task_draws / draws - share) < binomial_tolerance(share, draws)


def test_each_epoch_holds_fresh_copies_of_the_task_so_the_others_are_drawn_about_once(
    generated: tuple[float, Path],
) -> None:
    share, output = generated
    manifest = read_manifest(output)
    copies = manifest["task_data"]["copies_per_epoch"]
    assert copies > 1
    for index in range(EPOCHS):
        epoch = open_epoch(output, manifest, index)
        corpus_ids = np.asarray(epoch.corpus_ids)
        task, other = np.count_nonzero(corpus_ids == 1), np.count_nonzero(corpus_ids == 0)
        # Draws of the other corpora per stored instance of theirs: about 1 (copies are estimated, not exact).
        assert 0.7 < (1 - share) * (task + other) / other < 1.3
        # Every copy is paired and masked afresh: the task's masked rows are (nearly) all different.
        rows = np.asarray(epoch.input_ids)[corpus_ids == 1]
        assert len(np.unique(rows, axis=0)) > 0.95 * len(rows)


def test_the_task_corpus_is_all_training_never_held_out(generated: tuple[float, Path], task_csv: Path) -> None:
    _, output = generated
    manifest = read_manifest(output)
    task_entry = manifest["corpora"][1]
    assert task_entry["documents"] == 40 and task_entry["path"] == "task_corpus.txt"
    assert manifest["task_data"]["documents"] == 40 and manifest["task_data"]["held_out"] is False
    assert manifest["task_data"]["source"] == str(task_csv)
    assert max(manifest["holdout"]["documents"]) < manifest["corpora"][0]["documents"]  # task documents come after
    holdout = open_epoch_directory(output / "holdout", manifest=manifest)
    assert set(np.unique(holdout.corpus_ids).tolist()) == {0}
    assert (output / "task_corpus.txt").read_text(encoding="utf-8").count("\n\n") == 39  # one document per row


def test_labels_never_reach_the_task_corpus_or_the_epochs(
    generated: tuple[float, Path], task_csv: Path, tiny_tokenizer_dir: Path
) -> None:
    _, output = generated
    text = (output / "task_corpus.txt").read_text(encoding="utf-8")
    assert not any(label in text for label in tiny_assets.TASK_LABELS)
    assert all(label in task_csv.read_text(encoding="utf-8") for label in tiny_assets.TASK_LABELS)
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir), None)
    manifest = read_manifest(output)
    for label in tiny_assets.TASK_LABELS:
        label_ids = encode_sentences(tokenizer, [label])[0]
        assert len(label_ids) > 1
        for index in range(EPOCHS):
            rows = unmasked_rows(open_epoch(output, manifest, index))
            windows = np.lib.stride_tricks.sliding_window_view(rows, len(label_ids), axis=1)
            assert not np.any(np.all(windows == np.asarray(label_ids), axis=-1))


def test_one_sentence_task_rows_become_masked_lm_only_instances_with_a_random_second_segment(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    task = tiny_assets.write_task_file(tmp_path / "rows.txt", num_rows=30, seed=5, max_sentences=1)
    manifest = run(tiny_corpus, task, tiny_tokenizer_dir, tmp_path / "out", epochs_to_generate=1)
    assert manifest["task_data"]["sentences"] == 30 and manifest["objective"] == "nsp"
    epoch = open_epoch(tmp_path / "out", manifest, 0)
    task_rows = np.asarray(epoch.corpus_ids) == 1
    copies = manifest["task_data"]["copies_per_epoch"]
    assert np.count_nonzero(task_rows) == 30 * copies  # every row is segment A of one instance per copy
    # No row has a true successor: each is paired with a sentence of another row, and carries no NSP label (a
    # "random next" on every one of them would teach the NSP head a constant).
    assert np.all(np.asarray(epoch.is_random_next)[task_rows] == NO_NSP_LABEL)
    lengths = np.asarray(epoch.lengths)[task_rows].astype(int)
    segment_a = np.asarray(epoch.segment_a_lengths)[task_rows].astype(int)
    assert np.all(segment_a > 2) and np.all(lengths > segment_a + 1)  # both segments hold tokens


def pregenerate_nsp(capsys, corpora: list[str], tokenizer: Path, output: Path, *flags: str) -> tuple[int, str, str]:
    arguments = ["pregenerate", "--train_corpus", *corpora, "--bert_model", str(tokenizer), "--output_dir"]
    arguments += [str(output), "--objective", "nsp", "--max_seq_len", "64", "--no_progress", *flags]
    return run_cli(capsys, arguments)


@pytest.mark.parametrize("share", ["1", "0.5"])
@pytest.mark.parametrize("max_sentences", [1, 3])
def test_nsp_labelled_instances_are_half_random_next_at_every_task_share_and_the_manifest_says_so(
    share: str, max_sentences: int, tiny_tokenizer_dir: Path, tmp_path: Path, capsys
) -> None:
    corpus = tiny_assets.write_corpus(tmp_path / "corpus.txt", num_documents=400, seed=4)
    task = tiny_assets.write_task_file(tmp_path / "rows.csv", num_rows=60, seed=5, max_sentences=max_sentences)
    output = tmp_path / "out"
    status, error, _ = pregenerate_nsp(
        capsys, [str(corpus)], tiny_tokenizer_dir, output, "--task_data", str(task), "--task_share", share,
        "--epochs_to_generate", "2",
    )  # fmt: skip
    assert status == 0, error
    manifest = read_manifest(output)
    for index, entry in enumerate(manifest["epochs"]):
        epoch = open_epoch(output, manifest, index)
        labels, task_rows = np.asarray(epoch.is_random_next), np.asarray(epoch.corpus_ids) == 1
        labelled = labels != NO_NSP_LABEL
        statistics = entry["statistics"]
        assert statistics["mlm_only_instances"] == int(np.count_nonzero(~labelled))
        assert statistics["nsp_labelled_instances"] == int(np.count_nonzero(labelled))
        assert statistics["random_next_fraction"] == pytest.approx(float(np.mean(labels[labelled] == 1)))
        assert abs(statistics["random_next_fraction"] - 0.5) < binomial_tolerance(0.5, int(labelled.sum()))
        if max_sentences == 1:
            assert np.all(labels[task_rows] == NO_NSP_LABEL)  # one-sentence rows cannot give an "is next" pair
        else:  # rows of several sentences give both labels, the unlabelled being the one-sentence chunks
            assert {0, 1} <= set(np.unique(labels[task_rows]).tolist())


def test_a_corpus_of_one_sentence_documents_is_refused_under_nsp_and_warned_about_beside_others(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    lines = tiny_corpus.read_text(encoding="utf-8").split()
    single = tmp_path / "titles.txt"  # every line its own document: no "is next" pair anywhere
    single.write_text("\n\n".join(" ".join(lines[i : i + 6]) for i in range(0, 600, 6)) + "\n", encoding="utf-8")
    status, error, _ = pregenerate_nsp(capsys, [str(single)], tiny_tokenizer_dir, tmp_path / "out")
    assert status == 2 and str(single) in error and "--objective mlm" in error, error
    assert not (tmp_path / "out" / "manifest.json").exists()
    flags = ["--objective", "mlm", "--epochs_to_generate", "1"]
    assert pregenerate_nsp(capsys, [str(single)], tiny_tokenizer_dir, tmp_path / "mlm", *flags)[0] == 0
    # Beside a corpus that has pairs: generated, with one warning line naming it; its instances are masked-LM only.
    caplog.clear()
    status, error, _ = pregenerate_nsp(
        capsys, [f"titles={single}", f"web={tiny_corpus}"], tiny_tokenizer_dir, tmp_path / "mixed",
        "--epochs_to_generate", "1",
    )  # fmt: skip
    assert status == 0, error
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(single) in r.getMessage()
    ]
    assert len(warnings) == 1 and "no next-sentence label" in warnings[0], warnings
    manifest = read_manifest(tmp_path / "mixed")
    epoch = open_epoch(tmp_path / "mixed", manifest, 0)
    titles = np.asarray(epoch.corpus_ids) == 0
    assert np.all(np.asarray(epoch.is_random_next)[titles] == NO_NSP_LABEL)
    assert manifest["epochs"][0]["statistics"]["mlm_only_instances"] >= int(titles.sum()) > 0


def test_json_lines_task_data_and_the_mlm_objective(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    task = tiny_assets.write_task_file(tmp_path / "train.jsonl", num_rows=25, seed=8)
    manifest = run(tiny_corpus, task, tiny_tokenizer_dir, tmp_path / "out", objective="mlm", epochs_to_generate=1)
    assert manifest["task_data"]["documents"] == 25
    assert np.any(np.asarray(open_epoch(tmp_path / "out", manifest, 0).corpus_ids) == 1)


def test_resume_refuses_an_edited_task_file_and_names_it(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    task = tiny_assets.write_task_file(tmp_path / "train.csv", num_rows=20, seed=1)
    output = tmp_path / "out"
    run(tiny_corpus, task, tiny_tokenizer_dir, output, epochs_to_generate=1)
    assert (output / "epoch_000").is_dir()
    run(tiny_corpus, task, tiny_tokenizer_dir, output, epochs_to_generate=1, resume=True)  # unchanged: fine
    task.write_text(task.read_text(encoding="utf-8") + 'xqzpositive,"One more row here."\n', encoding="utf-8")
    with pytest.raises(UserError, match=f"{task}: changed since the interrupted run"):
        run(tiny_corpus, task, tiny_tokenizer_dir, output, epochs_to_generate=1, resume=True)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("train.csv", "label,sentence\npos,Some text.\n", "train.csv:1: no column 'text'"),
        ("train.jsonl", '{"text": "Fine."}\n{"text": "broken\n', "train.jsonl:2: not valid JSON"),
        ("train.tsv", "text\tlabel\nOnly one.\tpos\n", "train.tsv: holds only one task text"),
    ],
)
def test_a_bad_task_file_is_one_line_and_nothing_is_written(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys, name: str, content: str, expected: str
) -> None:
    task = tmp_path / name
    task.write_text(content, encoding="utf-8")
    output = tmp_path / "out"
    arguments = ["pregenerate", "--train_corpus", str(tiny_corpus), "--bert_model", str(tiny_tokenizer_dir)]
    status = main([*arguments, "--output_dir", str(output), "--task_data", str(task), "--no_progress"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1 and expected in error
    assert not output.exists() or not any(output.iterdir())


def test_task_flags_work_from_a_config_file(
    tiny_corpus: Path, task_csv: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    settings = {
        "train_corpus": [str(tiny_corpus)],
        "bert_model": str(tiny_tokenizer_dir),
        "task_data": str(task_csv),
        "task_text_column": "text",
        "task_share": 0.25,
        "epochs_to_generate": 1,
        "max_seq_len": 64,
        "no_progress": True,
    }
    config = tmp_path / "run.json"
    config.write_text(json.dumps(settings), encoding="utf-8")
    assert main(["pregenerate", "--config", str(config), "--output_dir", str(tmp_path / "out")]) == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest["task_data"]["task_share"] == 0.25 and manifest["corpora"][1]["sampling_probability"] == 0.25


def test_bad_task_settings_are_refused(tiny_corpus: Path, task_csv: Path, tmp_path: Path) -> None:
    common = {"output_dir": tmp_path, "bert_model": "bert", "task_data": task_csv}
    with pytest.raises(ValueError, match="--task_share"):
        PregenerateConfig(train_corpus=tiny_corpus, task_share=0.0, **common)
    with pytest.raises(ValueError, match="--task_share"):
        PregenerateConfig(train_corpus=tiny_corpus, task_share=1.5, **common)
    with pytest.raises(ValueError, match="kept for --task_data"):
        PregenerateConfig(train_corpus={"task": tiny_corpus, "web": tiny_corpus}, **common)


# ---- simple ----------------------------------------------------------------------------------------------


def simple_index(
    corpus: Path, task: Path, tokenizer_dir: Path, directory: Path, task_share: float
) -> tuple[PairIndex, DocumentStore]:
    tokenizer = load_tokenizer(str(tokenizer_dir), None)
    task_corpus = write_task_corpus(task, "text", directory / "task_corpus.txt")
    assert task_corpus.documents > 1
    paths = [corpus, directory / "task_corpus.txt"]
    store = build_document_store(paths, tokenizer, describe_tokenizer(tokenizer, str(tokenizer_dir)), None, False)
    return PairIndex.from_store(store, task_share), store


@pytest.mark.parametrize("share", [0.3, 0.7])
def test_simple_draws_the_task_at_its_share_of_every_epoch_and_keeps_the_corpus_pairs(
    share: float, tiny_corpus: Path, task_csv: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    index, _ = simple_index(tiny_corpus, task_csv, tiny_tokenizer_dir, tmp_path, share)
    without_task = PairIndex.from_store(build_plain_store(tiny_corpus, tiny_tokenizer_dir))
    start = index.task_first_sentence
    for epoch in range(EPOCHS):
        pairs = sample_epoch_pairs(index, seed=7, epoch=epoch)
        is_task = pairs.first >= start
        assert len(pairs) == index.num_instances
        assert abs(is_task.mean() - share) <= 1 / len(pairs)  # the share is exact up to rounding
        # The corpus's pairs are exactly those of a run without task text; they never reach into the task.
        plain = sample_epoch_pairs(without_task, seed=7, epoch=epoch)
        np.testing.assert_array_equal(pairs.first[~is_task], plain.first)
        np.testing.assert_array_equal(pairs.second[~is_task], plain.second)
        # Task pairs stay in the task text, never pair a row with itself as "random", and repeat every sentence.
        first, second = pairs.first[is_task], pairs.second[is_task]
        assert np.all(second >= start)
        random = pairs.is_random_next[is_task]
        assert not np.any(index.document_of(first[random]) == index.document_of(second[random]))
        assert np.all(second[~random] == first[~random] + 1)
        assert len(np.unique(first)) == index.num_sentences - start  # every task sentence starts a pair
    assert np.any(sample_epoch_pairs(index, 7, 0).second[is_task] != sample_epoch_pairs(index, 7, 1).second[is_task])


def build_plain_store(corpus: Path, tokenizer_dir: Path) -> DocumentStore:
    tokenizer = load_tokenizer(str(tokenizer_dir), None)
    return build_document_store(corpus, tokenizer, describe_tokenizer(tokenizer, str(tokenizer_dir)), None, False)


def test_simple_one_sentence_task_rows_start_masked_lm_only_pairs_and_labels_stay_out(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    task = tiny_assets.write_task_file(tmp_path / "rows.csv", num_rows=30, seed=5, max_sentences=1)
    index, store = simple_index(tiny_corpus, task, tiny_tokenizer_dir, tmp_path, 0.5)
    pairs = sample_epoch_pairs(index, seed=1, epoch=0)
    is_task = pairs.first >= index.task_first_sentence
    assert np.count_nonzero(is_task) == index.num_task_instances > 30  # rows repeated to make half of the epoch
    assert np.all(pairs.is_random_next[is_task])  # no row has a second sentence: every partner is another row
    assert np.all(pairs.nsp_labels()[is_task] == NO_NSP_LABEL)  # ... so no NSP label: masked LM only
    task_tokens = np.asarray(store.tokens[store.sentence_offsets[index.task_first_sentence] :])
    tokenizer = load_tokenizer(str(tiny_tokenizer_dir), None)
    for label in tiny_assets.TASK_LABELS:
        label_ids = encode_sentences(tokenizer, [label])[0]
        windows = np.lib.stride_tricks.sliding_window_view(task_tokens, len(label_ids))
        assert not np.any(np.all(windows == np.asarray(label_ids), axis=-1))


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_simple_nsp_labelled_pairs_are_half_random_next_and_batches_ignore_the_rest(
    share: float, tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    task = tiny_assets.write_task_file(tmp_path / "rows.csv", num_rows=200, seed=6, max_sentences=3)
    index, store = simple_index(tiny_corpus, task, tiny_tokenizer_dir, tmp_path, share)
    labels = np.concatenate([sample_epoch_pairs(index, seed=2, epoch=epoch).nsp_labels() for epoch in range(4)])
    labelled = labels != NO_NSP_LABEL
    assert abs(np.mean(labels[labelled] == 1) - 0.5) < binomial_tolerance(0.5, int(labelled.sum()))
    pairs = sample_epoch_pairs(index, seed=2, epoch=0)
    is_task = pairs.first >= index.task_first_sentence
    last_of_row = np.isin(pairs.first + 1, index.document_offsets)
    assert np.array_equal(pairs.nsp_labels() == NO_NSP_LABEL, is_task & last_of_row)  # exactly those, nothing else
    is_next = pairs.nsp_labels() == 0
    assert np.all(pairs.second[is_next] == pairs.first[is_next] + 1)  # "is next" task pairs are the row's next
    layout, masking = simple_settings(tiny_tokenizer_dir)
    instances = np.arange(min(64, len(pairs)))
    batch = assemble_batch(store, index, pairs, instances, layout, masking, epoch=0)
    stored = pairs.nsp_labels()[instances].astype(np.int64)
    assert np.array_equal(batch["next_sentence_label"], np.where(stored == NO_NSP_LABEL, IGNORE_INDEX, stored))


def simple_settings(tokenizer_dir: Path) -> tuple[RowLayout, DynamicMasking]:
    tokenizer = load_tokenizer(str(tokenizer_dir), None)
    facts = describe_tokenizer(tokenizer, str(tokenizer_dir))
    masking = DynamicMasking(masking_tables(facts, tokenizer), 0.15, 20, whole_word=False, seed=0)
    return RowLayout.of_tokenizer(64, facts), masking


def test_simple_task_share_one_trains_on_the_task_only(
    tiny_corpus: Path, task_csv: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    index, _ = simple_index(tiny_corpus, task_csv, tiny_tokenizer_dir, tmp_path, 1.0)
    pairs = sample_epoch_pairs(index, seed=1, epoch=0)
    assert len(pairs) > 0 and np.all(pairs.first >= index.task_first_sentence)


def test_simple_with_task_data_trains_and_a_bad_task_file_is_one_line(
    tiny_corpus: Path, task_csv: Path, tiny_bert_dir: Path, tmp_path: Path, capsys
) -> None:
    flags = ["simple", "--train_corpus", str(tiny_corpus), "--bert_model", str(tiny_bert_dir), "--no_cuda"]
    flags += ["--no_progress", "--max_seq_len", "48", "--train_batch_size", "16", "--stop_after_steps", "1"]
    output = tmp_path / "out"
    assert main([*flags, "--output_dir", str(output), "--task_data", str(task_csv), "--task_share", "0.4"]) == 0
    arguments = json.loads((output / "training_args.json").read_text())
    assert arguments["task_data"] == str(task_csv) and arguments["task_share"] == 0.4
    assert (output / "task_corpus.txt").read_text(encoding="utf-8").count("\n\n") == 39
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text("label,sentence\npos,Some text.\n", encoding="utf-8")
    assert main([*flags, "--output_dir", str(tmp_path / "again"), "--task_data", str(bad)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: ") and "bad.csv:1: no column 'text'" in error[-1]


def test_simple_trains_no_nsp_on_one_sentence_task_rows_and_says_so(
    tiny_corpus: Path, tiny_bert_dir: Path, tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    task = tiny_assets.write_task_file(tmp_path / "rows.csv", num_rows=40, seed=5, max_sentences=1)
    output = tmp_path / "out"
    status, error, _ = run_cli(
        capsys,
        ["simple", "--train_corpus", str(tiny_corpus), "--bert_model", str(tiny_bert_dir), "--no_cuda",
         "--no_progress", "--max_seq_len", "48", "--train_batch_size", "16", "--stop_after_steps", "2",
         "--logging_steps", "1", "--output_dir", str(output), "--task_data", str(task), "--task_share", "1"],
    )  # fmt: skip
    assert status == 0, error
    records = [record for record in read_metrics(output) if record["kind"] == "train"]
    assert records and all("nsp_loss" not in record for record in records), records  # not a constant label
    notes = [r for r in caplog.records if "masked-LM only" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.WARNING, [r.getMessage() for r in caplog.records]
    assert "no next-sentence label" in notes[0].getMessage()
