"""Failure is boring: killed runs resume to the same bytes, full disks and bad paths leave old data untouched,
arbitrary text gives instances that satisfy every invariant or a clear error — never a traceback."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_assets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bert_domain_ft.data.epoch_format import open_epoch, read_manifest
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
from bert_domain_ft.errors import UserError

pytestmark = pytest.mark.reliability


def config(corpus: Path, tokenizer: Path, output: Path, **options) -> PregenerateConfig:
    settings_ = {"epochs_to_generate": 3, "max_seq_len": 32, "show_progress": False, **options}
    return PregenerateConfig(train_corpus=corpus, output_dir=output, bert_model=str(tokenizer), **settings_)


def all_bytes(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*.npy"))}


SLOW_CHILD = """
import sys, time
from pathlib import Path
from bert_domain_ft.data import epoch_writer
from bert_domain_ft.data.pregenerate import PregenerateConfig, pregenerate
epoch_writer.TOKENS_PER_SHARD = 300
original = epoch_writer.run_shard
def slow(task, context):
    time.sleep(0.05)
    return original(task, context)
epoch_writer.run_shard = slow
pregenerate(PregenerateConfig(train_corpus=Path(sys.argv[1]), output_dir=Path(sys.argv[2]), bert_model=sys.argv[3],
    epochs_to_generate=3, max_seq_len=32, show_progress=False))
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_bytes_of_an_uninterrupted_run(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bert_domain_ft.data import epoch_writer

    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHILD, str(tiny_corpus), str(killed), str(tiny_tokenizer_dir)])
    deadline = time.time() + 60
    while not (killed / "epoch_000").exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (killed / "epoch_000").exists(), "the child finished no epoch before the deadline"
    assert not (killed / "manifest.json").exists(), "an interrupted run never looks complete"
    for partial in killed.glob("*.partial"):
        assert not (partial / "epoch.json").exists()
    kept = (killed / "epoch_000" / "input_ids.npy").stat().st_mtime_ns

    monkeypatch.setattr(epoch_writer, "TOKENS_PER_SHARD", 300)
    pregenerate(config(tiny_corpus, tiny_tokenizer_dir, killed, resume=True))
    pregenerate(config(tiny_corpus, tiny_tokenizer_dir, tmp_path / "straight"))
    assert all_bytes(killed) == all_bytes(tmp_path / "straight")
    assert (killed / "epoch_000" / "input_ids.npy").stat().st_mtime_ns == kept, "complete epochs are not redone"
    assert not list(killed.glob("*.partial"))


