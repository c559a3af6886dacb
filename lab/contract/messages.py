"""What coordinator and nodes send each other, as typed objects with ``to_record`` / ``from_record``.

No other module assembles or reads a record key by key. The task spec travels once, in the
preparation query (lab.queries.prepare); train and evaluate messages name it by its sha256, which
the nodes' agreements check.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from lab.contract import keys
from lab.contract.records import finite, number, numbers, text, whole
from lab.contract.settings import MAX_BATCH_SIZE, MAX_LEARNING_RATE, MAX_LOCAL_STEPS
from lab.core.data import Table
from lab.core.environment import Environment
from lab.core.privacy import DPSettings
from lab.core.spec import TaskSpec
from lab.errors import MessageError

__all__ = [
    "CandidateScores",
    "Candidates",
    "EvaluateReply",
    "Instructions",
    "NodeReport",
    "QueryMessage",
    "QueryReply",
    "TrainReply",
    "audit_head",
    "carry_audit_head",
]


def _dp(text_: str) -> DPSettings | None:
    try:
        return DPSettings.from_json(text_)
    except (ValueError, TypeError, KeyError) as exc:
        raise MessageError(f"message record has {keys.DIFFERENTIAL_PRIVACY} that cannot be read: {exc}") from None


@dataclass(frozen=True)
class Instructions:
    """The config of a train or evaluate message: the task by hash, the federation's scalers and,
    for training, the local optimisation. Flower's strategies add ``server-round`` (and FedProx
    ``proximal-mu``) themselves."""

    task: str
    spec_sha256: str
    strategy: str
    scaler_mean: list[float]
    scaler_std: list[float]
    target_mean: float = 0.0
    target_std: float = 1.0
    seed: int = 0
    local_steps: int = 0
    batch_size: int = 1
    learning_rate: float = 0.0
    evaluate_first: bool = False
    dp: DPSettings | None = None
    server_round: int = 0
    proximal_mu: float = 0.0

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                keys.TASK: self.task,
                keys.SPEC_FINGERPRINT: self.spec_sha256,
                keys.STRATEGY: self.strategy,
                keys.SCALER_MEAN: self.scaler_mean,
                keys.SCALER_STD: self.scaler_std,
                keys.TARGET_MEAN: self.target_mean,
                keys.TARGET_STD: self.target_std,
                keys.SEED: self.seed,
                keys.LOCAL_STEPS: self.local_steps,
                keys.BATCH_SIZE: self.batch_size,
                keys.LEARNING_RATE: self.learning_rate,
                keys.EVALUATE_FIRST: self.evaluate_first,
                keys.DIFFERENTIAL_PRIVACY: self.dp.to_json() if self.dp else "",
            }
        )

    @classmethod
    def from_record(cls, config: ConfigRecord) -> Instructions:
        return cls(
            task=text(config, keys.TASK),
            spec_sha256=text(config, keys.SPEC_FINGERPRINT),
            strategy=text(config, keys.STRATEGY),
            scaler_mean=numbers(config, keys.SCALER_MEAN),
            scaler_std=numbers(config, keys.SCALER_STD),
            target_mean=finite(config, keys.TARGET_MEAN),
            target_std=finite(config, keys.TARGET_STD, positive=True),
            seed=whole(config, keys.SEED, 0, 2**63 - 1),
            local_steps=whole(config, keys.LOCAL_STEPS, 1, MAX_LOCAL_STEPS),
            batch_size=whole(config, keys.BATCH_SIZE, 1, MAX_BATCH_SIZE),
            learning_rate=finite(config, keys.LEARNING_RATE, positive=True, most=MAX_LEARNING_RATE),
            evaluate_first=bool(config.get(keys.EVALUATE_FIRST, False)),
            dp=_dp(text(config, keys.DIFFERENTIAL_PRIVACY)),
            server_round=whole(config, keys.SERVER_ROUND, 0, 2**31) if keys.SERVER_ROUND in config else 0,
            proximal_mu=finite(config, keys.PROXIMAL_MU) if keys.PROXIMAL_MU in config else 0.0,
        )

    @classmethod
    def of(cls, message: Message) -> Instructions:
        return cls.from_record(_config(message))

    def describe(self) -> dict[str, Any]:
        """What these instructions ask, in full, as a node's audit log records it (the scaler by
        its sha256)."""
        scaler = json.dumps([self.scaler_mean, self.scaler_std, self.target_mean, self.target_std])
        return {
            "task": self.task,
            "spec_sha256": self.spec_sha256,
            "strategy": self.strategy,
            "round": self.server_round,
            "seed": self.seed,
            "local_steps": self.local_steps,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "proximal_mu": self.proximal_mu,
            "evaluate_first": self.evaluate_first,
            "differential_privacy": asdict(self.dp) if self.dp else None,
            "scaler_sha256": hashlib.sha256(scaler.encode()).hexdigest(),
        }


@dataclass(frozen=True)
class NodeReport:
    """Who answered and the fingerprints of what it used: every train and evaluate reply's NODE record."""

    name: str
    organisation: str
    env_fingerprint: str
    env_python: str
    env_platform: str
    data_sha256: str
    train_rows: int
    spec_sha256: str
    suppressed: str = ""

    @classmethod
    def of_node(
        cls, name: str, spec: TaskSpec, env: Environment, train: Table, data_sha256: str, suppressed: str = ""
    ) -> NodeReport:
        """The report of node ``name`` that used ``spec`` in ``env`` and trains on ``train``, whose
        fingerprint under the node's secret is ``data_sha256``."""
        return cls(
            name,
            spec.organisation(name),
            env.fingerprint,
            env.python,
            env.platform,
            data_sha256,
            len(train),
            spec.sha256,
            suppressed,
        )

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({keys.NODE_REPORT: json.dumps(asdict(self))})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> NodeReport:
        return cls(**json.loads(text(record, keys.NODE_REPORT)))

    @classmethod
    def of(cls, message: Message) -> NodeReport | None:
        """The report of a reply (None for an error reply)."""
        if message.has_error() or keys.NODE not in message.content.config_records:
            return None
        return cls.from_record(message.content.config_records[keys.NODE])


