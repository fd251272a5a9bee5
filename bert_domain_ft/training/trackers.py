"""Experiment trackers (``--report_to tensorboard wandb mlflow``): every ``metrics.jsonl`` record, sent on.

``MetricsLog`` (``metrics.py``) is the one place that writes metrics; it hands each record to the trackers
opened here, so a tracker sees exactly what the file holds: the training records (losses, learning rate,
sequences and tokens per second, drift…), the held-out evaluations with their perplexity, the head warm-up, the
probe's scores and the best-model records. A record becomes scalars named ``<kind>/<key>`` (``train/mlm_loss``,
``eval/perplexity``, ``probe/accuracy``; nested values ``probe/paired_vs_start/difference``) at the record's
step (the head warm-up's at its own ``warmup_step``); text and lists are left out. Training records also get
``train/perplexity`` = exp(mlm_loss), the number people look for. The run's settings are logged once, as
hyper-parameters, when the trackers open. Only the main process opens trackers (``MetricsLog`` is disabled on
the others).

Where each writes (its libraries are optional extras: ``pip install bert_domain_ft[tensorboard]``, ``[wandb]``,
``[mlflow]``; a chosen one that is not installed is one ``UserError``):

* tensorboard: event files in ``output_dir/tensorboard/`` (``tensorboard --logdir output_dir/tensorboard``);
* wandb: a run in the project ``$WANDB_PROJECT`` (default ``bert_domain_ft``), its files under ``output_dir``;
  ``WANDB_MODE=offline`` keeps it local (``wandb sync`` uploads it later);
* mlflow: a run in the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``bert_domain_ft``) of
  ``$MLFLOW_TRACKING_URI``, by default a file store in ``output_dir/mlruns`` (``mlflow ui --backend-store-uri``).

    trackers = open_trackers(("tensorboard",), Path("run"), "run", {"learning_rate": 3e-5})
    send_record(trackers, {"kind": "eval", "step": 10, "mlm_loss": 2.1, "perplexity": 8.2})
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from bert_domain_ft.errors import UserError, first_line, redact_secrets
from bert_domain_ft.files import os_errors_as_user_errors

TRACKERS = ("tensorboard", "wandb", "mlflow")
TENSORBOARD_DIRECTORY = "tensorboard"
MLFLOW_DIRECTORY = "mlruns"
WANDB_DIRECTORY = "wandb"  # what wandb.init(dir=output_dir) creates there
DEFAULT_PROJECT = "bert_domain_ft"  # the W&B project and MLflow experiment unless the environment names one
# The module each tracker needs, and the extra that installs it.
_REQUIREMENTS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}
# How W&B words a refused or missing key (a UsageError, not an AuthenticationError, when there is none at all).
_LOGIN_PROBLEM = re.compile(r"(?i)api[ _-]?key|wandb login|\b401\b|unauthori[sz]ed|not logged in")
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_\-./ ]")  # MLflow's rule for metric and parameter names


class Tracker(Protocol):
    """One experiment tracker: hyper-parameters once, then scalars at steps, then ``close``."""

    def log_parameters(self, parameters: Mapping[str, Any]) -> None: ...

    def log_scalars(self, kind: str, step: int, values: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def require_tracker(name: str) -> Any:
    """Import and return the library of tracker ``name``; a ``UserError`` saying how to install it if it is missing."""
    module, extra = _REQUIREMENTS[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"--report_to {name}: the {module} package is not installed; pip install 'bert_domain_ft[{extra}]' "
            f"(or pip install {module}), or drop {name} from --report_to"
        ) from None


def flat_parameters(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level, ``outer/inner`` keys; paths and lists as text, None as "none"."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_parameters(value, f"{name}/"))
        elif value is None:
            flat[name] = "none"
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def _numbers(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    values: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            values.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[f"{prefix}{key}"] = float(value)
    return values


def scalars_of(record: Mapping[str, Any]) -> tuple[str, int, dict[str, float]]:
    """(kind, step, scalars by key) of one ``metrics.jsonl`` record: every number in it, nested ones too, except
    the step itself; training records gain ``perplexity`` = exp(mlm_loss)."""
    kind = str(record.get("kind", "metrics"))
    step_key = "warmup_step" if kind == "head_warmup" and "warmup_step" in record else "step"
    step = int(record.get(step_key, 0))
    values = _numbers({key: value for key, value in record.items() if key not in ("kind", step_key)})
    if kind == "train" and "mlm_loss" in values and "perplexity" not in values:
        values["perplexity"] = math.exp(min(values["mlm_loss"], 700.0))  # exp(700) is near float64's top
    return kind, step, values


def send_record(trackers: Sequence[Tracker], record: Mapping[str, Any]) -> None:
    """Give one ``metrics.jsonl`` record to every tracker."""
    if not trackers:
        return
    kind, step, values = scalars_of(record)
    if values:
        for tracker in trackers:
            tracker.log_scalars(kind, step, values)


class TensorBoardTracker:
    """Scalars into TensorBoard event files; the settings as a text table and as HParams."""

    def __init__(self, directory: Path):
        require_tracker("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        if directory.exists() and not directory.is_dir():
            raise UserError(
                f"{directory}: a file, not a directory; TensorBoard's event files go in this directory: move the "
                "file away, or drop tensorboard from --report_to"
            )
        with os_errors_as_user_errors(directory):
            self.writer = SummaryWriter(log_dir=str(directory))

    def log_parameters(self, parameters: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        rows = "\n".join(f"| {key} | {value} |" for key, value in parameters.items())
        self.writer.add_text("hyperparameters", "| setting | value |\n|---|---|\n" + rows, global_step=0)
        for summary in hparams(dict(parameters), {}):  # the HParams dashboard, in this run's own event file
            self.writer.file_writer.add_summary(summary)

    def log_scalars(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{kind}/{key}", value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run: each record kind gets its own x-axis, ``<kind>/step``, so the head warm-up's steps and the
    main steps never collide."""

    def __init__(self, directory: Path, run_name: str):
        wandb = require_tracker("wandb")
        project = os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
        try:
            with _stderr_redacted():
                self.run = wandb.init(project=project, name=run_name, dir=str(directory))
        except Exception as error:  # noqa: BLE001 - a login, network or settings problem, told in one line
            _end_wandb_service(wandb)  # its settings (server, key) were read from this environment: start afresh
            raise UserError(
                f"--report_to wandb: could not start a W&B run ({_wandb_cause(error)}); {_wandb_advice(error)}"
            ) from None
        self.kinds: set[str] = set()

    def log_parameters(self, parameters: Mapping[str, Any]) -> None:
        self.run.config.update(dict(parameters), allow_val_change=True)

    def log_scalars(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        if kind not in self.kinds:
            self.kinds.add(kind)
            self.run.define_metric(f"{kind}/step")
            self.run.define_metric(f"{kind}/*", step_metric=f"{kind}/step")
        self.run.log({f"{kind}/step": step, **{f"{kind}/{key}": value for key, value in values.items()}})

    def close(self) -> None:
        """End the run and wait until its file is written. ``finish`` only hands the run over: W&B's service
        process writes ``run-*.wandb`` out when it closes the run's stream, after ``finish`` has returned (seconds
        later on a loaded machine), so a reader right after ``close`` (``wandb sync``, a test, the next step of a
        script) could find the history empty. Shutting the service down (``wandb.teardown``) waits for it to
        close every stream; it is left running while another W&B run of this process is still open."""
        with _stderr_redacted():
            self.run.finish()
        _end_wandb_service(require_tracker("wandb"))


class _RedactingStream:
    """A text stream that writes through ``redact_secrets``; everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_secrets(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _stderr_redacted() -> Iterator[None]:
    """W&B prints to stderr itself as it starts and ends a run (``Loaded credentials for http://user:pass@host``):
    its lines pass through ``redact_secrets`` too."""
    with contextlib.redirect_stderr(_RedactingStream(sys.stderr)):  # type: ignore[type-var]
        yield


def _end_wandb_service(wandb: Any) -> None:
    """Shut W&B's service process down, waiting until it has written out every run, unless another W&B run of
    this process still needs it."""
    if wandb.run is None:
        wandb.teardown()


def _wandb_cause(error: Exception) -> str:
    """What went wrong, in one redacted line: each rejected setting of a settings error (its first line only
    counts them), else the error's first line."""
    problems = getattr(error, "errors", None)
    if callable(problems):  # pydantic's ValidationError: "mode: Input should be 'online', 'offline', …"
        try:
            return redact_secrets("; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems()))
        except (TypeError, KeyError):
            pass
    return first_line(error)


def _wandb_advice(error: Exception) -> str:
    """``wandb login`` only where W&B refused the credentials; anything else (an unreachable server, a bad
    setting) is fixed elsewhere, and offline mode keeps the run local meanwhile."""
    if type(error).__name__ == "AuthenticationError" or _LOGIN_PROBLEM.search(str(error)):
        return "run `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline to keep the run local"
    return "fix the cause, or set WANDB_MODE=offline to keep the run local"


def _mlflow_name(name: str) -> str:
    return _UNSAFE_NAME_CHARACTERS.sub("_", name)[:250]


class MlflowTracker:
    """An MLflow run through ``MlflowClient`` (no global active run): parameters once, metrics in batches."""

    def __init__(self, directory: Path, run_name: str):
        require_tracker("mlflow")
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (directory / MLFLOW_DIRECTORY).resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 asks for this before it writes a local file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=uri)
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT)
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        except Exception as error:  # noqa: BLE001 - an unreachable server or a bad URI, told in one line
            where = redact_secrets(uri)
            raise UserError(f"--report_to mlflow: cannot start a run at {where} ({first_line(error)})") from None

    def log_parameters(self, parameters: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(_mlflow_name(key), str(value)[:6000]) for key, value in parameters.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_scalars(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_name(f"{kind}/{key}"), value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def check_trackers_installed(names: Iterable[str]) -> None:
    """Every chosen tracker's library importable (before any training starts), else one ``UserError``."""
    for name in names:
        if name != "none":
            require_tracker(name)


def open_trackers(
    names: Iterable[str], output_dir: Path, run_name: str, parameters: Mapping[str, Any]
) -> list[Tracker]:
    """The trackers ``names`` (``"none"`` ignored), opened for ``output_dir``, with ``parameters`` (the run's
    settings, nested ones flattened) logged once."""
    chosen = [name for name in dict.fromkeys(names) if name != "none"]
    check_trackers_installed(chosen)
    trackers: list[Tracker] = []
    for name in chosen:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(Path(output_dir) / TENSORBOARD_DIRECTORY))
        elif name == "wandb":
            trackers.append(WandbTracker(Path(output_dir), run_name))
        elif name == "mlflow":
            trackers.append(MlflowTracker(Path(output_dir), run_name))
        else:
            raise UserError(f"--report_to {name}: not a tracker; choose from {', '.join(TRACKERS)} or none")
    flat = flat_parameters(parameters)
    for tracker in trackers:
        tracker.log_parameters(flat)
    return trackers


def close_trackers(trackers: Sequence[Tracker]) -> None:
    """Close every tracker (flushing its files, ending its run)."""
    for tracker in trackers:
        tracker.close()
