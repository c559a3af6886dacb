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
    """A mistake the user can fix, or a condition they must know of; its message says what and how.

    ``public``: what a node may say of it to the coordinator, where the message itself names what
    must stay on the node (a file path, a database URL, a cell's value, its line); None: the
    message may leave as it is.
    """

    def __init__(self, *args: object, public: str | None = None) -> None:
        super().__init__(*args)
        self.public = public

    def off_node(self) -> str:
        """What a node's error reply says of this error."""
        return self.public if self.public is not None else str(self)


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
    """A table is missing, unreadable, or does not fit the task spec (its message may name the
    file, a line and a value: off the node it says only what ``public`` says)."""

    def off_node(self) -> str:
        return self.public or "the node's table cannot be used for this task; its operator sees why in the node's log"


class EnvironmentDriftError(LabError):
    """An environment differs from the pinned one where that is not allowed."""


class Refusal(LabError):
    """A message the node does not answer; ``clause`` names the agreement's field that refused it
    (``allow.metrics``, ``limits.min-batch-size``), or the node's own rule: ``agreement`` (it holds
    none), ``plan`` (the message departs from the run's booked plan), ``secure-aggregation`` (a
    SecAgg+ message the node cannot trust).

    ``relayed``: ``reason`` is a refusal already worded elsewhere (a handler's error reply), kept as is.
    ``public``: the coarse reason a node says off-node where ``reason`` holds a figure of its data
    (a row count); the details stay in its log and audit log.
    """

    def __init__(self, clause: str, reason: str, *, relayed: bool = False, public: str | None = None) -> None:
        of_agreement = clause.partition(".")[0] in ("agreement", "tasks", "allow", "limits") and "." in clause
        named = f"agreement clause {clause}" if of_agreement or clause == "tasks" else f"rule {clause}"
        seen = f"{named}: {public} (its operator sees the details in the node's log)" if public else None
        super().__init__(reason if relayed else f"{named}: {reason}", public=seen)
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