def _noise(record: MetricRecord) -> dict[str, float]:
    """A reply's noise of each released score (its standard deviation), by metric."""
    return {k.removeprefix(keys.NOISE_PREFIX): number(record, k) for k in record if k.startswith(keys.NOISE_PREFIX)}


def _scores(record: MetricRecord, prefix: str = "") -> dict[str, float]:
    """A reply's released scores (``prefix``: of a train reply's received model), by metric."""
    skip = (keys.NUM_EXAMPLES, keys.AUC_UNRELIABLE, keys.TRAIN_LOSS, keys.DP_EPSILON)
    return {
        k.removeprefix(prefix): number(record, k)
        for k in record
        if k.startswith(prefix) and not k.startswith(keys.NOISE_PREFIX) and k not in skip
    }


@dataclass(frozen=True)
class TrainReply:
    """A node's trained model, its row count (the weight), its scores of the model it received
    (``evaluated``: the previous round's global model, with each score's ``noise``), its training
    loss and epsilon spent."""

    arrays: ArrayRecord | None  # None in a SecAgg+ round: the coordinator sees only masked vectors
    num_examples: int
    node: NodeReport
    evaluated: dict[str, float] = field(default_factory=dict)
    train_loss: float | None = None
    epsilon: float | None = None
    noise: dict[str, float] = field(default_factory=dict)

    def to_record(self) -> RecordDict:
        metrics: dict[str, Any] = {keys.EVAL_PREFIX + k: v for k, v in self.evaluated.items()}
        metrics.update({keys.NOISE_PREFIX + k: v for k, v in self.noise.items()})
        if self.train_loss is not None:
            metrics[keys.TRAIN_LOSS] = self.train_loss
        if self.epsilon is not None:
            metrics[keys.DP_EPSILON] = self.epsilon
        metrics[keys.NUM_EXAMPLES] = self.num_examples
        records: dict[str, Any] = {keys.METRICS: MetricRecord(metrics), keys.NODE: self.node.to_record()}
        if self.arrays is not None:
            records[keys.ARRAYS] = self.arrays
        return RecordDict(records)

    @classmethod
    def of(cls, message: Message) -> TrainReply:
        content = message.content
        metrics = content.metric_records[keys.METRICS]
        report = NodeReport.of(message)
        if report is None:
            raise MessageError("a train reply has no NODE record")
        return cls(
            arrays=content.array_records.get(keys.ARRAYS),
            num_examples=int(number(metrics, keys.NUM_EXAMPLES)),
            node=report,
            evaluated=_scores(metrics, keys.EVAL_PREFIX),
            train_loss=number(metrics, keys.TRAIN_LOSS) if keys.TRAIN_LOSS in metrics else None,
            epsilon=number(metrics, keys.DP_EPSILON) if keys.DP_EPSILON in metrics else None,
            noise=_noise(metrics),
        )


