"""Quality, rounds to quality and scale: the lab's apps on Flower's simulation runtime.

Each federated run here is the lab's own ServerApp and ClientApp (benchmarks/simulated.py); the
pooled reference trains the lab's model on every centre's training rows in one place, with the
lab's own training and scoring functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "heart-disease"
TARGET_ACCURACY = 0.72

#: The published recipe (../shared/datasets/heart-disease/README.md): SGD, 100 local batch
#: updates of 4 rows per round, 15 rounds. FLamby's learning rate for this dataset is 0.001.
RECIPE: dict[str, Any] = {"num_rounds": 15, "local_steps": 100, "batch_size": 4, "learning_rate": 0.001}
#: The lab's default setting, as `lab demo` runs it: the recipe's local steps and batch, with the
#: local learning rate raised to 0.05, and 5 rounds. (Every row, recipe included, scales features
#: with the lab's federated scaler, the tuning that matters most here.)
DEMO: dict[str, Any] = {"num_rounds": 5, "local_steps": 100, "batch_size": 4, "learning_rate": 0.05}
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi")
PUBLISHED = {"pooled": 0.735, "fedavg": 0.685, "fedprox": 0.685, "fedadam": 0.726, "fedyogi": 0.731}
PUBLISHED_LOCAL = {"cleveland": 0.722, "hungary": 0.629, "switzerland": 0.567, "va": 0.637}


def history(result: dict[str, Any]) -> list[float]:
    """Mean client test accuracy of the global model after 0, 1, ..., R rounds."""
    after: dict[int, float] = {}
    for event in result["events"]:
        accuracy = (event.get("mean") or {}).get("accuracy")
        if accuracy is None:
            continue
        if event["event"] == "train":  # scores of the model the nodes received: after round - 1
            after[int(event["round"]) - 1] = float(accuracy)
        elif event["event"] == "evaluate":
            after[int(event["round"])] = float(accuracy)
    return [after[r] for r in sorted(after)]


def rounds_to(curve: list[float], target: float = TARGET_ACCURACY) -> int | None:
    """First round after which the mean accuracy reaches ``target`` (None: never)."""
    return next((r for r, value in enumerate(curve) if value >= target), None)


def quality_jobs(workspace: Path, seeds: list[int]) -> list[dict[str, Any]]:
    from lab.runtime.demo import DEMO_NODES

    nodes = [(name, str(DATA / file)) for name, file in DEMO_NODES.items()]
    jobs = []
    plan = [("recipe", strategy, RECIPE) for strategy in STRATEGIES] + [("demo", "fedavg", DEMO)]
    for variant, strategy, base in plan:
        for seed in seeds:
            settings = {**base, "strategy": strategy, "seed": seed}
            if (variant, strategy) != ("recipe", "fedavg"):
                # The local-only row comes from the recipe's FedAvg runs (the same nodes and seeds):
                # the other runs keep their preparation short.
                settings["baseline_epochs"] = 1
            jobs.append(
                {
                    "kind": "quality",
                    "variant": variant,
                    "strategy": strategy,
                    "seed": seed,
                    "settings": settings,
                    "spec": str(DATA / "task.toml"),
                    "nodes": nodes,
                    "workdir": str(workspace / "runs" / f"{variant}-{strategy}-{seed}"),
                }
            )
    return jobs


def pooled(seeds: list[int]) -> dict[str, Any]:
    """All four centres' training rows in one place (the recipe: Adam, lr 0.001, batch 4, 50 epochs),
    scored on each centre's own test split; the lab's loading, scaling, model and training code."""
    from lab.core.spec import load_spec
    from lab.runtime.demo import DEMO_NODES

    spec = load_spec(DATA / "task.toml")
    nodes = {name: str(DATA / file) for name, file in DEMO_NODES.items()}
    per_seed = [
        {name: metrics["accuracy"] for name, metrics in pooled_scores(spec, nodes, seed=seed).items()} for seed in seeds
    ]
    means = [float(np.mean(list(s.values()))) for s in per_seed]
    return {"per_seed": per_seed, "mean": float(np.mean(means)), "std": float(np.std(means))}


def pooled_scores(spec: Any, nodes: dict[str, str], *, seed: int, epochs: int = 50) -> dict[str, dict[str, float]]:
    """Every node's training rows in one place, the model trained on them (Adam, lr 0.001, batch 4,
    ``epochs`` epochs, features and a regression target scaled over the pooled rows), and its
    metrics on each node's own test split: the reference a federation is held against, computed
    with the lab's own loading, scaling, model and training code."""
    from lab.core.data import Table
    from lab.core.model import Predictor, build_model
    from lab.core.preprocess import Scaler, encode
    from lab.core.training import evaluate, load_node_data, target_scaler_of, train_locally

    centres = {name: load_node_data(name, source, spec) for name, source in nodes.items()}
    trains = [c.train for c in centres.values()]
    train = Table(
        features=pd.concat([t.features for t in trains], ignore_index=True),
        target=np.concatenate([t.target for t in trains if t.target is not None]),
        line=np.concatenate([t.line for t in trains]),
        dropped=0,
        source="pooled",
    )
    scaler = Scaler.fit(encode(train.features, spec))
    predictor = Predictor(spec, scaler, build_model(spec, seed=seed), target_scaler_of(spec, train))
    steps = epochs * int(np.ceil(len(train) / 4))
    train_locally(predictor, train, steps=steps, batch_size=4, learning_rate=0.001, seed=seed, optimizer="adam")
    return {name: evaluate(predictor, c.test) for name, c in centres.items()}


