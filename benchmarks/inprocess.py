"""Run the lab's own ServerApp and ClientApp in one process: no Ray, no SuperLink, no SuperNodes.

The task matrix (tests/test_task_matrix_e2e.py) needs many short federated runs of the real apps
(``federation.server_app.app`` and ``federation.client_app.app``, unchanged), and what it checks
is theirs, not Flower's transport: on Flower's simulation runtime (benchmarks/simulated.py) each
run also waits for a Ray cluster, which on a loaded machine may not start in time at all, and the
deployment runtime starts processes per node and per message. Here the ServerApp's ``main``
runs on ``InProcessGrid``, a Flower ``Grid`` that hands each message to the lab's ClientApp of
the node it is addressed to, in the same process, as Flower's runtimes would:

- every message goes out, and every reply comes back, serialised and read back as on the wire,
  checked with the SuperLink's own ``validate_message``, and stamped by Flower's ``Message``
  with the task identity (run, node) of the process that made it: the coordinator's while the
  ServerApp runs, the node's while its ClientApp answers;
- each node keeps one ``Context`` per run (its node config and the state the ClientApp keeps
  between messages), handed to the ClientApp as a copy and kept only when it answers: a node
  whose app raises answers with Flower's error reply and keeps its context as it was;
- nodes are given the ``node-name`` and ``data-path`` a SuperNode gets from ``--node-config`` and,
  as on the simulation runtime, no agreement on purpose (``no-agreement``: these runs are of
  public or generated data, which no agreement governs).

A node answers while ``push_messages`` delivers, one message after another, so a round's replies
are all there at the first pull and a round timeout never runs out. The ServerApp's progress
events (lab.contract.events) are read from its standard output, kept in the run's folder.

``run_jobs`` runs a list of jobs, each a run in a process of its own forked from one that has
imported the apps once, ``workers`` at a time: a run that crashes its process fails alone.
It takes and returns the jobs of benchmarks/simulated.py (``final``: the ``done`` event's
summary, ``events``, or ``error`` with ``keep_going``), without the per-message measurements
(bytes and memory per Ray actor) of its scale benchmark.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import resource
import signal
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from lab.contract import events
from lab.contract.settings import RunSettings

ROOT = Path(__file__).resolve().parent.parent

RUNTIME = "in-process runtime (the lab's ServerApp and each node's ClientApp in one process per run, no Ray)"

#: What every run imports (several CPU-seconds): loaded once by the process the runs are forked
#: from, not once a run: the apps, MLflow's SQL store, and what is imported on first use:
#: TorchDynamo (PyTorch's optimisers, several seconds) and scikit-learn (a node's split, lab.core.data).
PRELOAD = (
    "torch",
    "torch._dynamo",
    "sklearn.model_selection",
    "mlflow.pyfunc",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "federation.server_app",
    "federation.client_app",
    "lab.runtime.run",
)

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _identity(run_id: int, node_id: int, task_id: int) -> Iterator[None]:
    """What Flower sets in a process while it runs a task of run ``run_id`` for ``node_id``: the
    identity its ``Message`` constructor stamps on the messages made there."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = run_id, node_id, task_id
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


def _on_the_wire(message: Message) -> Message:
    """The message as its receiver reads it: serialised and read back, as Flower's transport does."""
    from flwr.common.serde import message_from_proto, message_to_proto

    return message_from_proto(message_to_proto(message))


def _copy(context: Context) -> Context:
    """The context as a ClientApp process receives it from its SuperNode (a copy, not the node's own)."""
    from flwr.common.serde import context_from_proto, context_to_proto

    return context_from_proto(context_to_proto(context))


def _random_id(taken: set[int]) -> int:
    """A fresh 64-bit id, as the SuperLink draws node and run ids (never 0 or its own node id)."""
    from flwr.common.constant import NODE_ID_NUM_BYTES, SUPERLINK_NODE_ID
    from flwr.supercore.corestate.utils import generate_rand_int_from_bytes

    return generate_rand_int_from_bytes(NODE_ID_NUM_BYTES, exclude={0, SUPERLINK_NODE_ID, *taken})


@dataclass
class InProcessNode:
    """One node: the ClientApp that answers for it, its node config and its context of each run."""

    node_id: int
    node_config: dict[str, str]
    app: Callable[[Message, Context], Message]
    contexts: dict[int, Context] = field(default_factory=dict)
    tasks: int = 0

    def answer(self, message: Message) -> Message:
        """The node's reply to ``message``, as Flower's ClientApp runtime makes it."""
        from flwr.common.constant import ErrorCode

        run_id = message.metadata.run_id
        kept = self.contexts.setdefault(run_id, Context(run_id, self.node_id, dict(self.node_config), RecordDict(), {}))
        context = _copy(kept)
        self.tasks += 1
        with _identity(run_id, self.node_id, self.tasks):
            try:
                reply = self.app(message, context)
            except Exception as exc:  # noqa: BLE001 - Flower answers any exception of the app with an error reply
                logger.exception("node %s: the ClientApp raised an exception", self.node_config.get("node-name"))
                # Flower's wording (run_clientapp), which the coordinator unwraps (lab.errors).
                reason = str(type(exc)) + ":<'" + str(exc) + "'>"
                return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
        self.contexts[run_id] = context  # Flower keeps the context only of an app that answered
        return reply


