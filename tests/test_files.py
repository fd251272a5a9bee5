"""``bert_domain_ft.files``: temporaries that never follow a planted link, the lock taken on the resolved path and
refusing a planted or corrupt lock file, outputs that honour the umask, a cleanup that never hides the real
error, the ledger of what the tool wrote into a directory, and a directory swap that keeps the old one whole."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from training_helpers import run_cli

from bert_domain_ft import files
from bert_domain_ft.errors import UserError
from bert_domain_ft.files import (
    NpyAppender,
    hold_output_lock,
    lock_path,
    replace_directory,
    save_tensors,
    write_text_atomic,
)

HOLD_LOCK_CHILD = """
import sys, time
from pathlib import Path
from bert_domain_ft.files import hold_output_lock
with hold_output_lock(Path(sys.argv[1]), "finetune"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _planted_link(tmp_path: Path, name: str) -> Path:
    """``tmp_path/name`` as a symlink to a victim file elsewhere (returned)."""
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    (tmp_path / name).symlink_to(victim)
    return victim


def test_an_atomic_write_never_follows_a_link_planted_at_the_temporary_name(tmp_path: Path) -> None:
    victim = _planted_link(tmp_path, "out.txt.partial")
    write_text_atomic(tmp_path / "out.txt", "ours")
    assert victim.read_text() == "precious" and (tmp_path / "out.txt").read_text() == "ours"


def test_a_streamed_npy_file_never_follows_a_link_planted_at_the_temporary_name(tmp_path: Path) -> None:
    victim = _planted_link(tmp_path, "rows.npy.partial")
    with NpyAppender(tmp_path / "rows.npy", np.uint16, row_shape=(4,)) as output:
        output.append(np.ones((3, 4), dtype=np.uint16))
    assert victim.read_text() == "precious" and np.load(tmp_path / "rows.npy").shape == (3, 4)


def test_saved_tensors_never_follow_a_planted_link(tmp_path: Path) -> None:
    victim = _planted_link(tmp_path, "optimizer.pt")
    with pytest.raises(OSError):
        save_tensors({"step": 1}, tmp_path / "optimizer.pt")
    assert victim.read_text() == "precious"


def test_every_output_file_honours_the_umask(tmp_path: Path) -> None:
    wanted = 0o666 & ~_umask()
    write_text_atomic(tmp_path / "a.json", "{}")
    with NpyAppender(tmp_path / "b.npy", np.uint8) as output:
        output.append(np.zeros(2, dtype=np.uint8))
    save_tensors({"step": 1}, tmp_path / "c.pt")
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["a.json", "b.npy", "c.pt"], oct(wanted))


def test_a_failed_cleanup_never_hides_the_real_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only file system refuses the rename and then the removal of the temporary (EROFS): the error said is
    the first one, as one line."""

    def read_only(*_: object, **__: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    monkeypatch.setattr(os, "unlink", read_only)
    with pytest.raises(UserError, match="cannot write here"):
        write_text_atomic(tmp_path / "out.txt", "text")


def test_the_lock_is_taken_on_the_resolved_path(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")
    assert lock_path(tmp_path / "link") == lock_path(tmp_path / "run") == tmp_path / "run.lock"
    with hold_output_lock(tmp_path / "run", "finetune"):
        with pytest.raises(UserError, match="another run is writing here"):
            with hold_output_lock(tmp_path / "link", "finetune"):
                pass


def test_a_second_run_through_a_symlink_is_refused_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ln -s run link`: a run on `run` and one on `link --overwrite_output_dir` must not both write."""
    (tmp_path / "run").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK_CHILD, str(tmp_path / "run")], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        flags = ["--pregenerated_data", str(tmp_path / "data"), "--bert_model", str(tmp_path / "model"), "--no_cuda"]
        status, error, _ = run_cli(capsys, ["finetune", *flags, "--output_dir", str(tmp_path / "link"),
                                            "--overwrite_output_dir"])  # fmt: skip
    finally:
        child.kill()
        child.wait()
    assert status == 2 and "another run is writing here" in error and f"pid {child.pid}" in error


