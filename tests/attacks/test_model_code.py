"""A registered model that runs its own code on a member's machine, or is not the one its
federation signed: refused before any of it runs or is read.

Whoever can write to the registry can put a model there under a task's name. MLflow's loader
imports a models-from-code model's file and unpickles a pickled one; each model below writes a
marker file when that happens. Plain MLflow, run first as the control, writes it: the attack is
real. `lab evaluate`, `lab predict` and `lab model pull` (the member's commands, in a new process
as a member runs them) refuse each model in one line, and the marker stays absent: an unsigned
one, one signed by another federation, one changed or added to after signing, one registered under
another task's name, and, signed by the federation's own key (a coordinator's model of its own),
one that carries code.
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
from lab.registry.signing import BUNDLE_PATH, PRIVATE_KEY_FILE, sign_bundle
from lab.runtime.environ import private_environ
from lab.runtime.security import make_federation_key

from ..conftest import HEART, ROOT, SILOS, run_lab

SPEC = load_spec(HEART / "task.toml")


def _federation(workspace: Path) -> Path:
    """A federation's signing key in ``workspace`` (where its local federation makes it); its public half."""
    return make_federation_key(workspace / "certs")


def _signed(folder: Path, key: Path) -> Path:
    """Every file of the model in ``folder`` signed with ``key``'s federation, as its coordinator
    would sign a model of its own making: the signature holds, the files are the attacker's."""
    bundle = folder / BUNDLE_PATH
    bundle.mkdir(parents=True, exist_ok=True)
    files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file() and p.parent != bundle}
    files.update({f"{BUNDLE_PATH}/{p.name}": p for p in bundle.iterdir() if p.is_file()})
    sign_bundle(bundle, key.with_name(PRIVATE_KEY_FILE), model=SPEC.name, run_id="", files=files)
    return folder


def _lab_model(folder: Path, key: Path) -> Path:
    """A model exactly as a run packages and signs it (untrained: what it predicts does not matter)."""
    from lab.core.model import Predictor, build_model
    from lab.core.preprocess import Scaler

    predictor = Predictor(SPEC, Scaler.identity(len(SPEC.encoded_names)), build_model(SPEC, seed=0))
    bundle = folder.parent / "bundle"
    arguments = model_arguments(predictor, bundle, lock_text="", provenance={})
    sign_bundle(bundle, key.with_name(PRIVATE_KEY_FILE), model=SPEC.name, run_id="")
    mlflow.pyfunc.save_model(str(folder), **arguments)
    return folder


def _code_model(folder: Path, marker: Path, key: Path) -> Path:
    """A models-from-code pyfunc whose code file writes ``marker`` when it is loaded; unsigned."""
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


def _signed_code_model(folder: Path, marker: Path, key: Path) -> Path:
    """The code model, signed with the federation's own key: a coordinator's model of its own."""
    return _signed(_code_model(folder, marker, key), key)


def _pickled_model(folder: Path, marker: Path, key: Path) -> Path:
    """A pickled pyfunc whose unpickling writes ``marker`` (its class is pickled by value), signed
    with the federation's key."""
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
    return _signed(folder, key)


def _tampered_code(folder: Path, marker: Path, key: Path) -> Path:
    """The federation's signed model, its entry point replaced afterwards by code that writes ``marker``."""
    _lab_model(folder, key)
    (folder / "pyfunc_entry.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        + (ROOT / "lab" / "registry" / "pyfunc_entry.py").read_text()
    )
    return folder


