"""The overhead benchmark's result as markdown tables (a result of an older version, without the warm runtime's
row and figures, renders too: what it lacks shows as n/a or is left out)."""

from __future__ import annotations

from typing import Any

from .goals import assess

__all__ = ["table"]

DEMO_ROUNDS = 5  # `lab demo`'s default (lab.contract.settings.RunSettings.num_rounds), which the demo goal assumes


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _runs(result: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(key, label, run) of each row: the lab on each node runtime measured, then the bare app twice."""
    lab, bare = result["lab"], result["bare"]
    if "node_runtime" in lab:
        runs = [("lab", f"lab demo, `--node-runtime {lab['node_runtime']}`", lab)]
    else:  # measured before the warm runtime: Flower's flwr-clientapp process per message
        runs = [("lab", "lab demo (a ClientApp process per message)", lab)]
    if "lab_subprocess" in result:
        sub = result["lab_subprocess"]
        runs.append(("lab_subprocess", f"lab demo, `--node-runtime {sub['node_runtime']}`", sub))
    return runs + [
        ("bare_train_only", "bare Flower, train only (`fraction-evaluate = 0`)", bare["train-only"]),
        ("bare_train_evaluate", "bare Flower, train + evaluate (Flower's default)", bare["train+evaluate"]),
    ]


def _cpu_per_message(run: dict[str, Any]) -> float | None:
    """A worker's CPU seconds per message, or a ClientApp process's (one per message)."""
    value: float | None = (
        run["cpu_seconds_per_message"]
        if "cpu_seconds_per_message" in run
        else run["per_round"].get("clientapp_cpu_seconds")
    )
    return value


def _answering(run: dict[str, Any]) -> str:
    """What answers the run's messages, for a cell."""
    return "worker" if run.get("app_process") == "worker" else "ClientApp"


def table(result: dict[str, Any]) -> str:
    """The result as markdown."""
    runs = _runs(result)
    lab = result["lab"]
    machine = result["machine"]
    warm = "lab_subprocess" in result
    workers_seen = machine.get("foreign_workers_seen")
    lines = [
        "## Overhead: the lab's federation against a bare Flower app",
        "",
        f"{result['runtime']}; {result['rounds']} rounds of FedAvg, same model (logistic regression, 13 features), "
        "data, split and hyperparameters; measured in the same run on "
        f"{machine['cpus']} CPUs ({result['measured_at']}; load average before "
        f"{machine['load_average_before'][0]:.1f}, after {machine['load_average_after'][0]:.1f}; "
        f"{machine['foreign_clientapps_seen']} ClientApp processes"
        + ("" if workers_seen is None else f" and {workers_seen} warm workers")
        + " of other federations seen meanwhile). "
        + (
            "The lab runs its demo on each node runtime: `warm` (the default; each SuperNode, started with "
            "`--isolation process`, hands every message to one long-lived worker process of its node) and "
            "`subprocess` (Flower's own: a `flwr-clientapp` process per message, behind the node's gate); "
            "the bare app runs on Flower's own. "
            if warm
            else ""
        )
        + "Messages are counted from the SuperNodes' logs. CPU seconds per message: for a worker, the CPU time "
        "the node workers spent during the rounds (idle polling included) over the messages they answered; "
        "for a ClientApp process, its own CPU time (one process per message); the SuperNode column adds the "
        "nodes' own Flower processes (SuperNode, and its SuperExec with `--isolation subprocess`) over the same "
        "messages. Peak RSS per node: the largest sampled, of the worker or of the largest ClientApp process, "
        "and of the SuperNode (plus SuperExec), the largest node's. CPU cores busy: the mean over the rounds, "
        "by this benchmark's processes (the federation and the sampler) and by every other process on the "
        "machine (which slow every figure down).",
        "",
        "| variant | s per round, mean | each round (s) | lab / this | messages per node per round "
        "(SuperNode logs) | ClientApp processes per node per round | CPU s per message: worker or ClientApp "
        "| CPU s per message: SuperNode | peak RSS per node (MB): worker or ClientApp | peak RSS per node (MB): "
        "SuperNode | CPU cores busy: this benchmark / others |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label, run in runs:
        each = ", ".join(_f(s) for s in run["seconds_each_round"])
        ratio = "" if key == "lab" else _f(lab["seconds_per_round"] / run["seconds_per_round"], 2)
        peak = run.get("peak_rss_mb_per_node", {})
        cores = run["cores_during_rounds"]
        lines.append(
            f"| {label} | {_f(run['seconds_per_round'])} | {each} | {ratio} "
            f"| {_f(run['messages_per_node_per_round'])} | {_f(run['clientapps_per_node_per_round'])} "
            f"| {_f(_cpu_per_message(run), 2)} ({_answering(run)}) "
            f"| {_f(run.get('supernode_cpu_seconds_per_message'), 2)} "
            f"| {_f(peak.get('app'), 0)} | {_f(peak.get('supernode'), 0)} "
            f"| {_f(cores['benchmark'], 2)} / {_f(cores['others'], 2)} |"
        )
    one = result["bare"]["train-only"]
    lines += [
        "",
        "The lab's train message also scores the model it receives (the bare app's evaluate message does that).",
        "",
        *_goals(result),
        "",
        *_phases(runs),
        "",
        "The bare app, train only: "
        + "; ".join(f"{p['phase']} {_f(p['seconds'])} s" for p in one["phases"])
        + f"; {_f(one['submit_to_end_seconds'], 0)} s from submitting the app to the run's end.",
        "",
        *_round(runs),
    ]
    poll = _idle_poll(result, runs)
    lines += ["", *poll] if poll else []
    probes = result["clientapp_probe"]
    lines += [
        "",
        "### Steps of one ClientApp process (a process per message), measured apart in a fresh interpreter "
        "(s, best of 2)",
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
        f"### The lab's extra time against the bare app, train only (s): {runs[0][1]}",
        "",
        "| where | s |",
        "| --- | ---: |",
        *[f"| {k} | {_f(v)} |" for k, v in whole.items()],
    ]
    return "\n".join(lines) + "\n"


def _goals(result: dict[str, Any]) -> list[str]:
    """The issue's goals, their figures and whether each is met."""
    nodes = len(result.get("nodes", [])) or 4
    labels = {
        "demo_wall_seconds": "`lab demo` under {b:.0f} s after set-up on 2 cores: its wall time, from the command "
        "to its exit",
        "demo_submit_to_done_seconds": "the same bound, from submitting the app to the run's end (submit to done)",
        "round_seconds": f"a round under {{b:.0f}} s with {nodes} nodes",
        "ratio_vs_bare_train_only": "the lab's s per round at most {b:.2f} × bare Flower's (train only)",
        "cpu_seconds_per_message": "CPU s per message under {b:.1f} (the lab's node workers during the rounds)",
    }
    units = {"demo_wall_seconds": " s", "demo_submit_to_done_seconds": " s", "round_seconds": " s"}
    lines = [
        "### The issue's goals",
        "",
        f"Figures of the lab as users run it: {_runs(result)[0][1]}.",
        "",
        "| goal | measured | met |",
        "| --- | ---: | --- |",
    ]
    for row in assess(result):
        label = labels[row["goal"]].format(b=row["bound"])
        digits = 2 if row["goal"] in ("ratio_vs_bare_train_only", "cpu_seconds_per_message") else 1
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        lines.append(f"| {label} | {_f(row['measured'], digits)}{units.get(row['goal'], '')} | {met} |")
    notes = []
    if result["rounds"] != DEMO_ROUNDS:
        notes.append(
            f"this run had {result['rounds']} rounds where `lab demo` runs {DEMO_ROUNDS} by default: its demo "
            "times are not the goal's"
        )
    if result["machine"]["cpus"] != 2:
        notes.append(f"measured on {result['machine']['cpus']} CPUs, not 2")
    reported = result.get("demo_reported_wall_seconds")
    notes.append(f"the demo reports {_f(reported, 0)} s of wall time itself")
    if "demo_subprocess_wall_seconds" in result:
        notes.append(
            f"on the subprocess runtime the demo took {_f(result['demo_subprocess_wall_seconds'], 0)} s "
            f"({_f(result['demo_subprocess_submit_to_done_seconds'], 0)} s submit to done)"
        )
    received = result["lab"]["messages_received"]
    notes.append(f"messages the demo's SuperNodes received: {received}")
    audited = result["lab"].get("audit_messages")
    if audited:
        notes.append(f"its nodes' audit logs: {audited['by_type']}, {audited['by_decision']}")
    text = "; ".join(notes)
    lines += ["", text[0].upper() + text[1:] + "."]
    return lines


def _phases(runs: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """The lab demo's phases (from its events), one column per node runtime."""
    labs = [(label, run) for key, label, run in runs if key.startswith("lab")]
    lines = [
        "### The lab demo, phase by phase (s)",
        "",
        "| phase | " + " | ".join(label for label, _ in labs) + " |",
        "| --- |" + " ---: |" * len(labs),
    ]
    first = labs[0][1]["phases"]
    for i, phase in enumerate(first):
        cells = [_f(run["phases"][i]["seconds"]) if i < len(run["phases"]) else "n/a" for _, run in labs]
        lines.append(f"| {phase['phase']} | {' | '.join(cells)} |")
    totals = [_f(run["wall_seconds"]) for _, run in labs]
    lines.append(f"| total: `lab demo` start to exit | {' | '.join(totals)} |")
    return lines


def _round(runs: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """One round, mean: from the SuperNodes' log lines, and from the ClientApp processes."""
    lines = [
        "### One round, mean (s)",
        "",
        "| | " + " | ".join(label for _, label, _ in runs) + " |",
        "| --- |" + " ---: |" * len(runs),
    ]
    parts = [
        ("seconds", "round"),
        (
            "poll_wait",
            "round start (the ServerApp pushes) → a node's SuperNode pulls its first message (it sleeps 3 s "
            "whenever it finds none), mean over nodes",
        ),
        ("poll_wait_last", "the same, the node that pulled last"),
        (
            "node_seconds",
            "a node's pull → its last reply pushed (the worker or ClientApp process answers; the SuperNode "
            "looks for the reply every 0.5 s; train + evaluate: both messages)",
        ),
        (
            "after_last_reply",
            "last reply pushed → the round's end (the ServerApp reads replies, the lab every 0.2 s, Flower's "
            "grid every 3 s, and aggregates)",
        ),
        ("dispatch", "round start → the first ClientApp process starts"),
        ("span", "first ClientApp process start to last end"),
        ("clientapp_seconds", "one ClientApp process, start to end"),
        ("clientapp_cpu_seconds", "one ClientApp process, CPU seconds (user + system)"),
        (
            "collect",
            "last ClientApp process end to the round's end (negative: the replies had left before the processes "
            "exited)",
        ),
    ]
    for key, label in parts:
        cells = [_f(run["seconds_per_round"] if key == "seconds" else run["per_round"].get(key)) for _, _, run in runs]
        if key == "seconds" or any(c != "n/a" for c in cells):
            lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def _idle_poll(result: dict[str, Any], runs: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """What the SuperNode's hard-coded 3 s idle poll costs a round."""
    poll = result.get("idle_poll")
    if not poll:
        return []
    lab = poll["lab"]
    lines = [
        "### The SuperNode's idle poll",
        "",
        f"A SuperNode asks the SuperLink for a message and, when there is none, sleeps {poll['sleep_seconds']:.0f} s "
        "(hard-coded in `flwr.supernode.start_client_internal`); after handing a message on it looks for the "
        f"reply every {poll['reply_poll_seconds']:.1f} s. The last node to reply starts its sleep right after "
        "pushing its reply, before the ServerApp has aggregated and pushed the next round, so it pulls the next "
        f"round's message no sooner than {poll['sleep_seconds']:.0f} s after its reply, however fast the ServerApp "
        "is. Measured from the times the SuperNodes' `Receiving:` lines appeared (followed every 0.05 s) "
        "against the round's start (the previous round's event, just before the ServerApp pushes): the warm "
        f"lab's round waits {_f(lab['wait_last'], 2)} s for its last node "
        f"({_f(lab['wait_mean'], 2)} s per node on average) out of {_f(lab['seconds_per_round'], 2)} s "
        f"({_f(None if lab['share_of_round'] is None else 100 * lab['share_of_round'], 0)} %). "
        "A warm worker acquires the task within 0.05 s of the SuperNode pulling it (it asks every 0.05 s).",
        "",
        "| | " + " | ".join(label for _, label, _ in runs) + " |",
        "| --- |" + " ---: |" * len(runs),
        "| wait for the last node's pull (s) | "
        + " | ".join(_f(poll.get(key, {}).get("wait_last"), 2) for key, _, _ in runs)
        + " |",
        "| wait per node, mean (s) | "
        + " | ".join(_f(poll.get(key, {}).get("wait_mean"), 2) for key, _, _ in runs)
        + " |",
    ]
    return lines
