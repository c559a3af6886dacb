"""Rows: a node's time and memory as its table grows, against plain PyTorch on the same rows pooled.

    .venv/bin/python benchmarks/rows.py [--sizes 10000,100000,1000000] [--rounds 3]

A synthetic binary table (20 numeric and 3 categorical columns, a logistic truth, made here with a
fixed seed) is split evenly over four nodes. For each size, the lab's own federation runs on it as
`lab run` does (the warm runtime, every node under its default agreement, the run's defaults but
for: ``--rounds`` rounds, minibatches of 256, one epoch of a node's training rows per round, so
local steps = ceil(training rows / 256), at most the agreement's 1000). Beside it, plain PyTorch
trains the same network (the spec's MLP) on every node's training rows in one process, for as
many epochs with the same minibatch and learning rate, on one thread, as each node does.

Per size: the run's wall time and its preparation (reading, checking and splitting each table,
the federated scaler's sums, the local-only baseline at its default 50 epochs, bounded as
lab.core.training says); seconds a round; the nodes' CPU seconds per million rows trained in the
rounds after the first (the workers' CPU time, rows trained = steps x minibatch), against plain
PyTorch's CPU seconds per million rows; the peak resident memory of the largest node (its
SuperNode and worker) and of the pooled script; the mean accuracy of both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT)]

from lab.contract.events import Event, Trained  # noqa: E402
from lab.core.environ import PRIVATE_ENV  # noqa: E402

os.environ.update(PRIVATE_ENV)

import numpy as np  # noqa: E402
import psutil  # noqa: E402

NODES = ("north", "south", "east", "west")
BATCH = 256
LEARNING_RATE = 0.05
NUMERIC, CATEGORIES = 20, ("a", "b", "c", "d")


def spec_text() -> str:
    """The task spec of the synthetic table."""
    features = "".join(f'[[features]]\nname = "x{i}"\ntype = "numeric"\n\n' for i in range(NUMERIC))
    features += "".join(
        f'[[features]]\nname = "c{j}"\ntype = "categorical"\nlevels = {json.dumps(list(CATEGORIES))}\n\n'
        for j in range(3)
    )
    nodes = "".join(f'[nodes.{n}]\norganisation = "{n.title()} region"\n\n' for n in NODES)
    return f"""# A synthetic binary table (benchmarks/rows.py): 20 numeric and 3 categorical columns.
[task]
name = "synthetic-rows"

[target]
column = "y"
kind = "binary"
positive = [1]
negative = [0]

{features}[preprocessing]
scaling = "federated"
test-fraction = 0.2
split-seed = 1

[model]
family = "mlp"

[metrics]
report = ["accuracy", "auc", "loss"]

[data]
format = "csv"
header = true

