"""How the ``flwr`` command reaches a SuperLink's Control API: its address and the CA it trusts.

Every ``flwr`` command the lab runs gets its own Flower home holding only this connection, so the
default local connection (which would start a detached SuperLink of its own) is never used.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import RuntimeStartError
from lab.runtime.environ import process_environ
from lab.runtime.processes import executable

__all__ = ["FEDERATION", "Connection"]

#: The name the lab's connection has in a Flower home's config.toml.
FEDERATION = "lab"


@dataclass(frozen=True)
class Connection:
    """A SuperLink's Control API: ``address`` (HOST:PORT) and the CA certificate (None: plain)."""

    address: str
    root_certificates: Path | None = None

    def write(self, flwr_home: Path) -> Path:
        """Write this connection as the default of a Flower home; the home."""
        flwr_home.mkdir(parents=True, exist_ok=True)
        transport = (
            f'root-certificates = "{self.root_certificates.resolve()}"' if self.root_certificates else "insecure = true"
        )
        section = f'[superlink.{FEDERATION}]\naddress = "{self.address}"\n{transport}\n'
        (flwr_home / "config.toml").write_text(f'[superlink]\ndefault = "{FEDERATION}"\n\n{section}', encoding="utf-8")
        return flwr_home

    def env(self, flwr_home: Path) -> dict[str, str]:
        """The environment of a ``flwr`` command using this connection (lab.runtime.environ)."""
        return process_environ(self.write(flwr_home))

    def flwr_json(self, args: list[str], flwr_home: Path, *, what: str) -> dict[str, Any]:
        """Run ``flwr ARGS FEDERATION --format json`` against this SuperLink; its JSON answer.

        Raises RuntimeStartError, with Flower's output, when the command fails (``what`` says
        what was asked).
        """
        result = subprocess.run(
            [executable("flwr"), *args, FEDERATION, "--format", "json"],
            env=self.env(flwr_home),
            cwd=flwr_home,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = result.stdout.splitlines()
        first = next((i for i, line in enumerate(lines) if line.strip().startswith("{")), None)
        answer = "\n".join(lines[first:]) if first is not None else ""  # Flower prints it indented
        parsed = json.loads(answer) if answer else {}
        if result.returncode != 0 or not parsed.get("success", False):
            why = str(parsed.get("error-message", "")).splitlines()[-1:] or [(result.stdout + result.stderr)[-500:]]
            raise RuntimeStartError(f"{what} failed at the SuperLink {self.address}: {why[0].strip()}")
        return dict(parsed)

    def register(self, public_key: Path, flwr_home: Path, *, name: str | None = None) -> int:
        """Register a node's public key with the SuperLink (`flwr supernode register`); the node
        id the SuperLink gives the node that will authenticate with it."""
        named = ["--name", name] if name else []
        answer = self.flwr_json(
            ["supernode", "register", str(public_key), *named], flwr_home, what=f"registering {public_key.name}"
        )
        return int(answer["node-id"])
