"""A node's data-use agreement: who may use its data, for what, and what may leave; enforced by the node."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.core.spec import TaskSpec
from lab.core.toml import TomlReader
from lab.errors import AgreementError, Refusal
from lab.node.limits import LIMIT_FIELDS, LIMIT_KEYS, Limits, parse_limits

__all__ = ["OUTPUTS", "UNBOUND", "Agreement", "Request", "load_agreement", "parse_agreement", "template"]

#: Why a node that holds no agreement refuses, unless its operator started it so on purpose.
UNBOUND = (
    "the node holds no data-use agreement, so it answers nothing; its operator gives it one (`lab node start "
    "--agreement FILE`) or starts it knowingly without one (`--no-agreement`: nothing is checked)"
)

#: What a reply can carry out of a node.
OUTPUTS = {
    "model-updates": "trained model parameters (train replies)",
    "metrics": "named metric values computed on the node's rows (loss, accuracy, ...)",
    "statistics": "column counts, sums and sums of squares, for the federated scaler",
    "catalog": "the table's columns, types, row count and missingness (counts under min-rows hidden)",
    "analytics": "results of federated analytics queries",
}

#: Each field of the agreement and what it means, for `lab agreement check`.
FIELDS = {
    "agreement.parties": "the organisations bound by the agreement",
    "agreement.purpose": "what the data may be used for",
    "agreement.expires": "the last day the agreement holds; after it the node refuses everything",
    "tasks": "task specs the node accepts, by name and sha256 of the spec file",
    "allow.strategies": "federated strategies the node takes part in",
    "allow.apps": "sha256 of the Flower apps (FAB) allowed to run on the data (`lab app hash`)",
    "allow.outputs": "what may leave the node: " + ", ".join(OUTPUTS),
    "allow.metrics": "metric names that may leave the node",
    "allow.min-rows": "fewest rows behind anything that leaves the node",
    "allow.differential-privacy": "whether training must use differential privacy",
    "allow.epsilon-budget": "total epsilon all runs together may spend on the node's rows (implies DP training)",
    "allow.node-figures": (
        "whether the coordinator may record this node's own figures (rows, scores, baseline, loss, epsilon, "
        "contribution, analytics), not only pooled ones"
    ),
    **LIMIT_FIELDS,
}

#: The keys each table of an agreement may hold (any other key is refused, naming the nearest).
_KEYS = {
    "": ("agreement", "tasks", "allow", "limits"),
    "agreement": ("parties", "purpose", "expires"),
    "tasks": ("name", "sha256"),
    "allow": tuple(name.removeprefix("allow.") for name in FIELDS if name.startswith("allow.")),
}


@dataclass(frozen=True)
class Request:
    """What an incoming message asks of the node, as far as the agreement is concerned."""

    task: str
    task_sha256: str
    strategy: str | None  # None: the message is not part of training (a catalog query)
    outputs: frozenset[str]
    metrics: frozenset[str]
    rows: int
    differential_privacy: bool = False


@dataclass(frozen=True)
class Agreement:
    """A parsed, validated agreement file."""

    parties: tuple[str, ...]
    purpose: str
    expires: dt.date
    tasks: dict[str, str]  # name -> sha256
    strategies: frozenset[str]
    apps: frozenset[str]
    outputs: frozenset[str]
    metrics: frozenset[str]
    min_rows: int
    differential_privacy: bool
    node_figures: bool = False
    epsilon_budget: float | None = None
    limits: Limits = Limits()
    source: str = "<agreement>"

    @property
    def requires_dp(self) -> bool:
        """Training must be differentially private: required outright, or implied by a budget."""
        return self.differential_privacy or self.epsilon_budget is not None

    def check_in_force(self, today: dt.date | None = None) -> None:
        """Refuse everything once the agreement has expired."""
        today = today or dt.date.today()
        if today > self.expires:
            raise Refusal("agreement.expires", f"the agreement expired on {self.expires.isoformat()}")

    def check_app(self, fab_hash: str) -> None:
        """Refuse an app whose FAB hash is not on the allow-list."""
        if fab_hash not in self.apps:
            raise Refusal("allow.apps", f"app {fab_hash[:16]}… is not on the node's allow-list")

    def check(self, request: Request, today: dt.date | None = None) -> None:
        """Refuse ``request`` unless every clause allows it (the first failing clause is named)."""
        self.check_in_force(today)
        if self.tasks.get(request.task) != request.task_sha256:
            wanted = self.tasks.get(request.task)
            why = "is not covered" if wanted is None else f"has sha256 {request.task_sha256[:12]}…, not {wanted[:12]}…"
            raise Refusal("tasks", f"task {request.task!r} {why}")
        if request.strategy is not None and request.strategy not in self.strategies:
            raise Refusal("allow.strategies", f"strategy {request.strategy!r} is not allowed")
        for output in sorted(request.outputs - self.outputs):
            raise Refusal("allow.outputs", f"{output} may not leave the node")
        for metric in sorted(request.metrics - self.metrics):
            raise Refusal("allow.metrics", f"metric {metric!r} may not leave the node")
        if request.rows < self.min_rows:
            raise Refusal(
                "allow.min-rows",
                f"{request.rows} rows are fewer than the minimum of {self.min_rows}",
                public=f"the rows asked for are fewer than the minimum of {self.min_rows}",
            )
        training = request.strategy is not None  # analytics and catalogs are governed by allow.outputs
        if training and self.requires_dp and not request.differential_privacy:
            clause = "allow.differential-privacy" if self.differential_privacy else "allow.epsilon-budget"
            raise Refusal(clause, "training must use differential privacy; this run does not")

    def clauses(self, task: str) -> dict[str, Any]:
        """The clauses a training run of ``task`` is checked against, by field name, for the
        coordinator's record of the run: no parties, purpose or file path, and of the tasks only
        this one (``None`` when the agreement does not cover it)."""
        return {
            "agreement.expires": self.expires.isoformat(),
            "tasks": {task: self.tasks.get(task)},
            "allow.strategies": sorted(self.strategies),
            "allow.apps": sorted(self.apps),
            "allow.outputs": sorted(self.outputs),
            "allow.metrics": sorted(self.metrics),
            "allow.min-rows": self.min_rows,
            "allow.differential-privacy": self.differential_privacy,
            "allow.epsilon-budget": self.epsilon_budget,
            "allow.node-figures": self.node_figures,
            **self.limits.values(),
        }

    def explain(self) -> list[tuple[str, str, str]]:
        """(field, value, meaning) for every field, for `lab agreement check`."""
        values = {
            "agreement.parties": ", ".join(self.parties),
            "agreement.purpose": self.purpose,
            "agreement.expires": self.expires.isoformat(),
            "tasks": ", ".join(f"{n} ({h[:12]}…)" for n, h in sorted(self.tasks.items())),
            "allow.strategies": ", ".join(sorted(self.strategies)),
            "allow.apps": ", ".join(f"{h[:12]}…" for h in sorted(self.apps)),
            "allow.outputs": ", ".join(sorted(self.outputs)),
            "allow.metrics": ", ".join(sorted(self.metrics)),
            "allow.min-rows": str(self.min_rows),
            "allow.differential-privacy": "required" if self.differential_privacy else "not required",
            "allow.epsilon-budget": "none" if self.epsilon_budget is None else f"{self.epsilon_budget:g}",
            "allow.node-figures": "shown" if self.node_figures else "pooled figures only",
            **{name: f"{value:g}" for name, value in self.limits.values().items()},
        }
        return [(name, values[name], meaning) for name, meaning in FIELDS.items()]


def load_agreement(path: str | Path) -> Agreement:
    """Read and validate an agreement file; errors name the file, the field and the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AgreementError(f"agreement {str(path)!r} does not exist; check the node's agreement setting") from None
    return parse_agreement(text, source=str(path))


