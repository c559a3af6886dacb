"""The node's ClientApp: answers the coordinator from the node's own rows, never sending rows.

- every kind of query in ``lab.queries`` (``query.prepare``, ``query.catalog``, ``query.stats``):
  its node side, through one handler per kind. A query carries the task spec's text, which the
  node keeps in the run's context;
- ``train``: score the received global model on the node's test split, train it locally, and
  return the update, the training loss and those scores (one message, one ClientApp process, a
  round);
- ``evaluate``: the final global model's metrics on the node's test split;
- ``evaluate.candidates``: the metrics of each model a message carries (the models coalitions of
  nodes would have made, federation.contributions) on the node's test split, all in one reply.

Train and evaluate messages name the task by its sha256 only. Every message is checked against
the node's data-use agreement before any data is read, and every reply before it leaves
(federation.governance); a refusal, or a table that does not fit the spec, becomes an error reply
that says why, and the node's audit log records each decision.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from federation.governance import governed
from federation.secure_aggregation import node_mod
from lab.contract import keys
from lab.contract.messages import (
    Candidates,
    CandidateScores,
    EvaluateReply,
    Instructions,
    NodeReport,
    QueryMessage,
    QueryReply,
    TrainReply,
)
from lab.core.environment import Environment
from lab.core.metrics import AUC_MIN_CLASS_ROWS
from lab.core.model import Predictor
from lab.core.preprocess import Scaler
from lab.core.privacy import DPPlan
from lab.core.spec import TaskSpec, parse_spec
from lab.core.training import (
    NodeData,
    node_seed,
    predictor_from,
    score,
    train_locally,
    train_privately,
)
from lab.errors import MessageError, Refusal, TrainingError
from lab.node.agreement import Agreement, Request
from lab.node.holding import Hold, check_rows
from lab.node.rows import NodeRows, rows_of
from lab.node.site import NodeSite
from lab.queries import KINDS, QueryKind

__all__ = ["app"]

logger = logging.getLogger(__name__)

app = ClientApp()

#: Where a node keeps, in the run's context, the spec texts it received, by sha256.
SPECS = "lab.specs"

#: Metric keys other clauses than allow.metrics check: the row count (min-rows) and the privacy
#: spent (the node's own accounting).
_NOT_METRICS = {keys.NUM_EXAMPLES, keys.DP_EPSILON, keys.AUC_UNRELIABLE}


def _site(context: Context) -> NodeSite:
    return NodeSite.from_node_config(context.node_config, context.node_id)


def _remember(context: Context, spec: TaskSpec, run_id: int) -> None:
    """Keep the spec a run's preparation received: in the run's context, and in the node's home,
    where a node restarted in the middle of the run (a new context) finds it again."""
    specs = context.state.config_records.get(SPECS, ConfigRecord())
    specs[spec.sha256] = spec.text
    context.state.config_records[SPECS] = specs
    kept = _site(context).prepared_path(run_id, spec.sha256)
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(spec.text, encoding="utf-8")


T = TypeVar("T")


class _Decoded(threading.local):
    """What the message being answered says, decoded once: the agreement's checks around a handler
    (federation.governance) and the handler itself read the same objects."""

    def __init__(self) -> None:
        self.msg: Message | None = None
        self.values: dict[str, Any] = {}

    def get(self, msg: Message, what: str, decode: Callable[[], T]) -> T:
        if self.msg is not msg:  # a new message: forget the last one's (and its arrays)
            self.msg, self.values = msg, {}
        if what not in self.values:
            self.values[what] = decode()
        return self.values[what]  # type: ignore[no-any-return]


_decoded = _Decoded()


def _instructions(msg: Message) -> Instructions:
    return _decoded.get(msg, "instructions", lambda: Instructions.of(msg))


def _run_spec(msg: Message, context: Context) -> TaskSpec:
    """The spec of the run a train or evaluate message belongs to (``_spec``), found once a message."""
    return _decoded.get(msg, "spec", lambda: _spec(context, _instructions(msg), msg.metadata.run_id))


def _query(msg: Message) -> tuple[QueryMessage, TaskSpec]:
    """A query message's contents and its spec, parsed once a message."""

    def decode() -> tuple[QueryMessage, TaskSpec]:
        query = QueryMessage.of(msg)
        return query, parse_spec(query.spec_text, source="the run's task spec")

    return _decoded.get(msg, "query", decode)


