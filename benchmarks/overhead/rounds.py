"""Rounds: how long each took, and where the time went (dispatch, ClientApp processes, collect)."""

from __future__ import annotations

import statistics
from typing import Any

from .watch import Seen

__all__ = ["split_rounds", "summarise"]


def split_rounds(boundaries: list[float], clientapps: list[Seen]) -> list[dict[str, Any]]:
    """Each round between consecutive boundaries: its seconds, the ClientApp processes that started in it,
    the wait before the first started (dispatch), the time from the first start to the last end (span)
    and the wait after the last ended (collect)."""
    rounds = []
    for number, (begin, end) in enumerate(zip(boundaries, boundaries[1:], strict=False), start=1):
        inside = [p for p in clientapps if begin <= p.start < end]
        row: dict[str, Any] = {"round": number, "seconds": end - begin, "clientapps": len(inside)}
        if inside:
            first, last = min(p.start for p in inside), max(p.end for p in inside)
            row |= {
                "dispatch": first - begin,
                "span": last - first,
                "collect": end - last,
                "clientapp_seconds": statistics.fmean(p.end - p.start for p in inside),
                "clientapp_cpu_seconds": statistics.fmean(p.cpu for p in inside),
            }
        rounds.append(row)
    return rounds


def summarise(rounds: list[dict[str, Any]], nodes: int) -> dict[str, Any]:
    """Mean over the rounds of every figure of ``split_rounds``."""
    keys = ("seconds", "dispatch", "span", "collect", "clientapp_seconds", "clientapp_cpu_seconds")
    mean = {k: statistics.fmean(r[k] for r in rounds if k in r) for k in keys if any(k in r for r in rounds)}
    return {
        "seconds_per_round": mean.pop("seconds"),
        "seconds_each_round": [r["seconds"] for r in rounds],
        "clientapps_per_node_per_round": statistics.fmean(r["clientapps"] for r in rounds) / nodes,
        "per_round": mean,
        "rounds": rounds,
    }
