"""The run report's figures: round curves and contributions, as PNG images in base64 for inline HTML."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

__all__ = ["PALETTE", "contributions_chart", "round_curves"]

#: One colour per node, in the order the report lists them (Okabe-Ito, readable by colour-blind readers).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MEAN_COLOUR = "#222222"

Curve = Sequence[tuple[int, float]]


def round_curves(
    metric: str,
    per_node: Mapping[str, Curve],
    mean: Curve,
    loss: Curve,
    loss_per_node: Mapping[str, Curve],
    *,
    no_loss: str = "not recorded for this run",
) -> str:
    """``metric`` by round for each node and their mean, beside the training loss (the run's
    weighted loss, and each node's where it reported one); a base64 PNG.

    ``no_loss`` is written in the loss's panel when no node reported one."""
    figure = Figure(figsize=(11, 3.8), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2)
    for i, (node, curve) in enumerate(per_node.items()):
        _plot(left, curve, label=node, color=PALETTE[i % len(PALETTE)], marker="o")
    _plot(left, mean, label="mean", color=MEAN_COLOUR, marker="s", linewidth=2.5, linestyle="--")
    left.set_title(f"{metric} of the global model at each node")
    left.set_xlabel("round (0: the initial model)")
    left.set_ylabel(metric)
    for i, node in enumerate(per_node):
        if node in loss_per_node:
            _plot(right, loss_per_node[node], label=node, color=PALETTE[i % len(PALETTE)], marker="o", alpha=0.8)
    _plot(right, loss, label="all nodes (weighted)", color=MEAN_COLOUR, marker="s", linewidth=2.5, linestyle="--")
    right.set_title("training loss")
    right.set_xlabel("round")
    right.set_ylabel("loss")
    for axes, missing in ((left, "not recorded for this run"), (right, no_loss)):
        axes.grid(alpha=0.3)
        if axes.has_data():
            axes.legend(fontsize=8, frameon=False)
            axes.xaxis.get_major_locator().set_params(integer=True)
        else:
            axes.set_xticks([])
            axes.set_yticks([])
            axes.text(0.5, 0.5, missing, ha="center", va="center", wrap=True, transform=axes.transAxes)
    return _png(figure)


def contributions_chart(
    shapley: Mapping[str, float], errors: Mapping[str, float | None], leave_one_out: Mapping[str, float]
) -> str:
    """Each node's Shapley value (with its standard error when estimated) beside its leave-one-out
    value, as horizontal bars; a base64 PNG."""
    nodes = list(shapley)
    figure = Figure(figsize=(5.6, 0.5 * len(nodes) + 1.3), dpi=110, layout="constrained")
    axes = figure.subplots()
    height = 0.38
    positions = range(len(nodes))
    spread = [e if e is not None and math.isfinite(e) else 0.0 for e in (errors.get(n) for n in nodes)]
    axes.barh(
        [p - height / 2 for p in positions],
        [shapley[n] for n in nodes],
        height,
        xerr=spread if any(spread) else None,
        color=PALETTE[0],
        label="Shapley value",
        capsize=3,
    )
    axes.barh(
        [p + height / 2 for p in positions],
        [leave_one_out.get(n, math.nan) for n in nodes],
        height,
        color=PALETTE[1],
        label="leave-one-out",
    )
    axes.set_yticks(list(positions), nodes)
    axes.invert_yaxis()
    axes.axvline(0, color="#444444", linewidth=0.8)
    axes.grid(axis="x", alpha=0.3)
    axes.legend(fontsize=8, frameon=False, loc="lower right")
    axes.set_xlabel("contribution to the utility")
    return _png(figure)


def _plot(axes: object, curve: Curve, **style: object) -> None:
    if curve:
        steps, values = zip(*curve, strict=True)
        axes.plot(steps, values, **style)  # type: ignore[attr-defined]


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
