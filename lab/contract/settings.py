"""The run's settings: one typed object from the command line to the coordinator, its only defaults.

The CLI builds a ``RunSettings``, the runtime turns it into Flower's run config once
(``to_run_config``), and the ServerApp reads it back (``from_run_config``). Flower also needs
every key under ``[tool.flwr.app.config]`` in pyproject.toml; a test holds that copy to the
defaults here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from lab.contract.strategies import STRATEGIES
from lab.errors import SettingsError

__all__ = ["FILLED_IN", "MAX_BATCH_SIZE", "MAX_LEARNING_RATE", "MAX_LOCAL_STEPS", "RunSettings", "TYPES"]

#: The most minibatch updates and rows per minibatch a round may ask of a node: a run setting
#: beyond them is refused by the coordinator, and a message beyond them by the node (a message
#: cannot keep a node busy for days).
MAX_LOCAL_STEPS = 100_000
MAX_BATCH_SIZE = 100_000
MAX_LEARNING_RATE = 1_000.0  # beyond it an SGD step overflows float32

#: Python type of each setting's values, by field name.
TYPES: dict[str, type] = {}

#: Settings the lab fills in itself; a user does not set them.
FILLED_IN = frozenset(
    {
        "task_spec",
        "tracking_uri",
        "expected_nodes",
        "environment_lock",
        "code_version",
        "query",
        "query_request",
        "admitted_nodes",
        "resume_run",
    }
)


def _setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class RunSettings:
    """Settings of one federated run. Each field's ``doc`` says what it does; its default is the
    field's default (``RunSettings().num_rounds``, or ``lab run --help``)."""

    task_spec: str = _setting("", "the task spec's TOML text (`lab run --spec` fills it in)")
    strategy: str = _setting("fedavg", "how the coordinator aggregates: " + ", ".join(STRATEGIES))
    secure_aggregation: bool = _setting(False, "SecAgg+: the coordinator sees only the sum of the updates")
    num_rounds: int = _setting(5, "federated rounds")
    local_steps: int = _setting(100, "minibatch updates per node per round")
    batch_size: int = _setting(16, "rows per minibatch (nodes refuse fewer than their limits.min-batch-size)")
    learning_rate: float = _setting(0.05, "the nodes' SGD learning rate")
    proximal_mu: float = _setting(0.1, "FedProx's proximal term weight")
    server_learning_rate: float = _setting(0.1, "FedAdam's and FedYogi's server step size")
    trim_fraction: float = _setting(0.2, "FedTrimmedAvg's share of nodes cut at each end of every coordinate")
    byzantine_nodes: int = _setting(0, "Krum's and MultiKrum's number of nodes assumed malicious")
    krum_selected: int = _setting(2, "MultiKrum's number of nodes whose models are averaged")
    clip_update_norm: float = _setting(
        0.0, "> 0: the coordinator scales every node's update (its model minus the global one) to this L2 norm at most"
    )
    seed: int = _setting(42, "seed of the initial model, the nodes' minibatches and baselines")
    min_nodes: int = _setting(2, "the run fails if fewer nodes take part")
    expected_nodes: int = _setting(0, "nodes to wait for before starting (0: min-nodes)")
    node_wait_seconds: float = _setting(180.0, "longest wait for the expected nodes to connect")
    baseline_epochs: int = _setting(50, "epochs of each node's local-only baseline (Adam, lr 0.001)")
    tracking_uri: str = _setting("", "MLflow tracking URI; empty: the run is not tracked")
    experiment: str = _setting("", "MLflow experiment; empty: the spec's name")
    environment_lock: str = _setting("", "the pinned environment's lock text (`lab run` fills it in)")
    round_timeout: float = _setting(600.0, "seconds to wait for the nodes' replies in one round")
    tracking_timeout: float = _setting(60.0, "seconds the coordinator retries a tracking store it cannot reach")
    environment_policy: str = _setting("strict", "strict: nodes that differ from the lock are left out; warn: flagged")
    query: str = _setting("", "a query kind instead of training (catalog, stats; `lab check`, `lab stats`)")
    query_request: str = _setting("", "the query's request as JSON (its command fills it in)")
    code_version: str = _setting("", "the project's git commit (`lab run` fills it in)")
    admitted_nodes: str = _setting(
        "", "node id -> admitted name (JSON): the ServerApp fills it in from its roster, whatever the run config says"
    )
    only_nodes: str = _setting("", "NAME,NAME: only these admitted nodes take part (empty: every connected node)")
    register: bool = _setting(True, "register the final model with the alias champion")
    contributions: bool = _setting(
        False, "value each node's data after training (Shapley, leave-one-out): nodes score subsets' models"
    )
    resume_run: str = _setting("", "MLflow run id this run continues from its last checkpoint (`lab run --resume`)")
    dp_noise_multiplier: float = _setting(0.0, "> 0: every node trains with DP-SGD (Opacus) at this noise")
    dp_target_epsilon: float = _setting(0.0, "> 0: each node picks the noise that keeps the run within it")
    dp_clipping_norm: float = _setting(1.0, "per-record gradient clipping (L2)")
    dp_delta: float = _setting(1e-5, "delta of the reported and budgeted epsilon")

    @property
    def admitted(self) -> dict[int, str]:
        """The admitted name of every node id (empty when the federation does not authenticate nodes)."""
        return {int(k): str(v) for k, v in json.loads(self.admitted_nodes).items()} if self.admitted_nodes else {}

    @property
    def differential_privacy(self) -> bool:
        """Whether nodes train with DP-SGD."""
        return self.dp_noise_multiplier > 0 or self.dp_target_epsilon > 0

    @staticmethod
    def key(name: str) -> str:
        """A field's key in Flower's run config and on the command line (kebab-case)."""
        return name.replace("_", "-")

    @classmethod
    def user_keys(cls) -> list[str]:
        """Keys a user may give with ``--set`` (the lab fills in the others)."""
        return [cls.key(f.name) for f in fields(cls) if f.name not in FILLED_IN]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every key with its default, as ``[tool.flwr.app.config]`` must list it."""
        return {cls.key(f.name): f.default for f in fields(cls) if f.default is not MISSING}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunSettings:
        """Validate Flower's run config (kebab-case keys) into settings."""
        values = {name: _typed(name, run_config[cls.key(name)]) for name in TYPES if cls.key(name) in run_config}
        settings = cls(**values)
        settings.check()
        return settings

    def to_run_config(self) -> dict[str, Any]:
        """Flower's run config for these settings (every key)."""
        return {self.key(name): value for name, value in asdict(self).items()}

    def with_values(self, values: Mapping[str, Any], *, source: str = "run settings") -> RunSettings:
        """These settings with ``values`` (by field name, ``num_rounds``; typed, or as text) replaced, checked."""
        updates = {}
        for name, value in values.items():
            if name not in TYPES:
                known = sorted(f.name for f in fields(self) if f.name not in FILLED_IN)
                raise SettingsError(f"{source}: unknown run setting {name!r}; known: {known!r}")
            updates[name] = _typed(name, value, source=source)
        updated = replace(self, **updates)
        updated.check()
        return updated

    @classmethod
    def field_of(cls, key: str, *, source: str = "--set") -> str:
        """The field a user's key names (kebab-case, ``num-rounds``, as ``--set`` and the run
        config write it): the one place the command line's key style is read."""
        name = key.replace("-", "_")
        if "_" in key or name not in TYPES:
            raise SettingsError(f"{source}: unknown run setting {key!r}; known: {sorted(cls.user_keys())!r}")
        return name

    def check(self) -> None:
        """Raise SettingsError naming the first setting out of range."""
        if not self.task_spec.strip():
            raise SettingsError("run setting task-spec is empty; `lab run --spec FILE` fills it in")
        if self.environment_policy not in ("strict", "warn"):
            raise SettingsError(f"run setting environment-policy = {self.environment_policy!r}; choose strict or warn")
        if self.strategy not in STRATEGIES:
            raise SettingsError(f"run setting strategy = {self.strategy!r}; choose one of {list(STRATEGIES)!r}")
        kind = STRATEGIES[self.strategy]
        if self.secure_aggregation and (not kind.secure_aggregation or self.min_nodes < 2):
            allowed = " or ".join(f"strategy = {name!r}" for name, k in STRATEGIES.items() if k.secure_aggregation)
            raise SettingsError(
                f"run setting secure-aggregation = true needs {allowed} and min-nodes >= 2 (Flower's "
                f"SecAgg+ runs on its legacy FedAvg); got strategy = {self.strategy!r}, min-nodes = {self.min_nodes}"
            )
        if self.secure_aggregation and self.contributions:
            raise SettingsError(
                "run setting contributions = true cannot go with secure-aggregation = true: contributions are "
                "valued from each node's own updates, which SecAgg+ hides from the coordinator; drop one of them"
            )
        for name in ("num_rounds", "local_steps", "batch_size", "min_nodes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"run setting {self.key(name)} = {getattr(self, name)!r}; give 1 or more")
        for name, most in (
            ("local_steps", MAX_LOCAL_STEPS),
            ("batch_size", MAX_BATCH_SIZE),
            ("learning_rate", MAX_LEARNING_RATE),
        ):
            if getattr(self, name) > most:
                raise SettingsError(
                    f"run setting {self.key(name)} = {getattr(self, name)!r}; give at most {most:,} (nodes refuse more)"
                )
        for name in ("learning_rate", "server_learning_rate", "round_timeout", "tracking_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"run setting {self.key(name)} = {getattr(self, name)!r}; give a positive number")
        if not 0 <= self.trim_fraction < 0.5:
            raise SettingsError(f"run setting trim-fraction = {self.trim_fraction!r}; give a share from 0 to below 0.5")
        for name in ("byzantine_nodes", "clip_update_norm"):
            if getattr(self, name) < 0:
                raise SettingsError(f"run setting {self.key(name)} = {getattr(self, name)!r}; give 0 or more")
        if self.krum_selected < 1:
            raise SettingsError(f"run setting krum-selected = {self.krum_selected!r}; give 1 or more")
        for name in ("dp_noise_multiplier", "dp_target_epsilon"):
            if getattr(self, name) < 0:
                raise SettingsError(f"run setting {self.key(name)} = {getattr(self, name)!r}; give 0 (off) or more")
        if self.dp_clipping_norm <= 0:
            raise SettingsError(f"run setting dp-clipping-norm = {self.dp_clipping_norm!r}; give a positive norm")
        if not 0 < self.dp_delta < 1:
            raise SettingsError(f"run setting dp-delta = {self.dp_delta!r}; give a probability like 1e-5")
        if self.differential_privacy and not kind.differential_privacy:
            private = [name for name, k in STRATEGIES.items() if k.differential_privacy]
            raise SettingsError(
                f"run setting strategy = {self.strategy!r} with differential privacy: {kind.why_not_private}; "
                f"choose one of {private!r}"
            )

    def as_params(self) -> dict[str, Any]:
        """The settings worth recording as MLflow params (not the texts the lab fills in)."""
        hidden = {"task_spec", "tracking_uri", "environment_lock", "query_request", "resume_run"}
        return {k: v for k, v in asdict(self).items() if k not in hidden}


TYPES.update({f.name: type(f.default) for f in fields(RunSettings)})


def _typed(name: str, value: Any, *, source: str = "run config") -> Any:
    """``value`` as the setting's type; text (from the command line) is parsed as that type."""
    kind = TYPES[name]
    key = RunSettings.key(name)
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text not in ("true", "false"):
                    raise ValueError(text)
                return text == "true"
            return kind(text)
        except ValueError:
            raise SettingsError(f"{source}: run setting {key} = {value!r} should be a {kind.__name__}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SettingsError(f"{source}: run setting {key} = {value!r} should be a {kind.__name__}")
    return value
