"""The shared model as an MLflow pyfunc: raw rows in, predictions out, preprocessing inside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel
from mlflow.types import ColSpec, Schema

from lab.data import check_frame
from lab.environment import Environment
from lab.errors import ModelError
from lab.metrics import predictions
from lab.model import Predictor, build_model, state_from_numpy, state_to_numpy
from lab.preprocess import Scaler
from lab.spec import FileFormat, TaskSpec, parse_spec

__all__ = [
    "FederatedModel",
    "input_example",
    "load_bundle",
    "output_frame",
    "predict_frame",
    "save_bundle",
    "signature",
]

SPEC_FILE = "spec.toml"
SCALER_FILE = "scaler.json"
WEIGHTS_FILE = "weights.npz"
LOCK_FILE = "requirements.lock"
PROVENANCE_FILE = "provenance.json"


def save_bundle(
    predictor: Predictor, directory: Path, *, lock_text: str = "", provenance: dict[str, Any] | None = None
) -> Path:
    """Write the spec, scaler and weights the pyfunc needs into ``directory``, with the lock of
    the environment it was trained in and the run's fingerprints (``provenance``)."""
    directory.mkdir(parents=True, exist_ok=True)
    if lock_text:
        (directory / LOCK_FILE).write_text(lock_text, encoding="utf-8")
    (directory / PROVENANCE_FILE).write_text(json.dumps(provenance or {}, indent=2), encoding="utf-8")
    (directory / SPEC_FILE).write_text(predictor.spec.text, encoding="utf-8")
    mean, std = predictor.scaler.to_lists()
    scaler = {"inputs": predictor.spec.encoded_names, "mean": mean, "std": std}
    (directory / SCALER_FILE).write_text(json.dumps(scaler, indent=2), encoding="utf-8")
    np.savez(directory / WEIGHTS_FILE, **state_to_numpy(predictor.model))  # type: ignore[arg-type]
    return directory


def load_bundle(directory: str | Path) -> Predictor:
    """Rebuild the predictor saved by ``save_bundle``."""
    directory = Path(directory)
    spec = parse_spec((directory / SPEC_FILE).read_text(encoding="utf-8"), source=str(directory / SPEC_FILE))
    scaler = json.loads((directory / SCALER_FILE).read_text(encoding="utf-8"))
    with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as weights:
        arrays = {k: weights[k] for k in weights.files}
    model = state_from_numpy(build_model(spec), arrays)
    return Predictor(spec, Scaler(np.asarray(scaler["mean"]), np.asarray(scaler["std"])), model)


def output_frame(scores: np.ndarray, spec: TaskSpec) -> pd.DataFrame:
    """Predictions as a frame: the predicted raw value, and probabilities where they exist."""
    target = spec.target
    pred = predictions(scores, spec)
    if target.kind == "binary":
        return pd.DataFrame({"prediction": pred.astype(np.int64), "probability": scores})
    if target.kind == "multiclass":
        out = pd.DataFrame({"prediction": [str(target.classes[int(i)]) for i in pred]})
        for i, cls in enumerate(target.classes):
            out[f"probability.{cls}"] = scores[:, i]
        return out
    return pd.DataFrame({"prediction": pred})


def _input_type(spec: TaskSpec, name: str) -> str:
    feature = next(f for f in spec.features if f.name == name)
    if feature.type == "categorical" and not all(isinstance(v, (int, float)) for v in feature.levels):
        return "string"
    return "double"


def signature(spec: TaskSpec) -> ModelSignature:
    """Input columns as the spec names them; output as ``output_frame`` writes it."""
    inputs = Schema([ColSpec(_input_type(spec, f.name), f.name) for f in spec.features])
    example = output_frame(np.full((1, spec.target.num_outputs) if spec.target.kind == "multiclass" else 1, 0.5), spec)
    kinds = {"int64": "long", "float64": "double", "object": "string"}
    outputs = Schema([ColSpec(kinds[str(example[c].dtype)], c) for c in example.columns])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(spec: TaskSpec, scaler: Scaler) -> pd.DataFrame:
    """A made-up row: federation means for numbers, the first level for categories.

    It holds no one's record; the coordinator never sees rows.
    """
    row: dict[str, Any] = {}
    mean_of = dict(zip(spec.encoded_names, scaler.mean, strict=True))
    for feature in spec.features:
        if feature.type == "numeric":
            row[feature.name] = round(float(mean_of[feature.name]), 2)
        else:
            level = feature.levels[0]
            row[feature.name] = float(level) if isinstance(level, (int, float)) else str(level)
    return pd.DataFrame([row])


class FederatedModel(PythonModel):
    """The registered model: checks raw rows against the spec, encodes, scales and predicts."""

    predictor: Predictor
    environment: Environment | None
    provenance: dict[str, Any]

    def load_context(self, context: Any) -> None:
        bundle = Path(context.artifacts["bundle"])
        self.predictor = load_bundle(bundle)
        lock = bundle / LOCK_FILE
        self.environment = Environment.from_lock_file(lock) if lock.is_file() else None
        provenance = bundle / PROVENANCE_FILE
        self.provenance = json.loads(provenance.read_text(encoding="utf-8")) if provenance.is_file() else {}

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            raise ModelError("the model takes a pandas DataFrame with the spec's columns")
        spec = self.predictor.spec
        return predict_frame(self.predictor, model_input, source="model input", file_format=spec.file_format, offset=0)


def predict_frame(
    predictor: Predictor, frame: pd.DataFrame, *, source: str, file_format: FileFormat, offset: int
) -> pd.DataFrame:
    """Predictions for every row of a raw frame, checked against the spec.

    A row the spec cannot score (a missing value in a ``drop-row`` column) gets empty
    predictions, so the output lines up with the input row for row.
    """
    table = check_frame(
        frame, predictor.spec, source=source, file_format=file_format, offset=offset, require_target=False
    )
    out = output_frame(predictor.scores(table.features), predictor.spec)
    return out.set_index(pd.Index(table.line - offset)).reindex(range(len(frame)))
