"""Experiment trackers: what each one writes, read back with that library's own reader (no mocks).

TensorBoard's event files through its ``EventAccumulator``, MLflow's local file store through ``MlflowClient``,
and a W&B offline run through its transaction log (``run-*.wandb``: W&B's own protobuf ``Record`` messages in
LevelDB-style blocks; this wandb has no Python reader of its own, so the framing is read here).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from training_helpers import run_cli

from bert_domain_ft.errors import UserError, redact_secrets
from bert_domain_ft.training.config import FinetuneConfig, report_to_names
from bert_domain_ft.training.trackers import close_trackers, open_trackers, scalars_of, send_record

SETTINGS = {"learning_rate": 3e-5, "output_dir": "/tmp/run", "training": {"epochs": 2}, "probe_train": None}
RECORDS = [
    {"kind": "eval", "step": 0, "epoch": 0.0, "mlm_loss": 3.0, "perplexity": math.exp(3.0), "mlm_accuracy": 0.2},
    {"kind": "head_warmup", "phase": "head_warmup", "step": 0, "warmup_step": 5, "mlm_loss": 4.0},
    {"kind": "train", "step": 2, "epoch": 0.5, "lr": 1e-5, "mlm_loss": 2.5, "sequences_per_second": 40.0},
    {"kind": "train", "step": 4, "epoch": 1.0, "lr": 2e-5, "mlm_loss": 2.0, "tokens_per_second": 900.0},
    {"kind": "eval", "step": 4, "epoch": 1.0, "mlm_loss": 1.5, "perplexity": math.exp(1.5), "mlm_accuracy": 0.4},
    {"kind": "probe", "step": 4, "accuracy": 0.75, "accuracy_per_seed": [0.7, 0.8], "paired_vs_start": {"mean": 0.05}},
]


@pytest.fixture
def offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_PROJECT": "tests"}.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def write_all(output_dir: Path, names: tuple[str, ...]) -> None:
    trackers = open_trackers(names, output_dir, "tiny-run", SETTINGS)
    for record in RECORDS:
        send_record(trackers, record)
    close_trackers(trackers)


def tensorboard_scalars(directory: Path) -> tuple[dict[str, dict[int, float]], Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    scalars = {
        tag: {event.step: event.value for event in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]
    }
    return scalars, accumulator


def wandb_records(run_directory: Path) -> list[Any]:
    """Every protobuf ``Record`` of a W&B offline run's ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_directory.rglob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"  # the file's own header: identity, magic, version
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def key_of(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def test_scalars_of_takes_every_number_and_adds_training_perplexity() -> None:
    kind, step, values = scalars_of(RECORDS[3])
    assert (kind, step) == ("train", 4)
    assert values["tokens_per_second"] == 900.0 and values["lr"] == 2e-5
    assert values["perplexity"] == pytest.approx(math.exp(2.0))
    assert scalars_of(RECORDS[1])[1] == 5  # the head warm-up at its own step
    kind, _, values = scalars_of(RECORDS[5])
    assert values == {"accuracy": 0.75, "paired_vs_start/mean": 0.05}  # lists and text left out


def test_tensorboard_event_files_hold_every_record(tmp_path: Path) -> None:
    write_all(tmp_path, ("tensorboard",))
    scalars, accumulator = tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["eval/perplexity"] == pytest.approx({0: math.exp(3.0), 4: math.exp(1.5)})
    assert scalars["train/mlm_loss"] == {2: 2.5, 4: 2.0}
    assert scalars["train/tokens_per_second"] == {4: 900.0}
    assert scalars["head_warmup/mlm_loss"] == {5: 4.0}
    assert scalars["probe/accuracy"] == {4: 0.75}
    text = accumulator.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| learning_rate | 3e-05 |" in text and "| training/epochs | 2 |" in text


def test_mlflow_file_store_holds_parameters_and_metrics(tmp_path: Path, offline_wandb: None) -> None:
    from mlflow.tracking import MlflowClient

    write_all(tmp_path, ("mlflow",))
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("bert_domain_ft").experiment_id])
    assert run.info.run_name == "tiny-run" and run.info.status == "FINISHED"
    assert run.data.params["learning_rate"] == "3e-05" and run.data.params["probe_train"] == "none"
    assert run.data.params["training/epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "eval/perplexity")
    assert {metric.step: metric.value for metric in history} == pytest.approx({0: math.exp(3.0), 4: math.exp(1.5)})
    assert run.data.metrics["train/sequences_per_second"] == 40.0


def test_wandb_offline_run_holds_config_and_history(tmp_path: Path, offline_wandb: None) -> None:
    write_all(tmp_path, ("wandb",))
    records = wandb_records(tmp_path / "wandb")
    history = [{key_of(item): json.loads(item.value_json) for item in r.history.item} for r in records]
    evaluations = [row for row in history if "eval/perplexity" in row]
    assert [row["eval/step"] for row in evaluations] == [0, 4]
    assert [row["eval/perplexity"] for row in evaluations] == pytest.approx([math.exp(3.0), math.exp(1.5)])
    assert [row["train/mlm_loss"] for row in history if "train/mlm_loss" in row] == [2.5, 2.0]
    config = {
        key_of(item): json.loads(item.value_json)
        for r in records
        for update in (r.config.update, r.run.config.update)
        for item in update
    }
    assert config["learning_rate"] == 3e-5 and config["training/epochs"] == 2 and config["probe_train"] == "none"


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_is_one_line(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, name, None)  # what `import name` meets when the package is absent
    with pytest.raises(UserError) as raised:
        open_trackers((name,), tmp_path, "run", SETTINGS)
    message = str(raised.value)
    assert "\n" not in message and f"bert_domain_ft[{name}]" in message and "not installed" in message
    assert not (tmp_path / "tensorboard").exists()


def test_report_to_takes_several_names_spaced_or_comma_separated() -> None:
    assert report_to_names("tensorboard,wandb") == ("tensorboard", "wandb")
    assert report_to_names(["mlflow", "tensorboard, mlflow"]) == ("mlflow", "tensorboard")
    assert report_to_names(["none"]) == ("none",) and report_to_names("none,wandb") == ("wandb",)
    with pytest.raises(ValueError, match="--report_to comet: choose from"):
        report_to_names("comet")
    config = FinetuneConfig(pregenerated_data=Path("d"), output_dir=Path("o"), bert_model="m", report_to="wandb")
    assert config.report_to == ("wandb",) and json.loads(json.dumps(config.to_json()))["report_to"] == ["wandb"]


def tracker_failure(capfd: pytest.CaptureFixture[str], corpus: Path, model: Path, output_dir: Path, name: str):
    """``simple --report_to NAME`` through the command line: (exit status, its error line, everything written to
    stderr by this process and its children, the text of every file this tool left in ``output_dir``; W&B's own
    debug logs under ``wandb/`` are its business)."""
    arguments = ["simple", "--train_corpus", str(corpus), "--bert_model", str(model), "--output_dir",
                 str(output_dir), "--report_to", name, "--no_cuda", "--no_progress"]  # fmt: skip
    status, error, stderr = run_cli(capfd, arguments)
    ours = [
        path for path in output_dir.rglob("*") if path.is_file() and "wandb" not in path.relative_to(output_dir).parts
    ]
    files = "".join(path.read_text(errors="replace") for path in ours)
    return status, error, stderr, files


def test_a_failing_mlflow_uri_never_shows_its_password(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, tiny_corpus: Path, tiny_bert_dir: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:9/?token=secret")  # nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, not after minutes of back-off
    status, error, stderr, files = tracker_failure(capfd, tiny_corpus, tiny_bert_dir, tmp_path / "run", "mlflow")
    assert status == 2 and error.startswith("error: --report_to mlflow: cannot start a run at http://***@127.0.0.1:9/")
    assert "secret" not in stderr and "secret" not in files


def test_a_failing_wandb_server_gives_the_cause_without_secrets_or_login_advice(
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_bert_dir: Path,
    offline_wandb,
    monkeypatch,
) -> None:
    monkeypatch.delenv("WANDB_SILENT")  # whatever W&B itself prints is checked too
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_BASE_URL", "http://secret@127.0.0.1:9")  # a token as the user name; nothing listens
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    status, error, stderr, files = tracker_failure(capfd, tiny_corpus, tiny_bert_dir, tmp_path / "run", "wandb")
    assert status == 2 and error.startswith("error: --report_to wandb: could not start a W&B run")
    assert "http://***@127.0.0.1:9" in error and "connection refused" in error and "wandb login" not in error
    assert "secret" not in stderr and "0123456789abcdef" not in stderr and "secret" not in files


def test_a_rejected_wandb_key_advises_login_without_showing_the_key(
    tmp_path: Path, offline_wandb: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "secret-key")  # too short: W&B refuses it before any network call
    with pytest.raises(UserError) as raised:
        open_trackers(("wandb",), tmp_path, "run", SETTINGS)
    assert "wandb login" in str(raised.value) and "secret" not in str(raised.value)


def test_redact_secrets_takes_out_url_credentials_secret_parameters_and_secret_variables(monkeypatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdef123")
    monkeypatch.setenv("PWD", "/tmp/work/dir")  # the current directory, not a password
    assert redact_secrets("/tmp/work/dir/model: not found") == "/tmp/work/dir/model: not found"
    text = "at https://me:p@ss@host:5000/x?api_key=k1&run=2 (token hf_abcdef123, max_tokens=5, file:///tmp/a@b)"
    assert redact_secrets(text) == (
        "at https://***@host:5000/x?api_key=***&run=2 (token ***, max_tokens=5, file:///tmp/a@b)"
    )


def test_a_file_where_the_tensorboard_directory_goes_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "tensorboard").write_text("notes\n")
    with pytest.raises(UserError) as raised:
        open_trackers(("tensorboard",), tmp_path, "run", SETTINGS)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'tensorboard'}: a file, not a directory;") and "\n" not in message
    assert (tmp_path / "tensorboard").read_text() == "notes\n"


def test_nan_and_infinity_are_written_as_null_and_trackers_get_what_the_file_holds(tmp_path: Path) -> None:
    from bert_domain_ft.training.metrics import MetricsLog

    class Recorder:
        def __init__(self) -> None:
            self.scalars: list[tuple[str, int, dict[str, float]]] = []

        def log_scalars(self, kind: str, step: int, values: dict[str, float]) -> None:
            self.scalars.append((kind, step, dict(values)))

        def close(self) -> None:
            pass

    tracker = Recorder()
    log = MetricsLog(tmp_path / "metrics.jsonl", trackers=[tracker])  # type: ignore[list-item]
    log.append(
        {
            "kind": "eval",
            "step": 3,
            "mlm_loss": float("nan"),
            "perplexity": math.inf,
            "nested": {"x": -math.inf},
            "mlm_accuracy": 0.5,
        }
    )
    (line,) = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    assert json.loads(line, parse_constant=refuse) == {
        "kind": "eval", "step": 3, "mlm_loss": None, "perplexity": None, "nested": {"x": None}, "mlm_accuracy": 0.5
    }  # fmt: skip
    assert tracker.scalars == [("eval", 3, {"mlm_accuracy": 0.5})]  # the values the file holds, no more
