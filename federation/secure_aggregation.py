"""SecAgg+ training rounds: the coordinator only ever sees the sum of the nodes' updates.

With the run setting ``secure-aggregation = true`` every training round runs Flower's SecAgg+
protocol in four messages per node: ``setup`` (each node makes two key pairs), ``share_keys``
(each node sends Shamir shares of its mask seed and key, encrypted for each other node),
``collect_masked_vectors`` (each node trains, weights its update by its row count, quantises it
and adds pairwise and private masks) and ``unmask`` (the nodes return the shares the coordinator
needs to remove the masks from the sum). The coordinator adds the masked vectors and can only
unmask their sum, from which it takes the weighted average: FedAvg.

Why Flower's legacy path. In Flower 1.41 SecAgg+ exists only as ``SecAggPlusWorkflow``
(``flwr.server.workflow``) and ``secaggplus_mod`` (``flwr.client.mod``); ``flwr.serverapp``
(the message API the lab's other strategies come from) has no secure aggregation. The workflow
raises TypeError unless its context is a ``LegacyContext``; it takes the round and the global
model from that context's state (records ``config`` and ``parameters``); it asks the legacy
``Strategy`` from ``flwr.server.strategy`` for ``configure_fit(round, Parameters, ClientManager)``
and hands the unmasked sum to its ``aggregate_fit(round, [(ClientProxy, FitRes)], failures)``;
and it sends the train instructions in the legacy ``fitins.parameters`` / ``fitins.config``
records. On the node, ``secaggplus_mod`` reads the handler's reply with
``recorddict_to_fitres``, so the reply must carry ``fitres.parameters``, ``fitres.num_examples``,
``fitres.metrics`` and ``fitres.status``. The mod also fails with KeyError on a train message that
has no ``secaggplus_configs`` record, so the node applies it only to SecAgg+ messages
(``node_mod``). Hence: a legacy ``FedAvg`` in a ``LegacyContext``, FedAvg only.

The coordinator runs the workflow round by round itself (no ``DefaultWorkflow``): its client
manager holds only the nodes that joined at preparation, so no other node is ever asked, and
nothing is sampled or evaluated besides the lab's own messages.

Quantisation. Each node clips ``w * x`` (its weight ``w = rows / total rows`` times each
parameter) to ``[-CLIPPING_RANGE, CLIPPING_RANGE]`` and rounds it stochastically to one of
``QUANTIZATION_RANGE`` levels; a node whose weighted update would be clipped refuses to send it.
Compared with plain FedAvg, each aggregated parameter is off by at most ``error_bound(nodes)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Status,
    bytes_to_ndarray,
    ndarray_to_bytes,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from federation.grid import DelegatingGrid
from lab.contract import keys
from lab.contract.messages import NodeReport
from lab.contract.records import error_reason
from lab.errors import MessageError, Refusal, RunFailedError, TrainingError, UnmaskedUpdateError
from lab.node.site import NodeSite

if TYPE_CHECKING:  # the node imports this module too: no MLflow there
    from federation.recorder import Recorder
    from lab.contract.membership import Guard, Member
    from lab.contract.settings import RunSettings
    from lab.registry.tracking import Tracker

__all__ = [
    "CLIPPING_RANGE",
    "MODULUS_RANGE",
    "QUANTIZATION_RANGE",
    "ObservedGrid",
    "error_bound",
    "node_mod",
    "run_secure_rounds",
]

logger = logging.getLogger(__name__)

#: Each weighted parameter ``w * x`` is clipped to [-8, 8] (w <= 1; the heart model's are below 2).
CLIPPING_RANGE = 8.0
#: Quantisation levels over the clipping range: one level is 2 * 8 / 2**24 = 9.5e-7.
QUANTIZATION_RANGE = 2**24
#: Masks are drawn modulo 2**32; the sum of N quantised vectors stays below it for N < 256.
MODULUS_RANGE = 2**32

_LEGACY_PARAMETERS = "fitins.parameters"
_LEGACY_CONFIG = "fitins.config"


def error_bound(num_nodes: int, clipping_range: float = CLIPPING_RANGE, levels: int = QUANTIZATION_RANGE) -> float:
    """Largest difference, per parameter and round, between the SecAgg+ average and FedAvg's.

    Each node's ``w_i * x_i`` is rounded stochastically to a level ``2c / T`` apart: an error
    under ``2c / T`` per node. The weights travel rounded to ``1 / T`` (at most ``1 / (2T)`` off
    each). With ``max_weight`` the members' total rows the weights sum to 1, so the average is
    off by at most ``N * 2c / T`` (rounding) plus ``N / (2T) * 2c`` (weights, for parameters
    within the clipping range): ``3 N c / T``.
    """
    return 3.0 * num_nodes * clipping_range / levels


# --------------------------------------------------------------------------------------------
# The coordinator
# --------------------------------------------------------------------------------------------


class ObservedGrid(DelegatingGrid):
    """The run's Grid as the SecAgg+ workflow sees it: every reply is checked and counted.

    No reply may carry model arrays (``UnmaskedUpdateError`` otherwise: the coordinator must
    never hold a node's update); masked-vector bytes are counted per node; at the
    ``collect_masked_vectors`` stage the guard screens each reply's NODE record, and a node it
    does not admit is treated as dropped (its masked vector is not added, and its masks are
    removed from the others' by SecAgg+'s dropout recovery).
    """

    def __init__(self, grid: Grid, guard: Guard, name_of: Callable[[int], str]) -> None:
        super().__init__(grid)
        self.guard = guard
        self.name_of = name_of
        self.start_round()

    def start_round(self) -> None:
        """Forget the previous round's replies and counts."""
        self.collected: list[Message] = []  # collect_masked_vectors replies, errors included
        self.excluded: dict[str, str] = {}  # node name -> why it was left out (guard or error)
        self.array_bytes: dict[str, int] = {}  # per node: bytes of model arrays received (must stay 0)
        self.masked_bytes: dict[str, int] = {}  # per node: bytes of masked vectors received

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        stage = _stage_of(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        kept: list[Message] = []
        for reply in replies:
            name = self.name_of(reply.metadata.src_node_id)
            if reply.has_error():
                self.excluded.setdefault(name, f"{stage}: {error_reason(reply)}")
                kept.append(reply)
                continue
            self._check_masked(stage, name, reply.content)
            if stage == Stage.COLLECT_MASKED_VECTORS:
                report = NodeReport.of(reply)
                refusal = self.guard.screen(report)[0] if report is not None else "its reply names no node"
                if refusal is not None:
                    self.excluded[name] = f"node {name!r} not aggregated: {refusal}"
                    continue  # dropped: SecAgg+ recovers the sum of the others
                self.collected.append(reply)
            kept.append(reply)
        if stage == Stage.COLLECT_MASKED_VECTORS:
            self.collected += [r for r in kept if r.has_error()]
        return kept

    def _check_masked(self, stage: str, name: str, content: RecordDict) -> None:
        arrays = sum(record.count_bytes() for record in content.array_records.values())
        self.array_bytes[name] = self.array_bytes.get(name, 0) + arrays
        if arrays:
            raise UnmaskedUpdateError(
                f"secure aggregation: node {name!r} sent {arrays} bytes of model arrays at the {stage} stage; "
                "the coordinator accepts only masked vectors (is the node's ClientApp applying secaggplus_mod?)"
            )
        configs = content.config_records.get(RECORD_KEY_CONFIGS)
        masked = configs.get(Key.MASKED_PARAMETERS) if configs is not None else None
        if isinstance(masked, list):
            size = sum(len(b) for b in masked if isinstance(b, bytes))
            self.masked_bytes[name] = self.masked_bytes.get(name, 0) + size
        elif stage == Stage.COLLECT_MASKED_VECTORS:
            raise UnmaskedUpdateError(f"secure aggregation: node {name!r} sent no masked vector at the {stage} stage")


def _stage_of(messages: list[Message]) -> str:
    for msg in messages:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None:
            return str(configs.get(Key.STAGE, "?"))
    return "?"


def run_secure_rounds(
    grid: Grid,
    initial: ArrayRecord,
    train_config: ConfigRecord,
    members: dict[int, Member],
    recorder: Recorder,
    guard: Guard,
    settings: RunSettings,
    tracker: Tracker,
) -> Result:
    """``settings.num_rounds`` rounds of FedAvg through SecAgg+, sending ``train_config`` (plus the
    round) to the members only; returns the final global model like ``Strategy.start`` does."""
    # Flower's legacy server side, imported here only: the node imports this module too.
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey

    if len(members) < 2:
        raise RunFailedError(f"secure aggregation needs 2 or more nodes; {len(members)} accepted the task")
    if len(members) * QUANTIZATION_RANGE >= MODULUS_RANGE:
        raise RunFailedError(f"secure aggregation: {len(members)} nodes would overflow the masks' modulus")
    names = list(initial.keys())
    dtypes = [initial[n].numpy().dtype for n in names]
    config: dict[str, Any] = {**train_config, keys.SECURE_AGGREGATION: True, keys.ARRAY_NAMES: names}
    strategy = LegacyFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=len(members),
        min_available_clients=len(members),
        on_fit_config_fn=lambda server_round: {**config, keys.SERVER_ROUND: server_round},
        accept_failures=True,
    )
    client_manager = SimpleClientManager()
    for node_id in members:  # only the nodes that joined at preparation
        client_manager.register(GridClientProxy(node_id, grid, grid.run.run_id))
    context = LegacyContext(
        Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        config=ServerConfig(num_rounds=settings.num_rounds, round_timeout=settings.round_timeout),
        strategy=strategy,
        client_manager=client_manager,
    )
    workflow = SecAggPlusWorkflow(
        num_shares=1.0,  # every other member is a neighbour
        reconstruction_threshold=max(2, len(members) // 2 + 1),  # a majority is needed to unmask
        max_weight=float(sum(m.train_rows for m in members.values())),
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE,
        timeout=settings.round_timeout,
    )
    tracker.log_params(
        {
            "secagg.clipping_range": CLIPPING_RANGE,
            "secagg.quantization_range": QUANTIZATION_RANGE,
            "secagg.modulus_range": MODULUS_RANGE,
            "secagg.reconstruction_threshold": workflow.reconstruction_threshold,
            "secagg.error_bound": error_bound(len(members)),
        }
    )
    observed = ObservedGrid(grid, guard, recorder.name_of)
    arrays = [initial[n].numpy() for n in names]
    for server_round in range(1, settings.num_rounds + 1):
        before = compat.parameters_to_arrayrecord(ndarrays_to_parameters(arrays), keep_input=True)
        context.state.array_records[MAIN_PARAMS_RECORD] = before
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: server_round, WorkflowKey.START_TIME: time.monotonic()}
        )
        observed.start_round()
        workflow(observed, context)
        after = context.state.array_records[MAIN_PARAMS_RECORD]
        good = [r for r in observed.collected if not r.has_error()]
        if after is before or len(good) < settings.min_nodes:
            reasons = "; ".join(observed.excluded.values())
            raise RunFailedError(
                f"round {server_round} secure aggregation: {len(good)} node(s) aggregated, fewer than "
                f"min-nodes = {settings.min_nodes}" + (f" ({reasons})" if reasons else "")
            )
        errors = {r.metadata.src_node_id for r in observed.collected if r.has_error()}
        excluded = {k: v for k, v in observed.excluded.items() if k not in {recorder.name_of(n) for n in errors}}
        recorder.on_train(server_round, observed.collected, len(members), excluded)
        tracker.log_metrics(
            {f"node.{n}.secagg.array_bytes": float(b) for n, b in observed.array_bytes.items()}
            | {f"node.{n}.secagg.masked_bytes": float(b) for n, b in observed.masked_bytes.items()}
            | {"secagg.array_bytes": float(sum(observed.array_bytes.values()))},
            step=server_round,
        )
        aggregated = parameters_to_ndarrays(compat.arrayrecord_to_parameters(after, keep_input=True))
        arrays = [np.asarray(a, dtype=d) for a, d in zip(aggregated, dtypes, strict=True)]
    return Result(arrays=ArrayRecord({n: Array(a) for n, a in zip(names, arrays, strict=True)}))


