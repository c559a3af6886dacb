"""The project's exceptions.

Every error a user can cause is a ``LabError``; the CLI prints its message and exits
with status 2 instead of showing a traceback.

    LabError
    ├── SpecError          the task spec (TOML) is malformed or inconsistent
    ├── DataError          a node's table is missing, unreadable or does not fit the spec
    ├── RuntimeStartError  a SuperLink or SuperNode did not start
    ├── RunFailedError     a federated run ended without a model
    ├── TrainingError      local training diverged (the loss or a weight is not finite)
    └── ModelError         a registered model cannot be found or used
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "LabError",
    "ModelError",
    "RunFailedError",
    "RuntimeStartError",
    "SpecError",
    "TrainingError",
]


class LabError(Exception):
    """A mistake the user can fix; its message says what and how."""


class SpecError(LabError):
    """The task spec is malformed or inconsistent."""


class DataError(LabError):
    """A table is missing, unreadable, or does not fit the task spec."""


class RuntimeStartError(LabError):
    """A Flower process of the lab did not start."""


class RunFailedError(LabError):
    """A federated run ended without producing a model."""


class TrainingError(LabError):
    """Local training diverged: the loss or a weight became NaN or infinite."""


class ModelError(LabError):
    """A registered model cannot be found, loaded or applied."""
