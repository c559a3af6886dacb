"""The run's settings, read once from Flower's run config into a typed object."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from lab.errors import LabError

__all__ = ["STRATEGIES", "RunSettings"]

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi")


@dataclass(frozen=True)
class RunSettings:
    """Settings of one federated run (``[tool.flwr.app.config]`` in pyproject.toml).

    Parameters
    ----------
    task_spec : str
        The task spec's TOML text.
    strategy : str (default: "fedavg")
        One of ``fedavg``, ``fedprox``, ``fedadam``, ``fedyogi``.
    secure_aggregation : bool (default: False)
        Train with Flower's SecAgg+: the coordinator sees only the sum of the nodes' updates,
        never one node's (federation.secure_aggregation). FedAvg only; needs 2 or more nodes.
    num_rounds : int (default: 5)
        Federated rounds.
    local_steps : int (default: 100)
        Minibatch updates each node makes per round.
    batch_size : int (default: 4)
    learning_rate : float (default: 0.05)
        The nodes' SGD learning rate.
    proximal_mu : float (default: 0.1)
        FedProx's proximal term weight.
    server_learning_rate : float (default: 0.1)
        FedAdam's and FedYogi's server step size (eta).
    seed : int (default: 42)
    min_nodes : int (default: 2)
        Fewest nodes whose replies are aggregated; fewer and the run fails.
    expected_nodes : int (default: 0)
        Nodes to wait for before starting (0: ``min_nodes``).
    node_wait_seconds : float (default: 180)
        Longest wait for the expected nodes to connect; the run starts as soon as they have.
    baseline_epochs : int (default: 50)
    tracking_uri, experiment, events_file : str (default: "")
        Where the coordinator records the run, and where it writes progress events.
    environment_lock : str (default: "")
        The pinned environment's lock text, logged with the run and the model.
    round_timeout : float (default: 600)
        Seconds to wait for the nodes' replies in one round.
    environment_policy : str (default: "strict")
        ``strict``: a node whose environment differs from the lock is not aggregated and is told
        why; ``warn``: it is aggregated and the run is flagged.
    mode : str (default: "train")
        ``train`` runs the federation; ``check`` only asks every node for its catalog and checks
        its table against the spec (`lab check`); ``stats`` runs the federated analytics query in
        ``stats_request`` (`lab stats`).
    stats_request : str (default: "")
        The analytics query as JSON (lab.core.analytics.StatsRequest), for ``mode = "stats"``.
    code_version : str (default: "")
        The project's git commit, recorded with the run (`lab run` fills it in).
    register : bool (default: True)
    dp_noise_multiplier : float (default: 0)
        Differential privacy: each node trains with DP-SGD (Opacus) at this noise multiplier;
        0 with ``dp_target_epsilon`` 0 trains without DP.
    dp_target_epsilon : float (default: 0)
        Instead of a noise multiplier: each node picks the least noise that keeps the whole run
        within this epsilon at its own sampling rate.
    dp_clipping_norm : float (default: 1.0)
        Each record's gradient is clipped to this L2 norm.
    dp_delta : float (default: 1e-5)
        The delta at which each node's epsilon is reported and budgeted.
    """

    task_spec: str
    strategy: str = "fedavg"
    secure_aggregation: bool = False
    num_rounds: int = 5
    local_steps: int = 100
    batch_size: int = 4
    learning_rate: float = 0.05
    proximal_mu: float = 0.1
    server_learning_rate: float = 0.1
    seed: int = 42
    min_nodes: int = 2
    expected_nodes: int = 0
    node_wait_seconds: float = 180.0
    baseline_epochs: int = 50
    tracking_uri: str = ""
    experiment: str = ""
    events_file: str = ""
    environment_lock: str = ""
    round_timeout: float = 600.0
    environment_policy: str = "strict"
    mode: str = "train"
    stats_request: str = ""
    code_version: str = ""
    register: bool = True
    dp_noise_multiplier: float = 0.0
    dp_target_epsilon: float = 0.0
    dp_clipping_norm: float = 1.0
    dp_delta: float = 1e-5

    @property
    def differential_privacy(self) -> bool:
        """Whether nodes train with DP-SGD."""
        return self.dp_noise_multiplier > 0 or self.dp_target_epsilon > 0

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunSettings:
        """Validate Flower's run config (kebab-case keys) into settings."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in run_config:
                continue
            value = run_config[key]
            kind = {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise LabError(f"run setting {key} = {value!r} should be a {kind.__name__}")
            values[f.name] = value
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Raise LabError naming the first setting out of range."""
        if self.environment_policy not in ("strict", "warn"):
            raise LabError(f"run setting environment-policy = {self.environment_policy!r}; choose strict or warn")
        if self.mode not in ("train", "check", "stats"):
            raise LabError(f"run setting mode = {self.mode!r}; choose train, check or stats")
        if self.mode == "stats" and not self.stats_request:
            raise LabError("run setting stats-request is empty; `lab stats` fills it in")
        if self.strategy not in STRATEGIES:
            raise LabError(f"run setting strategy = {self.strategy!r}; choose one of {list(STRATEGIES)!r}")
        if self.secure_aggregation and (self.strategy != "fedavg" or self.min_nodes < 2):
            raise LabError(
                "run setting secure-aggregation = true needs strategy = 'fedavg' and min-nodes >= 2 (Flower's "
                f"SecAgg+ runs on its legacy FedAvg); got strategy = {self.strategy!r}, min-nodes = {self.min_nodes}"
            )
        if not self.task_spec.strip():
            raise LabError("run setting task-spec is empty; `lab run --spec FILE` fills it in")
        for name in ("num_rounds", "local_steps", "batch_size", "min_nodes"):
            if getattr(self, name) < 1:
                raise LabError(f"run setting {name.replace('_', '-')} = {getattr(self, name)!r}; give 1 or more")
        for name in ("learning_rate", "server_learning_rate"):
            if getattr(self, name) <= 0:
                raise LabError(
                    f"run setting {name.replace('_', '-')} = {getattr(self, name)!r}; give a positive number"
                )
        self._check_privacy()

    def _check_privacy(self) -> None:
        for name in ("dp_noise_multiplier", "dp_target_epsilon"):
            if getattr(self, name) < 0:
                raise LabError(f"run setting {name.replace('_', '-')} = {getattr(self, name)!r}; give 0 (off) or more")
        if self.dp_clipping_norm <= 0:
            raise LabError(f"run setting dp-clipping-norm = {self.dp_clipping_norm!r}; give a positive norm")
        if not 0 < self.dp_delta < 1:
            raise LabError(f"run setting dp-delta = {self.dp_delta!r}; give a probability like 1e-5")
        if self.differential_privacy and self.strategy == "fedprox":
            raise LabError(
                "run setting strategy = 'fedprox' with differential privacy: the proximal term is not "
                "clipped per record; choose fedavg, fedadam or fedyogi"
            )

    def as_params(self) -> dict[str, Any]:
        """The settings worth recording as MLflow params (not the spec text itself)."""
        hidden = {"task_spec", "tracking_uri", "events_file", "environment_lock", "stats_request"}
        return {k: v for k, v in asdict(self).items() if k not in hidden}
