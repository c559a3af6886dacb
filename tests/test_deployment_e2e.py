"""A federation across hosts: the coordinator and four organisations, each in its own network
namespace with its own address and home, typing the README's "Deploy across organisations"; an
attacker on the same network; a pulled cable; a restarted coordinator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "deploy"))

from netns import available  # noqa: E402
from sequence import FLEET_PORT, HEART, SHOWS_FIGURES, SILOS, TRACKING_PORT, Deployment, lab  # noqa: E402


def _missing() -> str:
    if available():
        return available()
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").is_file():
        return "the coordinator's TLS front is nginx, which is not installed (apt-get install nginx-light)"
    return ""


pytestmark = [
    pytest.mark.e2e,
    pytest.mark.deployment,
    pytest.mark.skipif(bool(_missing()), reason=_missing() or "hosts available"),
]

NODES = list(SILOS)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, subprocess.CompletedProcess[str]]]:
    """The README's sequence: the coordinator starts, admits four organisations, each starts its
    node on its own host, and the coordinator launches a run of 2 rounds."""
    folder = tmp_path_factory.mktemp("deployment")
    with Deployment(folder, extra_hosts=["attacker"]) as deployment:
        deployment.coordinator_up()
        for organisation in NODES:
            deployment.enroll_and_admit(organisation)
        deployment.nodes_up(NODES)
        # The round timeout is only a guard here: a node's preparation (its local-only baseline)
        # takes well over 25 s when the machine is loaded by the other test modules.
        first = deployment.run("--rounds", "2", "--set", "round-timeout=120")
        yield deployment, first


def _recorded_run(deployment: Deployment) -> dict[str, Any]:
    return dict(
        deployment.recorded(
            "version = client.get_model_version_by_alias('heart-disease', 'champion')\n"
            "run = client.get_run(version.run_id)\n"
            "summary = json.load(open(client.download_artifacts(version.run_id, 'nodes/summary.json')))\n"
            "print(json.dumps({'version': version.version, 'status': run.info.status, 'metrics': run.data.metrics,"
            " 'params': run.data.params, 'summary': summary}))\n"
        )
    )


def test_the_champion_is_registered_on_the_shared_tracking_server(deployed: tuple[Deployment, Any]) -> None:
    deployment, first = deployed
    assert "registered models:/heart-disease@champion" in first.stdout
    run = _recorded_run(deployment)
    assert run["status"] == "FINISHED"
    assert run["params"]["nodes"] == ",".join(sorted(NODES))


def test_an_organisation_reruns_the_champion_in_house_and_gets_what_was_recorded(
    deployed: tuple[Deployment, Any],
) -> None:
    deployment, _ = deployed
    run = _recorded_run(deployment)
    recorded = run["metrics"]
    noise = {row["node"]: row["noise"]["federated"] for row in run["summary"]["nodes"] if "noise" in row}
    metrics = deployment.pull_and_evaluate("cleveland")["metrics"]
    for name in ("accuracy", "auc", "loss"):
        # The node released its scores with noise of this sd (its default agreement); in-house is exact.
        sd = noise["cleveland"][name]
        assert 0 < sd < 0.3 and metrics[name] == pytest.approx(recorded[f"node.cleveland.{name}"], abs=5 * sd)
    # Va's agreement keeps its figures: the run holds none to compare with, and Va still reruns in-house.
    assert not [key for key in recorded if key.startswith("node.va.") and not key.endswith(".audit_entries")]
    assert 0.5 < deployment.pull_and_evaluate("va")["metrics"]["accuracy"] <= 1.0


def _as_member(deployment: Deployment, organisation: str, script: str) -> dict[str, Any]:
    """What ``script`` prints last (JSON), run on the organisation's host with its tracking account,
    through the coordinator's front (no retries: a refusal is an answer)."""
    home = deployment.home(organisation)
    env = {
        **deployment.env(),
        "MLFLOW_TRACKING_URI": f"https://{deployment.coordinator_address}:{TRACKING_PORT}",
        "MLFLOW_TRACKING_USERNAME": organisation,
        "MLFLOW_TRACKING_PASSWORD": (home / "tracking-password").read_text().strip(),
        "MLFLOW_TRACKING_SERVER_CERT_PATH": str(home / "ca.crt"),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    done = deployment.net.run(organisation, [sys.executable, "-c", script], capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


#: What an organisation's account reads of the champion's run: the nodes whose figures it finds.
MEMBER_READS = """
import json
from mlflow import MlflowClient
client = MlflowClient()
run_id = client.get_model_version_by_alias("heart-disease", "champion").run_id
run = client.get_run(run_id)
summary = json.load(open(client.download_artifacts(run_id, "nodes/summary.json")))
fingerprints = json.load(open(client.download_artifacts(run_id, "nodes/fingerprints.json")))
nodes = run.data.params["nodes"].split(",")
print(json.dumps({
    "scores": sorted(n for n in nodes if f"node.{n}.accuracy" in run.data.metrics),
    "baselines": sorted(n for n in nodes if f"node.{n}.baseline.accuracy" in run.data.metrics),
    "losses": sorted(n for n in nodes if f"node.{n}.train_loss" in run.data.metrics),
    "rows": sorted(n for n in nodes if f"node.{n}.train_rows" in run.data.params),
    "summary": sorted(row["node"] for row in summary["nodes"] if "federated" in row),
    "held_back": sorted(row["node"] for row in summary["nodes"] if "held_back" in row),
    "fingerprint_rows": sorted(n for n, facts in fingerprints["members"].items() if "train_rows" in facts),
    "mean": run.data.metrics.get("final.federated.accuracy"),
}))
"""


def test_a_member_reads_another_members_figures_only_where_its_agreement_allows(
    deployed: tuple[Deployment, Any],
) -> None:
    deployment, _ = deployed
    read = _as_member(deployment, "va", MEMBER_READS)
    shown = sorted(SHOWS_FIGURES)
    for kind in ("scores", "baselines", "losses", "rows", "summary", "fingerprint_rows"):
        assert read[kind] == shown, kind
    assert read["held_back"] == sorted(set(NODES) - SHOWS_FIGURES)
    # Three of four nodes keep theirs: the mean of all four gives none of them away, so it is there.
    assert 0.5 < read["mean"] <= 1.0


def test_each_node_audit_log_holds_exactly_the_messages_it_answered(deployed: tuple[Deployment, Any]) -> None:
    from lab.node.audit import AuditLog

    deployment, _ = deployed
    for organisation in NODES:
        entries = AuditLog(deployment.home(organisation) / "node" / "audit.jsonl").entries()
        first_run = [e for e in entries if e["run_id"] == entries[0]["run_id"]]
        kinds = sorted(e["message_type"] for e in first_run)
        assert kinds == ["evaluate", "query.prepare", "train", "train"], organisation
        assert {e["decision"] for e in first_run} == {"accepted"}


def test_the_coordinator_lists_each_node_with_what_it_reported(deployed: tuple[Deployment, Any]) -> None:
    from lab.core.environment import Environment
    from lab.core.spec import load_spec

    deployment, _ = deployed
    home = str(deployment.home("coordinator"))
    listed = deployment.type("coordinator", [lab(), "coordinator", "nodes", "--home", home, "--json"])
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    spec = load_spec(HEART / "task.toml")
    locked = Environment.from_lock_file(ROOT / "environments" / "requirements.lock")
    assert set(rows) == set(NODES)  # the attacker never became a node
    for name in NODES:
        assert rows[name]["organisation"] == spec.organisation(name)
        assert rows[name]["status"] == "online" and rows[name]["last_seen"] == "now"
        assert rows[name]["environment"] == locked.fingerprint  # every host runs the locked environment


def test_an_attacker_with_the_ca_but_no_admitted_key_gets_nothing(deployed: tuple[Deployment, Any]) -> None:
    from lab.runtime.security import enroll_node

    deployment, _ = deployed
    address, home = deployment.coordinator_address, deployment.home("attacker")
    keys = enroll_node(home / "keys", "attacker")
    ca = deployment.ca
    # A SuperNode with the federation's CA and a key nobody admitted is refused by the Fleet API.
    proc = deployment.net.launch(
        "attacker",
        [
            str(Path(sys.executable).parent / "flower-supernode"),
            "--root-certificates", str(ca), "--auth-supernode-private-key", str(keys.private_key),
            "--superlink", f"{address}:{FLEET_PORT}", "--port", "9094", "--node-config", 'node-name="cleveland"',
        ],
        log=home / "supernode.log",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    log = (home / "supernode.log").read_text(errors="replace")
    deployment.net.end(proc)
    assert "SuperNode ID:" not in log  # it never became a node
    assert "Failed to activate SuperNode" in log or proc.returncode != 0

    def curl(*args: str) -> str:
        out = deployment.net.run(
            "attacker",
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca), *args],
            capture_output=True,
            timeout=60,
        )
        return out.stdout.strip()

    # The Control and Runtime APIs are not behind the front; the SuperLink's own port is closed.
    assert curl("-X", "POST", f"https://{address}:{FLEET_PORT}/v1/control/list-runs") == "404"
    assert curl("-X", "POST", f"https://{address}:{FLEET_PORT}/v1/runtime/acquire-task") == "404"
    connect = f"import socket; s = socket.socket(); s.settimeout(3); print(s.connect_ex(({address!r}, 9093)))"
    probe = deployment.net.run("attacker", [sys.executable, "-c", connect], capture_output=True, timeout=60)
    assert probe.stdout.strip() != "0"
    # The registry: nothing without an account, and an organisation's account cannot write.
    search = f"https://{address}:{TRACKING_PORT}/api/2.0/mlflow/registered-models/search"
    assert curl(search) == "401"
    password = (deployment.home("hungary") / "tracking-password").read_text().strip()
    alias = (
        f"https://{address}:{TRACKING_PORT}/api/2.0/mlflow/registered-models/alias?name=heart-disease&alias=champion"
    )
    config = home / "curl-user"  # the password on curl's command line would show in `ps`
    config.write_text(f'user = "hungary:{password}"\n')
    assert curl("-K", str(config), search) == "200"
    assert curl("-K", str(config), "-X", "DELETE", alias) == "403"


#: What an organisation's account tries on the shared tracking server, through the coordinator's
#: front, from its own host: each attempt prints whether the server allowed it.
MEMBER_ATTEMPTS = """
import json, mlflow
from mlflow import MlflowClient
client = MlflowClient()
version = client.get_model_version_by_alias("heart-disease", "champion")
run = version.run_id
experiment = client.get_run(run).info.experiment_id
attempts = {
    "read the champion's run": lambda: client.get_run(run).data.metrics["node.cleveland.accuracy"],
    "create the experiment of a task not yet run": lambda: client.create_experiment("next-task"),
    "create the registered model of a task not yet run": lambda: client.create_registered_model("next-task"),
    "start a run in the task's experiment": lambda: client.create_run(experiment),
    "log a metric to the coordinator's run": lambda: client.log_metric(run, "node.hungary.accuracy", 1.0),
    "overwrite the run's summary": lambda: client.log_text(run, "{}", "nodes/summary.json"),
    "register a version of its own": lambda: client.create_model_version("heart-disease", f"runs:/{run}/model"),
    "move @champion": lambda: client.set_registered_model_alias("heart-disease", "champion", version.version),
    "delete the champion's run": lambda: client.delete_run(run),
}
said = {}
for name, attempt in attempts.items():
    try:
        attempt()
        said[name] = "allowed"
    except Exception as exc:
        said[name] = "refused (403)" if "403" in str(exc) else f"failed: {str(exc).splitlines()[0][:200]}"
print(json.dumps(said))
"""


def test_an_organisations_account_reads_the_federation_and_can_create_write_or_move_nothing(
    deployed: tuple[Deployment, Any],
) -> None:
    deployment, _ = deployed
    said = _as_member(deployment, "hungary", MEMBER_ATTEMPTS)
    assert said.pop("read the champion's run") == "allowed"
    assert said == dict.fromkeys(said, "refused (403)")
    assert len(said) == 8
    run = _recorded_run(deployment)  # and nothing changed: the run, its summary, the champion
    assert run["status"] == "FINISHED" and run["metrics"]["node.cleveland.accuracy"] < 1.0


def test_a_node_whose_link_goes_down_is_dropped_and_joins_the_next_run(deployed: tuple[Deployment, Any]) -> None:
    deployment, _ = deployed
    folder = deployment.home("coordinator") / "runs-launched"
    before = set(folder.glob("runs/*"))
    argv = [
        lab(), "run", "--coordinator", "127.0.0.1:9093", "--ca", str(deployment.ca), "--spec", str(HEART / "task.toml"),
        "--workspace", str(folder), "--rounds", "3", "--min-nodes", "3", "--set", "round-timeout=120",
    ]  # fmt: skip
    # The cut node is dropped when the SuperLink stops hearing its heartbeat (Flower's 30 s interval,
    # two missed: about a minute), well inside the round's bound; the healthy nodes answer within it
    # even on a loaded machine (a bound of 20 s dropped a healthy node there too).
    running = deployment.start("coordinator", argv, key="dropping-run")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        runs = set(folder.glob("runs/*")) - before
        output = next(iter(runs), None)
        log = output / "flwr-run.log" if output else None
        if log and log.is_file() and '"event": "train"' in log.read_text(errors="replace"):
            break  # round 1 is in: pull va's cable
        time.sleep(0.5)
    deployment.net.link("va", up=False)
    try:
        assert running.wait(timeout=400) == 0, deployment.terminal("dropping-run")
    finally:
        deployment.net.link("va", up=True)
    terminal = deployment.terminal("dropping-run")
    assert "node 'va' dropped" in terminal.replace("\n", "")
    dropped = deployment.recorded(
        "run = client.search_runs([client.get_experiment_by_name('heart-disease').experiment_id],"
        " order_by=['attributes.start_time DESC'])[0]\n"
        "path = client.download_artifacts(run.info.run_id, 'nodes/refusals-in-rounds.json')\n"
        "print(json.dumps(json.load(open(path))))\n"
    )
    assert any(r["node"] == "va" and "dropped" in r["reason"] for r in dropped)
    # va's node reconnects on its own once its cable is back, and takes part in the next run.
    again = deployment.run("--rounds", "1", "--set", f"expected-nodes={len(NODES)}")
    assert "joined va" in again.stdout


def test_a_restarted_coordinator_keeps_its_nodes_and_runs(deployed: tuple[Deployment, Any]) -> None:
    deployment, _ = deployed
    history = (
        "experiment = client.get_experiment_by_name('heart-disease').experiment_id\n"
        "print(json.dumps(sorted(r.info.run_id for r in client.search_runs([experiment]))))\n"
    )
    before = deployment.recorded(history)
    deployment.stop("coordinator")
    deployment.start_coordinator()
    assert deployment.recorded(history) == before  # the run history survived
    listing = [lab(), "coordinator", "nodes", "--home", str(deployment.home("coordinator")), "--json"]
    rows = json.loads(deployment.type("coordinator", listing).stdout)
    assert sorted(row["name"] for row in rows) == sorted(NODES)  # still admitted, with their node ids
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the nodes reconnect without being restarted
        rows = json.loads(deployment.type("coordinator", listing).stdout)
        if all(row["status"] == "online" for row in rows):
            break
        time.sleep(3)
    after = deployment.run("--rounds", "1", "--set", f"expected-nodes={len(NODES)}")
    assert all(f"joined {name}" in after.stdout for name in NODES)
