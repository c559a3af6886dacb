"""What answering a message costs a node: CPU seconds per message and peak memory, from the sampler."""

from __future__ import annotations

import statistics
from typing import Any

from .watch import NODE_KINDS, ProcessWatch, Seen

__all__ = ["node_costs"]

MB = 2**20


def node_costs(
    watch: ProcessWatch, *, since: float, until: float, messages: int, runtime: str, clientapps: list[Seen]
) -> dict[str, Any]:
    """CPU seconds per message and peak RSS per node of one run whose rounds span [since, until] and whose nodes
    answered ``messages`` messages in them (``clientapps``: the run's ClientApp processes, if any).

    - ``cpu_seconds_per_message``: on the warm runtime the CPU time the node workers spent during the rounds
      (idle polling of their SuperNode included) over the messages they answered; on a process-per-message
      runtime the ClientApp processes' mean CPU time (each answers one message);
    - ``supernode_cpu_seconds_per_message``: the CPU time of the nodes' own Flower processes during the rounds
      (SuperNode, and its SuperExec with ``--isolation subprocess``) over the same messages;
    - ``peak_rss_mb``: per node, the largest RSS sampled of its worker, or of its largest ClientApp process
      (``app``), and of its SuperNode plus SuperExec (``supernode``, the sum of their peaks over their life,
      which for the bare app's federation spans both of its runs).
    """
    per_message = max(messages, 1)
    app_kind = "worker" if runtime == "warm" else "clientapp"
    supernodes = watch.alive(NODE_KINDS, since, until)
    if app_kind == "worker":
        workers = watch.alive(("worker",), since, until)
        app_cpu = sum(p.cpu_between(since, until) for p in workers) / per_message if workers else None
        apps = workers
    else:
        inside = [p for p in clientapps if since <= p.start < until]
        app_cpu = statistics.fmean(p.cpu for p in inside) if inside else None
        apps = clientapps  # those of the preparation and the final evaluation too
    app_peak: dict[str, float] = {}
    for p in apps:
        app_peak[p.node] = max(app_peak.get(p.node, 0.0), p.rss_peak / MB)
    node_peak: dict[str, float] = {}
    for p in supernodes:
        node_peak[p.node] = node_peak.get(p.node, 0.0) + p.rss_peak / MB
    return {
        "runtime": runtime,
        "app_process": app_kind,
        "messages_in_rounds": messages,
        "cpu_seconds_per_message": app_cpu,
        "supernode_cpu_seconds_per_message": (
            sum(p.cpu_between(since, until) for p in supernodes) / per_message if supernodes else None
        ),
        "peak_rss_mb": {"app": _rounded(app_peak), "supernode": _rounded(node_peak)},
        "peak_rss_mb_per_node": {
            "app": max(app_peak.values(), default=None),
            "supernode": max(node_peak.values(), default=None),
        },
        "workers": len(watch.alive(("worker",), since, until)),
    }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in sorted(values.items())}
