"""The node's ClientApp: answers the coordinator from the node's own rows, never sending rows.

Three messages reach it:

- ``query`` (prepare): check the table against the task spec, return per-column sums for the
  federated scaler and the local-only baseline's metrics;
- ``train``: score the received global model on the node's test split, train it locally,
  and return the update, the training loss and those scores;
- ``evaluate``: return the final global model's metrics on the node's test split.

Scoring inside the train message saves a message, and so a ClientApp process, per round.

Every message is checked against the node's data-use agreement before any data is read, and
every reply before it leaves (federation.governance); a refusal, or a table that does not fit
the spec, becomes an error reply that says why, and the node's audit log records each decision.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federation.governance import governed, node_agreement
from federation.secure_aggregation import node_mod
from lab.contract import keys
from lab.contract.provenance import check_environment, node_record
from lab.contract.records import arrays_of, config_of, number, numbers, text
from lab.core.analytics import (
    DEFAULT_MIN_COUNT,
    StatsRequest,
    node_summary,
    protect_column_sums,
    stats_frame,
)
from lab.core.catalog import build_catalog, preflight
from lab.core.data import load_table
from lab.core.environment import EnvDiff, Environment
from lab.core.model import Predictor
from lab.core.preprocess import ColumnSums, Scaler, encode
from lab.core.privacy import DPPlan, Ledger, check_budget, plan_from_config
from lab.core.spec import TaskSpec, parse_spec
from lab.core.training import (
    NodeData,
    evaluate,
    load_node_data,
    local_baseline,
    node_seed,
    predictor_from,
    target_sums,
    train_locally,
    train_privately,
)
from lab.errors import DataError, LabError
from lab.node.agreement import Refusal

logger = logging.getLogger(__name__)

app = ClientApp()


def _node_name(context: Context) -> str:
    return str(context.node_config.get(keys.NODE_NAME, f"node-{context.node_id}"))


def _min_count(context: Context, asked: int = DEFAULT_MIN_COUNT) -> int:
    """Fewest rows behind anything this node releases: 5, or more if the agreement or the request says so."""
    agreement = node_agreement(context)
    return max(DEFAULT_MIN_COUNT, asked, agreement.min_rows if agreement else 0)


def _inputs(msg: Message, context: Context) -> tuple[TaskSpec, ConfigRecord, str, Environment, EnvDiff, NodeData]:
    """The run's spec and config, this node's name and environment (checked against the lock
    before any data is read), and its rows checked against the spec."""
    config = config_of(msg)
    spec = parse_spec(text(config, keys.TASK_SPEC), source="the run's task spec")
    name = _node_name(context)
    env, drift = check_environment(config, name)
    data = load_node_data(name, str(context.node_config.get(keys.DATA_PATH, "")), spec)
    return spec, config, name, env, drift, data


def _reply(msg: Message, spec: TaskSpec, name: str, env: Environment, data: NodeData, **records: Any) -> Message:
    """A reply whose NODE record carries this node's environment, data and spec fingerprints."""
    node = node_record(name, spec, env, data.train.fingerprint, len(data.train))
    return Message(RecordDict({**records, keys.NODE: node}), reply_to=msg)


def _check_rows(context: Context, data: NodeData) -> int:
    """The node's minimum count; a node with fewer training rows refuses to train."""
    minimum = _min_count(context)
    if len(data.train) < minimum:
        raise Refusal(
            "allow.min-rows",
            f"{len(data.train)} training rows are fewer than the minimum of {minimum}: a model update "
            "from so few rows can reveal them",
        )
    return minimum


def _suppressed_metrics(data: NodeData, minimum: int) -> str:
    if len(data.test) >= minimum:
        return ""
    return f"metrics on the test split withheld: it has fewer rows than the minimum of {minimum}"


def _ledger(context: Context, name: str) -> Ledger:
    path = str(context.node_config.get(keys.PRIVACY_LEDGER, ""))
    if not path:
        raise DataError(
            f"node {name!r} has no privacy ledger for a differentially private run; start the SuperNode "
            "with --node-config 'privacy-ledger=\"/path/to/privacy.jsonl\"'"
        )
    return Ledger(path)


def _private_plan(msg: Message, context: Context, config: ConfigRecord, data: NodeData) -> DPPlan | None:
    """The node's DP plan for this run, checked against its agreement's epsilon budget."""
    plan = plan_from_config(config, len(data.train))
    if plan is not None:
        agreement = node_agreement(context)
        budget = agreement.epsilon_budget if agreement else None
        check_budget(_ledger(context, data.name), budget, msg.metadata.run_id, plan)
    return plan


