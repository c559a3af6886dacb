"""The catalog query (`lab check`): each node describes its table without its rows and checks it
against the spec, so a coordinator sees which node fails which column before anything trains."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from lab.contract.results import NodeCheck, PreflightAnswer
from lab.contract.settings import RunSettings
from lab.core.catalog import describe, preflight
from lab.core.disclosure import DEFAULT_MIN_COUNT
from lab.core.spec import TaskSpec
from lab.errors import DataError
from lab.node.site import NodeSite
from lab.queries.base import Ask, Emit, QueryKind

if TYPE_CHECKING:  # the nodes import the queries too: no MLflow there
    from lab.registry.tracking import Tracker

__all__ = ["KIND", "Catalog"]

#: The catalog's minimum count when the node's agreement names none: level counts are more
#: identifying than a model's scores.
CATALOG_MIN_COUNT = 10


class Catalog(QueryKind[None]):
    name = "catalog"
    outputs = frozenset({"catalog"})

    def parse_request(self, text: str) -> None:
        return None

    def answer(self, spec: TaskSpec, request: None, site: NodeSite, run_id: int) -> dict[str, Any]:
        """The spec's columns in the node's table, and its problems against the spec. Counts that
        would, with what the node released before, let a small count be worked out (lab.node.releases)
        are held back: then only the row count and the problems leave."""
        agreement = site.agreement
        min_rows = max(DEFAULT_MIN_COUNT, agreement.min_rows if agreement else CATALOG_MIN_COUNT)
        path = site.data_path
        try:
            described, cells, raw = describe(path, spec, node=site.name, min_rows=min_rows)
        except DataError:  # the pre-flight below says why the table cannot be read
            described, cells, raw = {}, [], None
        if agreement is not None and raw is not None:
            history = site.releases(raw)
            if history.audit(cells, min_rows) is not None:
                described = {
                    "rows": described["rows"],
                    "columns": [{k: entry[k] for k in ("column", "role", "type")} for entry in described["columns"]],
                    "held_back": "the columns' counts: with what this node released before, they would let a "
                    f"count under {min_rows} be worked out by differencing",
                }
                cells = cells[-1:] if isinstance(described["rows"], int) else []  # the row count alone
            history.keep(cells)
        return {"catalog": described, "problems": preflight(path, spec, node=site.name)}

    def coordinate(
        self, spec: TaskSpec, request: None, settings: RunSettings, ask: Ask, tracker: Tracker, emit: Emit
    ) -> PreflightAnswer:
        """Every node's catalog and problems, or why it refused; nothing trains."""
        gathered = ask(request)
        nodes = {name: NodeCheck(name, refused=reason) for name, reason in gathered.refusals.items()}
        for name, node in gathered.answers.items():
            nodes[name] = NodeCheck.of(name, {"organisation": node.organisation, **node.answer})
        answer = PreflightAnswer(nodes)
        tracker.log_text(json.dumps(answer.to_json()["preflight"], indent=2), "nodes/preflight.json")
        tracker.log_params({"query": self.name, "num_nodes": len(nodes)})
        return answer


KIND = Catalog()
