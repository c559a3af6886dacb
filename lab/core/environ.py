"""Every environment variable the lab reads or sets for its own processes, each with its default
and what it is for (``VARIABLES``), and the privacy defaults every process it starts gets. In the
lowest layer, so that the node's guard and the SQL reader name theirs here too."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "AGREEMENT_FILE",
    "APP_HASH",
    "AUDIT_LOG",
    "DATA_PASSWORD",
    "FEDERATION_KEY",
    "PRIVATE_ENV",
    "PROCESS_TAGS",
    "ROSTER",
    "SIGNING_KEY",
    "TRACKING_URI",
    "VARIABLES",
    "WITHOUT_AGREEMENT",
    "WORKSPACE",
    "Setting",
]

#: Telemetry and update checks off in every process the lab starts: this is a privacy product. And
#: MLflow unpickles nothing in them (a pickled model runs its own code when loaded; the lab's are
#: models from code, and the lab loads them itself: lab.registry.verified).
PRIVATE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
}


@dataclass(frozen=True)
class Setting:
    """One environment variable and its documented default."""

    name: str
    default: str
    doc: str

    def get(self) -> str:
        return os.environ.get(self.name, self.default)


WORKSPACE = Setting(
    "LAB_WORKSPACE",
    "workspace",
    "Folder holding everything the lab starts: Flower's home, logs, the MLflow store.",
)
ROSTER = Setting(
    "LAB_ROSTER",
    "",
    "The coordinator's home with its roster (set for their ServerApps by `lab coordinator start` and "
    "by a `--secure` local federation): each node's admitted name, and what it last reported.",
)
SIGNING_KEY = Setting(
    "LAB_SIGNING_KEY",
    "",
    "The federation's private signing key (set by the lab for its coordinator's ServerApps): every "
    "model a run registers is signed with it (lab.registry.signing).",
)
FEDERATION_KEY = Setting(
    "LAB_FEDERATION_KEY",
    "",
    "The federation's public key in-house commands check a model's signature with; empty means the "
    "workspace's own (certs/federation.pub, made by the workspace's local federation).",
)
TRACKING_URI = Setting(
    "MLFLOW_TRACKING_URI",
    "",
    "MLflow tracking URI; empty means the SQLite store inside the workspace.",
)
AGREEMENT_FILE = Setting(
    "LAB_AGREEMENT",
    "",
    "A SuperNode's data-use agreement file (set by the lab for the node's guard, lab.node.guard).",
)
WITHOUT_AGREEMENT = Setting(
    "LAB_NO_AGREEMENT",
    "",
    '"1": the node was started without an agreement on purpose (`lab node start --no-agreement`).',
)
AUDIT_LOG = Setting("LAB_AUDIT_LOG", "", "A node's audit log, where its guard records every request it checks.")
APP_HASH = Setting(
    "LAB_APP_HASH",
    "unchecked",
    "The hash of the app a node's guard approved, set for the app itself to put in its audit entries.",
)
PROCESS_TAGS = Setting(
    "LAB_PROCESS_TAGS",
    "",
    "The tags of every process the lab started that a process descends from (lab.runtime.processes "
    "finds what is left of a stopped process by them).",
)
DATA_PASSWORD = Setting(
    "LAB_DATA_PASSWORD",
    "",
    "The password of a node's SQL table, where its node config gives no password-file (lab.core.sql).",
)

#: Every variable above, for the documentation and its test.
VARIABLES = (
    WORKSPACE,
    ROSTER,
    SIGNING_KEY,
    FEDERATION_KEY,
    TRACKING_URI,
    AGREEMENT_FILE,
    WITHOUT_AGREEMENT,
    AUDIT_LOG,
    APP_HASH,
    PROCESS_TAGS,
    DATA_PASSWORD,
)
