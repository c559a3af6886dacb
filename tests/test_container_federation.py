"""A federation in containers: the images `make images` built, started here with podman.

A coordinator container and two organisations' node containers on a private podman network, each
node with only its own table mounted read-only and its own home volume, TLS, node keys and
agreements; the coordinator launches a run to a registered champion; an organisation reruns it
in a fresh container. Selected by `make test-containers` (marker ``containers``), not by
`make test`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT

HEART = ROOT / "data" / "heart-disease"
SILOS = {"cleveland": "processed.cleveland.data", "hungary": "processed.hungarian.data"}
NODE_IMAGE, COORDINATOR_IMAGE = "localhost/fedlab-node:latest", "localhost/fedlab-coordinator:latest"
LAB_UID = 10001  # the images' user
HOME = "/home/lab/coordinator"
ENGINE_ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "environments" / "podman-containers.conf")}


def podman(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, env=ENGINE_ENV, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"`podman {' '.join(args)}` failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def _missing() -> str:
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc); see environments/README.md"
    absent = [
        image for image in (NODE_IMAGE, COORDINATOR_IMAGE) if podman("image", "exists", image, check=False).returncode
    ]
    return f"{', '.join(absent)} not built: run `make images`" if absent else ""


pytestmark = [pytest.mark.containers, pytest.mark.skipif(bool(_missing()), reason=_missing() or "images built")]


def _own(path: Path) -> Path:
    """Hand ``path`` (and what it holds) to the images' user, as an operator does for a bind mount."""
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chown(item, LAB_UID, LAB_UID)
    return path


@dataclass
class ContainerFederation:
    """The containers, volumes and network this test made, removed on exit."""

    folder: Path
    tag: str = field(default_factory=lambda: f"fedlab-test-{os.getpid()}")
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        pid = os.getpid()
        self.subnet = f"10.{90 + pid % 10}.{pid % 250}"

    @property
    def coordinator_address(self) -> str:
        return f"{self.subnet}.2"

    def name(self, party: str) -> str:
        return f"{self.tag}-{party}"

    def __enter__(self) -> ContainerFederation:
        podman("network", "create", "--subnet", f"{self.subnet}.0/24", self.tag)
        return self

    def __exit__(self, *exc: Any) -> None:
        for container in reversed(self.containers):
            podman("rm", "--force", "--time", "20", container, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "--force", volume, check=False)
        podman("network", "rm", "--force", self.tag, check=False)

    def run(self, party: str, image: str, *args: str, address: str, mounts: list[str], volume: str = "") -> None:
        """Start a container of ``image`` for ``party`` in the background."""
        self.containers.append(self.name(party))
        if volume:
            self.volumes.append(volume)
        flags = [f"--volume={m}" for m in mounts]
        podman(
            "run", "--detach", "--name", self.name(party), "--network", self.tag, "--ip", address, *flags, image, *args
        )

    def logs(self, party: str) -> str:
        out = podman("logs", self.name(party), check=False)
        return out.stdout + out.stderr

    def wait_for(self, party: str, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.logs(party):
            running = podman("container", "inspect", "--format", "{{.State.Running}}", self.name(party), check=False)
            if running.stdout.strip() != "true" or time.monotonic() > deadline:
                raise RuntimeError(f"{party} did not say {text!r}; its output:\n{self.logs(party)[-3000:]}")
            time.sleep(1)

    def exec(self, party: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name(party), *argv)

    def volume_path(self, volume: str) -> Path:
        return Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())


