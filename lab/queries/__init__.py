"""The kinds of query a run can put to the nodes, one module each, and the table the apps use.

Every module of this package that defines ``KIND`` (a ``QueryKind``) is a kind: the ClientApp
answers its message type and the ServerApp runs its coordinator's side when a run's ``query``
setting names it. Adding a kind is adding a module here (and a command to send it).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from lab.queries.base import QueryKind

__all__ = ["KINDS", "QueryKind", "kind_named"]


def _discover() -> dict[str, QueryKind[Any]]:
    kinds: dict[str, QueryKind[Any]] = {}
    for module in pkgutil.iter_modules(__path__):
        kind = getattr(importlib.import_module(f"{__name__}.{module.name}"), "KIND", None)
        if isinstance(kind, QueryKind):
            kinds[kind.name] = kind
    return kinds


#: Every kind by name: prepare (a training run's first step), catalog (`lab check`), stats (`lab stats`).
KINDS: dict[str, QueryKind[Any]] = _discover()


def kind_named(name: str) -> QueryKind[Any]:
    """The kind called ``name``; an error listing the known ones otherwise."""
    from lab.errors import SettingsError

    if name not in KINDS:
        raise SettingsError(f"run setting query = {name!r} is not a kind of query; choose from {sorted(KINDS)!r}")
    return KINDS[name]