# --------------------------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------------------------


def node_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The node's train mod: SecAgg+ for messages of a secure-aggregation round, nothing otherwise.

    At the ``collect_masked_vectors`` stage the legacy fit instructions are turned into the lab's
    own train message (``arrays``, ``config``) before the handler, and so its agreement check,
    sees it; the handler's reply is turned into the legacy fit result ``secaggplus_mod`` masks.
    """
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)  # a plain training round: untouched
    from flwr.client.mod import secaggplus_mod

    from federation.governance import audit

    stage, asked = _stage(msg)
    site = NodeSite.from_node_config(context.node_config, context.node_id)
    try:
        _trust(stage, asked, msg.metadata.dst_node_id, context)
    except Refusal as refusal:
        logger.error("node %s refused the SecAgg+ %s stage: %s", site.name, stage, refusal)
        audit(site, msg, asked, "refused", clause=refusal.clause, reason=str(refusal))
        return Message(Error(code=keys.REFUSED, reason=f"node {site.name!r} refused: {refusal}"), reply_to=msg)
    reply = secaggplus_mod(msg, context, lambda m, c: _train_legacy(m, c, call_next))
    if stage != Stage.COLLECT_MASKED_VECTORS:  # that stage trains: its handler's own audit entry records it
        audit(site, msg, asked, "accepted", reply=reply)
    return reply


#: Where a node keeps what it saw of a SecAgg+ round (the node ids at key exchange, the threshold).
_SEEN = "lab.secagg"


def _stage(msg: Message) -> tuple[str, dict[str, Any]]:
    """A SecAgg+ message's stage, and what it asks (for the audit log)."""
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    stage = str(configs.get(Key.STAGE, "?"))
    asked: dict[str, Any] = {"secure_aggregation": stage}
    if stage == Stage.SETUP:
        asked.update({k: configs.get(k) for k in (Key.SAMPLE_NUMBER, Key.SHARE_NUMBER, Key.THRESHOLD)})
    elif stage == Stage.SHARE_KEYS:
        asked["nodes"] = sorted(int(k) for k in configs if k != Key.STAGE and k.isdigit())
    elif stage == Stage.UNMASK:
        asked["active"] = [int(n) for n in configs.get(Key.ACTIVE_NODE_ID_LIST, [])]  # type: ignore[union-attr]
        asked["dead"] = [int(n) for n in configs.get(Key.DEAD_NODE_ID_LIST, [])]  # type: ignore[union-attr]
    return stage, asked


