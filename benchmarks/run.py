"""`make bench`: quality against the published table, rounds to quality, overhead against bare
Flower, and scale. Writes benchmarks/results.md and benchmarks/results.json, logs both and the
plots to MLflow (workspace/bench/mlflow.db, experiment "benchmarks"), and prints the tables.

    .venv/bin/python benchmarks/run.py [--seeds 5] [--skip-overhead] [--workers 2]

Every federated figure comes from the lab's own ServerApp and ClientApp. Quality, rounds and
scale run them on Flower's simulation runtime (dozens of runs); overhead runs them, and a bare
Flower app, on Flower's deployment runtime (a SuperLink and four SuperNodes on loopback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from lab.core.environ import PRIVATE_ENV  # noqa: E402

os.environ.update(PRIVATE_ENV)

import quality  # noqa: E402
import rows as rows_bench  # noqa: E402
import simulated  # noqa: E402
from simulated import RUNTIME as SIMULATION  # noqa: E402


def _say(text: str) -> None:
    print(text, flush=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def quality_tables(q: dict[str, Any]) -> tuple[str, str]:
    head = "| method | settings | seeds | mean client accuracy (mean ± std over seeds) | published | AUC |\n"
    head += "| --- | --- | --- | --- | --- | --- |\n"
    lines = []
    for row in q["rows"]:
        label = (
            row["method"]
            if row["variant"] == "recipe" or row["method"] == "pooled"
            else f"{row['method']}, demo setting"
        )
        lines.append(
            f"| {label} | {row['settings']} | {row['seeds']} | {_fmt(row['mean'])} ± {_fmt(row['std'])} "
            f"| {_fmt(row.get('published'))} | {_fmt(row.get('auc'))} |"
        )
    rounds = f"| strategy | rounds to {q['target']} per seed | worst seed | mean accuracy after 1, 5, 15 rounds |\n"
    rounds += "| --- | --- | --- | --- |\n"
    for row in q["rows"]:
        if "rounds_to_target" not in row:
            continue
        reached = row["rounds_to_target"]
        worst = "never" if any(r is None for r in reached) else str(max(reached))
        curves = q["curves"][f"{row['variant']}:{row['method']}"]
        at = [sum(c[k] for c in curves) / len(curves) if all(len(c) > k for c in curves) else None for k in (1, 5, 15)]
        label = row["method"] + (", demo setting" if row["variant"] == "demo" else "")
        rounds += f"| {label} | {', '.join('never' if r is None else str(r) for r in reached)} | {worst} "
        rounds += f"| {' / '.join(_fmt(a) for a in at)} |\n"
    return head + "\n".join(lines) + "\n", rounds


def scale_table(rows: list[dict[str, Any]]) -> str:
    text = "| nodes | s per round | s per train message (node) | bytes per round | peak RSS per node (MB, mean / max) "
    text += "| coordinator peak RSS (MB) | actor processes | mean accuracy |\n"
    text += "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    for r in rows:
        text += (
            f"| {r['nodes']} | {_fmt(r['seconds_per_round'], 2)} | {_fmt(r['node_seconds_per_message'], 3)} "
            f"| {r['bytes_per_round']:,.0f} "
            f"| {r['peak_rss_mb_per_node_mean']:.0f} / {r['peak_rss_mb_per_node_max']:.0f} "
            f"| {r['coordinator_peak_rss_mb']:.0f} | {r['actor_processes']} | {_fmt(r['mean_accuracy'])} |\n"
        )
    return text


def _plots(out: Path, q: dict[str, Any], scale: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, curves in q["curves"].items():
        length = min(len(c) for c in curves)
        mean = [sum(c[k] for c in curves) / len(curves) for k in range(length)]
        ax.plot(range(length), mean, label=key.replace(":", ", "), linestyle="-" if key.startswith("demo") else "--")
    ax.axhline(q["target"], color="grey", linewidth=0.8)
    ax.set(xlabel="round", ylabel="mean client test accuracy", title="Heart disease, 4 centres, mean over seeds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "quality-curves.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    if scale:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["nodes"] for r in scale], [r["seconds_per_round"] for r in scale], marker="o")
        ax.set(xlabel="nodes", ylabel="seconds per round", title="Scale (simulation runtime)")
        fig.tight_layout()
        paths.append(out / "scale.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _log_to_mlflow(workspace: Path, results: dict[str, Any], files: list[Path]) -> str:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{(workspace / 'mlflow.db').resolve()}")
    mlflow.set_experiment("benchmarks")
    with mlflow.start_run(run_name=f"bench-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params({"code_version": results["code_version"], "seeds": results["seeds"]})
        for row in results["quality"]["rows"]:
            key = row["method"].replace(": ", ".").replace(" ", "_") + ("" if row["variant"] == "recipe" else ".demo")
            mlflow.log_metric(f"quality.{key}.accuracy", row["mean"])
        for r in results["scale"]:
            mlflow.log_metric("scale.seconds_per_round", r["seconds_per_round"], step=r["nodes"])
            mlflow.log_metric("scale.bytes_per_round", r["bytes_per_round"], step=r["nodes"])
        overhead = results.get("overhead")
        if overhead:
            mlflow.log_metric("overhead.ratio_vs_bare_train_only", overhead["ratio"]["lab_vs_bare_train_only"])
            mlflow.log_metric("overhead.ratio_vs_bare_flower_default", overhead["ratio"]["lab_vs_bare_train_evaluate"])
            mlflow.log_metric("overhead.demo_submit_to_done_seconds", overhead["demo_submit_to_done_seconds"])
            for variant, seconds in overhead["seconds_per_round"].items():
                mlflow.log_metric(f"overhead.{variant}.seconds_per_round", seconds)
        for path in files:
            mlflow.log_artifact(str(path))
        return str(run.info.run_id)


def _relative(value: Any) -> Any:
    """``value`` with this checkout's absolute paths made relative to it (results are committed)."""
    if isinstance(value, str):
        return value.replace(f"{ROOT}/", "")
    if isinstance(value, dict):
        return {k: _relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v) for v in value]
    return value


