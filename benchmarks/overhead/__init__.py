"""Benchmark: the lab's seconds per round against a bare Flower app on the same runtime (issues: benchmarks,
overhead; a warm node).

In one invocation, on one machine, on Flower's deployment runtime (1 SuperLink + 4 SuperNodes on loopback):

1. ``lab demo`` as a user runs it (four hospitals with their agreements, MLflow, the lab's ServerApp and ClientApp),
   twice, each in its own workspace: ``--node-runtime warm`` (the default: each SuperNode, started with
   ``--isolation process``, hands every message to one long-lived worker of its node, lab.runtime.worker), then
   ``--node-runtime subprocess`` (Flower's ``flwr-clientapp`` process per message); its phases and rounds come
   from the timestamps of the events its coordinator writes to the run's streamed output
   (``runs/*/flwr-run.log``, lab.contract.events);
2. the bare Flower app in ``benchmarks/bare_flower/`` (same model, data, split and hyperparameters, written as a
   Flower user would without the lab) on a ``lab.runtime.local.LocalFederation`` of Flower's process per message
   with the same four nodes' ``data-path`` and no agreements, twice: ``fraction-evaluate = 0`` (one train message
   per node per round, like the lab, whose train message also scores the received model) and ``1.0`` (Flower's
   default: train + evaluate every round); its rounds come from the timings file its ServerApp writes.

Messages are counted, not assumed: every SuperNode logs each message it receives, whatever its isolation (the
nodes' audit logs are read as a cross-check). A sampler (watch.ProcessWatch) records each ``flwr-clientapp``
process (one per message), warm worker and SuperNode: when it starts and ends, its CPU time and its peak RSS;
it also follows the SuperNodes' logs and stamps each message line with the time it appeared, which splits each
round into the wait for the SuperNode's 3 s idle poll, the nodes' work and the collection of the replies.
The result states the issue's goals (goals.GOALS) and whether each is met.

    .venv/bin/python benchmarks/overhead [--rounds 5] [--workspace DIR] [--out benchmarks/overhead.json]
                                         [--quiet-wait SECONDS]
"""

from __future__ import annotations

import os
import sys

from .paths import ROOT

sys.path.insert(0, str(ROOT))

from lab.core.environ import PRIVATE_ENV  # noqa: E402

os.environ.update(PRIVATE_ENV)  # telemetry off here and in every process started from here

from .compare import RUNTIME, measure  # noqa: E402
from .report import table  # noqa: E402

__all__ = ["RUNTIME", "measure", "table"]