@dataclass(frozen=True)
class EvaluateReply:
    """A node's scores of the final model on its test split (empty when they stay at the node),
    with each score's noise."""

    metrics: dict[str, float]
    num_examples: int
    node: NodeReport
    auc_unreliable: bool = False  # a class has fewer than 5 rows in the test split
    noise: dict[str, float] = field(default_factory=dict)

    def to_record(self) -> RecordDict:
        values: dict[str, Any] = dict(self.metrics)
        values.update({keys.NOISE_PREFIX + k: v for k, v in self.noise.items()})
        if self.metrics:
            values[keys.NUM_EXAMPLES] = self.num_examples
        if self.auc_unreliable:
            values[keys.AUC_UNRELIABLE] = 1
        return RecordDict({keys.METRICS: MetricRecord(values), keys.NODE: self.node.to_record()})

    @classmethod
    def of(cls, message: Message) -> EvaluateReply:
        metrics = message.content.metric_records[keys.METRICS]
        report = NodeReport.of(message)
        if report is None:
            raise MessageError("an evaluate reply has no NODE record")
        return cls(
            metrics=_scores(metrics),
            num_examples=int(metrics.get(keys.NUM_EXAMPLES, 0)),  # type: ignore[arg-type]
            node=report,
            auc_unreliable=bool(metrics.get(keys.AUC_UNRELIABLE, 0)),
            noise=_noise(metrics),
        )


#: The most candidate models one message may carry (every coalition of 8 nodes is 256).
MAX_CANDIDATES = 4096


@dataclass(frozen=True)
class Candidates:
    """Models for a node to score on its test split, in one message: each built by the coordinator
    from the updates of one coalition of nodes (federation.contributions).

    On the wire they are one ArrayRecord whose every parameter holds all the models' values,
    stacked on a first axis of one entry per model: Flower sends each array (and each chunk of
    one) as an object of its own, request by request, from the coordinator to the SuperLink, to
    the node and to its worker, so one record of a model's few arrays, not fifteen, is what keeps
    the valuation's message as quick as a round's."""

    models: list[ArrayRecord]
    instructions: Instructions

    def to_record(self) -> RecordDict:
        names = list(self.models[0].keys())
        if any(list(model.keys()) != names for model in self.models):
            raise ValueError("candidate models must have the same parameters in the same order")
        stacked = ArrayRecord({name: Array(np.stack([model[name].numpy() for model in self.models])) for name in names})
        return RecordDict({keys.CONFIG: self.instructions.to_record(), keys.CANDIDATES: stacked})

    @staticmethod
    def size(message: Message) -> tuple[int, int]:
        """How many models a candidates message says it carries and the parameters of one, read from
        its first stacked array without checking the others (for the audit of any message)."""
        shapes = [array.shape for array in message.content.array_records[keys.CANDIDATES].values()]
        count = int(shapes[0][0]) if shapes and shapes[0] else 0
        return count, sum(math.prod(shape[1:]) for shape in shapes) if count else 0

    @classmethod
    def of(cls, message: Message) -> Candidates:
        stacked = message.content.array_records.get(keys.CANDIDATES)
        if stacked is None or not stacked:
            raise MessageError(f"a candidates message has no {keys.CANDIDATES!r} record of models")
        values = {name: array.numpy() for name, array in stacked.items()}
        counts = {value.shape[0] if value.ndim else 0 for value in values.values()}
        if len(counts) != 1:
            raise MessageError(f"a candidates message's parameters stack different numbers of models: {sorted(counts)}")
        count = counts.pop()
        if not 1 <= count <= MAX_CANDIDATES:
            raise MessageError(f"a candidates message holds {count} models; give 1 to {MAX_CANDIDATES}")
        models = [ArrayRecord({name: Array(value[i]) for name, value in values.items()}) for i in range(count)]
        return cls(models, Instructions.of(message))