def _request_of(msg: Message, kind: QueryKind[Any]) -> Any:
    """A query message's request, read as its kind's, once a message."""
    return _decoded.get(msg, "request", lambda: kind.parse_request(_query(msg)[0].request))


def _spec(context: Context, instructions: Instructions, run_id: int) -> TaskSpec:
    """The run's spec, received at preparation and named by its sha256 since."""
    if not re.fullmatch(r"[0-9a-f]{64}", instructions.spec_sha256):
        raise MessageError(f"the message's {keys.SPEC_FINGERPRINT} is not a sha256 (64 hexadecimal digits)")
    specs = context.state.config_records.get(SPECS, ConfigRecord())
    kept = _site(context).prepared_path(run_id, instructions.spec_sha256)
    if instructions.spec_sha256 in specs:
        text = str(specs[instructions.spec_sha256])
    elif kept is not None and kept.is_file():
        text = kept.read_text(encoding="utf-8")
    else:
        raise Refusal(
            "plan",
            f"the task spec {instructions.spec_sha256[:12]}… of task {instructions.task!r} was not received at "
            "preparation in this run (a run's messages follow its preparation); the node takes part from the next run",
        )
    spec = parse_spec(text, source="the run's task spec")
    if spec.sha256 != instructions.spec_sha256:
        raise MessageError(
            f"the kept task spec {str(kept)!r} does not match its fingerprint; remove it",
            public="the task spec the node kept for this run does not match its fingerprint",
        )
    return spec


class _Training:
    """What a train or evaluate message asks of the node, and what its reply releases."""

    def __init__(self, training: bool) -> None:
        self.training = training

    def asked(self, msg: Message, context: Context) -> dict[str, Any]:
        asked = _instructions(msg).describe()
        records = msg.content.array_records
        if keys.CANDIDATES in records:  # the candidate models, each parameter stacked over them
            asked["models"], asked["parameters"] = Candidates.size(msg)
        else:
            model = records.get(keys.ARRAYS)
            asked["models"] = int(model is not None)
            asked["parameters"] = sum(math.prod(a.shape) for a in model.values()) if model is not None else 0
        return asked

    def asks(self, msg: Message, context: Context, agreement: Agreement) -> Request:
        instructions = _instructions(msg)
        metrics = set(_run_spec(msg, context).metrics) | ({keys.TRAIN_LOSS} if self.training else set())
        outputs = {"metrics"} | ({"model-updates"} if self.training else set())
        # The row count is checked on the reply, once the rows are loaded.
        return _request(instructions, outputs, metrics, agreement.min_rows)

    def releases(self, msg: Message, reply: Message, context: Context, agreement: Agreement) -> Request:
        outputs, metrics, rows = set(), set(), 0
        if reply.content.array_records:
            outputs.add("model-updates")
        for record in reply.content.metric_records.values():
            rows = int(record.get(keys.NUM_EXAMPLES, 0))  # type: ignore[arg-type]
            named = {k.removeprefix(keys.EVAL_PREFIX) for k in record if not k.startswith(keys.NOISE_PREFIX)}
            names = named - _NOT_METRICS
            metrics |= names
            if names:
                outputs.add("metrics")
        if not outputs:  # nothing computed on rows leaves (scores withheld): no row count to check
            rows = agreement.min_rows
        return _request(_instructions(msg), outputs, metrics, rows)


def _request(instructions: Instructions, outputs: set[str], metrics: set[str], rows: int) -> Request:
    return Request(
        instructions.task,
        instructions.spec_sha256,
        instructions.strategy,
        frozenset(outputs),
        frozenset(metrics),
        rows,
        instructions.dp is not None,
    )


class _Query:
    """What a query asks of the node and what its answer releases, as its kind says."""

    def __init__(self, kind: QueryKind[Any]) -> None:
        self.kind = kind

    def asked(self, msg: Message, context: Context) -> dict[str, Any]:
        query, spec = _query(msg)
        described = self.kind.describe(query.request)  # the request as it came, in full
        return {"query": self.kind.name, "task": spec.name, "spec_sha256": spec.sha256, "request": described}

    def asks(self, msg: Message, context: Context, agreement: Agreement) -> Request:
        return self.kind.asks(_query(msg)[1], _request_of(msg, self.kind), agreement)

    def releases(self, msg: Message, reply: Message, context: Context, agreement: Agreement) -> Request:
        answer = json.loads(QueryReply.of(reply).answer)
        return self.kind.releases(_query(msg)[1], _request_of(msg, self.kind), answer, agreement)


