"""The shared model as an MLflow pyfunc: raw rows in, predictions out, preprocessing inside."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType

from lab.core.data import check_frame
from lab.core.environment import Environment
from lab.core.metrics import predictions
from lab.core.model import Predictor, build_model, state_from_numpy, state_to_numpy
from lab.core.preprocess import Scaler
from lab.core.spec import FileFormat, Level, TaskSpec, parse_spec
from lab.errors import LabError, ModelError

__all__ = [
    "BUNDLE_FILES",
    "ENTRY_POINT",
    "FederatedModel",
    "check_packaging",
    "input_example",
    "level_type",
    "load_bundle",
    "lock_requirements",
    "model_arguments",
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
ENTRY_POINT = Path(__file__).with_name("pyfunc_entry.py")
#: Every file a bundle may hold: the spec, scalers and weights first (always there), then the lock
#: and the run's fingerprints. Data only: the lab's code comes from the installed package.
BUNDLE_FILES = (SPEC_FILE, SCALER_FILE, WEIGHTS_FILE, LOCK_FILE, PROVENANCE_FILE)

#: MLflow column types of the predictions, by the kind of a target's levels.
_LEVEL_TYPES = {"integer": "long", "float": "double", "string": "string"}
_DTYPES = {"long": "int64", "double": "float64", "string": object}


def save_bundle(
    predictor: Predictor, directory: Path, *, lock_text: str = "", provenance: dict[str, Any] | None = None
) -> Path:
    """Write the spec, scalers and weights the pyfunc needs into ``directory``, with the lock of
    the environment it was trained in and the run's fingerprints (``provenance``)."""
    directory.mkdir(parents=True, exist_ok=True)
    if lock_text:
        (directory / LOCK_FILE).write_text(lock_text, encoding="utf-8")
    (directory / PROVENANCE_FILE).write_text(json.dumps(provenance or {}, indent=2), encoding="utf-8")
    (directory / SPEC_FILE).write_text(predictor.spec.text, encoding="utf-8")
    mean, std = predictor.scaler.to_lists()
    target_mean, target_std = predictor.target_scaler.to_lists()
    scaler = {
        "inputs": predictor.spec.encoded_names,
        "mean": mean,
        "std": std,
        "target_mean": target_mean[0],
        "target_std": target_std[0],
    }
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
    target = Scaler(np.asarray([scaler.get("target_mean", 0.0)]), np.asarray([scaler.get("target_std", 1.0)]))
    return Predictor(spec, Scaler(np.asarray(scaler["mean"]), np.asarray(scaler["std"])), model, target)


def _prediction_type(spec: TaskSpec) -> str:
    """MLflow type of the ``prediction`` column: 1/0 for binary, the class as the spec writes it."""
    target = spec.target
    if target.kind == "binary":
        return "long"
    if target.kind == "regression":
        return "double"
    return _LEVEL_TYPES[level_type(target.classes)]


def output_frame(scores: np.ndarray, spec: TaskSpec) -> pd.DataFrame:
    """Predictions as a frame: the prediction (1/0 for binary, the class as the spec lists it,
    or the value), and probabilities where they exist; column types as ``signature`` declares."""
    target = spec.target
    pred = predictions(scores, spec)
    dtype = _DTYPES[_prediction_type(spec)]
    if target.kind == "binary":
        return pd.DataFrame({"prediction": pd.Series(pred, dtype=dtype), "probability": scores})
    if target.kind == "multiclass":
        out = pd.DataFrame({"prediction": pd.Series([target.classes[int(i)] for i in pred], dtype=dtype)})
        for i, cls in enumerate(target.classes):
            out[f"probability.{cls}"] = scores[:, i]
        return out
    return pd.DataFrame({"prediction": pd.Series(pred, dtype=dtype)})


def signature(spec: TaskSpec) -> ModelSignature:
    """Inputs: the spec's columns, by name. Their values are checked by the model itself against
    the spec (a number may arrive as text, as a CSV holds it), so MLflow's own type enforcement,
    which refuses even integers for a float column, is not used. Outputs: as ``output_frame``."""
    inputs = Schema([ColSpec(AnyType(), f.name) for f in spec.features])  # type: ignore[no-untyped-call]
    outputs: list[ColSpec | TensorSpec] = [ColSpec(_prediction_type(spec), "prediction")]
    if spec.target.kind == "binary":
        outputs.append(ColSpec("double", "probability"))
    elif spec.target.kind == "multiclass":
        outputs += [ColSpec("double", f"probability.{cls}") for cls in spec.target.classes]
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


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
            row[feature.name] = feature.levels[0]
    return pd.DataFrame([row])