def _extra_file(folder: Path, marker: Path, key: Path) -> Path:
    """The federation's signed model with a code file of the attacker's added to its bundle."""
    _lab_model(folder, key)
    (folder / BUNDLE_PATH / "sitecustomize.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    )
    return folder


def _signed_tampered_code(folder: Path, marker: Path, key: Path) -> Path:
    """The replaced entry point, the whole model then signed again with the federation's key."""
    return _signed(_tampered_code(folder, marker, key), key)


MODELS = {
    "code": _code_model,
    "signed-code": _signed_code_model,
    "pickle": _pickled_model,
    "tampered-code": _tampered_code,
    "signed-tampered-code": _signed_tampered_code,
    "extra-file": _extra_file,
}
#: Why each is refused: no signature, or a signed model that is not the lab's, or a file changed
#: or added after signing.
REASONS = {
    "code": "carries no signature of a federation",
    "signed-code": "is not a model packaged by this lab",
    "pickle": "is not a model packaged by this lab",
    "tampered-code": "pyfunc_entry.py differs from the file the federation signed",
    "signed-tampered-code": "its code file pyfunc_entry.py differs from this lab's own",
    "extra-file": "which the lab never writes or the federation did not sign",
}


def _plain_mlflow_load(folder: Path) -> subprocess.CompletedProcess[str]:
    """What a member without the lab would run: MLflow's loader, as MLflow ships (pickle allowed)."""
    env = {k: v for k, v in private_environ().items() if k != "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"}
    code = f"import mlflow.pyfunc; mlflow.pyfunc.load_model({str(folder)!r})"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", list(MODELS))
def test_a_model_with_code_of_its_own_is_refused_before_any_of_it_runs(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    workspace = tmp_path / "workspace"
    folder = MODELS[kind](tmp_path / "model", marker, _federation(workspace))
    assert not marker.exists()
    if kind != "extra-file":  # MLflow loads nothing from a bundle: that file waits for another loader
        _plain_mlflow_load(folder)
        assert marker.exists(), "control: plain MLflow runs the model's code"
        marker.unlink()

    data = str(SILOS["cleveland"])
    commands = [("evaluate", "--model", str(folder), "--data", data, "--node", "cleveland")]
    if kind == "code":  # one loader serves both commands (and the workbench's and notebooks')
        commands.append(("predict", "--model", str(folder), "--data", data, "--out", str(tmp_path / "p.csv")))
    for command in commands:
        done = run_lab(*command, workspace=workspace)
        assert done.returncode != 0, done.stdout
        said = " ".join(done.stderr.split())  # one message, wrapped to the terminal's width
        assert said.startswith("error: ") and "is not loaded" in said and REASONS[kind] in said, said
        assert "Traceback" not in done.stderr
        assert not marker.exists(), f"lab {command[0]} ran the model's code"
    assert not (tmp_path / "p.csv").exists()


def _unsigned(folder: Path, key: Path) -> Path:
    """The lab's own model with its signature removed (as one registered before signing, or by anyone)."""
    _lab_model(folder, key)
    (folder / BUNDLE_PATH / "manifest.sig").unlink()
    return folder


def _changed_weights(folder: Path, key: Path) -> Path:
    """The federation's signed model, its weights replaced afterwards by other weights."""
    import numpy as np

    _lab_model(folder, key)
    weights = folder / BUNDLE_PATH / "weights.npz"
    with np.load(weights) as npz:
        arrays = {k: npz[k] + 1.0 for k in npz.files}
    np.savez(weights, **arrays)  # type: ignore[arg-type]
    return folder


#: Models a member must not pull, and the words of each refusal.
NOT_PULLED = {
    "other-federation": (lambda f, _key: _lab_model(f, _federation(f.parent / "elsewhere")), "signed by another key"),
    "unsigned": (_unsigned, "carries no signature of a federation"),
    "changed-weights": (_changed_weights, "weights.npz differs from the file the federation signed"),
    "code": (lambda f, key: _code_model(f, f.parent / "marker", key), "carries no signature of a federation"),
}


def test_a_member_pulls_only_its_federations_model_as_signed_and_writes_nothing_else(tmp_path: Path) -> None:
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    key = _federation(tmp_path)  # the member's workspace holds its federation's public key
    uris = {}
    for kind, make in [("lab", _lab_model)] + [(k, m) for k, (m, _) in NOT_PULLED.items()]:
        folder = make(tmp_path / kind / "model", key)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(folder), artifact_path="model")
        uris[kind] = f"runs:/{run.info.run_id}/model"

    for kind, (_, reason) in NOT_PULLED.items():
        out = tmp_path / f"pulled-{kind}"
        done = run_lab("model", "pull", uris[kind], "--tracking-uri", tracking, "--out", str(out), workspace=tmp_path)
        said = " ".join(done.stderr.split())
        assert done.returncode != 0 and reason in said and "Traceback" not in said, (kind, said)
        assert not out.exists(), kind
    assert not (tmp_path / "code" / "marker").exists()

    good = tmp_path / "pulled"
    done = run_lab("model", "pull", uris["lab"], "--tracking-uri", tracking, "--out", str(good), workspace=tmp_path)
    assert done.returncode == 0, done.stderr
    evaluated = run_lab("evaluate", "--model", str(good), "--data", str(SILOS["va"]), "--node", "va", "--json",
                        workspace=tmp_path)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert set(json.loads(evaluated.stdout)["metrics"]) >= {"accuracy", "auc", "loss"}
    elsewhere = run_lab("evaluate", "--model", str(good), "--data", str(SILOS["va"]), workspace=tmp_path / "none")
    assert elsewhere.returncode != 0 and "--federation-key" in elsewhere.stderr  # no key: nothing is read


def test_a_signed_model_registered_under_another_tasks_name_is_refused(tmp_path: Path) -> None:
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    key = _federation(tmp_path)
    folder = _lab_model(tmp_path / "lab" / "model", key)  # signed as heart-disease
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="model")
    mlflow.register_model(f"runs:/{run.info.run_id}/model", "another-task")
    done = run_lab("evaluate", "--model", "models:/another-task/1", "--data", str(SILOS["va"]), "--node", "va",
                   "--tracking-uri", tracking, workspace=tmp_path)  # fmt: skip
    said = " ".join(done.stderr.split())
    assert done.returncode != 0 and "signed it as model 'heart-disease', not 'another-task'" in said, said


def test_the_lab_rebuilds_its_model_as_plain_mlflow_loads_it(tmp_path: Path) -> None:
    key = _federation(tmp_path / "workspace")
    folder = _lab_model(tmp_path / "model", key)
    ours = load_model(str(folder), "", key)
    theirs: Any = mlflow.pyfunc.load_model(str(folder))  # plain MLflow users keep a pyfunc that works
    import pandas as pd

    raw, _ = read_raw(SILOS["hungary"], SPEC.format_for("hungary"))
    features = raw.head(40)
    pd.testing.assert_frame_equal(ours.predict(None, features), theirs.predict(features))
