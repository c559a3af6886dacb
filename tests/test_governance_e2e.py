"""Governance on the real runtime: each node enforces its own agreement, and audits every decision."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from lab.contract.events import Event, Refused, Started
from lab.contract.results import RunSummary
from lab.core.spec import load_spec
from lab.node.agreement import template
from lab.node.audit import AuditLog
from lab.runtime.app import app_hash
from lab.runtime.environ import private_environ
from lab.runtime.local import LocalFederation, NodeSpec
from lab.runtime.processes import free_port
from lab.runtime.run import node_specs, run_settings
from lab.runtime.security import enroll_node
from lab.runtime.submit import new_run_dir, submit_run

from .conftest import HEART, ROOT, SILOS, lab_command

pytestmark = pytest.mark.e2e

SPEC = load_spec(HEART / "task.toml")


@dataclass(frozen=True)
class Governed:
    workspace: Path
    final: RunSummary
    refused: dict[str, str]
    run_id: str  # the coordinator's MLflow run

    def audit(self, node: str) -> AuditLog:
        return AuditLog(self.workspace / "nodes" / node / "audit.jsonl")


def write_agreement(
    folder: Path, node: str, *, fab_hash: str, expires: dt.date | None = None, replace: tuple[str, str] | None = None
) -> Path:
    text = template(SPEC, fab_hash, SPEC.organisation(node), expires)
    if replace:
        text = text.replace(*replace)
    path = folder / f"{node}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def governed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Governed]:
    """Cleveland's agreement allows the run. Hungary's lets no AUC leave, VA approved another app,
    and Switzerland's agreement expired yesterday."""
    tmp = tmp_path_factory.mktemp("governed")
    fab = app_hash(ROOT)
    agreements = {
        "cleveland": write_agreement(tmp, "cleveland", fab_hash=fab),
        "hungary": write_agreement(
            tmp,
            "hungary",
            fab_hash=fab,
            replace=('metrics = ["accuracy", "auc", "loss"', 'metrics = ["accuracy", "loss"'),
        ),
        "va": write_agreement(tmp, "va", fab_hash="0" * 64),
        "switzerland": write_agreement(
            tmp, "switzerland", fab_hash=fab, expires=dt.date.today() - dt.timedelta(days=1)
        ),
    }
    nodes = [NodeSpec(name, SILOS[name], agreement=path) for name, path in agreements.items()]
    workspace = tmp / "workspace"
    config = run_settings(
        SPEC,
        tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}",
        nodes=len(nodes),
        values={"num_rounds": 1, "min_nodes": 1, "baseline_epochs": 5},
    )
    events: list[Event] = []
    with LocalFederation(workspace, nodes) as federation:
        run_dir = new_run_dir(federation.workspace)
        outcome = submit_run(federation.connection, config, app_dir=ROOT, run_dir=run_dir, on_event=events.append)
    refused = {event.reason.split("'")[1]: event.reason for event in events if isinstance(event, Refused)}
    (run_id,) = [e.mlflow_run_id for e in events if isinstance(e, Started)]
    yield Governed(workspace, RunSummary.of(outcome.final.reported), refused, run_id)


def test_only_the_node_whose_agreement_allows_the_run_takes_part(governed: Governed) -> None:
    assert [n.node for n in governed.final.nodes] == ["cleveland"]
    assert set(governed.refused) == {"hungary", "va", "switzerland"}


def test_a_message_outside_the_agreement_is_refused_and_audited(governed: Governed) -> None:
    assert "agreement clause allow.metrics: metric 'auc' may not leave the node" in governed.refused["hungary"]
    (entry,) = governed.audit("hungary").entries()
    assert entry["decision"] == "refused" and entry["clause"] == "allow.metrics"
    assert entry["message_type"] == "query.prepare"
    assert entry["left_node"] == []  # nothing left the node
    assert len(entry["app_hash"]) == 64  # the gate had checked the app before it ran


def test_an_app_not_on_the_allow_list_is_refused_before_its_code_runs(governed: Governed) -> None:
    assert "agreement clause allow.apps" in governed.refused["va"]
    (entry,) = governed.audit("va").entries()
    assert (entry["decision"], entry["clause"]) == ("refused", "allow.apps")
    # The FAB was never installed on the node, so none of its code could be imported.
    assert not list((governed.workspace / "nodes" / "va").glob("apps/**/*.py"))
    assert list((governed.workspace / "nodes" / "cleveland").glob("apps/**/client_app.py"))


def test_an_expired_agreement_refuses_everything(governed: Governed) -> None:
    assert "agreement clause agreement.expires" in governed.refused["switzerland"]
    entries = governed.audit("switzerland").entries()
    assert entries and all(e["decision"] == "refused" for e in entries)
    assert {e["clause"] for e in entries} == {"agreement.expires"}


def test_accepted_messages_record_what_left_the_node(governed: Governed) -> None:
    entries = governed.audit("cleveland").entries()
    assert [e["message_type"] for e in entries] == ["query.prepare", "train", "evaluate"]
    assert all(e["decision"] == "accepted" for e in entries)
    train = entries[1]["left_node"]
    arrays = next(r for r in train if r["kind"] == "arrays")
    assert arrays["bytes"] > 0
    metrics = next(r for r in train if r["kind"] == "metrics")
    assert "train-loss" in metrics["names"]


