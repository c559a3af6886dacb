"""End to end on the real runtime: a SuperLink, SuperNodes and MLflow, started by `lab run` on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from lab.core.spec import TaskSpec
from lab.runtime.environ import private_environ

from .conftest import HEART, ROOT, SILOS, agreement_file, lab_command, leftover_processes, run_lab

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class LabRun:
    workspace: Path
    result: subprocess.CompletedProcess[str]
    broken: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.workspace / 'mlflow.db'}"


def broken_silo(tmp_path: Path) -> Path:
    """The VA silo with one unknown chest-pain category on its fifth line."""
    lines = SILOS["va"].read_text().splitlines()
    fields = lines[4].split(",")
    fields[2] = "7"
    lines[4] = ",".join(fields)
    path = tmp_path / "va-broken.data"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def federated(tmp_path_factory: pytest.TempPathFactory, heart_spec: TaskSpec) -> Iterator[LabRun]:
    """Two healthy hospitals (Cleveland under an agreement of its own, Hungary under the default one
    the lab writes) and one whose file breaks the spec, two rounds of FedAvg, each hospital's
    contribution valued."""
    tmp = tmp_path_factory.mktemp("federation")
    broken = broken_silo(tmp)
    agreement = agreement_file(tmp, heart_spec, "cleveland", ("min-rows = 10", "min-rows = 12"))
    result = run_lab(
        "run",
        "--spec",
        str(HEART / "task.toml"),
        "--rounds",
        "2",
        "--min-nodes",
        "2",
        "--set",
        "contributions=true",
        "--node",
        f"cleveland={SILOS['cleveland']}",
        "--node",
        f"hungary={SILOS['hungary']}",
        "--node",
        f"va={broken}",
        "--agreement",
        f"cleveland={agreement}",
        workspace=tmp / "workspace",
    )
    yield LabRun(tmp / "workspace", result, broken)


def test_federated_run_registers_a_champion_model(federated: LabRun) -> None:
    assert federated.result.returncode == 0, federated.result.stdout + federated.result.stderr
    client = MlflowClient(tracking_uri=federated.tracking_uri)
    version = client.get_model_version_by_alias("heart-disease", "champion")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy"] == "fedavg"
    assert run.data.params["nodes"] == "cleveland,hungary"
    assert run.data.params["spec_sha256"] == run.data.tags["lab.spec_sha256"]
    history = client.get_metric_history(run.info.run_id, "node.cleveland.accuracy")
    assert [m.step for m in history] == [0, 1, 2]  # the initial model, then after each round
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "task")}
    assert artifacts == {"task/spec.toml"}
    assert client.list_artifacts(run.info.run_id, "environment")


def test_node_with_a_broken_file_is_refused_and_the_run_goes_on(federated: LabRun) -> None:
    out = federated.result.stdout
    words = " ".join(out.split())  # the terminal's line breaks fall anywhere
    assert "refused" in out and "column 'cp' of the node's table holds a value the spec does not list" in words
    # Off the node goes no file, line or value; its own log, which the run points to, has them.
    assert str(federated.broken) not in out.replace("\n", "") and "unknown category '7'" not in words
    log = federated.workspace / "logs" / "node-va-worker.log"
    assert f"its own log says why in full: {log}" in words
    said = " ".join(log.read_text().split())
    assert str(federated.broken) in said and "line 5" in said and "unknown category '7'" in said
    assert "Traceback" not in out + federated.result.stderr


def test_demo_table_shows_each_organisation_and_the_mean(federated: LabRun) -> None:
    out = federated.result.stdout
    assert "cleveland" in out and "hungary" in out and "mean" in out
    assert "models:/heart-disease@champion" in out


def test_nothing_the_lab_started_is_left_running(federated: LabRun) -> None:
    assert leftover_processes(federated.workspace) == []


def test_evaluate_in_house_matches_the_federation_within_the_noise_each_node_released_it_with(
    federated: LabRun,
) -> None:
    client = MlflowClient(tracking_uri=federated.tracking_uri)
    run_id = client.get_model_version_by_alias("heart-disease", "champion").run_id
    logged = client.get_run(run_id).data.metrics
    summary = json.loads(Path(client.download_artifacts(run_id, "nodes/summary.json")).read_text())
    noise = {row["node"]: row["noise"]["federated"] for row in summary["nodes"]}
    for node in ("cleveland", "hungary"):
        result = run_lab(
            "evaluate",
            "--model",
            "models:/heart-disease@champion",
            "--data",
            str(SILOS[node]),
            "--json",
            workspace=federated.workspace,
        )
        assert result.returncode == 0, result.stderr
        evaluated = json.loads(result.stdout)
        metrics = evaluated["metrics"]
        for name in ("accuracy", "auc", "loss"):
            # In-house, exact; recorded as the node released it, with Gaussian noise of that sd (the
            # task matrix checks an in-house rerun to 1e-6 where nodes release exact scores).
            assert 0 < noise[node][name] < 0.2
            assert metrics[name] == pytest.approx(logged[f"node.{node}.{name}"], abs=5 * noise[node][name])
        # The federation's interval is the in-house one widened by the noise.
        low, high = evaluated["intervals"]["accuracy"]
        assert low < metrics["accuracy"] < high
        recorded = (
            logged[f"final.node.{node}.federated.accuracy_ci95_low"],
            logged[f"final.node.{node}.federated.accuracy_ci95_high"],
        )
        assert recorded[1] - recorded[0] > high - low


def test_each_accuracy_has_its_interval_and_each_hospital_its_contribution(federated: LabRun) -> None:
    client = MlflowClient(tracking_uri=federated.tracking_uri)
    run_id = client.get_model_version_by_alias("heart-disease", "champion").run_id
    logged = client.get_run(run_id).data.metrics
    summary = json.loads(Path(client.download_artifacts(run_id, "nodes/summary.json")).read_text())
    rows = {row["node"]: row for row in summary["nodes"]}
    correct = sum(rows[n]["federated"]["accuracy"] * rows[n]["test_rows"] for n in rows)  # noisy counts
    total = sum(rows[n]["test_rows"] for n in rows)
    spread = sum((rows[n]["noise"]["federated"]["accuracy"] * rows[n]["test_rows"]) ** 2 for n in rows) ** 0.5 / total
    pooled = summary["pooled"]["federated"]
    assert pooled["test_rows"] == total and pooled["accuracy"] == pytest.approx(correct / total)
    assert pooled["interval"][0] < pooled["accuracy"] < pooled["interval"][1]
    assert logged["final.pooled.federated.accuracy"] == pytest.approx(correct / total)
    for row in rows.values():
        assert row["comparison"] in ("intervals overlap", "federated higher", "local-only higher")
    contributions = json.loads(Path(client.download_artifacts(run_id, "contributions/contributions.json")).read_text())
    assert contributions["method"] == "exact" and set(contributions["nodes"]) == {"cleveland", "hungary"}
    # The whole coalition's rebuilt model is the federated model: the nodes scored it as they scored
    # the final model, each score with fresh noise of the same kind.
    assert contributions["full_model"] == pytest.approx(correct / total, abs=8 * spread)
    shapley = {n: v["shapley"] for n, v in contributions["nodes"].items()}
    assert sum(shapley.values()) == pytest.approx(contributions["full_model"] - contributions["empty_model"])
    for name, values in contributions["nodes"].items():
        assert logged[f"contribution.shapley.{name}"] == pytest.approx(values["shapley"])
    out = federated.result.stdout
    assert "What each organisation's data contributed" in out and "95% intervals" in out


def test_predict_writes_predictions_for_a_raw_silo(federated: LabRun, tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    result = run_lab(
        "predict",
        "--model",
        "models:/heart-disease@champion",
        "--data",
        str(SILOS["switzerland"]),
        "--out",
        str(out),
        workspace=federated.workspace,
    )
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out)
    assert len(frame) == 123  # every raw row, in order
    scored = frame["probability"].notna()
    assert scored.sum() == 46  # rows complete under the spec
    assert frame.loc[scored, "probability"].between(0, 1).all()
    assert set(frame.loc[scored, "prediction"]) <= {0, 1}


def test_registered_model_loads_with_plain_mlflow_in_a_new_process(federated: LabRun) -> None:
    code = (
        "import mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({federated.tracking_uri!r})\n"
        "m = mlflow.pyfunc.load_model('models:/heart-disease@champion')\n"
        "cols = ['age','sex','cp','trestbps','chol','fbs','restecg','thalach','exang','oldpeak']\n"
        "rows = pd.DataFrame([[63,1,1,145,233,1,2,150,0,2.3],[67,1,4,160,286,0,2,108,1,1.5]], columns=cols)\n"
        "print(m.predict(rows.astype(float)).to_json())\n"
    )
    result = subprocess.run(
        [str(Path(os.sys.executable)), "-c", code],
        capture_output=True,
        text=True,
        env=private_environ(),
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out) == {"prediction", "probability"}
    assert len(out["probability"]) == 2


def test_run_fails_clearly_when_too_few_nodes_remain(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    result = run_lab(
        "run",
        "--spec",
        str(HEART / "task.toml"),
        "--rounds",
        "1",
        "--min-nodes",
        "2",
        "--node",
        f"cleveland={SILOS['cleveland']}",
        "--node",
        f"va={broken_silo(tmp_path)}",
        workspace=workspace,
    )
    assert result.returncode == 2
    assert "fewer than min-nodes = 2" in result.stderr.replace("\n", "")
    assert "Traceback" not in result.stdout + result.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("heart-disease").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert client.search_registered_models() == []
    assert leftover_processes(workspace) == []


def _running_in(workspace: Path) -> bool:
    """Whether the workspace's MLflow store holds a RUNNING run."""
    store = workspace / "mlflow.db"
    if not store.is_file():
        return False
    with contextlib.closing(sqlite3.connect(store)) as db:
        try:
            return bool(db.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0])
        except sqlite3.OperationalError:  # the schema is still being made
            return False


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    proc = subprocess.Popen(
        [*lab_command(), "demo", "--rounds", "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=private_environ(LAB_WORKSPACE=str(workspace)),
        # As a terminal's foreground command: a suite started in the background (`make test &`)
        # ignores SIGINT, and an ignored signal stays ignored in the processes it starts.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not _running_in(workspace):
        time.sleep(0.5)  # the coordinator has opened its MLflow run: mid-run (read from the store
        # itself: Flower's log stream, which the lab's progress follows, can lag under load)
    assert len(leftover_processes(workspace)) >= 5  # a SuperLink and four SuperNodes are up, mid-run
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)  # a guard against a hang: stopping is slow on a loaded machine
    assert "wall time" not in out, "the demo ended before Ctrl-C reached it: " + out[-500:]
    assert proc.returncode != 0
    assert "Traceback" not in out
    assert leftover_processes(workspace) == []
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("heart-disease").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]  # not left RUNNING
    assert client.search_registered_models() == []