def _approved_app() -> str:
    """The app hash of the coordinator image's app, which the organisations approve."""
    code = "from pathlib import Path; from lab.runtime.app import app_hash; print(app_hash(Path('/opt/lab')))"
    image = podman("run", "--rm", "--entrypoint", "python", COORDINATOR_IMAGE, "-c", code).stdout.strip()
    from lab.runtime.app import app_hash

    assert image == app_hash(ROOT), "the images are older than this checkout's app: run `make images`"
    return image


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ContainerFederation, str]]:
    from lab.core.spec import load_spec
    from lab.node.agreement import template
    from lab.runtime.security import enroll_node

    folder = tmp_path_factory.mktemp("containers")
    lab = str(Path(sys.executable).parent / "lab")
    spec = load_spec(HEART / "task.toml")
    approved = _approved_app()
    with ContainerFederation(folder) as fed:
        coordinator = folder / "coordinator"
        subprocess.run(
            [lab, "coordinator", "init", "--name", fed.coordinator_address, "--home", str(coordinator)],
            check=True,
            capture_output=True,
        )
        shutil.copy(HEART / "task.toml", coordinator / "task.toml")
        for organisation in SILOS:
            keys = enroll_node(folder / organisation / "keys", organisation)
            (coordinator / "handed-over").mkdir(exist_ok=True)
            shutil.copy(keys.public_key, coordinator / "handed-over" / f"{organisation}.pub")
            _own(keys.private_key)
            agreement = folder / organisation / "agreement.toml"
            shown = organisation == "cleveland"  # its agreement lets the federation read its figures
            agreement.write_text(template(spec, approved, spec.organisation(organisation), node_figures=shown))
        _own(coordinator)
        fed.run("coordinator", COORDINATOR_IMAGE, address=fed.coordinator_address, mounts=[f"{coordinator}:{HOME}"])
        fed.wait_for("coordinator", "coordinator running")
        for organisation in SILOS:
            fed.exec("coordinator", "lab", "coordinator", "admit", organisation,
                     f"{HOME}/handed-over/{organisation}.pub", "--home", HOME)  # fmt: skip
        for number, (organisation, table) in enumerate(SILOS.items(), start=3):
            home = folder / organisation
            fed.run(
                organisation, NODE_IMAGE, "--name", organisation, "--coordinator", f"{fed.coordinator_address}:9092",
                address=f"{fed.subnet}.{number}", volume=f"{fed.tag}-{organisation}-home",
                mounts=[
                    f"{HEART / table}:/data/table.csv:ro",
                    f"{home / 'agreement.toml'}:/config/agreement.toml:ro",
                    f"{coordinator / 'certs' / 'ca.crt'}:/run/secrets/ca.crt:ro",
                    f"{home / 'keys' / f'{organisation}.key'}:/run/secrets/node.key:ro",
                    f"{fed.tag}-{organisation}-home:/home/lab/node",
                ],
            )  # fmt: skip
        for organisation in SILOS:
            fed.wait_for(organisation, "connected to")
        launched = fed.exec(
            "coordinator", "lab", "run", "--coordinator", "127.0.0.1:9093", "--ca", f"{HOME}/certs/ca.crt",
            "--spec", f"{HOME}/task.toml", "--workspace", f"{HOME}/runs-launched", "--rounds", "2",
        )  # fmt: skip
        yield fed, launched.stdout


def _recorded(fed: ContainerFederation) -> dict[str, Any]:
    """The champion's run as the shared tracking server holds it, read in the coordinator's container."""
    from lab.runtime.tracking_server import ADMIN

    script = (
        "import json, os, mlflow\n"
        f"os.environ['MLFLOW_TRACKING_USERNAME'] = {ADMIN!r}\n"
        f"os.environ['MLFLOW_TRACKING_PASSWORD'] = open({HOME!r} + '/tracking/secrets/{ADMIN}').read().strip()\n"
        "client = mlflow.MlflowClient('http://127.0.0.1:5001')\n"
        "version = client.get_model_version_by_alias('heart-disease', 'champion')\n"
        "run = client.get_run(version.run_id)\n"
        "summary = json.load(open(client.download_artifacts(version.run_id, 'nodes/summary.json')))\n"
        "noise = {row['node']: row['noise']['federated'] for row in summary['nodes'] if 'noise' in row}\n"
        "print(json.dumps({'status': run.info.status, 'metrics': run.data.metrics, 'params': run.data.params,"
        " 'noise': noise}))\n"
    )
    out = fed.exec("coordinator", "python", "-c", script).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_the_container_federation_registers_its_champion(federation: tuple[ContainerFederation, str]) -> None:
    fed, output = federation
    assert "registered models:/heart-disease@champion" in output
    run = _recorded(fed)
    assert run["status"] == "FINISHED"
    assert run["params"]["nodes"] == ",".join(sorted(SILOS))


