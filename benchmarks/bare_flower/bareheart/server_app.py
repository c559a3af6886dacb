"""The ServerApp: FedAvg over every node, with the wall-clock time of each round in a JSON-lines file."""

from __future__ import annotations

import json
import time

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from bareheart.task import make_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    timings = str(config["timings-file"])

    def stamp(event: str, **fields: object) -> None:
        if timings:
            with open(timings, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        stamp("round", round=server_round)  # called before round 1 (as round 0) and after every round
        return None

    stamp("start", run_id=context.run_id)
    nodes = int(config["min-nodes"])
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=float(config["fraction-evaluate"]),
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
        min_available_nodes=nodes,
    )
    torch.manual_seed(int(config["seed"]))
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(make_model().state_dict()),
        num_rounds=int(config["num-rounds"]),
        evaluate_fn=evaluate_fn,
    )
    stamp("end")
