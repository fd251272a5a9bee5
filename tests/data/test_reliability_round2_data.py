"""Reliability, round two, data side (issue #14): a tokenizer that does not fit the text, two writers on one output
directory, a corpus edited under --resume, over-long lines, a damaged config.json, a full disk, the rerun after a
refused run, and `check` judging flags as pregeneration does. Each bad input is one line and exit status 2."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bert_domain_ft.cli import main
from bert_domain_ft.data.epoch_format import open_epoch, read_manifest
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
from bert_domain_ft.errors import UserError
from bert_domain_ft.files import hold_output_lock, lock_path

pytestmark = pytest.mark.reliability


def config(corpus: Path, tokenizer: Path, output: Path, **options) -> PregenerateConfig:
    settings = {"epochs_to_generate": 1, "max_seq_len": 32, "show_progress": False, **options}
    return PregenerateConfig(
        train_corpus=corpus, output_dir=output, bert_model=str(tokenizer), **{"holdout_fraction": 0.0, **settings}
    )


def pregenerate_cli(corpus: Path, model: Path, output: Path, *flags: str) -> list[str]:
    return [
        "pregenerate", "--train_corpus", str(corpus), "--bert_model", str(model), "--output_dir", str(output),
        "--epochs_to_generate", "1", "--max_seq_len", "32", "--no_progress", *flags,
    ]  # fmt: skip


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "Traceback" not in error, error
    return error


def all_bytes(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*.npy"))}


# 1. A tokenizer that turns the corpus into unknown tokens


def test_a_model_directory_with_only_config_json_is_refused_by_pregenerate_and_check(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 30522}))
    assert main(pregenerate_cli(tiny_corpus, model, tmp_path / "out")) == 2
    assert "holds no tokenizer vocabulary" in one_error_line(capsys)
    assert main(["check", str(tiny_corpus), "--bert_model", str(model), "--no_progress"]) == 2
    assert "holds no tokenizer vocabulary" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_that_makes_mostly_unknown_tokens_is_refused_by_pregenerate_and_check(
    tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "greek.txt"
    sentence = "Ο πυρήνας φορτώνει το άρθρωμα στη μνήμη."  # no letter of it is in the tiny English vocabulary
    corpus.write_text("\n\n".join(f"{sentence}\n{sentence}" for _ in range(5)) + "\n", encoding="utf-8")
    assert main(pregenerate_cli(corpus, tiny_tokenizer_dir, tmp_path / "out")) == 2
    error = one_error_line(capsys)
    assert str(corpus) in error and "unknown tokens (more than 5%)" in error
    assert main(["check", str(corpus), "--bert_model", str(tiny_tokenizer_dir), "--no_progress"]) == 2
    assert "unknown tokens (more than 5%)" in one_error_line(capsys)


def test_a_tokenizer_that_makes_only_special_tokens_is_refused(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "specials.txt"
    corpus.write_text("\n\n".join("[CLS] [SEP]\n[MASK] [SEP]" for _ in range(5)) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"every token of the first 10 lines is a special token, so nothing could be"):
        pregenerate(config(corpus, tiny_tokenizer_dir, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# 2. One writer per output directory

HOLD_LOCK_CHILD = """
import sys, time
from pathlib import Path
from bert_domain_ft.files import hold_output_lock
with hold_output_lock(Path(sys.argv[1]), "pregenerate"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_on_a_locked_output_directory_gets_one_line_naming_the_running_one(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    pregenerate(config(tiny_corpus, tiny_tokenizer_dir, output))
    before = all_bytes(output)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK_CHILD, str(output)], stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        assert main(pregenerate_cli(tiny_corpus, tiny_tokenizer_dir, output, "--overwrite", "--seed", "7")) == 2
        error = one_error_line(capsys)
        assert (
            f"pid {child.pid}" in error and "another run is writing here" in error and str(lock_path(output)) in error
        )
    finally:
        child.kill()
        child.wait()
    assert all_bytes(output) == before, "the refused run wrote nothing"
    assert lock_path(output).parent == output.parent and not (output / "out.lock").exists()


def test_the_effective_config_is_not_written_into_a_directory_another_run_has_locked_meanwhile(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bert_domain_ft.cli import build_parser, run_command

    output = tmp_path / "out"
    arguments = build_parser().parse_args(pregenerate_cli(tiny_corpus, tiny_tokenizer_dir, output))
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK_CHILD, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        output.mkdir(exist_ok=True)  # the other run's directory, taken while this one was finishing
        with caplog.at_level(logging.WARNING):
            assert run_command(arguments, lambda _: 0) == 0  # this run's own work is done; only the save is left
    finally:
        child.kill()
        child.wait()
    assert not (output / "effective_config.yaml").exists()
    assert any("effective configuration not saved" in record.getMessage() for record in caplog.records)


def dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = tmp_path / "out"
    pid = dead_pid()
    holder = {"pid": pid, "host": socket.gethostname(), "command": "pregenerate", "started": time.time() - 60}
    lock_path(output).write_text(json.dumps(holder))
    with caplog.at_level(logging.WARNING):
        pregenerate(config(tiny_corpus, tiny_tokenizer_dir, output))
    assert any(f"stale lock left by pid {pid}" in record.getMessage() for record in caplog.records)
    assert (output / "manifest.json").exists() and not lock_path(output).exists()


def test_a_lock_whose_pid_now_belongs_to_a_later_process_is_stale(tmp_path: Path) -> None:
    output = tmp_path / "out"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.1)
        earlier = {"pid": live.pid, "host": socket.gethostname(), "command": "pregenerate", "started": 1_000_000.0}
        lock_path(output).write_text(json.dumps(earlier))  # a lock taken long before this pid's process started
        with hold_output_lock(output, "pregenerate"):
            assert json.loads(lock_path(output).read_text())["pid"] == os.getpid()
        now = {**earlier, "started": time.time()}
        lock_path(output).write_text(json.dumps(now))  # the same live process, which could hold it: refused
        with pytest.raises(UserError, match=f"another run is writing here \\(pid {live.pid}"):
            with hold_output_lock(output, "pregenerate"):
                pass
    finally:
        live.kill()
        live.wait()


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path: Path) -> None:
    output = tmp_path / "out"
    holder = {"pid": 1, "host": "another-host.example", "command": "finetune", "started": time.time()}
    lock_path(output).write_text(json.dumps(holder))
    with pytest.raises(
        UserError, match=r"another host .*another-host\.example.*if that run is no longer running, delete"
    ):
        with hold_output_lock(output, "pregenerate"):
            pass
    assert lock_path(output).exists(), "someone else's lock is left alone"