def parse_agreement(text: str, *, source: str = "<agreement>") -> Agreement:
    """Validate agreement TOML (see ``load_agreement``)."""
    template_hint = "`lab agreement template --spec task.toml --organisation NAME` prints a complete agreement"
    r = TomlReader(text, source, error=AgreementError, example=template_hint)
    r.only(r.raw, _KEYS[""], where="")
    head, allow = r.table("agreement"), r.table("allow")
    r.only(head, _KEYS["agreement"], where="agreement")
    r.only(allow, _KEYS["allow"], where="allow", elsewhere=dict.fromkeys(LIMIT_KEYS, "limits"))
    expires = head.get("expires")
    if not isinstance(expires, dt.date) or isinstance(expires, dt.datetime):
        raise r.fail(f"agreement.expires = {expires!r}; give a date like 2027-06-30")
    tasks = {}
    for i, task in enumerate(r.array_of_tables("tasks", required=True)):
        r.only(task, _KEYS["tasks"], where=f"tasks[{i}]")
        name, sha = task.get("name"), task.get("sha256")
        if not isinstance(name, str) or not isinstance(sha, str) or len(sha) != 64:
            raise r.fail(f"tasks[{i}] needs a name and the spec's 64-hex sha256 (`lab spec hash` prints it)")
        tasks[name] = sha
    outputs = set(r.strings(allow, "outputs", where="allow"))
    unknown = sorted(outputs - set(OUTPUTS))
    if unknown:
        raise r.fail(f"allow.outputs has {unknown!r}; choose from {sorted(OUTPUTS)!r}")
    min_rows = r.get(allow, "min-rows", int, default=10, where="allow")
    if min_rows < 1:
        raise r.fail(f"allow.min-rows = {min_rows!r}; give a whole number of rows, 1 or more")
    budget = r.get(allow, "epsilon-budget", float, default=None, where="allow")
    if budget is not None and not 0 < budget < math.inf:
        raise r.fail(f"allow.epsilon-budget = {budget!r}; give a positive number like 10.0, or omit it")
    parties = tuple(r.strings(head, "parties", where="agreement"))
    if not parties:
        raise r.fail('agreement.parties is empty; name who agrees, e.g. parties = ["Your organisation", "Coordinator"]')
    return Agreement(
        parties=parties,
        purpose=str(head.get("purpose", "")),
        expires=expires,
        tasks=tasks,
        strategies=frozenset(r.strings(allow, "strategies", where="allow")),
        apps=frozenset(r.strings(allow, "apps", where="allow")),
        outputs=frozenset(outputs),
        metrics=frozenset(r.strings(allow, "metrics", where="allow")),
        min_rows=min_rows,
        differential_privacy=r.get(allow, "differential-privacy", bool, default=False, where="allow"),
        node_figures=r.get(allow, "node-figures", bool, default=False, where="allow"),
        epsilon_budget=budget,
        limits=parse_limits(r),
        source=source,
    )


