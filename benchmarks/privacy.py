"""Benchmark: accuracy of the heart federation under differential privacy (issue: privacy).

Runs the demo federation (four hospitals, the real Flower deployment runtime on loopback, the
lab's own ServerApp and ClientApp) once without DP and once per target epsilon, with the same
seed and settings, and writes benchmarks/privacy.md and benchmarks/privacy.json.

    .venv/bin/python benchmarks/privacy.py [--rounds 5] [--epsilons 8,3,1]

Every node picks the least noise that keeps the whole run within the target epsilon at its own
sampling rate (delta 1e-5), so every node's epsilon is at most the target; the table shows the
largest epsilon a node actually spent, from the nodes' own accountants.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.core.environ import PRIVATE_ENV  # noqa: E402

os.environ.update(PRIVATE_ENV)

from lab.contract.settings import RunSettings  # noqa: E402
from lab.core.spec import load_spec  # noqa: E402
from lab.runtime.demo import DEMO_NODES  # noqa: E402
from lab.runtime.environ import tracking_uri_for  # noqa: E402
from lab.runtime.run import run_federation, run_settings  # noqa: E402

DATA = ROOT / "data" / "heart-disease"


def run_once(workspace: Path, settings: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    nodes = {name: str(DATA / file) for name, file in DEMO_NODES.items()}
    run = run_settings(
        load_spec(DATA / "task.toml"), tracking_uri=tracking_uri_for(workspace), nodes=len(nodes), values=settings
    )
    final = run_federation(run, nodes, workspace=workspace).summary
    epsilons = [row.epsilon for row in final.nodes if row.epsilon is not None]
    return {
        "settings": {RunSettings.key(k): v for k, v in settings.items()},  # as `--set` names them
        "mean_accuracy": final.mean_of("federated", "accuracy"),
        "mean_auc": final.mean_of("federated", "auc"),
        "local_only_accuracy": final.mean_of("local_only", "accuracy"),
        "per_node_accuracy": {row.node: row.federated.get("accuracy") for row in final.nodes},
        "max_epsilon": max(epsilons) if epsilons else None,
        "per_node_epsilon": {row.node: row.epsilon for row in final.nodes},
        "seconds": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epsilons", default="8,3,1")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--local-steps", type=int, default=25)
    parser.add_argument("--learning-rate", type=float, default=0.5)
    parser.add_argument("--clipping-norm", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args()
    common = {
        "num_rounds": args.rounds,
        "batch_size": args.batch_size,
        "local_steps": args.local_steps,
        "learning_rate": args.learning_rate,
        "register": False,
    }
    targets = [float(e) for e in args.epsilons.split(",") if e.strip()]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lab-bench-privacy-") as tmp:
        rows.append({"epsilon_target": None, **run_once(Path(tmp) / "no-dp", common)})
        for target in targets:
            settings = {**common, "dp_target_epsilon": target, "dp_clipping_norm": args.clipping_norm}
            rows.append({"epsilon_target": target, **run_once(Path(tmp) / f"eps-{target:g}", settings)})
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "runtime": "Flower 1.41 deployment runtime on loopback (1 SuperLink, 4 SuperNodes), the lab's own apps",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "delta": 1e-5,
        "seed": 42,
        "command": " ".join(["python", "benchmarks/privacy.py", *sys.argv[1:]]),
    }
    (args.out / "privacy.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    lines = [
        "# Differential privacy on the heart federation",
        "",
        f"{meta['runtime']}; {meta['machine']}; seed 42; delta 1e-5; {args.rounds} rounds of FedAvg, "
        f"batch size {args.batch_size}, {args.local_steps} local steps, learning rate {args.learning_rate}, "
        f"clipping norm {args.clipping_norm} (`{meta['command']}`, {meta['date']}).",
        "",
        "| target epsilon | largest epsilon a node spent | mean accuracy | mean AUC | "
        + " | ".join(f"{n} acc." for n in DEMO_NODES)
        + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in DEMO_NODES) + " |",
    ]
    for row in rows:
        target = "no DP" if row["epsilon_target"] is None else f"{row['epsilon_target']:g}"
        spent = "" if row["max_epsilon"] is None else f"{row['max_epsilon']:.2f}"
        per_node = " | ".join(f"{row['per_node_accuracy'].get(n) or float('nan'):.3f}" for n in DEMO_NODES)
        lines.append(f"| {target} | {spent} | {row['mean_accuracy']:.3f} | {row['mean_auc']:.3f} | {per_node} |")
    lines.append("")
    lines.append(f"Local-only models (no DP, each node alone): mean accuracy {rows[0]['local_only_accuracy']:.3f}.")
    (args.out / "privacy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    from lab.errors import LabError

    try:
        main()
    except LabError as exc:
        sys.exit(f"error: {exc}")