@dataclass(frozen=True)
class CandidateScores:
    """A node's scores of each candidate model, in the candidates' order (empty when its test split
    is under its minimum row count: the scores stay at the node), and each score's noise."""

    scores: list[dict[str, float]]
    num_examples: int
    node: NodeReport
    noise: dict[str, float] = field(default_factory=dict)

    def to_record(self) -> RecordDict:
        records: dict[str, Any] = {keys.NODE: self.node.to_record()}
        noise = {keys.NOISE_PREFIX + k: v for k, v in self.noise.items()}
        for i, scored in enumerate(self.scores):
            records[f"{keys.CANDIDATE}{i}"] = MetricRecord({**scored, **noise, keys.NUM_EXAMPLES: self.num_examples})
        return RecordDict(records)

    @classmethod
    def of(cls, message: Message) -> CandidateScores:
        report = NodeReport.of(message)
        if report is None:
            raise MessageError("a candidates reply has no NODE record")
        found = message.content.metric_records
        scores, rows, noise = [], 0, {}
        for i in range(len(found)):
            record = found.get(f"{keys.CANDIDATE}{i}")
            if record is None:
                raise MessageError(f"a candidates reply has no scores of candidate {i}")
            scores.append(_scores(record))
            rows, noise = int(number(record, keys.NUM_EXAMPLES)), _noise(record)
        return cls(scores, rows, report, noise)


@dataclass(frozen=True)
class QueryMessage:
    """A query to every node: the task spec's text (stored by the node for the run) and the query
    kind's request as JSON."""

    spec_text: str
    request: str

    def to_record(self) -> RecordDict:
        return RecordDict({keys.CONFIG: ConfigRecord({keys.TASK_SPEC: self.spec_text, keys.REQUEST: self.request})})

    @classmethod
    def of(cls, message: Message) -> QueryMessage:
        config = _config(message)
        return cls(spec_text=text(config, keys.TASK_SPEC), request=text(config, keys.REQUEST))


@dataclass(frozen=True)
class QueryReply:
    """A node's answer to a query: who it is and the query kind's answer as JSON."""

    name: str
    organisation: str
    answer: str

    def to_record(self) -> RecordDict:
        record = ConfigRecord(
            {keys.NODE_NAME: self.name, keys.ORGANISATION: self.organisation, keys.ANSWER: self.answer}
        )
        return RecordDict({keys.NODE: record})

    @classmethod
    def of(cls, message: Message) -> QueryReply:
        node = message.content.config_records[keys.NODE]
        return cls(text(node, keys.NODE_NAME), text(node, keys.ORGANISATION), text(node, keys.ANSWER))


def _config(message: Message) -> ConfigRecord:
    try:
        return message.content.config_records[keys.CONFIG]
    except KeyError:
        raise MessageError(f"a {message.metadata.message_type} message has no {keys.CONFIG!r} record") from None


def carry_audit_head(reply: Message, count: int, head: str) -> None:
    """Put the node's audit head (its log's length and last hash) in a reply's NODE record."""
    record = reply.content.config_records.get(keys.NODE)
    if record is not None and not reply.has_error():
        record[keys.AUDIT_COUNT] = count
        record[keys.AUDIT_HEAD] = head


def audit_head(reply: Message) -> tuple[int, str] | None:
    """The audit head a reply carries (None for an error reply or a node that sends none)."""
    if reply.has_error() or keys.NODE not in reply.content.config_records:
        return None
    record = reply.content.config_records[keys.NODE]
    if keys.AUDIT_COUNT not in record or keys.AUDIT_HEAD not in record:
        return None
    return int(number(record, keys.AUDIT_COUNT)), text(record, keys.AUDIT_HEAD)
