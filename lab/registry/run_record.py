"""A training run as MLflow recorded it, read back whole: settings, tags, every round's metrics,
the nodes' artifacts and the model's provenance (what `lab report` shows)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.core.spec import TaskSpec, parse_spec
from lab.errors import SpecError, UsageError
from lab.registry.tracking import patience, store, tracking_errors, unreachable

__all__ = [
    "AGREEMENTS",
    "CONTRIBUTIONS",
    "FINGERPRINTS",
    "REFUSALS",
    "SPEC",
    "SUMMARY",
    "RunRecord",
    "read_run",
]

# The run's artifacts a report reads; each is optional, since older runs lack the newer ones.
SPEC = "task/spec.toml"  # federation.server_app
FINGERPRINTS = "nodes/fingerprints.json"  # lab.queries.prepare: who joined, their fingerprints, who was refused
AGREEMENTS = "nodes/agreements.json"  # lab.queries.prepare: the clauses each node checked the run against
SUMMARY = "nodes/summary.json"  # federation.training: per-organisation scores and intervals
REFUSALS = "nodes/refusals-in-rounds.json"  # federation.training: nodes refused or dropped during the rounds
CONTRIBUTIONS = "contributions/contributions.json"  # federation.training: each node's contribution
_JSON = (FINGERPRINTS, AGREEMENTS, SUMMARY, REFUSALS, CONTRIBUTIONS)
_PROVENANCE = "artifacts/bundle/provenance.json"  # inside the logged model (lab.registry.packaging)

_FIX = "list the runs with `lab runs` (and give --tracking-uri for another store)"


@dataclass(frozen=True)
class RunRecord:
    """Everything one training run recorded, as read from its tracking store."""

    run_id: str
    name: str
    experiment: str
    status: str
    start_ms: int
    end_ms: int | None
    tracking_uri: str
    params: dict[str, str]
    tags: dict[str, str]
    spec: TaskSpec
    nodes: tuple[str, ...]  # the nodes that took part, by name
    histories: dict[str, list[tuple[int, float]]]  # metric key -> (step, value), by step
    artifacts: dict[str, Any] = field(default_factory=dict)  # the JSON artifacts present, by path
    provenance: dict[str, Any] = field(default_factory=dict)  # the logged model's fingerprints
    model: str = ""  # models:/NAME/VERSION when the run registered its model

    def last(self, key: str) -> float | None:
        """The metric's value at its last step (None when the run did not log it)."""
        history = self.histories.get(key)
        return history[-1][1] if history else None

    def node_metric(self, node: str, metric: str) -> float | None:
        return self.last(f"node.{node}.{metric}")


def read_run(tracking_uri: str, run_id: str) -> RunRecord:
    """Training run ``run_id`` of the store at ``tracking_uri``.

    Raises
    ------
    UsageError
        If the store has no such run, or the run is not a training run (a query, or one that
        failed before its task was recorded).
    """
    from mlflow.exceptions import MlflowException

    try:
        with patience(3):  # a tracking server that is down is not waited for minutes
            client = store(tracking_uri)
            run = client.get_run(run_id)
    except Exception as exc:
        if unreachable(exc):
            raise UsageError(
                f"the tracking store {tracking_uri!r} cannot be reached; check --tracking-uri and that its server runs"
            ) from None
        if not isinstance(exc, MlflowException):
            raise
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower():
            raise UsageError(f"no run {run_id!r} in the tracking store {tracking_uri!r}; {_FIX}") from None
        raise UsageError(
            f"cannot read run {run_id!r} from {tracking_uri!r}: {str(exc).splitlines()[0]}; {_FIX}"
        ) from None
    params, tags = dict(run.data.params), dict(run.data.tags)
    if params.get("query"):
        raise UsageError(
            f"run {run_id} is a {params['query']!r} query, not a training run: `lab report` takes the id of a run "
            f"of `lab run` or `lab demo`; {_FIX}"
        )
    what = f"cannot read the artifacts of run {run_id!r} from {tracking_uri!r}"
    with tracking_errors(what, _FIX), tempfile.TemporaryDirectory() as tmp:
        present = _artifact_paths(client, run_id)
        spec_text = _download(tracking_uri, run_id, SPEC, Path(tmp)) if SPEC in present else None
        artifacts = {
            path: json.loads(_download(tracking_uri, run_id, path, Path(tmp))) for path in _JSON if path in present
        }
    if spec_text is None or "num_rounds" not in params:
        raise UsageError(
            f"run {run_id} is not a training run that got under way (it has no task spec or round settings "
            f"recorded; status {run.info.status}): `lab report` takes a run of `lab run` or `lab demo`; {_FIX}"
        )
    try:
        spec = parse_spec(spec_text, source=f"run {run_id}'s {SPEC}")
    except SpecError as exc:
        raise UsageError(f"run {run_id}'s task spec cannot be read again: {exc}") from None
    nodes = tuple(n for n in params.get("nodes", "").split(",") if n)
    histories = {key: _history(client, run_id, key) for key in run.data.metrics}
    provenance, model = _model(client, tracking_uri, run_id, run.info.experiment_id)
    experiment = client.get_experiment(run.info.experiment_id)
    return RunRecord(
        run_id=run_id,
        name=run.info.run_name or "",
        experiment=experiment.name if experiment else run.info.experiment_id,
        status=run.info.status,
        start_ms=int(run.info.start_time or 0),
        end_ms=int(run.info.end_time) if run.info.end_time else None,
        tracking_uri=tracking_uri,
        params=params,
        tags=tags,
        spec=spec,
        nodes=nodes,
        histories=histories,
        artifacts=artifacts,
        provenance=provenance,
        model=model,
    )


def _artifact_paths(client: Any, run_id: str) -> set[str]:
    """The run's artifact files in the folders a report reads."""
    folders = {path.split("/")[0] for path in (SPEC, *_JSON)}
    return {a.path for folder in folders for a in client.list_artifacts(run_id, folder) if not a.is_dir}


def _download(tracking_uri: str, run_id: str, path: str, folder: Path) -> str:
    from mlflow.artifacts import download_artifacts

    local = download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(folder), tracking_uri=tracking_uri)
    return Path(local).read_text(encoding="utf-8")


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    """One metric's values by step (the last value logged at a step wins, as MLflow shows it)."""
    by_step: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
            by_step[m.step] = (m.timestamp, m.value)
    return [(step, value) for step, (_, value) in sorted(by_step.items())]


def _model(client: Any, tracking_uri: str, run_id: str, experiment_id: str) -> tuple[dict[str, Any], str]:
    """The provenance of the model the run logged, and its registered name and version ({} and ""
    when it logged none: a run that failed, or an older layout)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    versions = client.search_model_versions(f"run_id = '{run_id}'")
    model = f"models:/{versions[0].name}/{versions[0].version}" if versions else ""
    logged = client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    if not logged:
        return {}, model
    uri = f"{logged[0].artifact_location.rstrip('/')}/{_PROVENANCE}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri)
            return dict(json.loads(Path(local).read_text(encoding="utf-8"))), model
    except (MlflowException, OSError):
        return {}, model
