"""The pinned environment: the lock, the fingerprint and the difference between environments."""

from __future__ import annotations

import pytest

from lab.contract.membership import Guard
from lab.contract.messages import NodeReport
from lab.core.environment import Environment, canonical_name
from lab.errors import LabError

from .conftest import ROOT

LOCK = ROOT / "environments" / "requirements.lock"


def test_lock_pins_the_engine_and_carries_a_hash_for_every_package() -> None:
    text = LOCK.read_text()
    lock = Environment.from_lock(text)
    assert lock.python == "3.11"
    assert lock.packages["flwr"] == "1.41.0"
    assert lock.packages["mlflow"] == "3.17.2"
    assert lock.packages["torch"] == "2.13.0+cpu"
    pins = [line for line in text.splitlines() if "==" in line and not line.startswith((" ", "#"))]
    assert len(pins) == len(lock.packages)
    assert all(line.rstrip().endswith("\\") for line in pins)  # every pin is followed by its hashes
    assert text.count("--hash=sha256:") >= len(pins)


def test_the_test_environment_is_the_locked_one() -> None:
    """`make setup` installs exactly the lock, so the environment running the tests matches it."""
    drift = Environment.current().diff(Environment.from_lock_file(LOCK))
    assert not drift, drift.lines()
    assert Environment.current().fingerprint == Environment.from_lock_file(LOCK).fingerprint


def test_one_changed_version_changes_the_fingerprint_and_names_both_versions() -> None:
    lock = Environment.from_lock_file(LOCK)
    drifted = Environment(lock.python, lock.platform, {**lock.packages, "six": "1.16.0"})
    assert drifted.fingerprint != lock.fingerprint
    drift = drifted.diff(lock)
    assert drift.changed == {"six": ("1.16.0", lock.packages["six"])}
    assert drift.lines() == [f"six: 1.16.0 here, {lock.packages['six']} in the lock"]


def test_diff_lists_added_removed_and_platform_differences() -> None:
    lock = Environment("3.11", "linux-x86_64", {"a": "1", "b": "2"})
    here = Environment("3.12", "linux-x86_64", {"b": "2", "c": "3"})
    assert here.diff(lock).lines() == [
        "python 3.12 here, 3.11 in the lock",
        "c==3: installed here, not in the lock",
        "a==1: in the lock, missing here",
    ]


def test_pins_round_trip_through_a_message() -> None:
    env = Environment.current()
    assert Environment.from_pins(env.python, env.platform, env.pins).fingerprint == env.fingerprint


def test_lock_without_its_environment_line_is_refused() -> None:
    with pytest.raises(LabError, match="no '# environment: python X.Y PLATFORM' line"):
        Environment.from_lock("six==1.17.0\n")


def test_names_are_compared_as_pep_503_says() -> None:
    assert canonical_name("Typing_Extensions") == canonical_name("typing-extensions") == "typing-extensions"


def _node_record(env: Environment, spec_sha256: str) -> NodeReport:
    return NodeReport("va", "V.A.", env.fingerprint, env.python, env.platform, "data", 85, spec_sha256)


def test_coordinator_guard_refuses_in_strict_and_flags_in_warn() -> None:
    lock = Environment.from_lock_file(LOCK)
    drifted = Environment(lock.python, lock.platform, {**lock.packages, "six": "1.16.0"})
    strict, warn = Guard(lock, "strict", "abc"), Guard(lock, "warn", "abc")
    refusal, warning = strict.screen(_node_record(drifted, "abc"), drifted.pins)
    assert (
        warning is None and refusal is not None and f"six: 1.16.0 here, {lock.packages['six']} in the lock" in refusal
    )
    refusal, warning = warn.screen(_node_record(drifted, "abc"), drifted.pins)
    assert refusal is None and warning is not None and "six: 1.16.0" in warning
    assert strict.screen(_node_record(lock, "abc")) == (None, None)
    assert strict.screen(_node_record(lock, "other"))[0] == "it used a different task spec than the run's"
