"""What a node does with its own rows: load them, train locally, evaluate, and the local-only baseline."""

from __future__ import annotations

import logging
import math
import os
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord

from lab.core.data import Table, load_table, split_table
from lab.core.metrics import compute_metrics
from lab.core.model import Predictor, build_model, loss_fn
from lab.core.preprocess import ColumnSums, Scaler
from lab.core.scores import Released, release
from lab.core.spec import TaskSpec
from lab.errors import DataError, TrainingError

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINE_MAX_ROWS_SEEN",
    "BASELINE_MAX_STEPS",
    "NodeData",
    "baseline_steps",
    "evaluate",
    "load_node_data",
    "local_baseline",
    "node_seed",
    "predictor_from",
    "score",
    "target_scaler_of",
    "target_sums",
    "train_locally",
    "train_privately",
]


@dataclass(frozen=True)
class NodeData:
    """A node's checked rows, split as the spec says."""

    name: str
    train: Table
    test: Table
    dropped: int


def load_node_data(name: str, path: str, spec: TaskSpec) -> NodeData:
    """Load and split the node's table; a table that does not fit the spec raises DataError."""
    if not path:
        raise DataError(
            f"node {name!r} has no data-path; start the SuperNode with --node-config 'data-path=\"/path/to/table.csv\"'"
        )
    table = load_table(path, spec, node=name)
    train, test = split_table(table, spec)
    return NodeData(name=name, train=train, test=test, dropped=table.dropped)


def node_seed(seed: int, name: str, server_round: int) -> int:
    """A seed that differs per node and round but is the same on every rerun."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) + server_round * 7919) % (2**31)


def train_locally(
    predictor: Predictor,
    table: Table,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    optimizer: str = "sgd",
    proximal_mu: float = 0.0,
) -> float:
    """Run ``steps`` minibatch updates on ``table``; returns the mean training loss.

    With ``proximal_mu > 0`` the FedProx term mu/2 * ||w - w_global||^2 is added.
    """
    torch.set_num_threads(1)  # several nodes share a small machine in the demo
    spec, model = predictor.spec, predictor.model
    assert table.target is not None
    x = predictor.inputs(table)
    y = predictor.targets(table.target)
    criterion = loss_fn(spec)
    params = list(model.parameters())
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=learning_rate)
    else:
        opt = torch.optim.SGD(params, lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    order = torch.randperm(len(x), generator=generator)
    cursor = 0
    for _ in range(steps):
        if cursor >= len(order):
            order, cursor = torch.randperm(len(x), generator=generator), 0
        batch = order[cursor : cursor + batch_size]
        cursor += batch_size
        opt.zero_grad()
        loss = criterion(model(x[batch]), y[batch])
        if anchor:
            loss = loss + proximal_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise _diverged(f"the loss became {losses[-1]} at local step {len(losses)} of {steps}", learning_rate)
    if not predictor.is_finite():
        raise _diverged("the model's weights are no longer finite numbers", learning_rate)
    return float(np.mean(losses)) if losses else float("nan")


def _diverged(what: str, learning_rate: float) -> TrainingError:
    return TrainingError(
        f"training diverged: {what}; lower learning-rate (now {learning_rate:g}) with --set learning-rate=..., "
        "and check the features' and target's scaling in the spec"
    )


def train_privately(
    predictor: Predictor,
    table: Table,
    *,
    steps: int,
    noise_multiplier: float,
    clipping_norm: float,
    batch_size: int,
    learning_rate: float,
) -> tuple[float, float, int]:
    """DP-SGD with Opacus: ``steps`` Poisson-sampled minibatches (rate ``1 / ceil(rows / batch_size)``),
    each record's gradient clipped to ``clipping_norm``, Gaussian noise of ``noise_multiplier *
    clipping_norm`` added to each step's sum. Returns (mean training loss, sampling rate used).

    The parameters of ``predictor.model`` are updated in place.
    """
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    spec, model = predictor.spec, predictor.model
    assert table.target is not None
    x = predictor.inputs(table)
    y = predictor.targets(table.target)
    criterion = loss_fn(spec)
    # The noise and the Poisson sampling must not be reproducible by anyone who knows the run's
    # seed (the coordinator chose it): draw both from the operating system's entropy. Opacus'
    # secure_mode would need torchcsprng, which these machines cannot install.
    sampling = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
    noise = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, generator=sampling)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    model.train()  # Opacus wraps only a model in training mode (scoring it first left it in eval)
    with warnings.catch_warnings():  # about secure_mode, which is answered above
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
    private_model, private_opt, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=clipping_norm,
        poisson_sampling=True,
        noise_generator=noise,
    )
    private_model.train()
    losses: list[float] = []
    while len(losses) < steps:
        for xb, yb in private_loader:
            # A Poisson batch can be empty; the step still runs (and adds noise), as accounted.
            private_opt.zero_grad()
            loss = criterion(private_model(xb), yb)
            loss.backward()
            private_opt.step()
            losses.append(loss.item() if len(xb) else float("nan"))
            if len(xb) and not math.isfinite(losses[-1]):
                raise _diverged(f"the loss became {losses[-1]} at local step {len(losses)} of {steps}", learning_rate)
            if len(losses) >= steps:
                break
    if not predictor.is_finite():
        raise _diverged("the model's weights are no longer finite numbers", learning_rate)
    finite = [v for v in losses if not np.isnan(v)]
    return (float(np.mean(finite)) if finite else float("nan")), float(private_loader.sample_rate), len(losses)


def evaluate(predictor: Predictor, table: Table) -> dict[str, float]:
    """The spec's metrics of ``predictor`` on ``table``."""
    assert table.target is not None
    scores = predictor.scores(table)
    return compute_metrics(scores, table.target, predictor.spec, loss=predictor.loss(table, table.target))