def test_the_lock_is_removed_after_success_failure_and_interruption(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bert_domain_ft.data import pregenerate as pregenerate_module

    output = tmp_path / "out"
    pregenerate(config(tiny_corpus, tiny_tokenizer_dir, output))
    assert not lock_path(output).exists()
    one_document = tmp_path / "one.txt"
    one_document.write_text("The kernel walked.\nThe driver ran.\n")
    with pytest.raises(UserError, match="only one document"):
        pregenerate(config(one_document, tiny_tokenizer_dir, tmp_path / "failed"))
    assert not lock_path(tmp_path / "failed").exists()

    held_while_writing = []

    def interrupt(*arguments, **options):
        held_while_writing.append(lock_path(tmp_path / "interrupted").exists())
        raise KeyboardInterrupt

    monkeypatch.setattr(pregenerate_module, "build_document_store", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pregenerate(config(tiny_corpus, tiny_tokenizer_dir, tmp_path / "interrupted"))
    assert held_while_writing == [True] and not lock_path(tmp_path / "interrupted").exists()


# 3. --resume after the corpus was edited without changing its size


def test_resume_refuses_a_corpus_edited_without_changing_its_size(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.txt"
    shutil.copyfile(tiny_corpus, corpus)
    output = tmp_path / "out"
    pregenerate(config(corpus, tiny_tokenizer_dir, output, epochs_to_generate=2))
    (output / "manifest.json").unlink()
    shutil.rmtree(output / "epoch_001")  # as if interrupted during the second epoch
    size = corpus.stat().st_size
    corpus.write_bytes(corpus.read_bytes().replace(b" kernel ", b" memory ", 1))
    assert corpus.stat().st_size == size and corpus.read_bytes() != tiny_corpus.read_bytes()
    with pytest.raises(UserError, match=rf"{corpus}: changed since the interrupted run .*use --overwrite"):
        pregenerate(config(corpus, tiny_tokenizer_dir, output, epochs_to_generate=2, resume=True))


# 4. A line far longer than an instance


def test_a_line_longer_than_an_instance_is_cut_into_sentences_and_reported(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bert_domain_ft.model.tokenizer import load_tokenizer

    lines = tiny_corpus.read_text(encoding="utf-8").splitlines()
    long_line_number = 3
    lines.insert(long_line_number - 1, " ".join(["7"] * 3000))  # 3000 tokens of one id no other line has
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    seven = load_tokenizer(str(tiny_tokenizer_dir)).get_vocab()["7"]
    with caplog.at_level(logging.WARNING):
        manifest = pregenerate(config(corpus, tiny_tokenizer_dir, tmp_path / "out"))
    epoch = open_epoch(tmp_path / "out", manifest, 0)
    original = np.array(epoch.input_ids, dtype=np.int64)
    for row in range(epoch.num_instances):
        count = int(epoch.num_masked[row])
        original[row, epoch.masked_positions[row, :count]] = epoch.masked_labels[row, :count]
    kept = int(np.count_nonzero(original == seven))
    assert kept >= 0.6 * 3000, f"only {kept} of the line's 3000 tokens reach the data"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(f"{corpus}:{long_line_number}" in message and "1 line(s)" in message for message in warnings)
    record = manifest["corpora"][0]["long_lines_split"]
    assert record["lines"] == 1 and record["tokens"] == 3000 and record["first_line_numbers"] == [long_line_number]


# 7 (data side). A config.json that is not JSON


def test_a_config_json_that_is_not_json_is_one_line_with_line_and_column(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_tokenizer_dir, model)
    (model / "config.json").write_text('{\n  "model_type": "bert",\n  "max_position_embeddings": 128,,\n}\n')
    assert main(pregenerate_cli(tiny_corpus, model, tmp_path / "out")) == 2
    error = one_error_line(capsys)
    assert f"{model / 'config.json'}:3:" in error and "not valid JSON" in error and "replace it" in error


# 12. A full disk


def test_a_full_disk_names_the_path_says_so_and_removes_the_half_written_output(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out"
    pregenerate(config(tiny_corpus, tiny_tokenizer_dir, output, epochs_to_generate=2))
    before, manifest_before = all_bytes(output), (output / "manifest.json").read_bytes()
    real_save = np.save
    calls = {"count": 0}

    def save_on_a_full_disk(path, array, *arguments, **options):
        calls["count"] += 1
        if calls["count"] > 8:  # the first epoch completes; the second fills the disk
            raise OSError(errno.ENOSPC, "No space left on device")  # no filename, as the kernel's error came
        return real_save(path, array, *arguments, **options)

    monkeypatch.setattr(np, "save", save_on_a_full_disk)
    with pytest.raises(UserError) as refused:
        pregenerate(config(tiny_corpus, tiny_tokenizer_dir, output, epochs_to_generate=2, seed=5, overwrite=True))
    message = str(refused.value)
    assert "no space left on device" in message and "epoch_" in message and "None" not in message
    assert not output.with_name("out.partial").exists(), "the half-built replacement is removed"
    assert all_bytes(output) == before and (output / "manifest.json").read_bytes() == manifest_before

    calls["count"] = 0
    fresh = tmp_path / "fresh"
    with pytest.raises(UserError, match="no space left on device"):
        pregenerate(config(tiny_corpus, tiny_tokenizer_dir, fresh, epochs_to_generate=2))
    assert (fresh / "epoch_000" / "epoch.json").exists(), "a complete epoch stays for --resume"
    assert not list(fresh.glob("*.partial")), "the epoch being written is removed"


def test_a_short_write_without_errno_is_reported_as_a_full_disk(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def short_write(*arguments, **options):
        raise OSError("4096 requested and 1024 written")  # numpy's tofile on a full disk: errno None

    monkeypatch.setattr(np, "save", short_write)
    with pytest.raises(UserError, match="no space left on device") as refused:
        pregenerate(config(tiny_corpus, tiny_tokenizer_dir, tmp_path / "out"))
    assert "(None)" not in str(refused.value)
    assert not list((tmp_path / "out").glob("*.partial"))


# 13. The rerun after a refused run


def test_a_run_refused_before_any_epoch_does_not_block_the_fixed_rerun(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one_document = tmp_path / "one.txt"
    one_document.write_text("The kernel walked.\nThe driver ran.\n")
    output = tmp_path / "out"
    assert main(pregenerate_cli(one_document, tiny_tokenizer_dir, output)) == 2
    assert "only one document" in one_error_line(capsys)
    assert main(pregenerate_cli(tiny_corpus, tiny_tokenizer_dir, output)) == 0
    assert read_manifest(output)["corpora"][0]["path"] == str(tiny_corpus)
    assert main(pregenerate_cli(tiny_corpus, tiny_tokenizer_dir, output)) == 2, "complete data still needs a flag"
    assert "already holds data" in one_error_line(capsys)


# 14. check judges flags as pregeneration does


def test_check_refuses_the_max_seq_len_that_pregenerate_refuses(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(tiny_corpus), "--max_seq_len", "5", "--no_progress"]) == 2
    check_error = one_error_line(capsys)
    assert main([*pregenerate_cli(tiny_corpus, tiny_tokenizer_dir, tmp_path / "out"), "--max_seq_len", "5"]) == 2
    assert one_error_line(capsys) == check_error and "between 8 and 65535" in check_error
    model = tmp_path / "model"
    shutil.copytree(tiny_tokenizer_dir, model)
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 64}))
    arguments = ["check", str(tiny_corpus), "--bert_model", str(model), "--max_seq_len", "128", "--no_progress"]
    assert main(arguments) == 2
    assert "the model has 64 positions" in one_error_line(capsys)
