"""A bug in the lab is one line for the user and a whole traceback kept where the line says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from mlflow import MlflowClient
from typer.testing import CliRunner

from federation.governance import governed
from federation.server_app import TRACEBACK_FILE, _keep_traceback
from lab.cli import app
from lab.contract import events, keys
from lab.node.agreement import Request
from lab.node.audit import AuditLog
from lab.node.site import NodeSite
from lab.registry.tracking import Tracker
from lab.runtime.environ import private_environ
from lab.runtime.submit import follow_events


def test_a_coordinators_bug_is_kept_in_its_mlflow_run_and_sent_to_the_caller(tmp_path: Path) -> None:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "errors")
    with tracker.run(run_name="bug", params={}, tags={}):
        try:
            {}["str"]  # noqa: B018 - the kind of bug the task matrix found
        except KeyError:
            kept = _keep_traceback(tracker)
    assert "KeyError: 'str'" in kept["text"] and "test_errors.py" in kept["text"]
    assert tracker.run_id is not None and tracker.run_id in kept["where"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = client.download_artifacts(tracker.run_id, TRACEBACK_FILE, str(tmp_path))
    assert "KeyError: 'str'" in Path(logged).read_text()


def test_the_runtime_writes_a_coordinators_traceback_to_the_runs_folder(tmp_path: Path) -> None:
    """The failed event carries the traceback through Flower's stream; the run's folder keeps it."""
    output = tmp_path / "flwr-run.log"
    line = events.PREFIX + json.dumps({"event": "failed", "reason": "internal error: KeyError", "traceback": "TB"})
    output.write_text("some log line\n" + line + "\n")
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    final = follow_events(output, done, lambda _: None, timeout=30)
    assert isinstance(final, events.Failed) and final.traceback == "TB"


def test_a_nodes_bug_is_an_error_reply_an_audit_entry_and_a_traceback_in_its_home(
    tmp_path: Path, identity: None
) -> None:
    audit = tmp_path / "nodes" / "va" / "audit.jsonl"
    context = Context(
        run_id=7,
        node_id=3,
        node_config=NodeSite("va", "", audit_path=str(audit), no_agreement=True).node_config(),
        state=RecordDict(),
        run_config={},
    )
    message = Message(RecordDict({keys.CONFIG: ConfigRecord()}), dst_node_id=3, message_type="query.catalog")

    class Unused:  # the node runs without an agreement on purpose: nothing is checked
        def asked(self, *args: object) -> dict[str, object]:
            return {"query": "catalog"}

        def asks(self, *args: object) -> Request:
            raise AssertionError

        releases = asks

    @governed(Unused())
    def handler(msg: Message, context: Context) -> Message:
        raise ZeroDivisionError("a bug")

    reply = handler(message, context)
    assert reply.has_error() and reply.error.code == keys.FAILED
    assert "node 'va' failed: internal error (a bug in the lab): ZeroDivisionError;" in reply.error.reason
    assert "ZeroDivisionError: a bug" not in reply.error.reason  # its text may hold a value: it stays here
    kept = list((audit.parent / "errors").glob("*.txt"))
    assert len(kept) == 1 and "ZeroDivisionError: a bug" in kept[0].read_text()
    assert f"errors/{kept[0].name}" in reply.error.reason
    [entry] = AuditLog(audit).entries()
    assert entry["decision"] == "failed" and entry["asked"] == {"query": "catalog"}
    assert "ZeroDivisionError: a bug" in entry["reason"]
    assert entry["agreement"].startswith("none: started with --no-agreement")


def test_a_bug_in_the_command_line_is_one_line_and_a_kept_traceback(tmp_path: Path) -> None:
    code = (
        "import lab.cli\n"
        "@lab.cli.app.command()\n"
        "def broken() -> None:\n"
        "    raise RuntimeError('a bug')\n"
        "lab.cli.main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "broken"],
        capture_output=True,
        text=True,
        env=private_environ(LAB_WORKSPACE=str(tmp_path), COLUMNS="300"),
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: internal error (a bug in the lab): RuntimeError: a bug; the traceback is in")
    [kept] = (tmp_path / "logs").glob("lab-error-*.txt")
    assert str(kept) in line and "RuntimeError: a bug" in kept.read_text()


def test_an_error_naming_a_toml_table_keeps_its_brackets(tmp_path: Path) -> None:
    path = tmp_path / "agreement.toml"
    path.write_text('[allow]\noutputs = ["metrics"]\n')
    # In-process, as the console script runs it: the app itself maps the mistake to status 2.
    result = CliRunner().invoke(app, ["agreement", "check", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "missing table [agreement];" in result.stderr