{nodes}"""


def write_tables(folder: Path, rows: int) -> dict[str, Path]:
    """Four CSV tables of ``rows`` / 4 rows each, drawn from one logistic truth (seed 7)."""
    rng = np.random.default_rng(7)
    weights = rng.normal(size=NUMERIC) * 0.5
    tables = {}
    for name in NODES:
        n = rows // len(NODES)
        x = rng.normal(size=(n, NUMERIC)).round(4)
        cats = rng.choice(CATEGORIES, size=(n, 3))
        logit = x @ weights + (cats[:, 0] == "a") * 0.8 - (cats[:, 1] == "b") * 0.5
        y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        path = folder / f"{name}.csv"
        header = ",".join([*(f"x{i}" for i in range(NUMERIC)), "c0", "c1", "c2", "y"])
        with path.open("w", encoding="utf-8") as out:
            out.write(header + "\n")
            for i in range(n):
                out.write(",".join([*map(str, x[i]), *cats[i], str(y[i])]) + "\n")
        tables[name] = path
    return tables


class Sampler:
    """Peak resident memory of each node's processes (its SuperNode and worker), and the workers'
    CPU seconds, sampled every half second while a run goes on."""

    def __init__(self, federation: Any) -> None:
        self.federation = federation
        self.peak: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def members(self) -> dict[str, list[psutil.Process]]:
        by_node: dict[str, list[psutil.Process]] = {}
        for proc in self.federation.processes:
            node = proc.name.split("-", 1)[1] if proc.name.startswith(("node-", "worker-")) else ""
            if not node:
                continue
            try:
                parent = psutil.Process(proc.popen.pid)
                by_node.setdefault(node, []).extend([parent, *parent.children(recursive=True)])
            except psutil.NoSuchProcess:
                continue
        return by_node

    def cpu(self) -> float:
        """CPU seconds the nodes' processes have used so far."""
        total = 0.0
        for members in self.members().values():
            for member in members:
                try:
                    times = member.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    continue
        return total

    def _sample(self) -> None:
        while not self.stop.is_set():
            for node, members in self.members().items():
                rss = 0
                for member in members:
                    try:
                        rss += member.memory_info().rss
                    except psutil.NoSuchProcess:
                        continue
                self.peak[node] = max(self.peak.get(node, 0), rss)
            self.stop.wait(0.5)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def federated(folder: Path, tables: dict[str, Path], rounds: int) -> dict[str, Any]:
    """The lab's federation on the tables: times, CPU per million rows trained, memory, accuracy."""
    from lab.core.spec import load_spec
    from lab.runtime.local import LocalFederation
    from lab.runtime.run import node_specs, run_on, run_settings

    spec_path = folder / "task.toml"
    spec_path.write_text(spec_text(), encoding="utf-8")
    spec = load_spec(spec_path)
    workspace = folder / "workspace"
    train_rows = {n: _train_rows(tables[n]) for n in tables}
    steps = min(1000, max(math.ceil(r / BATCH) for r in train_rows.values()))
    values = {
        "num_rounds": rounds,
        "local_steps": steps,
        "batch_size": BATCH,
        "learning_rate": LEARNING_RATE,
        "round_timeout": 3600,
        "register": False,
    }
    settings = run_settings(spec, tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}", nodes=len(tables), values=values)
    nodes = node_specs({n: str(p) for n, p in tables.items()}, None, workspace=workspace, spec=spec)
    marks: dict[str, float] = {}
    cpu_at: dict[int, float] = {}
    with LocalFederation(workspace, nodes) as federation, Sampler(federation) as sampler:

        def on_event(event: Event) -> None:
            marks.setdefault(event.kind, time.monotonic())  # "joined": the nodes have prepared
            if isinstance(event, Trained):
                marks[f"round {event.round}"] = time.monotonic()
                cpu_at[event.round] = sampler.cpu()

        started = time.monotonic()
        result = run_on(federation.connection, settings, workspace=workspace, on_event=on_event)
        wall = time.monotonic() - started
    rounds_seconds = [marks[f"round {r}"] - marks[f"round {r - 1}"] for r in range(2, rounds + 1)]
    trained_per_round = sum(min(steps, 1000) * BATCH for _ in tables)
    later_cpu = cpu_at[rounds] - cpu_at[1] if rounds > 1 else float("nan")
    return {
        "wall_seconds": round(wall, 1),
        "preparation_seconds": round(marks["joined"] - started, 1),
        "seconds_per_round": round(float(np.mean(rounds_seconds)), 2) if rounds_seconds else None,
        "local_steps": steps,
        "rows_trained_per_round": trained_per_round,
        "cpu_seconds_per_million_rows": round(later_cpu / ((rounds - 1) * trained_per_round / 1e6), 2),
        "peak_rss_mib_largest_node": round(max(sampler.peak.values()) / 2**20, 1),
        "mean_accuracy": result.summary.mean_of("federated", "accuracy"),
    }


def _train_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as table:
        rows = sum(1 for _ in table) - 1
    return rows - math.ceil(rows * 0.2)  # the spec's test-fraction, as scikit-learn rounds it


def pooled(folder: Path, tables: dict[str, Path], epochs: int) -> dict[str, Any]:
    """Plain PyTorch on every table's training rows in one process (a process of its own, whose
    peak memory is its own): ``python benchmarks/rows.py --pooled SPEC EPOCHS TABLE...``."""
    argv = [sys.executable, __file__, "--pooled", str(folder / "task.toml"), str(epochs), *map(str, tables.values())]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "cpu_seconds_per_million_rows": round(result["cpu"] / (result["rows"] / 1e6), 2),
        "peak_rss_mib": round(result["peak_kib"] / 1024, 1),
        "accuracy": round(result["accuracy"], 3),
    }


def _pooled_main(spec_path: str, epochs: int, tables: list[str]) -> None:
    """The same network, minibatch, learning rate, epochs and thread count as a node, on every
    table's rows in one place, encoded and standardised with pandas and numpy."""
    import resource

    import pandas as pd
    import torch

    from lab.core.model import build_model
    from lab.core.spec import load_spec

    torch.set_num_threads(1)
    spec = load_spec(spec_path)
    frame = pd.concat([pd.read_csv(p) for p in tables], ignore_index=True)
    dummies = pd.get_dummies(frame.drop(columns="y"), columns=["c0", "c1", "c2"], dtype=float)
    x, y = dummies.to_numpy(np.float64), frame["y"].to_numpy(np.float32)
    order = np.random.default_rng(1).permutation(len(x))
    train, test = order[: int(len(x) * 0.8)], order[int(len(x) * 0.8) :]
    mean, std = x[train].mean(0), x[train].std(0)
    x = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train]).reshape(-1, 1)
    model = build_model(spec, seed=1)
    optimiser, loss = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE), torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(1)
    cpu = time.process_time()
    for _ in range(epochs):
        permutation = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(permutation), BATCH):
            batch = permutation[start : start + BATCH]
            optimiser.zero_grad()
            loss(model(xt[batch]), yt[batch]).backward()
            optimiser.step()
    cpu = time.process_time() - cpu
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.from_numpy(x[test]))).reshape(-1).numpy()
    accuracy = float(((scores >= 0.5) == y[test]).mean())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"cpu": cpu, "rows": epochs * len(xt), "peak_kib": peak, "accuracy": accuracy}))


