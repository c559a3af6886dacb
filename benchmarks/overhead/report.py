"""The overhead benchmark's result as markdown tables."""

from __future__ import annotations

from typing import Any

__all__ = ["table"]


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(result: dict[str, Any]) -> str:
    """The result as markdown."""
    lab, bare = result["lab"], result["bare"]
    one, two = bare["train-only"], bare["train+evaluate"]
    machine = result["machine"]
    lines = [
        "## Overhead: the lab's federation against a bare Flower app",
        "",
        f"{result['runtime']}; {result['rounds']} rounds of FedAvg, same model (logistic regression, 13 features), "
        "data, split and hyperparameters; measured in the same run on "
        f"{machine['cpus']} CPUs ({result['measured_at']}; load average before "
        f"{machine['load_average_before'][0]:.1f}, after {machine['load_average_after'][0]:.1f}; "
        f"{machine['foreign_clientapps_seen']} ClientApp processes of other federations seen meanwhile). "
        "CPU cores busy: the mean over the rounds, by this benchmark's processes (the federation and the sampler) "
        "and by every other process on the machine (which slow every figure down).",
        "",
        "| variant | messages per node per round (SuperNode logs / ClientApp processes) | s per round, mean "
        "| each round (s) | lab / this | CPU cores busy: this benchmark | CPU cores busy: other processes |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    rows = [
        ("lab demo (the train message also scores the received model)", lab, None),
        ("bare Flower, train only (`fraction-evaluate = 0`)", one, result["ratio"]["lab_vs_bare_train_only"]),
        (
            "bare Flower, train + evaluate (Flower's default)",
            two,
            result["ratio"]["lab_vs_bare_train_evaluate"],
        ),
    ]
    for label, run, ratio in rows:
        each = ", ".join(_f(s) for s in run["seconds_each_round"])
        lines.append(
            f"| {label} | {_f(run['messages_per_node_per_round'])} / {_f(run['clientapps_per_node_per_round'])} "
            f"| {_f(run['seconds_per_round'])} | {each} | {'' if ratio is None else _f(ratio, 2)} "
            f"| {_f(run['cores_during_rounds']['benchmark'], 2)} | {_f(run['cores_during_rounds']['others'], 2)} |"
        )
    goals = result["goals"]
    lines += [
        "",
        f"Ratio lab / bare (train only): **{_f(result['ratio']['lab_vs_bare_train_only'], 2)}** "
        f"(goal: at most {goals['ratio_at_most']}); against Flower's default train + evaluate: "
        f"{_f(result['ratio']['lab_vs_bare_train_evaluate'], 2)}.",
        f"`lab demo` wall time: {_f(result['demo_wall_seconds'], 0)} s from the command to its exit "
        f"(it reports {_f(result['demo_reported_wall_seconds'], 0)} s); "
        f"**{_f(result['demo_submit_to_done_seconds'], 0)} s** from submitting the app to the run's end "
        f"(goal: under {goals['demo_seconds_after_setup_under']:.0f} s). "
        f"Messages the demo's SuperNodes received: {lab['messages_received']} "
        f"({lab['clientapps_total']} ClientApp processes).",
        "",
        "### The lab demo, phase by phase",
        "",
        "| phase | s |",
        "| --- | ---: |",
        *[f"| {p['phase']} | {_f(p['seconds'])} |" for p in lab["phases"]],
        "",
        "The bare app, train only: "
        + "; ".join(f"{p['phase']} {_f(p['seconds'])} s" for p in one["phases"])
        + f"; {_f(one['submit_to_end_seconds'], 0)} s from submitting the app to the run's end.",
        "",
        "### One round, mean (s)",
        "",
        "| | lab | bare, train only | bare, train + evaluate |",
        "| --- | ---: | ---: | ---: |",
    ]
    parts = [
        ("seconds", "round"),
        ("dispatch", "until the first ClientApp process starts (aggregate, push; SuperNode polls every 3 s)"),
        ("span", "first ClientApp process start to last end"),
        ("clientapp_seconds", "one ClientApp process, start to end"),
        ("clientapp_cpu_seconds", "one ClientApp process, CPU seconds (user + system)"),
        (
            "collect",
            "last ClientApp process end to the round's end (Flower's grid reads replies every 3 s, the lab's "
            "every 0.2 s; negative: the replies "
            "had left before the processes exited)",
        ),
    ]
    for key, label in parts:
        cells = [
            _f(run["seconds_per_round"] if key == "seconds" else run["per_round"].get(key)) for run in (lab, one, two)
        ]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    probes = result["clientapp_probe"]
    lines += [
        "",
        "### Steps of one ClientApp process, measured apart in a fresh interpreter (s, best of 2)",
        "",
        "| step | lab | bare |",
        "| --- | ---: | ---: |",
    ]
    for label in probes["lab"]:
        lines.append(f"| {label} | {_f(probes['lab'][label], 2)} | {_f(probes['bare'].get(label), 2)} |")
    lines.append(f"| total | {_f(sum(probes['lab'].values()), 2)} | {_f(sum(probes['bare'].values()), 2)} |")
    whole = result["lab_extra"]["whole_run"]
    lines += [
        "",
        "### The lab's extra time against the bare app, train only (s)",
        "",
        "| where | s |",
        "| --- | ---: |",
        *[f"| {k} | {_f(v)} |" for k, v in whole.items()],
    ]
    return "\n".join(lines) + "\n"
