"""The ClientApp: train or evaluate the received model on this node's own file."""

from __future__ import annotations

from typing import cast

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from bareheart.task import load_data, make_model, test, train

app = ClientApp()


def _model(msg: Message) -> torch.nn.Module:
    model = make_model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return model


@app.train()
def train_model(msg: Message, context: Context) -> Message:
    """Train the global model on this node's training rows."""
    train_data, _ = load_data(str(context.node_config["data-path"]))
    config = context.run_config
    server_round = cast(int, msg.content.config_records["config"]["server-round"])
    torch.manual_seed(int(config["seed"]) + server_round)
    model = _model(msg)
    loss = train(
        model,
        train_data,
        steps=int(config["local-steps"]),
        batch_size=int(config["batch-size"]),
        learning_rate=float(config["learning-rate"]),
    )
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(train_data)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_model(msg: Message, context: Context) -> Message:
    """Score the global model on this node's test rows."""
    _, test_data = load_data(str(context.node_config["data-path"]))
    loss, accuracy = test(_model(msg), test_data)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(test_data)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