def measure(folder: Path, sizes: list[int], rounds: int, say: Any = print) -> list[dict[str, Any]]:
    """One row of the table per size."""
    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            here = Path(tmp)
            say(f"  rows: {size:,} over {len(NODES)} nodes: writing the tables")
            tables = write_tables(here, size)
            say(f"  rows: {size:,}: the federation, {rounds} rounds")
            lab = federated(here, tables, rounds)
            say(f"  rows: {size:,}: plain PyTorch pooled")
            plain = pooled(here, tables, rounds)
        ratio = lab["cpu_seconds_per_million_rows"] / plain["cpu_seconds_per_million_rows"]
        rows.append({"rows": size, "lab": lab, "pytorch": plain, "cpu_ratio": round(ratio, 2)})
        say(f"  rows: {size:,}: {json.dumps(rows[-1])}")
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows table, as results.md shows it."""
    text = (
        "| rows (4 nodes) | run s | preparation s | s per round | node CPU s per 1M rows trained "
        "| PyTorch pooled CPU s per 1M rows | ratio | peak RSS of the largest node (MiB) "
        "| PyTorch pooled peak RSS (MiB) | accuracy (lab / PyTorch) |\n"
    )
    text += "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    for r in rows:
        lab, plain = r["lab"], r["pytorch"]
        accuracy = lab["mean_accuracy"]
        shown = f"{accuracy:.3f}" if isinstance(accuracy, float) else "-"
        text += (
            f"| {r['rows']:,} | {lab['wall_seconds']} | {lab['preparation_seconds']} | {lab['seconds_per_round']} "
            f"| {lab['cpu_seconds_per_million_rows']} | {plain['cpu_seconds_per_million_rows']} | {r['cpu_ratio']}x "
            f"| {lab['peak_rss_mib_largest_node']} | {plain['peak_rss_mib']} | {shown} / {plain['accuracy']:.3f} |\n"
        )
    if len(rows) >= 2:
        text += "\n" + marginal(rows[-2], rows[-1]) + "\n"
    return text


def marginal(smaller: dict[str, Any], larger: dict[str, Any]) -> str:
    """What a row costs the nodes, apart from what a round costs whatever its rows: the slope of
    the nodes' CPU a round between two sizes, against plain PyTorch's CPU per row."""

    def cpu_per_round(row: dict[str, Any]) -> tuple[float, float]:
        trained = row["lab"]["rows_trained_per_round"] / 1e6
        return trained, row["lab"]["cpu_seconds_per_million_rows"] * trained

    (x1, y1), (x2, y2) = cpu_per_round(smaller), cpu_per_round(larger)
    slope = (y2 - y1) / (x2 - x1)
    fixed = y1 - slope * x1
    pooled = larger["pytorch"]["cpu_seconds_per_million_rows"]
    return (
        f"Per row (the slope of the nodes' CPU a round between {smaller['rows']:,} and {larger['rows']:,} rows): "
        f"{slope:.2f} CPU s per million rows trained, {slope / pooled:.2f}x plain PyTorch's {pooled}; the rest, "
        f"{fixed:.2f} CPU s a round for the four nodes whatever their rows, is what a round costs them apart from "
        "training (their polling and the messages; not taken apart here)."
    )


def main() -> None:
    if sys.argv[1:2] == ["--pooled"]:
        _pooled_main(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="Total rows, split over four nodes.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workspace", type=Path, default=ROOT / "workspace" / "bench")
    parser.add_argument("--out", type=Path, default=HERE / "rows", help="write OUT.md and OUT.json")
    args = parser.parse_args()
    args.workspace.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    rows = measure(args.workspace, sizes, args.rounds)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        f"# Rows\n\n`.venv/bin/python benchmarks/rows.py --sizes {args.sizes} --rounds {args.rounds}` on {machine}."
        f"\n\n{table(rows)}",
        encoding="utf-8",
    )
    print(table(rows))


if __name__ == "__main__":
    main()
