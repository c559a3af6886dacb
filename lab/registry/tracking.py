"""MLflow on the coordinator: one run per federated run, the model logged and registered at the end."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from lab.core.model import Predictor
from lab.errors import ModelError
from lab.registry.packaging import model_arguments
from lab.registry.signing import sign_bundle

__all__ = [
    "AUDIT_HEADS",
    "CHAMPION",
    "LoggedModel",
    "Tracker",
    "close_unfinished",
    "recorded_audit_heads",
    "account",
    "patience",
    "tracking_errors",
    "unreachable",
]

logger = logging.getLogger(__name__)

CHAMPION = "champion"
#: The run's artifact with every node's audit head, reply by reply (federation.recorder).
AUDIT_HEADS = "nodes/audit-heads.json"


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` (the non-empty ones) in the environment for the calls inside, restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def account(username: str = "", password: str = "", ca: Path | None = None) -> contextlib.AbstractContextManager[None]:
    """A tracking server account and CA for the calls inside, through MLflow's own environment
    variables; nothing is written down, and the variables are restored after."""
    return _environment(
        {
            "MLFLOW_TRACKING_USERNAME": username,
            "MLFLOW_TRACKING_PASSWORD": password,
            "MLFLOW_TRACKING_SERVER_CERT_PATH": str(ca.resolve()) if ca else "",
        }
    )


def patience(seconds: float) -> contextlib.AbstractContextManager[None]:
    """Retry an unreachable tracking server for about ``seconds`` inside (MLflow's own retries,
    backing off 1, 2, 4... seconds), then let MLflow's error through; restored after."""
    retries = max(1, math.ceil(math.log2(seconds + 1)) + 1)
    return _environment({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"})


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the tracking server could not be reached (after MLflow's retries)."""
    import requests

    text = str(exc)
    return isinstance(exc, requests.exceptions.ConnectionError) or (
        isinstance(exc, mlflow.exceptions.MlflowException)
        and ("Max retries exceeded" in text or "Connection refused" in text)
    )


@contextmanager
def tracking_errors(what: str, fix: str) -> Iterator[None]:
    """Turn MLflow's error inside into one line: what could not be done, MLflow's reason, the fix."""
    try:
        yield
    except mlflow.exceptions.MlflowException as exc:
        raise ModelError(f"{what}: {str(exc).splitlines()[0]}; {fix}") from None


def store(tracking_uri: str) -> MlflowClient:
    """The tracking store at ``tracking_uri``: the one way the lab reaches one outside a run."""
    return MlflowClient(tracking_uri=tracking_uri)


def recorded_audit_heads(tracking_uri: str, run_id: str, node: str) -> list[tuple[int, str]]:
    """The audit heads node ``node`` sent during MLflow run ``run_id`` (count, hash), in order."""
    from mlflow.artifacts import download_artifacts

    what = f"cannot read the audit heads of run {run_id!r} from {tracking_uri!r}"
    fix = "check the run id (in the MLflow UI: lab ui), the tracking URI and your account"
    with tracking_errors(what, fix), tempfile.TemporaryDirectory() as tmp:
        path = download_artifacts(run_id=run_id, artifact_path=AUDIT_HEADS, dst_path=tmp, tracking_uri=tracking_uri)
        heads = json.loads(Path(path).read_text(encoding="utf-8"))
    return [(int(h["count"]), str(h["hash"])) for h in heads if h.get("node") == node]


@dataclass(frozen=True)
class LoggedModel:
    """Where the final model went."""

    model_uri: str
    registered_name: str | None
    version: str | None


def close_unfinished(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark a run ``status`` after its coordinator was stopped.

    A run still RUNNING gets ``status``; a user's interrupt (KILLED) also replaces the FAILED
    the coordinator may have recorded as it was stopped.
    """
    client = store(tracking_uri)
    with patience(3):  # a tracking server that is down is not waited for here
        current = client.get_run(run_id).info.status
        if current == "RUNNING" or (status == "KILLED" and current == "FAILED"):
            client.set_terminated(run_id, status)
            logger.info("marked MLflow run %s %s", run_id, status)


class Tracker:
    """An MLflow run, or nothing when no tracking URI is set.

    Use ``with tracker.run(...)``: an exception escaping the block ends the run as FAILED.
    """

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.enabled = bool(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_id: str | None = None
        self._logged: dict[str, str] = {}  # params a resumed run logged before

    @contextmanager
    def run(
        self, *, run_name: str, params: dict[str, Any], tags: dict[str, str], resume_run_id: str = ""
    ) -> Iterator[Tracker]:
        """Start an MLflow run, or continue run ``resume_run_id`` (its params stay as first logged)."""
        if not self.enabled:
            yield self
            return
        mlflow.set_tracking_uri(self.tracking_uri)
        if resume_run_id:
            self._logged = dict(store(self.tracking_uri).get_run(resume_run_id).data.params)
            started = mlflow.start_run(run_id=resume_run_id, tags=tags)
        else:
            mlflow.set_experiment(self.experiment)
            started = mlflow.start_run(run_name=run_name, tags=tags)
        self.run_id = started.info.run_id
        try:
            self.log_params(params)
            yield self
        except BaseException as exc:
            # A tracking server that cannot be reached cannot record the end either: the run stays
            # RUNNING until a coordinator finds its own was gone (lab.registry.runs).
            if not unreachable(exc):
                mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        mlflow.end_run()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.enabled and metrics:
            mlflow.log_metrics(metrics, step=step)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log ``params``; a resumed run keeps those its first attempt logged."""
        fresh = {k: v for k, v in params.items() if k not in self._logged}
        if self.enabled and fresh:
            mlflow.log_params(fresh)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> None:
        if self.enabled:
            mlflow.log_artifacts(str(local_dir), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled and tags:
            mlflow.set_tags(tags)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            mlflow.log_text(text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        if self.enabled:
            mlflow.log_figure(figure, artifact_file)

    def log_model(
        self,
        predictor: Predictor,
        *,
        lock_text: str,
        provenance: dict[str, Any],
        register: bool,
        signing_key: Path | None,
    ) -> LoggedModel | None:
        """Log the pyfunc model with the lock and fingerprints of the environment it was trained
        in, its bundle signed with the federation's ``signing_key`` (lab.registry.signing);
        register it under the spec's name with the alias ``champion``."""
        if not self.enabled:
            return None
        spec = predictor.spec
        with tempfile.TemporaryDirectory() as tmp:
            arguments = model_arguments(predictor, Path(tmp) / "bundle", lock_text=lock_text, provenance=provenance)
            if signing_key is not None:
                sign_bundle(
                    Path(arguments["artifacts"]["bundle"]), signing_key, model=spec.name, run_id=self.run_id or ""
                )
            info = mlflow.pyfunc.log_model(
                name="model", registered_model_name=spec.name if register else None, **arguments
            )
        version = str(info.registered_model_version) if register and info.registered_model_version else None
        if version is not None:
            store(self.tracking_uri).set_registered_model_alias(spec.name, CHAMPION, version)
            logger.info("registered %s version %s as @%s", spec.name, version, CHAMPION)
        return LoggedModel(info.model_uri, spec.name if version else None, version)
