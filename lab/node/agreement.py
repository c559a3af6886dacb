"""A node's data-use agreement: who may use its data, for what, and what may leave; enforced by the node."""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import LabError

__all__ = ["OUTPUTS", "Agreement", "Refusal", "Request", "load_agreement", "parse_agreement"]

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
    "allow.node-figures": "whether the coordinator may show this node's own analytics figures, not only pooled ones",
}


class Refusal(LabError):
    """A message the agreement does not allow; ``clause`` names the field that refused it."""

    def __init__(self, clause: str, reason: str) -> None:
        super().__init__(f"agreement clause {clause}: {reason}")
        self.clause = clause


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
            raise Refusal("allow.min-rows", f"{request.rows} rows are fewer than the minimum of {self.min_rows}")
        training = request.strategy is not None  # analytics and catalogs are governed by allow.outputs
        if training and self.requires_dp and not request.differential_privacy:
            clause = "allow.differential-privacy" if self.differential_privacy else "allow.epsilon-budget"
            raise Refusal(clause, "training must use differential privacy; this run does not")

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
        }
        return [(name, values[name], meaning) for name, meaning in FIELDS.items()]


def load_agreement(path: str | Path) -> Agreement:
    """Read and validate an agreement file; errors name the file, the field and the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(f"agreement {str(path)!r} does not exist; check the node's agreement setting") from None
    return parse_agreement(text, source=str(path))


def parse_agreement(text: str, *, source: str = "<agreement>") -> Agreement:
    """Validate agreement TOML (see ``load_agreement``)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LabError(f"{source}: not valid TOML ({exc})") from None
    head, allow = _table(raw, "agreement", source), _table(raw, "allow", source)
    expires = head.get("expires")
    if not isinstance(expires, dt.date) or isinstance(expires, dt.datetime):
        raise LabError(f"{source}: agreement.expires = {expires!r}; give a date like 2027-06-30")
    tasks_raw = raw.get("tasks", [])
    if not isinstance(tasks_raw, list) or not tasks_raw or not all(isinstance(t, dict) for t in tasks_raw):
        raise LabError(f"{source}: list the covered task specs as [[tasks]] tables with name and sha256")
    tasks = {}
    for i, task in enumerate(tasks_raw):
        name, sha = task.get("name"), task.get("sha256")
        if not isinstance(name, str) or not isinstance(sha, str) or len(sha) != 64:
            raise LabError(
                f"{source}: tasks[{i}] needs a name and the spec's 64-hex sha256 (`lab spec hash` prints it)"
            )
        tasks[name] = sha
    outputs = _strings(allow, "outputs", source)
    unknown = sorted(outputs - set(OUTPUTS))
    if unknown:
        raise LabError(f"{source}: allow.outputs has {unknown!r}; choose from {sorted(OUTPUTS)!r}")
    min_rows = allow.get("min-rows", 10)
    if not isinstance(min_rows, int) or isinstance(min_rows, bool) or min_rows < 1:
        raise LabError(f"{source}: allow.min-rows = {min_rows!r}; give a whole number of rows, 1 or more")
    dp, node_figures = allow.get("differential-privacy", False), allow.get("node-figures", False)
    for key, value in (("differential-privacy", dp), ("node-figures", node_figures)):
        if not isinstance(value, bool):
            raise LabError(f"{source}: allow.{key} = {value!r}; give true or false")
    budget = allow.get("epsilon-budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise LabError(f"{source}: allow.epsilon-budget = {budget!r}; give a positive number like 10.0, or omit it")
    return Agreement(
        parties=tuple(_strings(head, "parties", source, ordered=True)),
        purpose=str(head.get("purpose", "")),
        expires=expires,
        tasks=tasks,
        strategies=frozenset(_strings(allow, "strategies", source)),
        apps=frozenset(_strings(allow, "apps", source)),
        outputs=frozenset(outputs),
        metrics=frozenset(_strings(allow, "metrics", source)),
        min_rows=min_rows,
        differential_privacy=dp,
        node_figures=node_figures,
        epsilon_budget=None if budget is None else float(budget),
        source=source,
    )


def _table(raw: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        template = "`lab agreement template --spec task.toml --organisation NAME`"
        raise LabError(f"{source}: missing table [{key}]; {template} prints a complete agreement")
    return value


def _strings(table: dict[str, Any], key: str, source: str, *, ordered: bool = False) -> Any:
    value = table.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LabError(f"{source}: {key} = {value!r}; give a list of strings")
    return value if ordered else set(value)