def test_a_planted_lock_symlink_is_refused_in_one_line_and_not_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = _planted_link(tmp_path, "out.lock")
    with pytest.raises(UserError, match="symbolic link"):
        with hold_output_lock(tmp_path / "out", "finetune"):
            pass
    flags = ["--pregenerated_data", str(tmp_path / "data"), "--bert_model", str(tmp_path / "model"), "--no_cuda"]
    status, error, _ = run_cli(capsys, ["finetune", *flags, "--output_dir", str(tmp_path / "out")])
    assert status == 2 and str(tmp_path / "out.lock") in error and "symbolic link" in error
    assert victim.read_text() == "precious" and (tmp_path / "out.lock").is_symlink()


def test_a_corrupt_lock_file_is_called_unreadable_with_what_to_do(tmp_path: Path) -> None:
    lock_path(tmp_path / "out").write_bytes(b"\x00\x17{not json")
    with pytest.raises(UserError) as raised:
        with hold_output_lock(tmp_path / "out", "finetune"):
            pass
    message = str(raised.value)
    assert "another host" not in message and "pid ?" not in message
    assert "unreadable" in message and f"delete {lock_path(tmp_path / 'out')}" in message


def test_an_empty_path_is_refused_by_every_config(tmp_path: Path) -> None:
    from bert_domain_ft.data.config import PregenerateConfig
    from bert_domain_ft.evaluation.config import EvaluateConfig
    from bert_domain_ft.training.config import FinetuneConfig

    assert files.nonempty_path("out") == Path("out")
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="--output_dir: empty path"):
            files.nonempty_path(empty, "output_dir")
    with pytest.raises(ValueError, match="--output_dir: empty path"):
        FinetuneConfig(pregenerated_data=Path("data"), output_dir="", bert_model="m")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--train_corpus: empty path"):
        PregenerateConfig(train_corpus={"a": Path("a.txt"), "b": ""}, output_dir=Path("o"), bert_model="m")  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="--json: empty path"):
        EvaluateConfig(model="m", data=Path("d"), json_output="")  # type: ignore[arg-type]


def test_the_ledger_names_only_what_the_tool_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("the user's")
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "checkpoint-2.partial").mkdir()  # a temporary of ours left by a killed run
    assert files.unclaimed_entries(tmp_path) == ["README.md", "metrics.jsonl"]  # no ledger: nothing is ours
    files.claim_entries(tmp_path, ["metrics.jsonl"])
    assert files.unclaimed_entries(tmp_path) == ["README.md"]
    write_text_atomic(tmp_path / "training_args.json", "{}")  # written into a directory we own: ours
    assert files.unclaimed_entries(tmp_path) == ["README.md"]
    write_text_atomic(tmp_path / "new" / "eval.json", "{}")  # a directory we created is ours
    assert files.unclaimed_entries(tmp_path / "new") == [] and "new" in files.unclaimed_entries(tmp_path)


def test_a_directory_swap_that_fails_leaves_the_old_directory_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = tmp_path / "data", tmp_path / "data.partial"
    for directory, text in ((old, "old"), (new, "new")):
        (directory / "epoch_000").mkdir(parents=True)
        (directory / "manifest.json").write_text(text)
    real_replace = os.replace

    def failing_second_rename(source: object, target: object) -> None:
        if Path(str(source)) == new:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(files.os, "replace", failing_second_rename)
    with pytest.raises(UserError, match="Input/output error"):
        replace_directory(new, old)
    monkeypatch.undo()
    assert (old / "manifest.json").read_text() == "old" and (old / "epoch_000").is_dir()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "data.partial"]
    assert sorted(path.name for path in old.iterdir()) == ["epoch_000", "manifest.json"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["/venv/bin/bert-domain-ft", "finetune", "--output_dir", "my run"],
            "bert-domain-ft finetune --output_dir 'my run'",
        ),
        (
            ["/venv/bin/pregenerate-training-data", "--train_corpus", "c.txt"],
            "pregenerate-training-data --train_corpus c.txt",
        ),
        (["/src/bert_domain_ft/__main__.py", "simple", "--epochs", "1"], "python -m bert_domain_ft simple --epochs 1"),
        (["/venv/lib/python3.11/site-packages/pytest/__main__.py", "-q"], None),  # python -m pytest: not our command
        (["/venv/bin/jupyter"], None),
    ],
)
def test_the_command_line_is_recorded_as_typed_and_only_for_our_commands(argv: list[str], expected: str | None) -> None:
    assert files.command_line(argv) == expected
