"""The node's warm worker: answers each message of its SuperNode in one long-lived process.

Flower's SuperNode starts a new ``flwr-clientapp`` process for every message (several
CPU-seconds of imports each). Started with ``--isolation process``, it leaves the task to a
process of one's choosing, which acquires tasks from the SuperNode's Runtime API on loopback.
This is that process. For each task it does what Flower's ``run_clientapp`` does, with Flower's
own functions (``pull_task_input``, ``push_message``, ``push_task_output``, the task heartbeat),
but in a process that stays:

1. acquire a task (polling the Runtime API every ``POLL_SECONDS``) and pull its message, context,
   run and app (FAB);
2. check the FAB's sha256 against the node's agreement before anything of it is written or
   imported (lab.node.guard), and refuse with an error reply otherwise;
3. install and load the app once per approved FAB hash; every run gets a fresh ClientApp object
   (the app's own modules are imported again; the libraries they use stay loaded), and the run's
   context comes from the SuperNode, so nothing of one run reaches another;
4. answer the message in-process, push the reply, and report the task's end.

Each task is answered on its own thread, and only the app's work (step 3 and the handler) holds
the worker's lock, so messages are still answered one at a time. A task whose message never
arrives cannot hold up the next one: when a node's link comes back after its run has ended,
Flower's SuperNode creates a task for the stale message, finds the run finished and leaves the
task behind without the message's content; the thread waiting for it gives up after Flower's
object-pull limit while newer tasks are answered.

The node's unit (lab.runtime.node) starts it with its SuperNode and restarts it if it dies.
While it answers a message the worker keeps the task's token, the message's header and the run's
context in ``--in-flight DIR`` (the node's home, readable by its owner only); a worker started
after one that died answers each message left there with an error reply ("the node's worker
stopped while answering"), with Flower's own ``push_message`` and ``push_task_output``. The
coordinator records it like a dropped node's, and the SuperNode, which hands on one message at a
time, goes on to the next one at once instead of when Flower's task heartbeat lapses (a minute).

    python -m lab.runtime.worker --runtime-api 127.0.0.1:PORT [--in-flight DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.core.environ import APP_HASH
from lab.errors import LabError
from lab.node.guard import check_app

__all__ = ["POLL_SECONDS", "Worker", "main"]

logger = logging.getLogger(__name__)

#: Seconds between two asks for a task while the node is idle (a request on loopback). A message
#: reaches the SuperNode only at its own poll of the SuperLink (every 3 s when idle), so asking
#: more often gains little: at 0.05 s a node idle between messages cost 0.07 CPU-s a second (its
#: worker's and its SuperNode's), at 0.25 s 0.03.
POLL_SECONDS = 0.25

#: What answering a first message imports (Flower's ClientApp runtime, scikit-learn's validation
#: stack, PyTorch's optimisers, whose first construction imports torch._dynamo: seconds each),
#: imported before that message comes (lab.runtime.forked imports it once for every worker it
#: forks); torch._dynamo is named because importing torch.optim alone leaves it for later.
WARM_UP = (
    "flwr.supernode.runtime.run_clientapp",
    "torch.optim",
    "torch._dynamo",
    "sklearn.model_selection",
    "lab.core.training",
    "lab.queries",
)


@dataclass
class Worker:
    """Acquires and answers tasks of the SuperNode whose Runtime API is at ``address``."""

    address: str
    apps: dict[str, tuple[Path, str]] = field(default_factory=dict)  # FAB hash -> (its folder, app ref)
    loaded: dict[tuple[str, int], Any] = field(default_factory=dict)  # (FAB hash, run) -> ClientApp
    on_path: str | None = None  # the loaded app's folder, on sys.path while it is the current one
    lock: threading.Lock = field(default_factory=threading.Lock)  # one app at work at a time
    in_flight: Path | None = None  # where the tasks being answered are kept (a worker that dies leaves them)
    warmed: threading.Event = field(default_factory=threading.Event)  # WARM_UP imported

    def client(self, token: str | None = None) -> Any:
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=True,  # the SuperNode's Runtime API listens on loopback only
            root_certificates=None,
            interceptors=interceptors,
            retry_invoker=make_simple_http_retry_invoker(),
        )

    def serve(self) -> None:
        """Acquire and answer tasks until stopped."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        self.recover()
        threading.Thread(target=self.warm_up, name="warm-up", daemon=True).start()
        client = self.client()
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
        logger.info("warm worker serving the SuperNode at %s", self.address)
        try:
            while True:
                acquired = client.AcquireTask(request)
                if acquired.HasField("task") and acquired.token:
                    name = f"task-{acquired.task.task_id}"
                    threading.Thread(target=self.answer, args=(acquired.token,), name=name, daemon=True).start()
                else:
                    time.sleep(POLL_SECONDS)
        finally:
            client.close()

    def warm_up(self) -> None:
        """Import WARM_UP before the first message comes (a failure is left for that message)."""
        import importlib

        started = time.monotonic()
        for module in WARM_UP:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - answering will meet it again, and say so
                logger.warning("warm-up: importing %s failed: %s", module, exc)
        self.warmed.set()
        logger.info("warm-up: %s imported in %.1f s", ", ".join(WARM_UP), time.monotonic() - started)

    def answer(self, token: str) -> None:
        """One task, as Flower's run_clientapp does it, with the app kept loaded."""
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        client = self.client(token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message, context, reply, kept = None, None, None, None
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            self.warmed.wait()  # no import of the same modules from two threads at once
            message, context, run, fab = pull_task_input(client)
            kept = self._keep(token, message, context)
            node = str(context.node_config.get("node-name", "?"))
            logger.info("run %s: answering a %s message", message.metadata.run_id, message.metadata.message_type)
            check_app(fab.hash_str, message, node)  # before anything of the app is written or imported
            with self.lock:
                os.environ[APP_HASH.name] = fab.hash_str
                app = self.app(fab, run)
                reply = app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as exc:  # the gate's refusal, or the app's own failure
            if not isinstance(exc, LabError):
                logger.exception("the ClientApp raised an exception")
            details = f"{type(exc)}:<'{exc}'>"  # Flower's wording, which the coordinator unwraps
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            finally:
                push_task_output(client=client, context=context, sub_status=status, details=details)
                heartbeat.stop()
                client.close()
                if kept is not None:
                    kept.unlink(missing_ok=True)

    def _keep(self, token: str, message: Any, context: Any) -> Path | None:
        """Keep what answering ``message`` with an error needs, should this worker die."""
        from flwr.app.message import remove_content_from_message
        from flwr.common.serde import context_to_proto, message_to_proto

        if self.in_flight is None:
            return None
        self.in_flight.mkdir(parents=True, exist_ok=True, mode=0o700)
        header = message_to_proto(remove_content_from_message(message)).SerializeToString()
        record = {
            "token": token,
            "message": header.hex(),
            "context": context_to_proto(context).SerializeToString().hex(),
        }
        path = self.in_flight / f"{message.metadata.message_id[:32]}.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(record), encoding="utf-8")
        return path

    def recover(self) -> None:
        """Answer with an error every message a worker that died left in ``in_flight``."""
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.common.serde import context_from_proto, message_from_proto
        from flwr.proto.message_pb2 import Context as ProtoContext
        from flwr.proto.message_pb2 import Message as ProtoMessage
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

        for path in sorted(self.in_flight.glob("*.json")) if self.in_flight else []:
            reason = "the node's worker stopped while answering this message; the node started another"
            client = None
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                message = message_from_proto(ProtoMessage.FromString(bytes.fromhex(record["message"])))
                context = context_from_proto(ProtoContext.FromString(bytes.fromhex(record["context"])))
                client = self.client(record["token"])
                push_message(
                    client, Message(Error(code=ErrorCode.CLIENT_APP_CRASHED, reason=reason), reply_to=message), context
                )
                push_task_output(client=client, context=context, sub_status=SubStatus.FAILED, details=reason)
                logger.warning(
                    "run %s: answered the message its previous worker left with an error", message.metadata.run_id
                )
            except Exception as exc:  # noqa: BLE001 - the task lapsed: Flower answers for it once its heartbeat does
                logger.warning("could not answer a message the previous worker left (%s): %s", path.name, exc)
            finally:
                if client is not None:
                    client.close()
                path.unlink(missing_ok=True)

    def app(self, fab: Any, run: Any) -> Any:
        """The run's ClientApp: installed once per FAB hash, a fresh object for every run."""
        key = (fab.hash_str, int(run.run_id))
        if key not in self.loaded:
            from flwr.supercore.object_ref import load_app

            folder, ref = self.apps.get(fab.hash_str) or self._install(fab, run)
            self._forget(folder)  # a fresh ClientApp: the app's modules are imported again
            if self.on_path is not None and self.on_path in sys.path:
                self._forget(Path(self.on_path))
                sys.path.remove(self.on_path)
            self.on_path = str(folder.absolute())
            sys.path.insert(0, self.on_path)
            self.loaded = {key: load_app(ref, LabError, folder)}  # runs come one at a time: keep only this one
        return self.loaded[key]

    def _install(self, fab: Any, run: Any) -> tuple[Path, str]:
        from flwr.cli.install import install_from_fab
        from flwr.common.config import get_fab_config, get_project_dir

        install_from_fab(fab.content, skip_prompt=True)
        folder = Path(get_project_dir(run.fab_id, run.fab_version, fab.hash_str))
        ref = str(get_fab_config(fab.content)["tool"]["flwr"]["app"]["components"]["clientapp"])
        self.apps[fab.hash_str] = (folder, ref)
        return folder, ref

    @staticmethod
    def _forget(folder: Path) -> None:
        """Drop every module imported from ``folder`` (an app's own code), so it is imported anew."""
        prefix = str(folder.resolve())
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if path and str(Path(path).resolve()).startswith(prefix):
                del sys.modules[name]


def main(argv: list[str] | None = None) -> None:
    """``python -m lab.runtime.worker --runtime-api HOST:PORT``."""
    parser = argparse.ArgumentParser(description="The node's warm worker.")
    parser.add_argument("--runtime-api", required=True, help="the SuperNode's Runtime API, HOST:PORT on loopback")
    parser.add_argument("--in-flight", type=Path, help="where to keep the tasks being answered (the node's home)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per poll of the Runtime API
    logging.getLogger("flwr").propagate = False  # Flower prints its own lines (imported before: lab.runtime.forked)
    try:
        Worker(args.runtime_api, in_flight=args.in_flight).serve()
    except KeyboardInterrupt:
        logger.info("warm worker stopped (interrupted)")
    except SystemExit as exc:  # something called sys.exit: the node's log says what, so its restart is explained
        logger.warning("warm worker exiting with status %s, asked to by:\n%s", exc.code, traceback.format_exc())
        raise
    except BaseException:
        logger.exception("warm worker stopped by an error")
        raise


if __name__ == "__main__":
    main()