def test_each_node_audit_log_in_its_volume_holds_the_messages_it_answered(
    federation: tuple[ContainerFederation, str],
) -> None:
    from lab.node.audit import AuditLog

    fed, _ = federation
    for organisation in SILOS:
        entries = AuditLog(fed.volume_path(f"{fed.tag}-{organisation}-home") / "audit.jsonl").entries()
        assert sorted(e["message_type"] for e in entries) == ["evaluate", "query.prepare", "train", "train"]
        assert {e["decision"] for e in entries} == {"accepted"}


def test_an_in_house_rerun_in_a_fresh_container_gives_the_recorded_metrics(
    federation: tuple[ContainerFederation, str],
) -> None:
    fed, _ = federation
    run = _recorded(fed)
    recorded = run["metrics"]
    organisation = "cleveland"
    account = fed.folder / "coordinator" / "tracking" / "accounts" / organisation
    rerun = (
        f"lab model pull models:/heart-disease@champion --tracking-uri https://{fed.coordinator_address}:5000"
        f" --user {organisation} --password-file /run/secrets/tracking-password --ca /run/secrets/ca.crt"
        " --federation-key /run/secrets/federation.pub --out /tmp/champion >&2"
        " && lab evaluate --model /tmp/champion --data /data/table.csv --json"
        " --federation-key /run/secrets/federation.pub"
    )
    out = podman(
        "run", "--rm", "--network", fed.tag, "--entrypoint", "sh",
        f"--volume={HEART / SILOS[organisation]}:/data/table.csv:ro",
        f"--volume={fed.folder / 'coordinator' / 'certs' / 'ca.crt'}:/run/secrets/ca.crt:ro",
        f"--volume={fed.folder / 'coordinator' / 'certs' / 'federation.pub'}:/run/secrets/federation.pub:ro",
        f"--volume={account}:/run/secrets/tracking-password:ro",
        NODE_IMAGE, "-c", rerun,
    )  # fmt: skip
    metrics = json.loads(out.stdout)["metrics"]
    for name in ("accuracy", "auc", "loss"):  # exact in-house; released with noise of this sd by the node
        sd = run["noise"][organisation][name]
        assert 0 < sd < 0.3 and metrics[name] == pytest.approx(recorded[f"node.{organisation}.{name}"], abs=5 * sd)


@pytest.mark.parametrize("image", [NODE_IMAGE, COORDINATOR_IMAGE])
def test_each_image_holds_the_locked_environment_of_this_host(image: str) -> None:
    from lab.core.environment import Environment

    verify = podman("run", "--rm", "--entrypoint", "lab", image, "env", "verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    code = "from lab.core.environment import Environment; print(Environment.current().fingerprint)"
    inside = podman("run", "--rm", "--entrypoint", "python", image, "-c", code).stdout.strip()
    assert inside == Environment.current().fingerprint  # same Python minor, platform and packages as .venv


@pytest.mark.parametrize("image", [NODE_IMAGE, COORDINATOR_IMAGE])
def test_each_image_runs_as_a_non_root_user_and_keeps_no_secret(image: str) -> None:
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["User"] == f"{LAB_UID}:{LAB_UID}"
    assert not any(v.split("=")[0] in ("PIP_CERT", "MLFLOW_TRACKING_PASSWORD") for v in config.get("Env", []))
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "BEGIN " not in history and "PRIVATE KEY" not in history  # no certificate or key written by a step
    listing = podman("run", "--rm", "--entrypoint", "sh", image, "-c", "ls -A /run/secrets /tmp/wheels 2>&1; true")
    assert "pip-ca" not in listing.stdout and ".whl" not in listing.stdout  # the build's mounts left nothing