def model_arguments(
    predictor: Predictor, bundle: Path, *, lock_text: str, provenance: dict[str, Any]
) -> dict[str, Any]:
    """What ``mlflow.pyfunc.log_model`` and ``save_model`` are given for this predictor: the code
    entry point (models from code: nothing is unpickled), the bundle, the signature, an example,
    the lock's exact pins and the run's fingerprints."""
    return {
        "python_model": str(ENTRY_POINT),
        "artifacts": {"bundle": str(save_bundle(predictor, bundle, lock_text=lock_text, provenance=provenance))},
        "signature": signature(predictor.spec),
        "input_example": input_example(predictor.spec, predictor.scaler),
        "pip_requirements": lock_requirements(lock_text),
        "metadata": {k: v for k, v in provenance.items() if isinstance(v, str)},
    }


def check_packaging(spec: TaskSpec) -> None:
    """Package an untrained model of the spec exactly as a run's end will, load it back and
    predict on its input example: a task that cannot be packaged fails here, in seconds, before
    any node trains.

    Raises
    ------
    ModelError
        Naming what failed (building, saving, loading or predicting) and the spec.
    """
    import mlflow.pyfunc

    predictor = Predictor(spec, Scaler.identity(len(spec.encoded_names)), build_model(spec, seed=0))
    step = "building the signature and input example"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            arguments = model_arguments(predictor, Path(tmp) / "bundle", lock_text="", provenance={})
            step = "saving the model"
            mlflow.pyfunc.save_model(str(Path(tmp) / "model"), **arguments)
            step = "loading the saved model"
            loaded = mlflow.pyfunc.load_model(str(Path(tmp) / "model"))
            step = "predicting on the input example"
            out = loaded.predict(arguments["input_example"])
    except LabError:
        raise
    except Exception as exc:
        raise ModelError(
            f"the task {spec.name!r} cannot be packaged as a model ({step} failed: {type(exc).__name__}: {exc}); "
            "this is a bug in the lab for this kind of spec, please report it with the spec"
        ) from exc
    declared = arguments["signature"].outputs.input_names()
    if list(out.columns) != declared:
        raise ModelError(
            f"the task {spec.name!r}'s model predicts columns {list(out.columns)!r}, its signature declares "
            f"{declared!r}; this is a bug in the lab, please report it with the spec"
        )


def lock_requirements(lock_text: str) -> list[str]:
    """The exact pins of the environment lock, for the model's requirements.

    Hash lines, comments, options and the lab itself are left out.
    """
    pins = []
    for line in lock_text.splitlines():
        line = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line or line.startswith("-") or "==" not in line:
            continue
        if line.split("==", 1)[0].strip().lower() == "fedlab":
            continue
        pins.append(line)
    return pins


def level_type(levels: tuple[Level, ...]) -> str:
    """ "integer", "float" or "string": how a spec writes a list of levels (the spec refuses mixes)."""
    if all(isinstance(v, int) for v in levels):
        return "integer"
    if all(isinstance(v, (int, float)) for v in levels):
        return "float"
    return "string"


class FederatedModel(PythonModel):
    """The registered model: checks raw rows against the spec, encodes, scales and predicts."""

    predictor: Predictor
    environment: Environment | None
    provenance: dict[str, Any]

    @classmethod
    def from_bundle(cls, bundle: Path) -> FederatedModel:
        """The model rebuilt from its bundle's files by the lab's own code (lab.registry.verified)."""
        model = cls()
        model.load_bundle(bundle)
        return model

    def load_context(self, context: Any) -> None:
        self.load_bundle(Path(context.artifacts["bundle"]))

    def load_bundle(self, bundle: Path) -> None:
        """Read the predictor, the training environment's lock and the run's fingerprints."""
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

    Raises
    ------
    ModelError
        If the model gives a value that is not a finite number (its weights are broken).
    """
    features = frame.drop(columns=[predictor.spec.target.column], errors="ignore")  # not needed to predict
    table = check_frame(
        features, predictor.spec, source=source, file_format=file_format, offset=offset, require_target=False
    )
    scores = predictor.scores(table.features)
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores.reshape(len(scores), -1))).any(axis=1).sum())
        raise ModelError(
            f"the model gives no finite prediction for {bad} of {len(scores)} rows of {source!r}: its weights are "
            "not finite numbers (the training diverged); retrain it, and do not use this version"
        )
    out = output_frame(scores, predictor.spec)
    out = out.set_index(pd.Index(table.line - offset)).reindex(range(len(frame)))
    if _prediction_type(predictor.spec) == "long":
        out["prediction"] = out["prediction"].astype("Int64")  # empty rows keep the column whole numbers
    return out
