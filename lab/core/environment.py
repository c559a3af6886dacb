"""The pinned environment: the fingerprint of a Python environment, and its difference from the lock."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import ConfigError

__all__ = ["EnvDiff", "Environment", "canonical_name"]

#: Not part of the environment: the installer, and the lab itself (its code is fingerprinted as the app).
_OUTSIDE = {"pip", "fedlab"}
_HEADER = re.compile(r"^#\s*environment:\s*python\s+(?P<python>\S+)\s+(?P<platform>\S+)\s*$", re.MULTILINE)
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(?P<version>[^\s;\\]+)")


def canonical_name(name: str) -> str:
    """A distribution name normalised as PEP 503 does (``Typing_Extensions`` -> ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class EnvDiff:
    """How one environment differs from another, package by package."""

    added: dict[str, str] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (here, expected)
    other: list[str] = field(default_factory=list)  # python or platform differences

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.other)

    def lines(self) -> list[str]:
        """One readable line per difference."""
        out = list(self.other)
        out += [f"{name}: {here} here, {wanted} in the lock" for name, (here, wanted) in sorted(self.changed.items())]
        out += [f"{name}=={version}: installed here, not in the lock" for name, version in sorted(self.added.items())]
        out += [f"{name}=={version}: in the lock, missing here" for name, version in sorted(self.removed.items())]
        return out

    def summary(self, limit: int = 5) -> str:
        """The first differences on one line, with a count of the rest."""
        lines = self.lines()
        more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more


@dataclass(frozen=True)
class Environment:
    """Python version (major.minor), platform and every installed distribution with its version.

    The fingerprint hashes all three, so two environments share it exactly when they hold the
    same packages at the same versions on the same Python and platform.
    """

    python: str
    platform: str
    packages: dict[str, str]

    @classmethod
    def current(cls) -> Environment:
        """The running interpreter's environment (the first of a name on sys.path wins, as for import).

        Read once a process: the packages a process imported cannot change under it, and scanning
        every installed distribution takes a node a fraction of a second on each reply."""
        return _current()

    @classmethod
    def from_lock(cls, text: str, *, source: str = "the lock") -> Environment:
        """The environment a lock file pins (its header names the Python and platform)."""
        header = _HEADER.search(text)
        if header is None:
            raise ConfigError(
                f"{source} has no '# environment: python X.Y PLATFORM' line; regenerate it with `make lock`"
            )
        packages = {}
        for line in text.splitlines():
            match = _PIN.match(line.strip())
            if match and canonical_name(match["name"]) not in _OUTSIDE:
                packages[canonical_name(match["name"])] = match["version"]
        if not packages:
            raise ConfigError(f"{source} pins no packages; regenerate it with `make lock`")
        return cls(header["python"], header["platform"], packages)

    @classmethod
    def from_lock_file(cls, path: Path) -> Environment:
        """Read a lock file (see ``from_lock``)."""
        try:
            return cls.from_lock(path.read_text(encoding="utf-8"), source=str(path))
        except FileNotFoundError:
            raise ConfigError(f"lock file {str(path)!r} does not exist; run `make lock`") from None

    @classmethod
    def from_pins(cls, python: str, platform: str, pins: list[str]) -> Environment:
        """Rebuild an environment sent as ``name==version`` strings."""
        packages = dict(pin.split("==", 1) for pin in pins)
        return cls(python, platform, packages)

    @property
    def pins(self) -> list[str]:
        """``name==version`` for every package, sorted."""
        return [f"{name}=={version}" for name, version in sorted(self.packages.items())]

    @property
    def fingerprint(self) -> str:
        """sha256 over the Python version, the platform and the sorted pins."""
        text = "\n".join([f"python {self.python}", f"platform {self.platform}", *self.pins]) + "\n"
        return hashlib.sha256(text.encode()).hexdigest()

    def diff(self, expected: Environment) -> EnvDiff:
        """What this environment has that ``expected`` does not, and the other way round."""
        other = []
        if self.python != expected.python:
            other.append(f"python {self.python} here, {expected.python} in the lock")
        if self.platform != expected.platform:
            other.append(f"platform {self.platform} here, {expected.platform} in the lock")
        here, wanted = self.packages, expected.packages
        return EnvDiff(
            added={n: v for n, v in here.items() if n not in wanted},
            removed={n: v for n, v in wanted.items() if n not in here},
            changed={n: (here[n], wanted[n]) for n in here.keys() & wanted.keys() if here[n] != wanted[n]},
            other=other,
        )


@functools.cache
def _current() -> Environment:
    packages: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonical_name(dist.metadata["Name"] or "")
        if name and name not in _OUTSIDE and name not in packages:
            packages[name] = dist.version
    return Environment(_python_version(), sysconfig.get_platform(), packages)