def _trust(stage: str, asked: dict[str, Any], own: int, context: Context) -> None:
    """Refuse a SecAgg+ message a node cannot trust, before Flower's mod acts on it: a threshold at
    or below half the nodes (a minority of them could help unmask one), and an unmask request whose
    lists overlap, name nodes not seen at key exchange, or call this node dead (it sent its masked
    vector: shares of both its masks would give its update away)."""
    seen = context.state.config_records.get(_SEEN, ConfigRecord())
    if stage == Stage.SETUP:
        nodes, threshold = int(asked[Key.SAMPLE_NUMBER] or 0), int(asked[Key.THRESHOLD] or 0)
        if threshold <= nodes / 2:
            raise Refusal(
                "secure-aggregation",
                f"a reconstruction threshold of {threshold} for {nodes} nodes is not above half of them: so few "
                "could together unmask one node's update",
            )
        context.state.config_records[_SEEN] = ConfigRecord({"threshold": threshold, "nodes": []})
    elif stage == Stage.SHARE_KEYS:
        seen["nodes"] = list(asked["nodes"])
        context.state.config_records[_SEEN] = seen
    elif stage == Stage.UNMASK:
        active, dead = set(asked["active"]), set(asked["dead"])
        known = {int(n) for n in seen.get("nodes", [])}  # type: ignore[union-attr]
        if active & dead:
            raise Refusal(
                "secure-aggregation",
                f"the unmask request lists node(s) {sorted(active & dead)} both as active and as dropped: the shares "
                "of both their masks would give their updates away",
            )
        if not known or (active | dead) - known:
            raise Refusal(
                "secure-aggregation",
                f"the unmask request names node(s) {sorted((active | dead) - known)} not seen at key exchange",
            )
        if own in dead:
            raise Refusal("secure-aggregation", "the unmask request calls this node dropped, which sent its vector")


