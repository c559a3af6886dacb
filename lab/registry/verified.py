"""A registered model the lab reads itself: fetched as files, checked, then rebuilt from its bundle.

MLflow's loader runs whatever a model names: its code file is imported, a pickled model is
unpickled. A model in a shared registry may have been put there by anyone who could write to it,
so the lab never hands one to that loader. It fetches the model's files (a download runs nothing),
checks the federation's signature over their manifest and every file's hash (lab.registry.signing),
then that they are exactly what the lab's packaging writes (``MLmodel`` read as plain YAML, a
code file equal byte for byte to the installed lab's entry point, a bundle of data files only, no
file the manifest does not name); lab.registry.rerun then rebuilds the model from the bundle (spec, scalers, weights
read without pickle) with the lab's code from the installed, pinned package. Plain MLflow users keep a pyfunc that
loads as any other (lab.registry.packaging).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.artifacts import download_artifacts

from lab.errors import ModelError
from lab.registry.packaging import BUNDLE_FILES, ENTRY_POINT
from lab.registry.signing import BUNDLE_PATH, MANIFEST_FILE, SIGNATURE_FILE, check_signature
from lab.registry.tracking import tracking_errors

__all__ = ["CODE_LOADER", "fetched", "registered_name", "verify_model"]

#: The one loader MLflow is told to use for a lab model: models-from-code, the lab's entry point.
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
#: Files MLflow writes beside the model (read by no loader of the lab's).
MLFLOW_FILES = frozenset(
    {
        "MLmodel",
        "conda.yaml",
        "python_env.yaml",
        "requirements.txt",
        "input_example.json",
        "serving_input_example.json",
        "registered_model_meta",
    }
)


def verify_model(directory: Path, *, what: str, federation_key: Path, name: str = "") -> Path:
    """Check that ``directory`` holds a model signed with ``federation_key`` (and registered as
    ``name``, when given) as the lab packages it, reading no code; its bundle.

    Raises
    ------
    ModelError
        In one line naming ``what`` (the model as the user gave it) and the first thing that is not
        as the federation signed it or the lab writes it.
    """
    refused = f"{what} is not loaded: it is not a model packaged by this lab"
    directory = directory.resolve()
    if not (directory / "MLmodel").is_file():
        raise ModelError(f"{what} holds no MLmodel file: it is not a logged model")
    manifest = check_signature(directory, federation_key, what=what)
    if name and manifest.get("model") != name:
        raise ModelError(
            f"{what} is not loaded: the federation signed it as model {manifest.get('model')!r}, not {name!r} "
            "(a signed model registered under another task's name)"
        )
    signed = {directory / n for n in manifest["files"]} | {directory / BUNDLE_PATH / MANIFEST_FILE}
    mlmodel = directory / "MLmodel"
    try:
        described = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelError(f"{refused} (its MLmodel file is not YAML: {str(exc).splitlines()[0]})") from None
    flavors = described.get("flavors") if isinstance(described, dict) else None
    if not isinstance(flavors, dict) or set(flavors) != {"python_function"}:
        names = sorted(flavors) if isinstance(flavors, dict) else []
        raise ModelError(f"{refused} (its flavors are {names}, a lab model has python_function only)")
    flavor: dict[str, Any] = flavors["python_function"] or {}
    if flavor.get("loader_module") != CODE_LOADER:
        raise ModelError(f"{refused} (MLflow would load it with {flavor.get('loader_module')!r}, not the lab's loader)")
    if flavor.get("code") or flavor.get("python_model"):
        raise ModelError(f"{refused} (it carries code or a pickled model of its own)")
    code_name = Path(str(flavor.get("model_code_path") or "")).name
    code = directory / code_name
    if code_name != ENTRY_POINT.name or not code.is_file():
        raise ModelError(f"{refused} (its code file is {code_name!r}, a lab model's is {ENTRY_POINT.name!r})")
    if code.read_bytes() != ENTRY_POINT.read_bytes():
        raise ModelError(
            f"{refused}: its code file {code_name} differs from this lab's own; it is never run (pull the "
            "federation's model again, or ask the coordinator which version registered it)"
        )
    artifacts = flavor.get("artifacts")
    if not isinstance(artifacts, dict) or set(artifacts) != {"bundle"}:
        raise ModelError(f"{refused} (its artifacts are {sorted(artifacts or {})}, a lab model has one bundle)")
    bundle = (directory / str(artifacts["bundle"].get("path", ""))).resolve()
    if bundle != (directory / BUNDLE_PATH).resolve() or not bundle.is_dir():
        raise ModelError(f"{refused} (its bundle is not the folder {BUNDLE_PATH})")
    packaged = {bundle / n for n in (*BUNDLE_FILES, MANIFEST_FILE)} | {code}
    allowed = (signed & packaged) | {directory / n for n in MLFLOW_FILES} | {bundle / SIGNATURE_FILE}
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or (path.is_file() and path not in allowed):
            raise ModelError(
                f"{refused} (it holds {str(path.relative_to(directory))!r}, which the lab never writes or the "
                "federation did not sign)"
            )
    for needed in BUNDLE_FILES[:3]:  # the spec, the scalers and the weights; the lock and provenance may be absent
        if not (bundle / needed).is_file():
            raise ModelError(f"{refused} (its bundle has no {needed})")
    return bundle


@contextmanager
def fetched(model_uri: str, tracking_uri: str) -> Iterator[Path]:
    """The model's files in a local folder: the folder itself for a local path, else a download
    (removed afterwards) from the tracking store."""
    local = Path(model_uri)
    if "://" not in model_uri and not model_uri.startswith(("models:", "runs:")) and local.is_dir():
        yield local
        return
    what = f"cannot fetch model {model_uri!r} from {tracking_uri!r}"
    fix = "check the name and alias (e.g. models:/heart-disease@champion) and the tracking URI"
    with tempfile.TemporaryDirectory(prefix="lab-model-") as tmp:
        with tracking_errors(what, fix):
            mlflow.set_tracking_uri(tracking_uri)
            downloaded = download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        yield Path(downloaded)


def registered_name(model_uri: str) -> str:
    """The registered model's name in ``models:/NAME@alias`` or ``models:/NAME/VERSION``; empty for
    any other URI or folder (a run's or logged model's artifacts carry no registered name)."""
    if not model_uri.startswith("models:/"):
        return ""
    rest = model_uri.removeprefix("models:/")
    for separator in ("@", "/"):
        if separator in rest:
            return rest.split(separator, 1)[0]
    return ""