def template(
    spec: TaskSpec, fab_hash: str, organisation: str, expires: dt.date | None = None, *, node_figures: bool = False
) -> str:
    """An agreement approving one task and one app, every strategy and the task's own metrics,
    for a year (TOML text to edit): what `lab demo` gives each node, and `lab agreement template`
    prints.

    ``node_figures`` (default: False) lets the coordinator record the node's own figures for the
    federation to read; a local federation, whose nodes have one operator, shows them."""
    from lab.contract.strategies import STRATEGIES

    expires = expires or dt.date.today() + dt.timedelta(days=365)
    metrics = [*spec.metrics, "train-loss"]
    return f"""# Data-use agreement of {organisation} (written by `lab demo` or `lab agreement template`).
[agreement]
parties = [{json.dumps(organisation)}, "Federation coordinator"]
purpose = "Develop and evaluate a shared {spec.name} model without pooling records"
expires = {expires.isoformat()}

[[tasks]]
name = "{spec.name}"
sha256 = "{spec.sha256}"

[allow]
strategies = {json.dumps(list(STRATEGIES))}
apps = ["{fab_hash}"]
outputs = {json.dumps(list(OUTPUTS))}
metrics = {json.dumps(metrics)}
min-rows = 10
differential-privacy = false
node-figures = {str(node_figures).lower()}

# What a message may ask of this node: it refuses, naming the clause, whatever goes beyond these
# (each value here is the default that holds where the agreement says nothing).
[limits]
{Limits().as_toml()}"""
