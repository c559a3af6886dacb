"""A training run's checkpoints in MLflow: after every round, what resuming the run needs, so that
`lab run --resume RUN_ID` continues where a killed coordinator stopped.

Each round's checkpoint is the run's artifact folder ``checkpoints/round-NNNN``: ``arrays.npz``
(the global model's weights and the server optimiser's state, bit for bit) and ``state.json``
(the round, the federated scalers, the run the nodes' privacy ledgers book it under, and each
node's data fingerprint). The run's tag ``lab.checkpoint.round`` names the last one, and the run's
settings are its artifact ``run/settings.json``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lab.contract.settings import RunSettings
from lab.errors import UsageError
from lab.registry.tracking import Tracker, store, tracking_errors

__all__ = ["ROUND_TAG", "SETTINGS", "Checkpoint", "Resumable", "log_settings", "resumable"]

#: The run's settings as the coordinator ran them (every key but the tracking URI).
SETTINGS = "run/settings.json"
#: The tag naming the run's last checkpointed round.
ROUND_TAG = "lab.checkpoint.round"


def _folder(server_round: int) -> str:
    return f"checkpoints/round-{server_round:04d}"


@dataclass(frozen=True)
class Checkpoint:
    """What resuming after ``server_round`` needs."""

    server_round: int
    weights: dict[str, np.ndarray]
    optimiser: dict[str, dict[str, np.ndarray]]  # the server optimiser's state (FedAdam's m_t, v_t), by name
    scaler: tuple[list[float], list[float]]  # the features' federated means and deviations
    target_scaler: tuple[list[float], list[float]]
    data: dict[str, str] = field(default_factory=dict)  # node name -> its table's fingerprint

    def log(self, tracker: Tracker) -> None:
        """Log as the run's artifacts, then point the run's tag at it (a checkpoint cut short by a
        crash is never named)."""
        if not tracker.enabled:
            return
        arrays = {f"weights/{k}": v for k, v in self.weights.items()}
        for name, state in self.optimiser.items():
            arrays.update({f"optimiser/{name}/{k}": v for k, v in state.items()})
        state_json = {
            "round": self.server_round,
            "scaler": list(self.scaler),
            "target_scaler": list(self.target_scaler),
            "data": self.data,
            "weights": list(self.weights),
            "optimiser": {name: list(state) for name, state in self.optimiser.items()},
        }
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(Path(tmp) / "arrays.npz", **arrays)  # type: ignore[arg-type]
            (Path(tmp) / "state.json").write_text(json.dumps(state_json, indent=2), encoding="utf-8")
            tracker.log_artifacts(tmp, _folder(self.server_round))
        tracker.set_tags({ROUND_TAG: str(self.server_round)})

    @classmethod
    def load(cls, tracking_uri: str, run_id: str, server_round: int) -> Checkpoint:
        """The checkpoint of round ``server_round`` of MLflow run ``run_id``."""
        from mlflow.artifacts import download_artifacts

        what = f"cannot read the checkpoint of round {server_round} of run {run_id!r}"
        with tracking_errors(what, "check the tracking store"), tempfile.TemporaryDirectory() as tmp:
            folder = Path(
                download_artifacts(
                    run_id=run_id, artifact_path=_folder(server_round), dst_path=tmp, tracking_uri=tracking_uri
                )
            )
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        return cls(
            server_round=int(state["round"]),
            weights={k: arrays[f"weights/{k}"] for k in state["weights"]},
            optimiser={
                name: {k: arrays[f"optimiser/{name}/{k}"] for k in names} for name, names in state["optimiser"].items()
            },
            scaler=(list(state["scaler"][0]), list(state["scaler"][1])),
            target_scaler=(list(state["target_scaler"][0]), list(state["target_scaler"][1])),
            data={str(k): str(v) for k, v in state["data"].items()},
        )


def log_settings(tracker: Tracker, settings: RunSettings) -> None:
    """Keep the run's settings with the run, for its resumption (the tracking URI is where they are)."""
    values = {k: v for k, v in settings.to_run_config().items() if k != RunSettings.key("tracking_uri")}
    tracker.log_text(json.dumps(values, indent=2, sort_keys=True), SETTINGS)


@dataclass(frozen=True)
class Resumable:
    """A training run that can go on: its settings and its last checkpointed round."""

    run_id: str
    status: str
    checkpoint_round: int
    settings: RunSettings
    tags: dict[str, str]

    def settings_for(self, **filled_in: Any) -> RunSettings:
        """The run's own settings, with what the lab fills in for this attempt (the tracking URI,
        the nodes to wait for, the code's version) and ``resume_run`` set."""
        from dataclasses import replace

        return replace(self.settings, resume_run=self.run_id, admitted_nodes="", **filled_in)


def resumable(tracking_uri: str, run_id: str) -> Resumable:
    """Run ``run_id`` of the tracking store at ``tracking_uri``, if it can be resumed.

    Raises UsageError naming why not: no such run, it finished, it is not a training run, it
    used secure aggregation, or it stopped before its first round ended.
    """
    from mlflow.artifacts import download_artifacts

    fix = "list the runs and what can be resumed with `lab runs`"
    with tracking_errors(f"cannot read run {run_id!r} from {tracking_uri!r}", fix):
        run = store(tracking_uri).get_run(run_id)
    tags = dict(run.data.tags)
    status = run.info.status
    if status == "FINISHED":
        raise UsageError(f"run {run_id} finished; there is nothing to resume ({fix})")
    if ROUND_TAG not in tags:
        raise UsageError(
            f"run {run_id} has no checkpoint: it stopped before its first round ended, or it is a query or a "
            "secure-aggregation run (which keep none); start it again with `lab run`"
        )
    with tracking_errors(f"cannot read the settings of run {run_id!r}", fix), tempfile.TemporaryDirectory() as tmp:
        path = download_artifacts(run_id=run_id, artifact_path=SETTINGS, dst_path=tmp, tracking_uri=tracking_uri)
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    settings = RunSettings.from_run_config({**values, RunSettings.key("tracking_uri"): tracking_uri})
    return Resumable(run_id, status, int(tags[ROUND_TAG]), settings, tags)
