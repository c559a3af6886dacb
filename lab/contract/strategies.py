"""The strategies a run can use: one table from which the settings' checks, the CLI's choices and
help, and the coordinator's strategy object are all derived.

Each row names a strategy of ``flwr.serverapp.strategy`` and the run settings it reads (passed
to it under Flower's own argument names), and says whether differential privacy and SecAgg+ go
with it. Adding a strategy is adding a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwr.serverapp.strategy import FedAvg

__all__ = ["STRATEGIES", "StrategyKind"]


@dataclass(frozen=True)
class StrategyKind:
    """One strategy: Flower's class, what it reads from the run settings, what may go with it."""

    name: str
    summary: str
    flower_class: str  # a class of flwr.serverapp.strategy
    reads: dict[str, str] = field(default_factory=dict)  # run setting (field name) -> Flower's argument
    differential_privacy: bool = True
    secure_aggregation: bool = False
    why_not_private: str = ""

    def build(self, settings: Any, **arguments: Any) -> FedAvg:
        """Flower's strategy object, given the run settings and the arguments every strategy takes."""
        from flwr.serverapp import strategy

        cls = getattr(strategy, self.flower_class)
        own = {flower: getattr(settings, name) for name, flower in self.reads.items()}
        return cls(**arguments, **own)  # type: ignore[no-any-return]


STRATEGIES: dict[str, StrategyKind] = {
    kind.name: kind
    for kind in (
        StrategyKind(
            "fedavg",
            "federated averaging of the nodes' models, weighted by their training rows",
            "FedAvg",
            secure_aggregation=True,
        ),
        StrategyKind(
            "fedprox",
            "FedAvg with a proximal term pulling each node's model towards the global one",
            "FedProx",
            reads={"proximal_mu": "proximal_mu"},
            differential_privacy=False,
            why_not_private="the proximal term is not clipped per record",
        ),
        StrategyKind(
            "fedadam",
            "the averaged update applied by a server-side Adam",
            "FedAdam",
            reads={"server_learning_rate": "eta", "learning_rate": "eta_l"},
        ),
        StrategyKind(
            "fedyogi",
            "the averaged update applied by a server-side Yogi",
            "FedYogi",
            reads={"server_learning_rate": "eta", "learning_rate": "eta_l"},
        ),
        # Robust to a node that sends an outlying update (a scaled one, to take the model over).
        StrategyKind(
            "fedmedian",
            "the coordinate-wise median of the nodes' models, unmoved by one outlying update",
            "FedMedian",
        ),
        StrategyKind(
            "fedtrimmedavg",
            "the mean of each coordinate after trim-fraction of the highest and lowest nodes' values are cut",
            "FedTrimmedAvg",
            reads={"trim_fraction": "beta"},
        ),
        StrategyKind(
            "krum",
            "the one node's model closest to the others (Krum), byzantine-nodes of them assumed malicious",
            "Krum",
            reads={"byzantine_nodes": "num_malicious_nodes"},
        ),
        StrategyKind(
            "multikrum",
            "the average of the krum-selected nodes' models closest to the others (MultiKrum)",
            "MultiKrum",
            reads={"byzantine_nodes": "num_malicious_nodes", "krum_selected": "num_nodes_to_select"},
        ),
    )
}