class InProcessGrid(Grid):
    """Flower's Grid for one run, delivering each message to its node's ClientApp in this process."""

    def __init__(self, nodes: Iterable[InProcessNode], run: Run) -> None:
        self.nodes = {node.node_id: node for node in nodes}
        self._run = run
        self._replies: dict[str, Message] = {}  # by the id of the message each replies to

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return Run(**vars(self._run))  # a copy, as Flower's grids give

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each valid message to its node now; the ids of those delivered (the SuperLink
        drops an invalid one with an error in its log, and so does this grid)."""
        from flwr.server.utils import validate_message

        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as Flower's in-memory grid does
            errors = validate_message(message, is_reply_message=False)
            node = self.nodes.get(message.metadata.dst_node_id)
            if message.metadata.run_id != self._run.run_id:
                errors.append(f"run {message.metadata.run_id} is not this grid's run {self._run.run_id}")
            if node is None:
                errors.append(f"no node {message.metadata.dst_node_id} in this run")
            if errors or node is None:
                logger.error("message to node %s not delivered: %s", message.metadata.dst_node_id, errors)
                continue
            self._replies[message.metadata.message_id] = self._reply(node, message)
            ids.append(message.metadata.message_id)
        return ids

    def _reply(self, node: InProcessNode, message: Message) -> Message:
        from flwr.common.constant import ErrorCode
        from flwr.server.utils import validate_message
        from flwr.supercore.date import now

        delivered = _on_the_wire(message)
        delivered.metadata.delivered_at = now().isoformat()  # as the SuperLink marks a message a node pulled
        reply = node.answer(delivered)
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        errors = validate_message(reply, is_reply_message=True)
        if reply.metadata.reply_to_message_id != message.metadata.message_id:
            errors.append("it replies to another message")
        if errors:  # the SuperLink would drop it and the round would wait for it: say why at once instead
            reason = f"the node's reply is not one Flower would accept: {'; '.join(errors)}"
            reply = Message(Error(code=ErrorCode.UNKNOWN, reason=reason), reply_to=delivered)
            reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        return _on_the_wire(reply)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to the messages ``message_ids`` not pulled yet (each is handed out once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Every node's reply: each was made while its message was pushed, so none is waited for."""
        return self.pull_messages(self.push_messages(messages))


def run_federation(settings: RunSettings, nodes: Mapping[str, str], workdir: Path) -> dict[str, Any]:
    """One federated run of the lab's ServerApp with ``nodes`` (name to data source) in this process.

    Returns the coordinator's final event (the run's summary) and its progress events; the
    ServerApp's output is kept in ``workdir/output.log``. Raises RuntimeError when the run did
    not end with ``done``.
    """
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID
    from flwr.supercore.corestate.utils import generate_rand_int_from_bytes

    from federation.client_app import app as client_app
    from federation.server_app import app as server_app
    from lab.node.site import NodeSite

    workdir.mkdir(parents=True, exist_ok=True)
    output = workdir / "output.log"  # the ServerApp's output, with its progress events (lab.contract.events)
    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    members: list[InProcessNode] = []
    for name, data in nodes.items():
        # A SuperNode's --node-config, as `lab node start --no-agreement` writes it (lab.node.site).
        config = NodeSite(name, data, no_agreement=True).node_config()
        members.append(InProcessNode(_random_id({m.node_id for m in members}), config, client_app))
    grid = InProcessGrid(members, run)
    context = Context(run.run_id, SUPERLINK_NODE_ID, {}, RecordDict(), settings.to_run_config())
    logging.getLogger("flwr").setLevel(logging.WARNING)
    failure: Exception | None = None
    with (
        output.open("w", encoding="utf-8") as sink,
        contextlib.redirect_stdout(sink),
        _identity(run.run_id, SUPERLINK_NODE_ID, 1),
    ):
        try:
            server_app(grid=grid, context=context)
        except Exception as exc:  # noqa: BLE001 - the ServerApp's failed event says why; its traceback is logged
            logger.exception("the ServerApp raised an exception")
            failure = exc
    parsed = [events.parse(line) for line in output.read_text(encoding="utf-8").splitlines()]
    lines = [event.to_json() for event in parsed if event is not None]
    final = lines[-1] if lines else {"event": "missing"}
    if final["event"] != "done":
        raise RuntimeError(f"the in-process run did not finish: {final.get('reason', final['event'])}") from failure
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the coordinator's and its nodes'
    return {"final": final, "events": lines, "coordinator_peak_rss_mb": peak_mb}


