"""The container recipes, checked statically in every `make test` (the images themselves are built
and run by `make images` and `make test-containers`: tests/test_container_federation.py)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from lab.core.environment import Environment

from .conftest import ROOT

ENVIRONMENTS = ROOT / "environments"
DOCKERFILE = (ENVIRONMENTS / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ENVIRONMENTS / "compose.yaml").read_text())
DOCUMENTED_PORTS = {9092, 5000}  # the Fleet API and the tracking server, behind nginx: environments/README.md


def stages() -> dict[str, list[str]]:
    """Instruction lines of each build stage, by stage name."""
    out: dict[str, list[str]] = {}
    current = ""  # the build arguments before the first stage
    out[current] = []
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            current = line.split(" AS ")[-1].strip()
            out[current] = []
        out[current].append(line)
    return out


def test_base_image_is_pinned_to_the_locks_python() -> None:
    (base,) = [line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("FROM ") and " AS base" in line]
    assert base == "${BASE}"
    (default,) = [line.split("=", 1)[1] for line in stages()[""] if line.startswith("ARG BASE=")]
    name, tag = default.split(":")
    assert name == "python"
    lock = Environment.from_lock_file(ENVIRONMENTS / "requirements.lock")
    assert re.fullmatch(rf"{re.escape(lock.python)}\.\d+-slim-\w+", tag), tag
    for line in DOCKERFILE.splitlines():
        if line.startswith("FROM ") and " AS base" not in line:
            assert line.split()[1] == "base"  # node and coordinator build on the locked base


def test_images_install_from_the_lock_with_hash_checking() -> None:
    base = " ".join(stages()["base"])
    assert "COPY environments/requirements.lock" in base
    assert re.search(r"pip install --require-hashes --no-deps .*-r /opt/lab/environments/requirements.lock", base)
    assert "&& lab env verify" in base  # the build fails if the result differs from the lock


@pytest.mark.parametrize("target", ["node", "coordinator"])
def test_images_run_as_a_non_root_user(target: str) -> None:
    users = [line.split()[1] for line in stages()[target] if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")


def test_only_documented_ports_are_exposed_and_published() -> None:
    exposed = {int(p) for s in stages().values() for line in s if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert exposed == DOCUMENTED_PORTS
    assert not [line for line in stages()["node"] if line.startswith("EXPOSE ")]
    published = {int(p.split(":")[0]) for svc in COMPOSE["services"].values() for p in svc.get("ports", [])}
    assert published == DOCUMENTED_PORTS
    readme = (ENVIRONMENTS / "README.md").read_text()
    assert all(f"port {p}" in readme for p in DOCUMENTED_PORTS)


def test_compose_builds_every_lab_service_from_the_one_recipe() -> None:
    services = COMPOSE["services"]
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert set(built) == set(services) == {"coordinator", "node-cleveland", "node-hungary"}
    assert all(b["dockerfile"] == "environments/Dockerfile" for b in built.values())
    assert {b["target"] for b in built.values()} == {"node", "coordinator"}
    assert all(svc["environment"]["FLWR_TELEMETRY_ENABLED"] == "0" for svc in services.values())


@pytest.mark.parametrize(("target", "command"), [("node", "lab node start"), ("coordinator", "lab coordinator start")])
def test_images_run_the_labs_own_commands(target: str, command: str) -> None:
    """A node in a container keeps its gate, agreement, audit log and ledger: it runs `lab node start`."""
    (entrypoint,) = [line for line in stages()[target] if line.startswith("ENTRYPOINT ")]
    assert " ".join(json.loads(entrypoint.removeprefix("ENTRYPOINT "))).startswith(command)


def test_nodes_see_only_their_own_table_read_only() -> None:
    nodes = {n: s for n, s in COMPOSE["services"].items() if n.startswith("node-")}
    for name, svc in nodes.items():
        tables = [v for v in svc["volumes"] if v.endswith(":/data/table.csv:ro")]
        assert len(tables) == 1, name
        mounted_files = [v for v in svc["volumes"] if v.startswith(("../", "./"))]
        assert all(v.endswith(":ro") for v in mounted_files), name  # only its home volume is writable
        assert name.removeprefix("node-") in svc["command"]
        assert "ports" not in svc
