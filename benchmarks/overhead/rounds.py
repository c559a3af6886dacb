"""Rounds: how long each took, and where the time went (the wait for the SuperNodes' poll, the nodes' work,
the ClientApp processes, collect)."""

from __future__ import annotations

import statistics
from typing import Any

from .watch import LogLine, Seen

__all__ = ["message_timing", "split_rounds", "summarise"]

#: Seconds a SuperNode sleeps after asking the SuperLink for a message and getting none (hard-coded in Flower,
#: flwr.supernode.start_client_internal), and between two looks for its ClientApp's reply.
SUPERNODE_IDLE_POLL, SUPERNODE_REPLY_POLL = 3.0, 0.5


def split_rounds(
    boundaries: list[float], clientapps: list[Seen], lines: list[LogLine] | None = None
) -> list[dict[str, Any]]:
    """Each round between consecutive boundaries: its seconds, the ClientApp processes that started in it,
    the wait before the first started (dispatch), the time from the first start to the last end (span)
    and the wait after the last ended (collect); with the SuperNodes' message lines, ``message_timing`` too."""
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
        if lines is not None:
            row |= message_timing(begin, end, [line for line in lines if begin <= line.time < end])
        rounds.append(row)
    return rounds


def message_timing(begin: float, end: float, lines: list[LogLine]) -> dict[str, Any]:
    """One round from the times its SuperNodes logged its messages (as the sampler saw the lines appear):

    - ``poll_wait``: from the round's start (the ServerApp pushes its messages right after the previous
      round's aggregate) until a node's SuperNode pulls its first message, mean over the nodes; its next
      idle poll is up to ``SUPERNODE_IDLE_POLL`` s away. ``poll_wait_last``: the node that pulled last;
    - ``node_seconds``: a node's first pull to its last reply pushed (the worker or the ClientApp process
      acquiring the task and answering it, and the SuperNode's look for the reply every 0.5 s), mean;
    - ``after_last_reply``: the last reply pushed to the round's end (the ServerApp reading the replies
      and aggregating them).
    """
    pulled: dict[str, float] = {}
    replied: dict[str, float] = {}
    for line in lines:
        if line.direction == "Receiving":
            pulled.setdefault(line.node, line.time - begin)
        else:
            replied[line.node] = line.time
    if not pulled:
        return {}
    row: dict[str, Any] = {
        "poll_wait": statistics.fmean(pulled.values()),
        "poll_wait_last": max(pulled.values()),
        "poll_wait_by_node": {node: round(wait, 3) for node, wait in sorted(pulled.items())},
    }
    answered = [replied[n] - begin - pulled[n] for n in pulled if n in replied]
    if answered:
        row |= {"node_seconds": statistics.fmean(answered), "after_last_reply": end - max(replied.values())}
    return row


def summarise(rounds: list[dict[str, Any]], nodes: int) -> dict[str, Any]:
    """Mean over the rounds of every figure of ``split_rounds``."""
    keys = (
        "seconds",
        "dispatch",
        "span",
        "collect",
        "clientapp_seconds",
        "clientapp_cpu_seconds",
        "poll_wait",
        "poll_wait_last",
        "node_seconds",
        "after_last_reply",
    )
    mean = {k: statistics.fmean(r[k] for r in rounds if k in r) for k in keys if any(k in r for r in rounds)}
    return {
        "seconds_per_round": mean.pop("seconds"),
        "seconds_each_round": [r["seconds"] for r in rounds],
        "clientapps_per_node_per_round": statistics.fmean(r["clientapps"] for r in rounds) / nodes,
        "per_round": mean,
        "rounds": rounds,
    }