def test_audit_verify_detects_an_edited_entry(governed: Governed, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text(governed.audit("cleveland").path.read_text())
    secret = str(governed.workspace / "nodes" / "cleveland" / "node.secret")  # the chain's key
    ok = subprocess.run(
        [*lab_command(), "node", "audit", str(log), "--verify", "--secret", secret],
        capture_output=True,
        text=True,
        env=private_environ(),
        check=False,
    )
    assert ok.returncode == 0 and "chain intact" in ok.stdout
    lines = log.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["left_node"] = []  # hide what left the node
    lines[1] = json.dumps(entry, sort_keys=True)
    log.write_text("\n".join(lines) + "\n")
    broken = subprocess.run(
        [*lab_command(), "node", "audit", str(log), "--verify", "--secret", secret],
        capture_output=True,
        text=True,
        env=private_environ(),
        check=False,
    )
    assert broken.returncode == 1
    assert "line 2" in broken.stderr and "edited" in broken.stderr


def test_preflight_table_names_the_node_with_a_bad_column(tmp_path: Path) -> None:
    lines = SILOS["va"].read_text().splitlines()
    fields = lines[4].split(",")
    fields[2] = "7"  # an unknown chest-pain category
    lines[4] = ",".join(fields)
    broken = tmp_path / "va.data"
    broken.write_text("\n".join(lines) + "\n")
    env = private_environ(LAB_WORKSPACE=str(tmp_path / "workspace"), COLUMNS="250")
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [
            *lab_command(),
            "check",
            "--spec",
            str(HEART / "task.toml"),
            "--node",
            f"cleveland={SILOS['cleveland']}",
            "--node",
            f"va={broken}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    va = [row for row in rows if row.split("│")[1].strip() == "va"]
    assert va and "cp" in va[0].split("│")[3] and "holds a value the spec does not list" in va[0]
    assert "'7'" not in va[0]  # the value itself stays at the node: its own log names it, and the line
    said = (tmp_path / "workspace" / "logs" / "node-va-worker.log").read_text()
    assert "unknown category '7'" in said and "line 5" in said
    assert any(row.split("│")[1].strip() == "cleveland" and "fits the spec" in row for row in rows)
    assert "1 of 2 nodes do not fit the spec" in result.stderr


def _supernode(args: list[str], home: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """A SuperNode the lab did not start (it gives up after two retries); its output goes to a log."""
    home.mkdir(parents=True)
    env = private_environ(FLWR_HOME=str(home))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    log = home / "supernode.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "flower-supernode"), *args, "--max-retries", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def _wait_and_clean(proc: subprocess.Popen[bytes], log: Path) -> str:
    """Wait for the SuperNode to give up, then stop the SuperExec it detached (found by its --parent-pid)."""
    try:
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for other in psutil.process_iter(["pid", "cmdline"]):
            cmdline = other.info["cmdline"] or []
            if "--parent-pid" in cmdline and cmdline[cmdline.index("--parent-pid") + 1] == str(proc.pid):
                with contextlib.suppress(psutil.NoSuchProcess):
                    other.kill()
    return log.read_text(errors="replace")


def test_secure_federation_admits_only_registered_nodes_over_tls(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    nodes = node_specs(
        {"cleveland": str(SILOS["cleveland"]), "va": str(SILOS["va"])}, None, workspace=workspace, spec=SPEC
    )
    config = run_settings(
        SPEC,
        tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}",
        nodes=len(nodes),
        values={"num_rounds": 1, "baseline_epochs": 5},
    )
    with LocalFederation(workspace, nodes, secure=True) as federation:
        address = federation.connection.address
        stranger = enroll_node(tmp_path / "stranger-keys", "stranger")  # a key the SuperLink never registered
        unregistered, unregistered_log = _supernode(
            [
                "--root-certificates",
                str(federation.connection.root_certificates),
                "--auth-supernode-private-key",
                str(stranger.private_key),
                "--superlink",
                address,
                "--port",
                str(free_port()),
            ],
            tmp_path / "stranger",
        )
        plain, plain_log = _supernode(
            ["--insecure", "--superlink", address, "--port", str(free_port())], tmp_path / "plain"
        )
        outcome = submit_run(federation.connection, config, app_dir=ROOT, run_dir=new_run_dir(federation.workspace))
        refused, refused_plain = _wait_and_clean(unregistered, unregistered_log), _wait_and_clean(plain, plain_log)
    assert [n.node for n in RunSummary.of(outcome.final.reported).nodes] == ["cleveland", "va"]
    assert unregistered.returncode != 0 and "Failed to activate SuperNode" in refused
    assert plain.returncode != 0 and "Failed to initialize the connection to the SuperLink" in refused_plain
    assert "root-certificates" in (workspace / "flwr-home" / "config.toml").read_text()


def test_audit_verify_against_the_run_finds_a_log_cut_at_its_end(governed: Governed, tmp_path: Path) -> None:
    log = tmp_path / "cleveland" / "audit.jsonl"  # the node's name in the run: the log's folder
    log.parent.mkdir()
    log.write_text(governed.audit("cleveland").path.read_text())

    secret = str(governed.workspace / "nodes" / "cleveland" / "node.secret")

    def audit(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [*lab_command(), "node", "audit", str(log), "--verify", "--secret", secret, *args]
        return subprocess.run(argv, capture_output=True, text=True, env=private_environ(), check=False)

    against = ("--against", governed.run_id, "--workspace", str(governed.workspace))
    ok = audit(*against)
    assert ok.returncode == 0, ok.stderr
    assert "reaches all 2 heads" in ok.stdout  # the train and the evaluate reply each carried one
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:-1]))  # the evaluate entry cut off
    assert audit().returncode == 0  # the shorter chain alone is intact
    cut = audit(*against)
    assert cut.returncode == 1
    assert "line 3" in cut.stderr and "cut off its end" in cut.stderr
