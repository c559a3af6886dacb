"""In-house reruns: a member applies a registered model to its own table."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from lab.core.data import load_table, read_raw, split_table
from lab.core.environment import EnvDiff, Environment
from lab.core.intervals import AUC_MIN_CLASS_ROWS, wilson
from lab.core.metrics import compute_metrics
from lab.core.sources import TableSource
from lab.errors import DataError, ModelError
from lab.registry.packaging import FederatedModel, predict_frame
from lab.registry.tracking import account
from lab.registry.verified import fetched, registered_name, verify_model

__all__ = [
    "Evaluation",
    "check_environment",
    "evaluate_table",
    "load_model",
    "predict_table",
    "provenance",
    "pull_model",
]

logger = logging.getLogger(__name__)

Split = Literal["test", "train", "all"]


def load_model(model_uri: str, tracking_uri: str, federation_key: Path) -> FederatedModel:
    """A registered model (``models:/name@alias``, ``runs:/...``, or a pulled folder), its signature
    checked with ``federation_key`` (the federation's public key), verified and rebuilt by the lab
    from its bundle: MLflow's loader, which would run the model's own code, is never called
    (lab.registry.verified)."""
    with fetched(model_uri, tracking_uri) as directory:
        bundle = verify_model(
            directory, what=repr(model_uri), federation_key=federation_key, name=registered_name(model_uri)
        )
        return FederatedModel.from_bundle(bundle)


def pull_model(
    model_uri: str,
    tracking_uri: str,
    out: Path,
    *,
    federation_key: Path,
    username: str = "",
    password: str = "",
    ca: Path | None = None,
) -> Path:
    """Download a registered model (its code, bundle, lock and fingerprints) from a tracking server,
    verify it as ``load_model`` does, and only then write it into ``out``, to rerun it offline.
    A refused model leaves nothing in ``out``.

    The account and the CA reach MLflow through its own environment variables for this call only;
    nothing is written down but the model.
    """
    with account(username, password, ca), fetched(model_uri, tracking_uri) as folder:
        verify_model(folder, what=repr(model_uri), federation_key=federation_key, name=registered_name(model_uri))
        shutil.copytree(folder, out, dirs_exist_ok=True)
    return out


def check_environment(model: FederatedModel, *, allow_drift: bool) -> EnvDiff:
    """Compare this environment with the one the model was trained in (its lock).

    Raises
    ------
    ModelError
        With every difference, unless ``allow_drift``; then the differences are returned.
    """
    if model.environment is None:
        return EnvDiff(other=["the model carries no environment lock to compare with"])
    drift = Environment.current().diff(model.environment)
    if drift and not allow_drift:
        listed = "\n  ".join(drift.lines())
        raise ModelError(
            f"this environment differs from the one the model was trained in ({len(drift.lines())} differences):\n"
            f"  {listed}\ninstall the model's environment (environments/requirements.lock, `make setup`), "
            "or pass --allow-env-drift to run anyway"
        )
    return drift


def provenance(model: FederatedModel, model_uri: str, drift: EnvDiff) -> dict[str, Any]:
    """What a rerun's output records: the model, where it was trained, where it ran, and the drift."""
    return {
        "model": model_uri,
        "model_environment": model.environment.fingerprint if model.environment else None,
        "run_environment": Environment.current().fingerprint,
        "environment_drift": drift.lines(),
        "trained_with": model.provenance,
    }


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a model on a table's rows."""

    metrics: dict[str, float]
    rows: int
    dropped: int
    split: Split
    smallest_class: int | None = None  # a binary task's rarer class's rows (the AUC rests on them)

    @property
    def intervals(self) -> dict[str, tuple[float, float]]:
        """95% Wilson intervals of the metrics that are proportions (accuracy)."""
        found = wilson(self.metrics.get("accuracy"), self.rows)
        return {"accuracy": found} if found else {}

    @property
    def auc_unreliable(self) -> bool:
        """Whether the AUC rests on fewer than 5 rows of a class."""
        return "auc" in self.metrics and self.smallest_class is not None and self.smallest_class < AUC_MIN_CLASS_ROWS


def evaluate_table(
    model: FederatedModel, data: str | Path, *, node: str | None = None, split: Split = "test"
) -> Evaluation:
    """The spec's metrics on ``data`` (its test split by default, split as the nodes split it)."""
    predictor = model.predictor
    table = load_table(data, predictor.spec, node=node)
    rows = table
    if split != "all":
        train, test = split_table(table, predictor.spec)
        rows = test if split == "test" else train
    assert rows.target is not None
    scores = predictor.scores(rows.features)
    metrics = compute_metrics(scores, rows.target, predictor.spec, loss=predictor.loss(rows.features, rows.target))
    smallest = None
    if predictor.spec.target.kind == "binary":
        positives = int((rows.target == 1).sum())
        smallest = min(positives, len(rows) - positives)
    return Evaluation(metrics=metrics, rows=len(rows), dropped=table.dropped, split=split, smallest_class=smallest)


def predict_table(model: FederatedModel, data: str | Path, out: Path, *, node: str | None = None) -> tuple[int, int]:
    """Write ``data`` with prediction columns appended to ``out`` (CSV or Parquet by suffix).

    Rows the spec cannot score (a missing value under ``drop-row``) get empty predictions.
    Returns (rows scored, rows left empty).
    """
    file_format = model.predictor.spec.format_for(node)
    raw, offset = read_raw(data, file_format)
    scored = predict_frame(
        model.predictor, raw, source=TableSource.of(data).label, file_format=file_format, offset=offset
    )
    result = pd.concat([raw.reset_index(drop=True), scored.reset_index(drop=True)], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if out.suffix.lower() in (".parquet", ".pq"):
            result.to_parquet(out, index=False)
        else:
            result.to_csv(out, index=False)
    except OSError as exc:
        raise DataError(f"cannot write {str(out)!r}: {exc.strerror}; choose a writable --out path") from None
    empty = int(scored["prediction"].isna().sum())
    return len(result) - empty, empty