def score(predictor: Predictor, table: Table, *, scale: float, min_class_rows: int = 1) -> Released:
    """The scores a node releases of ``predictor`` on ``table``: exact at ``scale`` 0 (a node that
    holds no agreement), else each metric noised at ``scale`` times its row bound (lab.core.scores)."""
    if scale <= 0:
        return Released(evaluate(predictor, table), {}, 0.0)
    assert table.target is not None
    return release(
        predictor.scores(table),
        table.target,
        predictor.spec,
        scale=scale,
        loss_rows=predictor.row_losses(table, table.target),
        target_mean=float(predictor.target_scaler.mean[0]),
        target_std=float(predictor.target_scaler.std[0]),
        min_class_rows=min_class_rows,
    )


#: A local-only baseline's budget: at most this many steps, and at most this many rows seen (50
#: epochs of 40,000 rows). A larger table gets a larger minibatch, so the baseline of a million
#: rows takes seconds, not the hours its 50 epochs of minibatches of 4 would.
BASELINE_MAX_STEPS = 25_000
BASELINE_MAX_ROWS_SEEN = 2_000_000


def baseline_steps(rows: int, epochs: int) -> tuple[int, int]:
    """(steps, minibatch size) of a local-only baseline of ``epochs`` over ``rows`` training rows:
    minibatches of 4 while that stays within BASELINE_MAX_STEPS, else the rows seen capped at
    BASELINE_MAX_ROWS_SEEN over at most BASELINE_MAX_STEPS larger minibatches."""
    steps = epochs * math.ceil(rows / 4)
    if steps <= BASELINE_MAX_STEPS:
        return steps, 4
    seen = min(epochs * rows, BASELINE_MAX_ROWS_SEEN)
    batch_size = max(4, math.ceil(seen / BASELINE_MAX_STEPS))
    return math.ceil(seen / batch_size), batch_size


def local_baseline(spec: TaskSpec, data: NodeData, *, epochs: int, seed: int) -> Predictor | None:
    """A model trained on this node's rows only (own scaling, Adam, lr 0.001, minibatches of 4 on
    a table of up to 2,000 training rows at 50 epochs, larger ones beyond: ``baseline_steps``), or
    None when its training diverged (the node still takes part, without a reference).

    This is the local-only reference an organisation compares the federated model with.
    """
    scaler = (
        Scaler.fit(data.train.encoded(spec)) if spec.scaling != "none" else Scaler.identity(len(spec.encoded_names))
    )
    predictor = Predictor(spec, scaler, build_model(spec, seed=seed), target_scaler_of(spec, data.train))
    steps, batch_size = baseline_steps(len(data.train), epochs)
    try:
        train_locally(
            predictor, data.train, steps=steps, batch_size=batch_size, learning_rate=0.001, seed=seed, optimizer="adam"
        )
    except TrainingError as exc:
        logger.warning("node %s: the local-only baseline is left out: %s", data.name, exc)
        return None
    return predictor


def target_scaler_of(spec: TaskSpec, table: Table) -> Scaler:
    """The standardisation of a regression target over one table's rows (identity otherwise)."""
    if spec.target.kind != "regression" or spec.scaling == "none":
        return Scaler.identity(1)
    return Scaler.from_sums(target_sums(table))


def target_sums(table: Table) -> ColumnSums:
    """Count, sum and sum of squares of a table's target, as one column."""
    assert table.target is not None
    return ColumnSums.of(np.asarray(table.target, dtype=np.float64).reshape(-1, 1))


def predictor_from(spec: TaskSpec, scaler: Scaler, arrays: ArrayRecord, target_scaler: Scaler) -> Predictor:
    """A predictor with the parameters of ``arrays`` loaded."""
    model = build_model(spec)
    model.load_state_dict(arrays.to_torch_state_dict())
    return Predictor(spec, scaler, model, target_scaler)