def _answering(kind: QueryKind[Any]) -> Any:
    def answer(msg: Message, context: Context) -> Message:
        _, spec = _query(msg)
        _remember(context, spec, msg.metadata.run_id)
        site = _site(context)
        answered = kind.answer(spec, _request_of(msg, kind), site, msg.metadata.run_id)
        reply = QueryReply(site.name, spec.organisation(site.name), json.dumps(answered))
        return Message(reply.to_record(), reply_to=msg)

    return answer


for _kind in KINDS.values():
    app.query(_kind.name)(governed(_Query(_kind))(_answering(_kind)))


def _report(site: NodeSite, spec: TaskSpec, rows: NodeRows, suppressed: str = "") -> NodeReport:
    return NodeReport.of_node(site.name, spec, Environment.current(), rows.data.train, rows.fingerprint, suppressed)


def _inputs(msg: Message, context: Context) -> tuple[NodeSite, Instructions, TaskSpec, NodeRows, int]:
    """The node, the message's instructions, the run's spec, and the node's rows checked against it
    (read once a run: lab.node.rows)."""
    site, instructions = _site(context), _instructions(msg)
    spec = _run_spec(msg, context)
    rows = rows_of(site, spec, msg.metadata.run_id)
    return site, instructions, spec, rows, check_rows(site, rows.data)


def _predictor(spec: TaskSpec, instructions: Instructions, msg: Message) -> Predictor:
    """The received global model, with the federation's scalers of the features and the target;
    a model or scaler that does not fit the task is refused, naming what does not fit."""
    if keys.ARRAYS not in msg.content.array_records:
        raise MessageError(f"the message carries no model (no {keys.ARRAYS!r} arrays)")
    return _model(spec, instructions, msg.content.array_records[keys.ARRAYS])


def _model(spec: TaskSpec, instructions: Instructions, arrays: ArrayRecord) -> Predictor:
    """A model's parameters, with the federation's scalers, as a predictor (refused when it does
    not fit the task)."""
    width = len(spec.encoded_names)
    mean, std = instructions.scaler_mean, instructions.scaler_std
    if len(mean) != width or len(std) != width:
        raise MessageError(
            f"the message's scaler has {len(mean)} means and {len(std)} deviations; task {spec.name!r} has {width} "
            "encoded features"
        )
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise MessageError(
            "the message's scaler holds a number that is not finite, or a deviation that is not positive"
        )
    target = Scaler.from_lists([instructions.target_mean], [instructions.target_std])
    try:
        return predictor_from(spec, Scaler.from_lists(mean, std), arrays, target)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # torch's load_state_dict: shapes or names
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MessageError(f"the message's model does not fit task {spec.name!r}: {first}") from None