def _predictor(spec: TaskSpec, config: ConfigRecord, msg: Message) -> Predictor:
    """The received global model, with the federation's scalers of the features and the target."""
    scaler = Scaler(np.asarray(numbers(config, keys.SCALER_MEAN)), np.asarray(numbers(config, keys.SCALER_STD)))
    target = Scaler.identity(1)
    if keys.TARGET_MEAN in config:
        target = Scaler(np.asarray([number(config, keys.TARGET_MEAN)]), np.asarray([number(config, keys.TARGET_STD)]))
    return predictor_from(spec, scaler, arrays_of(msg), target)


@app.query(keys.PREPARE)
@governed
def prepare(msg: Message, context: Context) -> Message:
    """Check the table, share column sums for scaling, and run the local-only baseline."""
    spec, config, name, env, drift, data = _inputs(msg, context)
    minimum = _check_rows(context, data)
    plan = _private_plan(msg, context, config, data)
    sums, held_back = protect_column_sums(
        ColumnSums.of(encode(data.train.features, spec)), spec, len(data.train), minimum
    )
    target = target_sums(data.train)  # over every training row: its count is the row count
    seed = node_seed(int(number(config, keys.SEED)), name, 0)
    baseline: dict[str, float] = {}
    # Metrics on fewer rows than the minimum do not leave; in a DP run nothing trained without
    # DP does either, so the local-only baseline is skipped.
    if len(data.test) >= minimum and plan is None:
        baseline = local_baseline(spec, data, epochs=int(number(config, keys.BASELINE_EPOCHS)), seed=seed)
    metrics = MetricRecord(
        {
            keys.NUM_EXAMPLES: len(data.train),
            keys.COLUMN_COUNT: sums.count.tolist(),
            keys.COLUMN_SUM: sums.total.tolist(),
            keys.COLUMN_SQUARES: sums.squares.tolist(),
            **(
                {
                    keys.TARGET_COUNT: float(target.count[0]),
                    keys.TARGET_SUM: float(target.total[0]),
                    keys.TARGET_SQUARES: float(target.squares[0]),
                }
                if spec.target.kind == "regression"
                else {}
            ),
            **{keys.BASELINE_PREFIX + k: v for k, v in baseline.items()},
        }
    )
    node = node_record(
        name,
        spec,
        env,
        data.train.fingerprint,
        len(data.train),
        {
            # Counts under the minimum are sent as 0 (the note says they were held back).
            keys.TEST_ROWS: len(data.test) if len(data.test) >= minimum else 0,
            keys.DROPPED_ROWS: data.dropped if not 0 < data.dropped < minimum else 0,
            keys.ENV_PINS: env.pins,
            keys.ENV_DRIFT: drift.summary(),
            keys.SUPPRESSED: "; ".join(
                n
                for n in (
                    _suppressed_metrics(data, minimum),
                    *held_back,
                    f"dropped rows under {minimum} held back" if 0 < data.dropped < minimum else "",
                )
                if n
            ),
            **(
                {keys.DP_PLANNED_EPSILON: plan.planned_epsilon, keys.DP_NOISE_USED: plan.noise_multiplier}
                if plan
                else {}
            ),
        },
    )
    return Message(RecordDict({keys.METRICS: metrics, keys.NODE: node}), reply_to=msg)