def summarise_quality(results: list[dict[str, Any]], pooled_result: dict[str, Any]) -> dict[str, Any]:
    """Mean and std over seeds of the mean client accuracy, per (variant, strategy), and the local-only rows."""
    from lab.contract.settings import RunSettings

    rows: list[dict[str, Any]] = [
        {
            "method": "pooled",
            "variant": "recipe",
            "settings": "Adam, lr 0.001, batch 4, 50 epochs, one scaler on the pooled rows",
            "mean": pooled_result["mean"],
            "std": pooled_result["std"],
            "published": PUBLISHED["pooled"],
            "seeds": len(pooled_result["per_seed"]),
        }
    ]
    local: dict[str, list[float]] = {}
    for r in results:
        if r["variant"] == "recipe" and r["strategy"] == "fedavg":
            for node in r["final"]["nodes"]:
                local.setdefault(node["node"], []).append(node["local_only"].get("accuracy", float("nan")))
    for name, values in sorted(local.items()):
        rows.append(
            {
                "method": f"local only: {name}",
                "variant": "recipe",
                "settings": "Adam, lr 0.001, batch 4, 50 epochs, on the node's own rows and scaling",
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "published": PUBLISHED_LOCAL.get(name),
                "seeds": len(values),
            }
        )
    curves: dict[str, list[list[float]]] = {}
    for variant in ("recipe", "demo"):
        for strategy in STRATEGIES:
            runs = [r for r in results if r["variant"] == variant and r["strategy"] == strategy]
            if not runs:
                continue
            finals = [r["final"]["mean"]["federated.accuracy"] for r in runs]
            settings = {
                k: v for k, v in runs[0]["settings"].items() if k not in ("seed", "strategy", "baseline_epochs")
            }
            reached = [rounds_to(history(r)) for r in runs]
            curves[f"{variant}:{strategy}"] = [history(r) for r in runs]
            rows.append(
                {
                    "method": strategy,
                    "variant": variant,
                    "settings": ", ".join(f"{RunSettings.key(k)} {v}" for k, v in settings.items()),
                    "mean": float(np.mean(finals)),
                    "std": float(np.std(finals)),
                    "published": PUBLISHED.get(strategy) if variant == "recipe" else None,
                    "seeds": len(runs),
                    "rounds_to_target": reached,
                    "auc": float(np.mean([r["final"]["mean"]["federated.auc"] for r in runs])),
                }
            )
    return {"rows": rows, "curves": curves, "target": TARGET_ACCURACY}