def test_rerun_notebook_matches_the_federation(federated: LabRun) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "rerun-in-house.ipynb", as_version=4)
    os.environ["LAB_WORKSPACE"] = str(federated.workspace)
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        del os.environ["LAB_WORKSPACE"]
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "in-house rerun matches the federation" in printed


@dataclass(frozen=True)
class Report:
    run_id: str
    result: subprocess.CompletedProcess[str]
    page: Path


@pytest.fixture(scope="module")
def reported(federated: LabRun, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """`lab report` on the federation's run, the page written to a folder of its own."""
    client = MlflowClient(tracking_uri=federated.tracking_uri)
    run_id = client.get_model_version_by_alias("heart-disease", "champion").run_id
    page = tmp_path_factory.mktemp("report") / "report.html"
    return Report(run_id, run_lab("report", run_id, "--out", str(page), workspace=federated.workspace), page)


def test_report_shows_every_organisation_and_section_and_is_logged_to_the_run(
    federated: LabRun, reported: Report
) -> None:
    assert reported.result.returncode == 0, reported.result.stdout + reported.result.stderr
    assert reported.result.stdout.strip().splitlines()[-1] == str(reported.page.resolve())
    html = reported.page.read_text(encoding="utf-8")
    for section in ("organisations", "rounds", "contributions", "privacy", "fingerprints", "agreements", "refusals"):
        assert f'<section id="{section}">' in html
    for node, organisation in (("cleveland", "Cleveland Clinic Foundation"), ("hungary", "Hungarian Institute")):
        assert f'<td>{node}<div class="org">{organisation}' in html
    assert "<code>allow.min-rows</code></td><td>12</td>" in html  # the clause Cleveland's node reported
    assert "<code>limits.min-batch-size</code></td><td>16</td>" in html  # Hungary's default agreement
    assert "holds a value the spec does not list" in html  # VA, refused at preparation
    assert html.count("data:image/png;base64,") >= 2  # the round curves and the contributions, inline
    assert "not recorded for this run" not in html  # intervals and contributions are there
    assert "Shapley" in html and "leave-one-out" in html
    summary = json.loads(
        Path(MlflowClient(federated.tracking_uri).download_artifacts(reported.run_id, "nodes/summary.json")).read_text()
    )
    low, high = summary["nodes"][0]["intervals"]["federated"]["accuracy"]
    assert f"{low:.2f}–{high:.2f}" in html  # the node's interval as the end table shows it
    client = MlflowClient(tracking_uri=federated.tracking_uri)
    assert "report/report.html" in {a.path for a in client.list_artifacts(reported.run_id, "report")}
    unknown = run_lab("report", "0" * 32, workspace=federated.workspace)
    assert unknown.returncode == 2
    assert f"no run {'0' * 32!r} in the tracking store" in unknown.stderr.replace("\n", "")
    assert "Traceback" not in unknown.stdout + unknown.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="the report is checked in a headless Chromium, which is not installed (apt-get install chromium)",
)
def test_report_renders_in_a_headless_browser(reported: Report) -> None:
    from PIL import Image

    assert reported.result.returncode == 0, reported.result.stdout + reported.result.stderr
    shot = reported.page.with_suffix(".png")
    browser = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1200,2400", reported.page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert browser.returncode == 0 and shot.is_file(), browser.stderr
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1200, 2400)
        pixels = image.convert("RGB")
        assert pixels.getpixel((10, 10)) == (0x16, 0x32, 0x4F)  # the page's own header: its style applied
        colours = pixels.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 500, f"{len(colours)} colours: the page rendered blank or without its figures"