def test_resume_refuses_different_settings(tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    pregenerate(config(tiny_corpus, tiny_tokenizer_dir, tmp_path, epochs_to_generate=1))
    with pytest.raises(UserError, match=r"different settings \(masked_lm_prob\)"):
        pregenerate(
            config(tiny_corpus, tiny_tokenizer_dir, tmp_path, epochs_to_generate=1, masked_lm_prob=0.2, resume=True)
        )


def test_resume_refuses_epochs_an_older_format_version_began(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    pregenerate(config(tiny_corpus, tiny_tokenizer_dir, tmp_path, epochs_to_generate=1))
    record_path = tmp_path / "generation.json"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    del record["format_version"]  # as version 1 wrote it: its epochs label one-sentence chunks "random next"
    record_path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(UserError, match=r"different settings \(format_version\)"):
        pregenerate(config(tiny_corpus, tiny_tokenizer_dir, tmp_path, epochs_to_generate=1, resume=True))


def test_disk_full_gives_a_clear_error_and_leaves_the_previous_data_untouched(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bert_domain_ft import files as npy_stream

    pregenerate(config(tiny_corpus, tiny_tokenizer_dir, tmp_path / "out", epochs_to_generate=2))
    before = all_bytes(tmp_path / "out")
    manifest_before = (tmp_path / "out" / "manifest.json").read_bytes()
    written = {"bytes": 0}

    class FillingFile:
        """A file on a disk that fills up after 20 kB: writes then fail with ENOSPC, as the kernel says."""

        def __init__(self, handle):
            self.handle = handle

        def write(self, data: bytes) -> int:
            written["bytes"] += len(data)
            if written["bytes"] > 20_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def __getattr__(self, name: str):
            return getattr(self.handle, name)

        def __enter__(self):  # the module also writes small files with `with open(...)`
            return self

        def __exit__(self, *exc_info) -> None:
            self.handle.close()

    monkeypatch.setattr(npy_stream, "open", lambda *a, **k: FillingFile(open(*a, **k)), raising=False)
    with pytest.raises(UserError, match="the disk is full; free some space"):
        pregenerate(
            config(tiny_corpus, tiny_tokenizer_dir, tmp_path / "out", epochs_to_generate=2, seed=5, overwrite=True)
        )
    assert all_bytes(tmp_path / "out") == before
    assert (tmp_path / "out" / "manifest.json").read_bytes() == manifest_before


def test_an_output_path_that_cannot_be_a_directory_is_a_clear_error(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="file.txt: exists and is not a directory"):
        pregenerate(config(tiny_corpus, tiny_tokenizer_dir, blocker))
    with pytest.raises(UserError, match="cannot write here|not a directory|cannot write"):
        pregenerate(config(tiny_corpus, tiny_tokenizer_dir, blocker / "inside"))
    assert blocker.read_text() == "not a directory"


def test_permission_denied_is_a_clear_error(
    tiny_corpus: Path, tiny_tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_mkdir = Path.mkdir

    def refuse(self, *arguments, **options):  # as root, chmod cannot deny: simulate the kernel's answer
        if self.name == "denied":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkdir(self, *arguments, **options)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(UserError, match="permission denied"):
        pregenerate(config(tiny_corpus, tiny_tokenizer_dir, tmp_path / "denied"))


# Property-based: arbitrary text either pregenerates into instances satisfying every invariant, or fails with a
# UserError — never another exception.

line_text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.sampled_from(list("abc ##.!?\t\u00e9\u4e2d\U0001f600\x00\x0b\u2028")), max_size=40),
    st.sampled_from(["", " ", "   ", "\u200b", "kernel walked.", "x" * 100_000]),
)
documents = st.lists(st.lists(line_text, min_size=1, max_size=6), min_size=0, max_size=8)


def write_corpus(path: Path, docs: list[list[str]], crlf: bool) -> None:
    newline = "\r\n" if crlf else "\n"
    text = (newline + newline).join(
        newline.join(line.replace("\r", " ").replace("\n", " ") for line in doc) for doc in docs
    )
    path.write_bytes(text.encode("utf-8", errors="surrogatepass") if text else b"")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=documents, crlf=st.booleans(), max_seq_len=st.sampled_from([8, 16, 64]))
def test_arbitrary_text_gives_valid_instances_or_a_clear_error(
    docs: list[list[str]],
    crlf: bool,
    max_seq_len: int,
    tiny_tokenizer_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    directory = tmp_path_factory.mktemp("fuzz")
    corpus = directory / "corpus.txt"
    try:
        write_corpus(corpus, docs, crlf)
    except UnicodeEncodeError:
        return
    output = directory / "out"
    try:
        settings_ = {"epochs_to_generate": 1, "max_seq_len": max_seq_len, "max_predictions_per_seq": 5}
        manifest = pregenerate(config(corpus, tiny_tokenizer_dir, output, **settings_))
    except UserError as error:
        assert "\n" not in str(error) and str(corpus) in str(error)
        return
    epoch = open_epoch(output, manifest, 0, verify_checksum=True)
    for i in range(epoch.num_instances):
        length, segment_a = int(epoch.lengths[i]), int(epoch.segment_a_lengths[i])
        assert 5 <= length <= max_seq_len and 3 <= segment_a <= length - 2
        assert epoch.input_ids[i, 0] == 2 and np.all(epoch.input_ids[i, length:] == 0)
        positions = epoch.masked_positions[i, : epoch.num_masked[i]]
        maskable = ~np.isin(epoch.input_ids[i, :length], [0, 1, 2, 3, 4])
        assert len(positions) >= 1 or not maskable.any(), "at least one masked token where any can be masked"
        assert np.all(positions < length) and np.all(positions > 0)
        assert not np.isin(epoch.masked_labels[i, : epoch.num_masked[i]], [0, 2, 3, 4]).any()
    assert read_manifest(output)["corpus"]["documents"] >= 2


def test_documents_of_one_sentence_and_sentences_that_tokenize_to_nothing(
    tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\u200b\n\nThe kernel.\n\n\u200b\n\u200b\n\nA page.\n\nThe lock ran.\n", encoding="utf-8")
    manifest = pregenerate(config(corpus, tiny_tokenizer_dir, tmp_path / "out", epochs_to_generate=1, objective="mlm"))
    assert manifest["corpus"]["documents"] == 3
    assert manifest["corpus"]["dropped_empty_sentences"] == 3 and manifest["corpus"]["dropped_empty_documents"] == 2
    # Under NSP one-sentence documents give no "is next" pair at all: refused (the NSP head would learn a constant).
    with pytest.raises(UserError, match="no document has two sentences.*--objective mlm"):
        pregenerate(config(corpus, tiny_tokenizer_dir, tmp_path / "nsp", epochs_to_generate=1))


def test_a_large_corpus_of_one_sentence_documents_is_refused_under_nsp_and_packed_under_mlm(
    tiny_tokenizer_dir: Path, tmp_path: Path
) -> None:
    corpus = tiny_assets.write_corpus(tmp_path / "c.txt", num_documents=200, min_sentences=1, max_sentences=1)
    with pytest.raises(UserError, match=f"{corpus}: no document has two sentences"):
        pregenerate(config(corpus, tiny_tokenizer_dir, tmp_path / "out", epochs_to_generate=1, objective="nsp"))
    assert not (tmp_path / "out" / "manifest.json").exists()
    manifest = pregenerate(config(corpus, tiny_tokenizer_dir, tmp_path / "mlm", epochs_to_generate=1, objective="mlm"))
    assert manifest["epochs"][0]["statistics"]["packing_fill"] > 0.9