def scale_jobs(workspace: Path, sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    """Federations of ``sizes`` nodes: node i holds a resample (with replacement, as many rows as
    the centre has) of the raw rows of centre i mod 4, so every node has a real centre's schema,
    size and distribution, and the work per node is the same at every size."""
    from lab.runtime.demo import DEMO_NODES

    rng = np.random.default_rng(7)
    centres = {name: (DATA / file).read_text(encoding="utf-8").splitlines() for name, file in DEMO_NODES.items()}
    names = list(centres)
    spec_text = (DATA / "task.toml").read_text(encoding="utf-8")
    jobs = []
    for size in sizes:
        folder = workspace / "silos" / f"{size}-nodes"
        folder.mkdir(parents=True, exist_ok=True)
        nodes, sections = [], []
        for i in range(size):
            centre = names[i % len(names)]
            rows = centres[centre]
            name = f"{centre}-{i // len(names) + 1:02d}" if size > len(names) else centre
            path = folder / f"{name}.data"
            path.write_text("\n".join(rows[j] for j in rng.integers(0, len(rows), len(rows))) + "\n", encoding="utf-8")
            nodes.append((name, str(path)))
            sections.append(f'[nodes.{name}]\norganisation = "generated from {centre}"\n')
        base = spec_text.split("[nodes.")[0]
        spec = folder / "task.toml"
        spec.write_text(base + "\n".join(sections), encoding="utf-8")
        jobs.append(
            {
                "kind": "scale",
                "nodes_count": size,
                # The rounds are measured; the local-only baseline of the preparation is kept short.
                "settings": {"num_rounds": rounds, "strategy": "fedavg", "baseline_epochs": 1, "seed": 42},
                "spec": str(spec),
                "nodes": nodes,
                "workdir": str(workspace / "runs" / f"scale-{size}"),
            }
        )
    return jobs


def round_seconds(result: dict[str, Any]) -> list[float]:
    """Wall seconds of each round: from the end of the preparation (or the previous round) to the
    coordinator's record of the round's aggregated replies."""
    events = result["events"]
    trains = [e for e in events if e["event"] == "train"]
    if not trains:
        return []
    before = [e["time"] for e in events if e["time"] <= trains[0]["time"] and e["event"] != "train"]
    times = [max(before)] + [e["time"] for e in trains]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def summarise_scale(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(results, key=lambda r: r["nodes_count"]):
        seconds = round_seconds(r)
        train = [m for m in r["messages"] if m["type"] == "train"]
        per_round: dict[int, int] = {}
        for m in train:
            per_round[m["round"]] = per_round.get(m["round"], 0) + m["bytes_in"] + m["bytes_out"]
        peak: dict[str, float] = {}
        for m in r["messages"]:
            peak[m["node"]] = max(peak.get(m["node"], 0.0), m["peak_rss_mb"])
        rows.append(
            {
                "nodes": r["nodes_count"],
                "rounds": len(seconds),
                "seconds_per_round": float(np.mean(seconds)) if seconds else float("nan"),
                "round_seconds": seconds,
                "node_seconds_per_message": float(np.mean([m["seconds"] for m in train])) if train else float("nan"),
                "peak_rss_mb_per_node_max": max(peak.values()) if peak else float("nan"),
                "peak_rss_mb_per_node_mean": float(np.mean(list(peak.values()))) if peak else float("nan"),
                "coordinator_peak_rss_mb": r["coordinator_peak_rss_mb"],
                "bytes_per_round": float(np.mean(list(per_round.values()))) if per_round else float("nan"),
                "actor_processes": len({m["pid"] for m in r["messages"]}),
                "mean_accuracy": r["final"]["mean"]["federated.accuracy"],
            }
        )
    return rows