def _train_legacy(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    content = msg.content
    config = content.config_records[_LEGACY_CONFIG]
    names = [str(n) for n in config.get(keys.ARRAY_NAMES, [])]  # type: ignore[union-attr]
    tensors = compat.arrayrecord_to_parameters(content.array_records[_LEGACY_PARAMETERS], keep_input=True).tensors
    if len(names) != len(tensors):
        raise MessageError(f"secure aggregation: {len(tensors)} arrays arrived with {len(names)} names")
    arrays = ArrayRecord({n: Array(bytes_to_ndarray(t)) for n, t in zip(names, tensors, strict=True)})
    msg.content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config})  # what `governed` and `train` read
    reply = call_next(msg, context)
    if reply.has_error():  # a refusal: its reason becomes the error the coordinator sees
        raise Refusal("(relayed)", error_reason(reply), relayed=True)
    metrics = reply.content.metric_records[keys.METRICS]
    num_examples = int(metrics[keys.NUM_EXAMPLES])  # type: ignore[arg-type]
    update = [a.numpy().astype(np.float64) for a in reply.content.array_records[keys.ARRAYS].values()]
    _check_clipping(update, num_examples, context)
    fitres = FitRes(
        status=Status(Code.OK, ""),
        parameters=Parameters([ndarray_to_bytes(a) for a in update], "numpy.ndarray"),
        num_examples=num_examples,
        metrics={},
    )
    out = compat.fitres_to_recorddict(fitres, keep_input=False)
    out.metric_records[keys.METRICS] = MetricRecord(dict(metrics))
    for key, record in reply.content.config_records.items():
        out.config_records[key] = record  # the NODE record with the fingerprints
    return Message(out, reply_to=msg)


def _check_clipping(update: list[np.ndarray[Any, Any]], num_examples: int, context: Context) -> None:
    """Refuse an update SecAgg+ would clip (it would silently change the average)."""
    state = context.state.config_records[RECORD_KEY_STATE]
    clipping = float(state["clipping_range"])  # type: ignore[arg-type]
    weight = num_examples / float(state["max_weight"])  # type: ignore[arg-type]
    largest = max((float(np.abs(a).max()) for a in update if a.size), default=0.0)
    if largest * weight > clipping:
        raise TrainingError(
            f"secure aggregation: a weighted parameter of {largest * weight:.3g} exceeds the clipping range "
            f"+-{clipping:g}; the update would be distorted, so it is not sent"
        )
