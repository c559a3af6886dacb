"""A registered model that runs its own code on a member's machine: refused before any of it runs.

Whoever can write to the registry can put a model there under a task's name. MLflow's loader
imports a models-from-code model's file and unpickles a pickled one; each model below writes a
marker file when that happens. Plain MLflow, run first as the control, writes it: the attack is
real. `lab evaluate`, `lab predict` and `lab model pull` (the member's commands, in a new process
as a member runs them) refuse each model in one line, and the marker stays absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pytest

from lab.core.data import read_raw
from lab.core.spec import load_spec
from lab.registry.packaging import model_arguments
from lab.registry.rerun import load_model
from lab.runtime.environ import private_environ

from ..conftest import HEART, ROOT, SILOS, run_lab

SPEC = load_spec(HEART / "task.toml")


def _lab_model(folder: Path) -> Path:
    """A model exactly as a run packages it (untrained weights: what it predicts does not matter)."""
    from lab.core.model import Predictor, build_model
    from lab.core.preprocess import Scaler

    predictor = Predictor(SPEC, Scaler.identity(len(SPEC.encoded_names)), build_model(SPEC, seed=0))
    arguments = model_arguments(predictor, folder.parent / "bundle", lock_text="", provenance={})
    mlflow.pyfunc.save_model(str(folder), **arguments)
    return folder


def _code_model(folder: Path, marker: Path) -> Path:
    """A models-from-code pyfunc whose code file writes ``marker`` when it is loaded."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    code = folder.parent / "evil.py"
    code.write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            import mlflow.pyfunc
            from mlflow.models import set_model
            Path({str(marker)!r}).write_text("ran")
            class Model(mlflow.pyfunc.PythonModel):
                def predict(self, context, model_input, params=None):
                    return model_input
            set_model(Model())
            """
        )
    )
    mlflow.pyfunc.save_model(str(folder), python_model=str(code))
    marker.unlink()  # MLflow runs the code once when it saves the model, here
    return folder


def _pickled_model(folder: Path, marker: Path) -> Path:
    """A pickled pyfunc whose unpickling writes ``marker`` (its class is pickled by value)."""
    module = types.ModuleType("not_importable")
    exec(  # noqa: S102 - the attacker's class, defined where no import can find it
        textwrap.dedent(
            f"""
            import mlflow.pyfunc
            from pathlib import Path
            class Model(mlflow.pyfunc.PythonModel):
                def __setstate__(self, state):
                    Path({str(marker)!r}).write_text("ran")
                    self.__dict__.update(state)
                def predict(self, context, model_input, params=None):
                    return model_input
            """
        ),
        module.__dict__,
    )
    mlflow.pyfunc.save_model(str(folder), python_model=module.Model())
    return folder


def _tampered_code(folder: Path, marker: Path) -> Path:
    """The lab's own model, its entry point replaced by code that writes ``marker``."""
    _lab_model(folder)
    (folder / "pyfunc_entry.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        + (ROOT / "lab" / "registry" / "pyfunc_entry.py").read_text()
    )
    return folder


def _extra_file(folder: Path, marker: Path) -> Path:
    """The lab's own model with a code file of the attacker's added to its bundle."""
    _lab_model(folder)
    (folder / "artifacts" / "bundle" / "sitecustomize.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    )
    return folder


MODELS = {
    "code": _code_model,
    "pickle": _pickled_model,
    "tampered-code": _tampered_code,
    "extra-file": _extra_file,
}


def _plain_mlflow_load(folder: Path) -> subprocess.CompletedProcess[str]:
    """What a member without the lab would run: MLflow's loader, as MLflow ships (pickle allowed)."""
    env = {k: v for k, v in private_environ().items() if k != "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"}
    code = f"import mlflow.pyfunc; mlflow.pyfunc.load_model({str(folder)!r})"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_model_with_code_of_its_own_is_refused_before_any_of_it_runs(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = MODELS[kind](tmp_path / "model", marker)
    assert not marker.exists()
    if kind != "extra-file":  # MLflow loads nothing from a bundle: that file waits for another loader
        _plain_mlflow_load(folder)
        assert marker.exists(), "control: plain MLflow runs the model's code"
        marker.unlink()

    workspace = tmp_path / "workspace"
    data = str(SILOS["cleveland"])
    commands = [("evaluate", "--model", str(folder), "--data", data, "--node", "cleveland")]
    if kind == "code":  # one loader serves both commands (and the workbench's and notebooks')
        commands.append(("predict", "--model", str(folder), "--data", data, "--out", str(tmp_path / "p.csv")))
    for command in commands:
        done = run_lab(*command, workspace=workspace)
        assert done.returncode != 0, done.stdout
        said = " ".join(done.stderr.split())  # one message, wrapped to the terminal's width
        assert said.startswith("error: ") and "is not loaded: it is not a model packaged by this lab" in said, said
        assert "Traceback" not in done.stderr
        assert not marker.exists(), f"lab {command[0]} ran the model's code"
    assert not (tmp_path / "p.csv").exists()


def test_a_refused_model_is_not_pulled_and_a_lab_model_is(tmp_path: Path) -> None:
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    marker = tmp_path / "marker"
    uris = {}
    for kind, make in (("lab", lambda f, _: _lab_model(f)), ("code", _code_model)):
        folder = make(tmp_path / kind / "model", marker)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(folder), artifact_path="model")
        uris[kind] = f"runs:/{run.info.run_id}/model"

    out = tmp_path / "pulled-evil"
    done = run_lab("model", "pull", uris["code"], "--tracking-uri", tracking, "--out", str(out), workspace=tmp_path)
    assert done.returncode != 0 and "is not a model packaged by this lab" in done.stderr, done.stderr
    assert not out.exists() and not marker.exists()

    good = tmp_path / "pulled"
    done = run_lab("model", "pull", uris["lab"], "--tracking-uri", tracking, "--out", str(good), workspace=tmp_path)
    assert done.returncode == 0, done.stderr
    evaluated = run_lab("evaluate", "--model", str(good), "--data", str(SILOS["va"]), "--node", "va", "--json",
                        workspace=tmp_path)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert set(json.loads(evaluated.stdout)["metrics"]) >= {"accuracy", "auc", "loss"}


def test_the_lab_rebuilds_its_model_as_plain_mlflow_loads_it(tmp_path: Path) -> None:
    folder = _lab_model(tmp_path / "model")
    ours = load_model(str(folder), "")
    theirs: Any = mlflow.pyfunc.load_model(str(folder))  # plain MLflow users keep a pyfunc that works
    import pandas as pd

    raw, _ = read_raw(SILOS["hungary"], SPEC.format_for("hungary"))
    features = raw.head(40)
    pd.testing.assert_frame_equal(ours.predict(None, features), theirs.predict(features))