def _job(job: dict[str, Any]) -> dict[str, Any]:
    """One run (in a process of its own): its summary and history.

    ``job`` holds the spec's path, the nodes as (name, data source) pairs, the run settings, a
    work folder, the tracking URI and, for a run that registers, the federation's signing key; the
    settings below are the defaults a job's own settings override. A failed run raises, or with
    ``keep_going`` returns the job with its ``error``.
    """
    from lab.core.environ import SIGNING_KEY
    from lab.core.spec import load_spec
    from lab.runtime.run import run_settings

    if job.get("signing_key"):  # the federation's key: a run that registers signs its model with it
        os.environ[SIGNING_KEY.name] = job["signing_key"]
    workdir = Path(job["workdir"])
    spec = load_spec(Path(job["spec"]))
    nodes = dict(job["nodes"])
    # The nodes run in the coordinator's own environment, so the default strict environment policy
    # holds (Ray's workers add its vendored packages, hence warn on the simulation runtime).
    values = {"register": False, "min_nodes": len(nodes), **job["settings"]}
    settings = run_settings(spec, tracking_uri=job["tracking_uri"], nodes=len(nodes), values=values)
    try:
        result = run_federation(settings, nodes, workdir)
    except Exception as exc:
        failure = f"in-process run {workdir.name} failed: {exc} (its output is in {workdir})"
        if job.get("keep_going"):  # the caller reports each job's outcome itself
            return {**job, "error": failure}
        raise RuntimeError(failure) from exc
    return {**job, **result}


def _run_one(job: dict[str, Any], answer: Connection) -> None:
    """A forked process's task: run ``job``, with the process's log in its folder, and send back
    (result, None) or (None, why it failed)."""
    from lab.core.environ import PRIVATE_ENV

    os.environ.update(PRIVATE_ENV)
    workdir = Path(job["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    # The run's log and tracebacks beside its output, not interleaved with the other runs' on the caller's.
    log = os.open(workdir / "process.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        answer.send((_job(job), None))
    except Exception as exc:  # noqa: BLE001 - a failed run without keep_going: the caller stops the others
        answer.send((None, str(exc)))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _runner(jobs: list[dict[str, Any]], workers: int, results: Connection) -> None:
    """The process the runs are forked from (spawned by ``run_jobs``): it imports what every run
    needs once, then keeps ``workers`` runs going, each in a process of its own, and sends each
    (index, result, failure) back as it ends. Stopped (SIGTERM), it stops the runs first."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally below runs
    for name in PRELOAD:
        importlib.import_module(name)
    # Forking is safe here: this process runs no thread of its own, and it holds no lock.
    fork = get_context("fork")
    waiting = list(enumerate(jobs))
    running: dict[Connection, tuple[int, dict[str, Any], Any]] = {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                index, job = waiting.pop(0)
                receive, send = fork.Pipe(duplex=False)
                process = fork.Process(target=_run_one, args=(job, send), name=f"inprocess-{index}")
                process.start()
                send.close()  # only the run holds the sending end: its exit ends the pipe
                running[receive] = (index, job, process)
            for ready in wait(list(running)):
                assert isinstance(ready, Connection)
                index, job, process = running.pop(ready)
                try:
                    result, failure = ready.recv()
                except EOFError:  # the run's process died before it answered
                    process.join()
                    failure = (
                        f"in-process run {Path(job['workdir']).name} failed: its process ended with exit code "
                        f"{process.exitcode} (its log is in {job['workdir']})"
                    )
                    result = {**job, "error": failure} if job.get("keep_going") else None
                    failure = None if result is not None else failure
                ready.close()
                process.join()
                results.send((index, result, failure))
    finally:
        for _, _, process in running.values():
            process.terminate()
            process.join()
    # Every run's records are written and its process has ended; unloading PyTorch and MLflow
    # here would only keep the caller waiting (about 4 s, more on a loaded machine).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_jobs(
    jobs: list[dict[str, Any]], workers: int, progress: Callable[[dict[str, Any]], None], *, tracking_uri: str
) -> list[dict[str, Any]]:
    """Run the jobs ``workers`` at a time, every run recorded at ``tracking_uri``; their results in
    the jobs' order (``progress`` is called with each as it ends). A failed job without
    ``keep_going`` stops the others and raises RuntimeError."""
    import mlflow

    # One MLflow store for every run, its schema made here once (not in every run).
    mlflow.MlflowClient(tracking_uri).search_experiments()
    jobs = [{**job, "tracking_uri": tracking_uri} for job in jobs]
    spawn = get_context("spawn")  # a fresh process to fork the runs from: this one may run threads
    results, send = spawn.Pipe(duplex=False)
    runner = spawn.Process(target=_runner, args=(jobs, workers, send), name="inprocess-runner")
    runner.start()
    send.close()
    done: dict[int, dict[str, Any]] = {}
    try:
        while len(done) < len(jobs):
            try:
                index, result, failure = results.recv()
            except EOFError:
                raise RuntimeError(f"the in-process runner stopped (exit code {runner.exitcode})") from None
            if failure is not None:
                raise RuntimeError(failure)
            done[index] = result
            progress(result)
    finally:  # a failed run, Ctrl-C or kill: stop the other runs now, not after them
        if runner.is_alive() and len(done) < len(jobs):
            runner.terminate()
        runner.join()
        results.close()
    return [done[i] for i in range(len(jobs))]
