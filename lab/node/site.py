"""One organisation's site as its node sees it: its name, its table, and its own records.

A SuperNode is started with these in its node config (lab.runtime.node writes them): the node's
name, where its table is, and in its home its agreement, audit log and privacy ledger. The home
also holds the node's secret (``node.secret``, readable by its owner only), the key of its audit
chain and of its data fingerprint, which never leaves the node.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from lab.core.disclosure import DEFAULT_MIN_COUNT
from lab.errors import DataError
from lab.node.agreement import Agreement, load_agreement
from lab.node.ledger import Ledger
from lab.node.releases import ReleaseHistory, table_version

__all__ = ["NODE_CONFIG", "SECRET_FILE", "NodeSite", "node_secret"]

#: The node-config keys a lab SuperNode is started with ("no-agreement": its operator started it
#: without an agreement on purpose, ``--no-agreement``).
NODE_CONFIG = ("node-name", "data-path", "agreement", "audit-log", "privacy-ledger", "no-agreement")

#: The node's secret, in its home.
SECRET_FILE = "node.secret"


@dataclass(frozen=True)
class NodeSite:
    """A node's name, table and records (paths empty when the node was started without them)."""

    name: str
    data_path: str
    agreement_path: str = ""
    audit_path: str = ""
    ledger_path: str = ""
    no_agreement: bool = False  # started without an agreement on purpose: nothing is checked, all is audited

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any], node_id: int) -> NodeSite:
        """The site of a SuperNode started with the lab's node config."""
        name, data, agreement, audit, ledger, unbound = (str(node_config.get(key, "")) for key in NODE_CONFIG)
        return cls(name or f"node-{node_id}", data, agreement, audit, ledger, unbound.lower() == "true")

    def node_config(self) -> dict[str, str]:
        """The node config a SuperNode is started with (empty entries left out)."""
        unbound = "true" if self.no_agreement else ""
        values = (self.name, self.data_path, self.agreement_path, self.audit_path, self.ledger_path, unbound)
        return {key: value for key, value in zip(NODE_CONFIG, values, strict=True) if value}

    def prepared_path(self, run_id: int, spec_sha256: str) -> Path | None:
        """Where the node keeps the spec run ``run_id`` prepared (beside its audit log)."""
        if not self.audit_path:
            return None
        return Path(self.audit_path).parent / "prepared" / f"{run_id}-{spec_sha256}.toml"

    @cached_property
    def agreement(self) -> Agreement | None:
        """The node's data-use agreement, when it has one."""
        return load_agreement(self.agreement_path) if self.agreement_path else None

    def min_count(self, asked: int = DEFAULT_MIN_COUNT) -> int:
        """Fewest rows behind anything this node releases: 5, or more if its agreement or the
        request says so."""
        return max(DEFAULT_MIN_COUNT, asked, self.agreement.min_rows if self.agreement else 0)

    def table_path(self) -> str:
        """Where the node's table is; an error naming the setting when the node was given none."""
        if not self.data_path:
            raise DataError(
                f"node {self.name!r} has no data-path; start it with its table (`lab node start --data TABLE`, "
                "or the SuperNode's --node-config 'data-path=\"/path/to/table.csv\"')"
            )
        return self.data_path

    def ledger(self) -> Ledger:
        """The node's privacy ledger (``privacy.jsonl`` in its home, unless its node config names
        another); an error when the node was started with neither."""
        if not self.ledger_path and self.home is not None:
            return Ledger(self.home / "privacy.jsonl")
        if not self.ledger_path:
            raise DataError(
                f"node {self.name!r} has no privacy ledger for a differentially private run; start the SuperNode "
                "with --node-config 'privacy-ledger=\"/path/to/privacy.jsonl\"'"
            )
        return Ledger(self.ledger_path)

    @property
    def home(self) -> Path | None:
        """The node's home: the folder of its audit log."""
        return Path(self.audit_path).parent if self.audit_path else None

    def releases(self, raw: Any) -> ReleaseHistory:
        """The counts this node released about this version of its table (``raw``: as read); an
        error for a node with no home to keep them in."""
        if self.home is None:
            raise DataError(
                f"node {self.name!r} holds an agreement but no home to keep what it released in; start it with "
                "its home (`lab node start --home DIR`)"
            )
        return ReleaseHistory(self.home / "released", table_version(raw), len(raw))

    @cached_property
    def secret(self) -> bytes:
        """The node's secret, made on first use (empty for a node with no home: nothing is keyed)."""
        return node_secret(self.home) if self.home is not None else b""


def node_secret(home: Path) -> bytes:
    """The secret in ``home`` (32 random bytes), written readable by its owner only the first time."""
    path = home / SECRET_FILE
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        draft = home / f".{SECRET_FILE}.{os.getpid()}"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):  # another process of the node made it first: keep that one
            os.link(draft, path)  # whole or not at all
        draft.unlink()
    text = path.read_text(encoding="utf-8").strip()
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise DataError(f"the node's secret {str(path)!r} is not hexadecimal; restore it from a backup") from None
