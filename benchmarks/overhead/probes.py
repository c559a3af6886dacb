"""One ClientApp process measured apart: the steps each app's ClientApp makes, timed in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

from lab.runtime.demo import DEMO_NODES
from lab.runtime.environ import private_environ

from .paths import BARE_APP, DATA, ROOT

__all__ = ["PROBES", "RUNTIME_STEP", "probe_clientapp"]

PROBE_TABLE, PROBE_SPEC = str(DATA / DEMO_NODES["cleveland"]), str(DATA / "task.toml")

_PROBE = """
import json, sys, time
sys.path.insert(0, {app_dir!r})
out = {{}}
for label, code in {steps!r}:
    began = time.perf_counter()
    exec(code)
    out[label] = time.perf_counter() - began
print(json.dumps(out))
"""

RUNTIME_STEP = (
    "Flower's clientapp runtime and the node gate (imports)",
    "import flwr.supernode.cli.flwr_clientapp, flwr.supernode.runtime.run_clientapp, lab.node.guard",
)
PROBES = {
    "lab": [
        RUNTIME_STEP,
        ("import the app's ClientApp module", "import federation.client_app"),
        (
            "environment fingerprint (every message)",
            "from lab.core.environment import Environment; Environment.current()",
        ),
        (
            "read, check and split the table",
            "from lab.core.spec import load_spec; from lab.core.training import load_node_data; "
            f"load_node_data('cleveland', {PROBE_TABLE!r}, load_spec({PROBE_SPEC!r}))",
        ),
    ],
    "bare": [
        RUNTIME_STEP,
        ("import the app's ClientApp module", "import bareheart.client_app"),
        (
            "read, check and split the table",
            f"from bareheart.task import load_data; load_data({PROBE_TABLE!r})",
        ),
    ],
}


def probe_clientapp(repeats: int = 2) -> dict[str, dict[str, float]]:
    """Seconds of each step a ClientApp process of each app makes, in a fresh interpreter (best of ``repeats``)."""
    result: dict[str, dict[str, float]] = {}
    for app, steps in PROBES.items():
        best: dict[str, float] = {}
        for _ in range(repeats):
            code = _PROBE.format(app_dir=str(BARE_APP), steps=steps)
            out = subprocess.run(
                [sys.executable, "-c", code],
                env=private_environ(),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if out.returncode != 0:
                raise RuntimeError(f"probing the {app} ClientApp failed:\n{out.stderr[-1500:]}")
            for label, seconds in json.loads(out.stdout.strip().splitlines()[-1]).items():
                best[label] = min(best.get(label, seconds), seconds)
        result[app] = best
    return result
