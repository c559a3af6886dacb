"""How the ``flwr`` command reaches a SuperLink's Control API: its address and the CA it trusts.

Every ``flwr`` command the lab runs gets its own Flower home holding only this connection, so the
default local connection (which would start a detached SuperLink of its own) is never used.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

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

    def register(self, public_key: Path, flwr_home: Path) -> None:
        """Register a node's public key with the SuperLink (`flwr supernode register`)."""
        result = subprocess.run(
            [executable("flwr"), "supernode", "register", str(public_key), FEDERATION],
            env=self.env(flwr_home),
            cwd=flwr_home,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeStartError(
                f"registering {public_key.name} with the SuperLink failed: "
                f"{(result.stdout + result.stderr).strip()[-500:]}"
            )