def _overhead_md(result: dict[str, Any] | None) -> str:
    if not result:
        return "(left out: --skip-overhead)\n"
    import overhead as overhead_bench

    text = overhead_bench.table(result)
    # Its own title is this section's.
    return "\n".join(line for line in text.splitlines() if not line.startswith("## ")) + "\n"


def render(results: dict[str, Any]) -> str:
    """results.md from the results (``--render`` redoes it from results.json)."""
    q, scale = results["quality"], results["scale"]
    quality_md, rounds_md = quality_tables(q)
    return "\n".join(
        [
            "# Benchmarks",
            "",
            f"`make bench` on {results['machine']}, commit {results['code_version']}, "
            f"{results['seconds'] / 60:.1f} min in all. Written by benchmarks/run.py; do not edit by hand.",
            "",
            f"## 1. Quality: the lab's apps on the {results['quality_runtime']}",
            "",
            "Four heart-disease centres, each scored on its own test split; the published figures are "
            "FLamby's (../shared/datasets/heart-disease/README.md). Every federated row scales features "
            "with the lab's federated scaler (means and deviations pooled from every node's column sums), "
            "where the published recipe standardised each centre with its own statistics.",
            "",
            quality_md,
            f"## 2. Rounds to {q['target']} mean client accuracy",
            "",
            "Round 0 is the initial model; the accuracy after round k is what every node measured on "
            "the model it received for round k + 1 (and the final evaluation after the last round).",
            "",
            rounds_md,
            "## 3. Overhead against bare Flower, on the deployment runtime",
            "",
            _overhead_md(results.get("overhead")),
            f"## 4. Scale: the lab's apps on the {results['quality_runtime']}",
            "",
            "Node i holds a resample of centre i mod 4's raw rows (as many as the centre has), so every "
            "node does the same work at every size; FedAvg, the recipe's 100 local steps per round. "
            "Peak RSS is that of the actor process that served the node (actors serve several nodes "
            "in turn), the coordinator's that of the process running the ServerApp.",
            "",
            scale_table(scale),
            "## 5. Rows: a node's table from ten thousand to a million rows",
            "",
            "A synthetic binary table split over four nodes on the deployment runtime (the lab's federation, "
            "default agreements), against plain PyTorch on the same training rows pooled in one process "
            "(benchmarks/rows.py says how each figure is taken).",
            "",
            rows_bench.table(results["rows"]) if results.get("rows") else "(left out: --rows none)\n",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="Seeds per quality row (the published table has 5).")
    parser.add_argument("--scale", default="4,16,64", help="Node counts of the scale runs.")
    parser.add_argument("--scale-rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="Simulated runs at a time.")
    parser.add_argument("--skip-overhead", action="store_true", help="Leave out the deployment-runtime part.")
    parser.add_argument("--rows", default="10000,100000,1000000", help="Table sizes of the rows part ('none': skip).")
    parser.add_argument("--workspace", type=Path, default=ROOT / "workspace" / "bench")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--render", action="store_true", help="Only rewrite results.md from results.json in --out.")
    args = parser.parse_args()
    if args.render:
        saved = json.loads((args.out / "results.json").read_text(encoding="utf-8"))
        (args.out / "results.md").write_text(render(saved), encoding="utf-8")
        return
    # `kill` ends the benchmark like Ctrl-C: the Ray cluster and the federations are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    workspace = args.workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    seeds = list(range(1, args.seeds + 1))
    sizes = [int(s) for s in args.scale.split(",") if s.strip()]

    jobs = quality.quality_jobs(workspace / "quality", seeds) + quality.scale_jobs(
        workspace / "scale", sizes, args.scale_rounds
    )
    _say(f"1-2, 4. {len(jobs)} federated runs of the lab's apps on the {SIMULATION}, {args.workers} at a time")

    def progress(result: dict[str, Any]) -> None:
        done = progress.count = getattr(progress, "count", 0) + 1  # type: ignore[attr-defined]
        label = (
            f"{result['variant']} {result['strategy']} seed {result['seed']}"
            if result["kind"] == "quality"
            else f"scale {result['nodes_count']} nodes"
        )
        accuracy = result["final"]["mean"]["federated.accuracy"]
        _say(f"  [{done}/{len(jobs)}] {label}: mean accuracy {accuracy:.3f} ({time.monotonic() - started:.0f} s)")

    results_by_kind = simulated.run_jobs(
        jobs, args.workers, progress, tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}"
    )
    _say("  pooled reference (the lab's model on every centre's training rows in one place)")
    pooled = quality.pooled(seeds)
    q = quality.summarise_quality([r for r in results_by_kind if r["kind"] == "quality"], pooled)
    scale = quality.summarise_scale([r for r in results_by_kind if r["kind"] == "scale"])

    overhead: dict[str, Any] | None = None
    if not args.skip_overhead:
        import overhead as overhead_bench

        _say("3. overhead: the lab's demo and a bare Flower app on the deployment runtime")
        overhead = overhead_bench.measure(workspace / "overhead")

    rows: list[dict[str, Any]] | None = None
    if args.rows != "none":
        _say("5. rows: the lab's federation and plain PyTorch on growing tables")
        rows = rows_bench.measure(workspace, [int(s) for s in args.rows.split(",") if s.strip()], 3, say=_say)

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    results = {
        "code_version": commit.stdout.strip() or "unknown",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "seeds": seeds,
        "quality_runtime": SIMULATION,
        "quality": q,
        "pooled": pooled,
        "scale": scale,
        "overhead": overhead,
        "rows": rows,
        "seconds": time.monotonic() - started,
    }
    markdown = render(results)
    args.out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = args.out / "results.md", args.out / "results.json"
    md_path.write_text(markdown, encoding="utf-8")
    json_path.write_text(json.dumps(_relative(results), indent=2, default=str) + "\n", encoding="utf-8")
    plots = _plots(args.out, q, scale)
    run_id = _log_to_mlflow(workspace, results, [md_path, json_path, *plots])
    _say("\n" + markdown)
    _say(f"Wrote {md_path} and {json_path}; MLflow run {run_id} in {workspace / 'mlflow.db'}")


if __name__ == "__main__":
    main()
