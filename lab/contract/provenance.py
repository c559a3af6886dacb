"""What a node says about itself in every reply: its environment, data and spec fingerprints."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flwr.app import ConfigRecord

from lab.contract import keys
from lab.contract.records import text
from lab.core.environment import EnvDiff, Environment
from lab.core.spec import TaskSpec
from lab.errors import LabError

__all__ = ["check_environment", "lock_config", "node_record"]

logger = logging.getLogger(__name__)


def lock_config(lock: Environment, policy: str) -> dict[str, str | list[str]]:
    """Config entries that tell nodes the federation's pinned environment and the policy."""
    return {
        keys.LOCK_PYTHON: lock.python,
        keys.LOCK_PLATFORM: lock.platform,
        keys.LOCK_PINS: lock.pins,
        keys.ENV_POLICY: policy,
    }


def check_environment(config: ConfigRecord, name: str) -> tuple[Environment, EnvDiff]:
    """Compare this node's environment with the federation's lock, before any data is read.

    Under the ``strict`` policy a difference refuses the task, naming each package and both
    versions; under ``warn`` it is reported with the reply.
    """
    current = Environment.current()
    if keys.LOCK_PINS not in config:
        return current, EnvDiff()
    pins = config[keys.LOCK_PINS]
    lock = Environment.from_pins(
        text(config, keys.LOCK_PYTHON),
        text(config, keys.LOCK_PLATFORM),
        [str(p) for p in pins] if isinstance(pins, list) else [],
    )
    drift = current.diff(lock)
    if drift and text(config, keys.ENV_POLICY) == "strict":
        raise LabError(
            f"its environment differs from the federation's pinned one ({drift.summary()}); "
            "install from environments/requirements.lock with `make setup`"
        )
    if drift:
        logger.warning("node %s: environment differs from the lock: %s", name, drift.summary())
    return current, drift


def node_record(
    name: str,
    spec: TaskSpec,
    env: Environment,
    data_fingerprint: str,
    rows: int,
    extra: Mapping[str, str | int | float | list[str]] | None = None,
) -> ConfigRecord:
    """The NODE record of a reply: who answered, and the fingerprints of what it used."""
    return ConfigRecord(
        {
            keys.NODE_NAME: name,
            keys.ORGANISATION: spec.organisation(name),
            keys.ENV_FINGERPRINT: env.fingerprint,
            keys.ENV_PYTHON: env.python,
            keys.ENV_PLATFORM: env.platform,
            keys.DATA_FINGERPRINT: data_fingerprint,
            keys.TRAIN_ROWS: rows,
            keys.SPEC_FINGERPRINT: spec.sha256,
            **(extra or {}),
        }
    )
