"""The project's exceptions: every error of the lab and of its Flower apps, in one tree.

Every error a user can cause is a ``LabError``; the CLI prints its message on one line and exits
with status 2 instead of showing a traceback. Anything else is a bug, kept with its traceback.

    LabError
    ├── UsageError             a command's options or arguments do not fit together
    ├── ConfigError            a file the user wrote is malformed or inconsistent
    │   ├── SpecError          the task spec
    │   ├── AgreementError     a data-use agreement
    │   ├── SettingsError      a run setting (--set, run config) is unknown, mistyped or out of range
    │   └── QueryError         an analytics query does not fit the task
    ├── DataError              a node's table is missing, unreadable or does not fit the spec
    ├── EnvironmentDriftError  an environment differs from the pinned one
    ├── Refusal                a node's agreement does not allow a message (names the clause)
    │   └── PrivacyBudgetError   a run would spend more epsilon than the node's budget allows
    ├── TrainingError          local training diverged (the loss or a weight is not finite)
    ├── MessageError           a message between coordinator and node lacks a record or value
    ├── RuntimeStartError      a SuperLink or SuperNode did not start
    ├── RunFailedError         a federated run ended without its result
    │   ├── CoordinatorLostError the coordinator (its ServerApp or SuperLink) stopped before the run's end
    │   └── UnmaskedUpdateError  a node's update reached the coordinator unmasked under SecAgg+
    └── ModelError             a registered model cannot be found, loaded or applied
"""

from __future__ import annotations

__all__ = [
    "AgreementError",
    "ConfigError",
    "CoordinatorLostError",
    "DataError",
    "EnvironmentDriftError",
    "LabError",
    "MessageError",
    "ModelError",
    "PrivacyBudgetError",
    "QueryError",
    "Refusal",
    "RunFailedError",
    "RuntimeStartError",
    "SettingsError",
    "SpecError",
    "TrainingError",
    "UnmaskedUpdateError",
    "UsageError",
]


class LabError(Exception):
    """A mistake the user can fix, or a condition they must know of; its message says what and how."""


class UsageError(LabError):
    """A command's options or arguments do not fit together."""


class ConfigError(LabError):
    """A file the user wrote is malformed or inconsistent."""


class SpecError(ConfigError):
    """The task spec is malformed or inconsistent."""


class AgreementError(ConfigError):
    """A data-use agreement is malformed or missing."""


class SettingsError(ConfigError):
    """A run setting is unknown, of the wrong type or out of range."""


class QueryError(ConfigError):
    """An analytics query names a column the task lacks, or bins or groups that cannot be used."""


class DataError(LabError):
    """A table is missing, unreadable, or does not fit the task spec."""


class EnvironmentDriftError(LabError):
    """An environment differs from the pinned one where that is not allowed."""


class Refusal(LabError):
    """A message the node's agreement does not allow; ``clause`` names the field that refused it.

    ``relayed``: ``reason`` is a refusal already worded elsewhere (a handler's error reply), kept as is.
    """

    def __init__(self, clause: str, reason: str, *, relayed: bool = False) -> None:
        super().__init__(reason if relayed else f"agreement clause {clause}: {reason}")
        self.clause = clause


class PrivacyBudgetError(Refusal):
    """A run would spend more epsilon on a node's rows than its agreement's budget allows."""


class TrainingError(LabError):
    """Local training diverged: the loss or a weight became NaN or infinite."""


class MessageError(LabError):
    """A message between coordinator and node lacks a record or a value, or holds the wrong type."""


class RuntimeStartError(LabError):
    """A Flower process of the lab did not start."""


class RunFailedError(LabError):
    """A federated run ended without producing its result."""


class CoordinatorLostError(RunFailedError):
    """The coordinator (its ServerApp or its SuperLink) stopped before the run reported its end."""


class UnmaskedUpdateError(RunFailedError):
    """A node's model update reached the coordinator unmasked in a secure-aggregation round."""


class ModelError(LabError):
    """A registered model cannot be found, loaded or applied."""