@app.train(mods=[node_mod])  # SecAgg+ rounds only; plain rounds pass through
@governed
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's training rows."""
    spec, config, name, env, _, data = _inputs(msg, context)
    minimum = _check_rows(context, data)
    plan = _private_plan(msg, context, config, data)  # refuses a run over the budget, before training
    predictor = _predictor(spec, config, msg)
    metrics: dict[str, int | float] = {}
    if config.get(keys.EVALUATE_FIRST, False) and len(data.test) >= minimum:
        # One message per round: the global model is scored here instead of in an extra message.
        metrics = {keys.EVAL_PREFIX + k: v for k, v in evaluate(predictor, data.test).items()}
    server_round = int(number(config, keys.SERVER_ROUND))
    if plan is not None:
        _ledger(context, name).check_round(msg.metadata.run_id, server_round, plan)
    seed = node_seed(int(number(config, keys.SEED)), name, server_round)
    steps, batch_size = int(number(config, keys.LOCAL_STEPS)), int(number(config, keys.BATCH_SIZE))
    learning_rate = number(config, keys.LEARNING_RATE)
    if plan is None:
        loss = train_locally(
            predictor,
            data.train,
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            proximal_mu=number(config, keys.PROXIMAL_MU) if keys.PROXIMAL_MU in config else 0.0,
        )
    else:
        loss, sample_rate = train_privately(
            predictor,
            data.train,
            steps=steps,
            noise_multiplier=plan.noise_multiplier,
            clipping_norm=plan.clipping_norm,
            batch_size=batch_size,
            learning_rate=learning_rate,
        )
        if abs(sample_rate - plan.sample_rate) > 1e-12:
            raise LabError(f"DP-SGD sampled at {sample_rate}, the ledger would record {plan.sample_rate}")
        entry = _ledger(context, name).record(
            run_id=msg.metadata.run_id, server_round=server_round, plan=plan, task=spec.name
        )
        metrics[keys.DP_EPSILON] = entry["epsilon"]
    return _reply(
        msg,
        spec,
        name,
        env,
        data,
        **{
            keys.ARRAYS: ArrayRecord(predictor.model.state_dict()),
            # In a DP run the loss on the training rows is not private: it stays at the node.
            keys.METRICS: MetricRecord(
                {**metrics, **({keys.TRAIN_LOSS: loss} if plan is None else {}), keys.NUM_EXAMPLES: len(data.train)}
            ),
        },
    )


@app.evaluate()
@governed
def evaluate_model(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's test rows."""
    spec, config, name, env, _, data = _inputs(msg, context)
    minimum = _check_rows(context, data)
    predictor = _predictor(spec, config, msg)
    if len(data.test) < minimum:  # neither the scores nor the small row count leave
        metrics = MetricRecord()
        withheld = {keys.SUPPRESSED: _suppressed_metrics(data, minimum)}
        node = node_record(name, spec, env, data.train.fingerprint, len(data.train), withheld)
        return Message(RecordDict({keys.METRICS: metrics, keys.NODE: node}), reply_to=msg)
    metrics = MetricRecord({**evaluate(predictor, data.test), keys.NUM_EXAMPLES: len(data.test)})
    return _reply(msg, spec, name, env, data, **{keys.METRICS: metrics})


@app.query(keys.CATALOG)
@governed
def catalog(msg: Message, context: Context) -> Message:
    """Describe this node's table without its rows, and check it against the spec (pre-flight)."""
    config = config_of(msg)
    spec = parse_spec(text(config, keys.TASK_SPEC), source="the run's task spec")
    name = _node_name(context)
    path = str(context.node_config.get(keys.DATA_PATH, ""))
    agreement = node_agreement(context)
    min_rows = max(DEFAULT_MIN_COUNT, agreement.min_rows if agreement else 10)
    try:
        described = build_catalog(path, spec, node=name, min_rows=min_rows)
    except DataError:  # the pre-flight below says why the table cannot be read
        described = {}
    node = ConfigRecord(
        {
            keys.NODE_NAME: name,
            keys.ORGANISATION: spec.organisation(name),
            keys.CATALOG_JSON: json.dumps(described),
            keys.PREFLIGHT_JSON: json.dumps(preflight(path, spec, node=name)),
        }
    )
    return Message(RecordDict({keys.NODE: node}), reply_to=msg)


@app.query(keys.STATS)
@governed
def stats(msg: Message, context: Context) -> Message:
    """Summarise this node's table for a federated analytics query; small counts never leave."""
    config = config_of(msg)
    spec = parse_spec(text(config, keys.TASK_SPEC), source="the run's task spec")
    request = StatsRequest.from_json(text(config, keys.STATS_REQUEST))
    request.check(spec)
    name = _node_name(context)
    path = str(context.node_config.get(keys.DATA_PATH, ""))
    if not path:
        raise DataError(f"node {name!r} has no data-path; start the SuperNode with --node-config 'data-path=\"...\"'")
    agreement = node_agreement(context)
    minimum = _min_count(context, request.min_count)
    request = replace(request, min_count=minimum)
    summary = node_summary(stats_frame(load_table(path, spec, node=name), spec), spec, request)
    node = ConfigRecord(
        {
            keys.NODE_NAME: name,
            keys.ORGANISATION: spec.organisation(name),
            keys.STATS_JSON: json.dumps(summary),
            keys.PUBLISH_NODE_FIGURES: bool(agreement and agreement.node_figures),
            keys.SUPPRESSED: "; ".join(summary["notes"]),
        }
    )
    return Message(RecordDict({keys.NODE: node}), reply_to=msg)