@app.train(mods=[node_mod])  # SecAgg+ rounds only; plain rounds pass through
@governed(_Training(True))
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's training rows, as the run's booking holds it."""
    site, instructions, spec, rows, minimum = _inputs(msg, context)
    data = rows.data
    hold = Hold.of(site, msg.metadata.run_id)
    hold.train(instructions)  # the planned optimisation, a round within the plan, the run's scaler
    server_round = instructions.server_round
    plan = _dp_plan(hold, instructions)
    key = hold.key or str(msg.metadata.run_id)
    budget = agreement.epsilon_budget if (agreement := site.agreement) else None
    if plan is not None:  # a round beyond the plan, trained before, or over the budget is refused
        site.ledger().check_round(key, server_round, plan, budget)
    predictor = _predictor(spec, instructions, msg)
    evaluated, noise = {}, {}
    if instructions.evaluate_first and len(data.test) >= minimum:
        # One message per round: the global model is scored here instead of in an extra message.
        released = score(predictor, data.test, scale=hold.scale("round"), min_class_rows=minimum)
        hold.released("round", [released])
        evaluated, noise = released.metrics, released.noise
    steps, batch_size = instructions.local_steps, instructions.batch_size
    epsilon = None
    if plan is None:
        loss: float | None = train_locally(
            predictor,
            data.train,
            steps=steps,
            batch_size=batch_size,
            learning_rate=instructions.learning_rate,
            seed=node_seed(instructions.seed, site.name, server_round),
            proximal_mu=instructions.proximal_mu,
        )
    else:
        _, sample_rate, taken = train_privately(
            predictor,
            data.train,
            steps=plan.steps_per_round,
            noise_multiplier=plan.noise_multiplier,
            clipping_norm=plan.clipping_norm,
            batch_size=batch_size,
            learning_rate=instructions.learning_rate,
        )
        if abs(sample_rate - plan.sample_rate) > 1e-12 or taken != plan.steps_per_round:
            raise TrainingError(
                f"DP-SGD took {taken} steps at sampling rate {sample_rate}; the plan booked {plan.steps_per_round} "
                f"at {plan.sample_rate}"
            )
        entry = site.ledger().record(
            key=key, run_id=msg.metadata.run_id, server_round=server_round, plan=plan, task=spec.name, steps=taken
        )
        epsilon = float(entry["epsilon"])
        loss = None  # in a DP run the loss on the training rows is not private: it stays at the node
    hold.trained(server_round)
    reply = TrainReply(
        ArrayRecord(predictor.model.state_dict()),
        len(data.train),
        _report(site, spec, rows),
        evaluated,
        loss,
        epsilon,
        noise,
    )
    return Message(reply.to_record(), reply_to=msg)


def _dp_plan(hold: Hold, instructions: Instructions) -> DPPlan | None:
    """The DP plan the node trains with: its booking's (the message's DP settings must be the run's)."""
    if instructions.dp is None:
        return None
    if hold.booking is None or hold.booking.dp_plan is None:
        raise Refusal("plan", "the message asks for differential privacy its run's preparation did not plan here")
    if hold.booking.dp != instructions.dp:
        raise Refusal("plan", "the message's differential privacy settings are not those the run planned")
    return hold.booking.dp_plan


def _withheld(site: NodeSite, spec: TaskSpec, rows: NodeRows, minimum: int) -> NodeReport:
    return _report(
        site, spec, rows, f"metrics on the test split withheld: it has fewer rows than the minimum of {minimum}"
    )


@app.evaluate()
@governed(_Training(False))
def evaluate_model(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's test rows (once per run)."""
    site, instructions, spec, rows, minimum = _inputs(msg, context)
    data = rows.data
    hold = Hold.of(site, msg.metadata.run_id)
    hold.pin(instructions)
    if len(data.test) < minimum:  # neither the scores nor the small row count leave
        return Message(EvaluateReply({}, 0, _withheld(site, spec, rows, minimum)).to_record(), reply_to=msg)
    scale = hold.scale("final")
    predictor = _predictor(spec, instructions, msg)
    released = score(predictor, data.test, scale=scale, min_class_rows=minimum)
    hold.released("final", [released])
    few = _few(spec, data)
    reply = EvaluateReply(released.metrics, len(data.test), _report(site, spec, rows), few, released.noise)
    return Message(reply.to_record(), reply_to=msg)


def _few(spec: TaskSpec, data: NodeData) -> bool:
    """Whether the AUC on the test split rests on too few rows of a class to be relied on."""
    if spec.target.kind != "binary" or "auc" not in spec.metrics or data.test.target is None:
        return False
    positives = int((data.test.target == 1).sum())
    return min(positives, len(data.test) - positives) < AUC_MIN_CLASS_ROWS


@app.evaluate(keys.CANDIDATES_ACTION)
@governed(_Training(False))
def score_candidates(msg: Message, context: Context) -> Message:
    """Score every candidate model the message carries on this node's test rows, in one reply, as
    many as the run planned for its contribution valuation."""
    site, instructions, spec, rows, minimum = _inputs(msg, context)
    data = rows.data
    candidates = Candidates.of(msg)
    hold = Hold.of(site, msg.metadata.run_id)
    hold.pin(instructions)
    if len(data.test) < minimum:  # neither the scores nor the small row count leave
        return Message(CandidateScores([], 0, _withheld(site, spec, rows, minimum)).to_record(), reply_to=msg)
    scale = hold.scale("candidate", len(candidates.models))
    released = [
        score(_model(spec, instructions, arrays), data.test, scale=scale, min_class_rows=minimum)
        for arrays in candidates.models
    ]
    hold.released("candidate", released)
    scores = [r.metrics for r in released]
    noise = released[0].noise if released else {}
    reply = CandidateScores(scores, len(data.test), _report(site, spec, rows), noise)
    return Message(reply.to_record(), reply_to=msg)
