"""A curious coordinator's own ServerApp: it runs at the coordinator under the approved app's hash
(the nodes see the lab's FAB, which their agreements approve) and plays the issue's attacks on the
nodes through Flower's real grid, reporting what each node answered with the lab's progress events.

`tests/attacks/test_curious_coordinator_e2e.py` puts it in place of the lab's ServerApp with a
``flwr-serverapp`` of its own first on the coordinator's PATH: what a coordinator that owns its
SuperLink can do.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from federation.grid import PromptGrid
from lab.contract import events, keys
from lab.contract.messages import Candidates, Instructions, QueryMessage
from lab.contract.plan import RunPlan
from lab.contract.records import error_reason
from lab.contract.settings import RunSettings
from lab.core.model import build_model
from lab.core.spec import parse_spec
from lab.queries.prepare import PrepareRequest

app = ServerApp()

ONE_ROW = RunPlan(rounds=1, local_steps=1, batch_size=1, learning_rate=1.0, scored_rounds=1)
HONEST = RunPlan(rounds=5, local_steps=100, batch_size=16, learning_rate=0.05, scored_rounds=5, contributions=True,
                 nodes=2)  # fmt: skip


def _said(reply: Message) -> str:
    return error_reason(reply) if reply.has_error() else "answered"


@app.main()
def main(grid: Grid, context: Context) -> None:
    grid = PromptGrid(grid)  # replies read within 0.2 s (the lab's own grid does so too)
    settings = RunSettings.from_run_config(dict(context.run_config))
    spec = parse_spec(settings.task_spec, source="the run's task spec")
    deadline = time.monotonic() + 120
    while len(list(grid.get_node_ids())) < settings.min_nodes and time.monotonic() < deadline:
        time.sleep(0.5)
    nodes = sorted(grid.get_node_ids())

    def ask(message_type: str, content: RecordDict) -> dict[int, Message]:
        messages = [Message(content, dst_node_id=n, message_type=message_type) for n in nodes]
        return {r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=120)}

    def prepare(plan: RunPlan) -> dict[int, Message]:
        request = PrepareRequest(seed=1, baseline_epochs=1, strategy="fedavg", plan=plan)
        return ask("query.prepare", QueryMessage(spec.text, request.to_json()).to_record())

    width = len(spec.encoded_names)
    zero = {k: np.zeros_like(v.numpy()) for k, v in build_model(spec, seed=1).state_dict().items()}
    attack = Instructions(
        task=spec.name, spec_sha256=spec.sha256, strategy="fedavg", scaler_mean=[0.0] * width,
        scaler_std=[1.0] * width, seed=1, local_steps=1, batch_size=1, learning_rate=1.0, evaluate_first=True,
    )  # fmt: skip
    results: dict[str, Any] = {"nodes": nodes}
    results["one-row plan"] = {n: _said(r) for n, r in prepare(ONE_ROW).items()}
    results["honest plan"] = {n: _said(r) for n, r in prepare(HONEST).items()}
    config = ConfigRecord({**attack.to_record(), keys.SERVER_ROUND: 1})
    model = ArrayRecord({k: Array(v) for k, v in zero.items()})
    results["one-row message"] = {
        n: _said(r) for n, r in ask("train", RecordDict({keys.CONFIG: config, keys.ARRAYS: model})).items()
    }
    chol = spec.encoded_names.index("chol")
    oracle = []  # more threshold models than a valuation over the two nodes needs (4): 118 in tests/attacks
    for cut in np.linspace(120, 570, 12):
        weights = {k: v.copy() for k, v in zero.items()}
        weights["0.weight"][0, chol], weights["0.bias"][0] = 1000.0, -1000.0 * cut
        oracle.append(ArrayRecord({k: Array(v) for k, v in weights.items()}))
    results["threshold models"] = {
        n: _said(r) for n, r in ask("evaluate.candidates", Candidates(oracle, attack).to_record()).items()
    }
    levels = {"columns": ["chol"], "by": "age", "levels": {"age": [str(a) for a in range(20, 100)]}}
    results["ages as groups"] = {
        n: _said(r) for n, r in ask("query.stats", QueryMessage(spec.text, json.dumps(levels)).to_record()).items()
    }
    catalogs = ask("query.catalog", QueryMessage(spec.text, "").to_record())
    results["catalog"] = {n: r.content.config_records[keys.NODE][keys.ANSWER] for n, r in catalogs.items()}
    events.emit(events.Done(reported={"attacks": results}))
