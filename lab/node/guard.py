"""The node's gate in front of every Flower app: only apps on the agreement's allow-list run.

Flower's SuperNode runs whatever app the SuperLink sends: for each message its SuperExec starts a
``flwr-clientapp`` process, which pulls the message and the app (the FAB), installs the FAB and
imports the app. The lab puts this module first on the node's PATH under the name
``flwr-clientapp``: it runs Flower's own process, but checks the FAB's sha256 against the node's
agreement between pulling the FAB and installing it. A refused app is never written to disk nor
imported; the coordinator gets an error reply naming the clause, and the node's audit log records
the refusal. The check lives here, in the node's installed environment, not in the app it checks.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from lab.core.environ import AGREEMENT_FILE, APP_HASH, AUDIT_LOG, WITHOUT_AGREEMENT
from lab.errors import Refusal
from lab.node.agreement import UNBOUND, load_agreement
from lab.node.audit import AuditLog
from lab.node.site import node_secret

__all__ = ["check_app", "main", "write_shim"]


def main() -> None:
    """Flower's ``flwr-clientapp``, with the allow-list check before the FAB is installed."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp as runtime

    # Flower calls these two by their module-level names inside run_clientapp: wrap them there.
    names = vars(runtime)
    pulled: dict[str, Any] = {}
    pull, install = names["pull_task_input"], names["install_from_fab"]

    def remembering_pull(*args: Any, **kwargs: Any) -> Any:
        result = pull(*args, **kwargs)
        pulled["message"], pulled["context"] = result[0], result[1]
        return result

    def guarded_install(fab_content: bytes, *args: Any, **kwargs: Any) -> Any:
        fab_hash = hashlib.sha256(fab_content).hexdigest()
        context = pulled.get("context")
        node = str(context.node_config.get("node-name", "?")) if context is not None else "?"
        check_app(fab_hash, pulled.get("message"), node)
        os.environ[APP_HASH.name] = fab_hash  # for the app, once approved: its audit entries name it
        return install(fab_content, *args, **kwargs)

    names["pull_task_input"] = remembering_pull
    names["install_from_fab"] = guarded_install
    sys.exit(flwr_clientapp())  # type: ignore[func-returns-value]


def check_app(fab_hash: str, message: Any, node: str) -> None:
    """Refuse (raise Refusal naming the node and the clause) unless the node's agreement is in
    force and allows this app; a node with no agreement refuses every app, unless its operator
    started it without one on purpose."""
    path = AGREEMENT_FILE.get()
    if not path and WITHOUT_AGREEMENT.get() == "1":
        return
    try:
        if not path:
            raise Refusal("agreement", UNBOUND)
        agreement = load_agreement(path)
        agreement.check_in_force()
        agreement.check_app(fab_hash)
    except Refusal as refusal:
        if audit := AUDIT_LOG.get():
            metadata = getattr(message, "metadata", None)
            AuditLog(audit, node_secret(Path(audit).parent)).append(
                run_id=getattr(metadata, "run_id", None),
                app_hash=fab_hash,
                message_type=getattr(metadata, "message_type", None),
                asked={"app": fab_hash},
                decision="refused",
                clause=refusal.clause,
                reason=str(refusal),
                left_node=[],
            )
        raise Refusal(refusal.clause, f"node {node!r} refused: {refusal}", relayed=True) from None


def write_shim(folder: Path) -> Path:
    """Write the ``flwr-clientapp`` executable that runs this gate, for the front of a node's PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "flwr-clientapp"
    shim.write_text(f"#!{sys.executable}\nfrom lab.node.guard import main\n\nmain()\n", encoding="utf-8")
    shim.chmod(0o755)
    return shim
