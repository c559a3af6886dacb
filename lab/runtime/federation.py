"""The lab's one service under both front ends (the command line and the notebook workbench): a
federation (local nodes started for a call, or a running coordinator's) and what can be asked of
it, ``train``, ``check`` (the pre-flight), ``stats`` and ``mock``, each taking typed settings and
returning the typed result (lab.contract.results)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lab.contract.events import Event
from lab.contract.results import PreflightAnswer
from lab.contract.settings import RunSettings
from lab.core.analytics import DEFAULT_MIN_COUNT, StatsRequest
from lab.core.sources import TableSource
from lab.core.spec import TaskSpec
from lab.errors import UsageError
from lab.runtime.connection import Connection
from lab.runtime.environ import tracking_uri_for
from lab.runtime.local import LocalFederation
from lab.runtime.mock import check_request, mock_tables
from lab.runtime.run import RunResult, node_specs, run_federation, run_on, run_settings

__all__ = ["Federation"]


@dataclass(frozen=True)
class Federation:
    """Local nodes (name -> table, started for the run), or a running coordinator's federation.

    Build one with ``Federation.local`` or ``Federation.remote``.
    """

    nodes: dict[str, str] = field(default_factory=dict)
    agreements: dict[str, Path] = field(default_factory=dict)  # the others get the default (lab.runtime.agreements)
    no_agreement: bool = False  # --no-agreement: the local nodes start without one, on purpose
    secure: bool = False
    node_runtime: str = "warm"
    coordinator: Connection | None = None
    chosen: str = ""  # --nodes: the admitted nodes that take part (a coordinator's federation)
    standing: LocalFederation | None = None  # the local nodes, kept running between runs (``kept_up``)

    @classmethod
    def local(
        cls,
        nodes: Mapping[str, str | Path],
        agreements: Mapping[str, str | Path] | None = None,
        *,
        no_agreement: bool = False,
        secure: bool = False,
        node_runtime: str = "warm",
    ) -> Federation:
        """Nodes started on this machine: ``nodes`` maps each name to its table (a path or a
        database URL), ``agreements`` some of them to their data-use agreement (the others enforce
        the default one); ``no_agreement``: none of them holds one, on purpose."""
        if not nodes:
            raise UsageError("give the nodes, --node NAME=TABLE per node, or a coordinator, --coordinator HOST:PORT")
        unknown = sorted(set(agreements or {}) - set(nodes))
        if unknown:
            raise UsageError(f"--agreement names {unknown!r}, which no --node names")
        if no_agreement and agreements:
            raise UsageError("--no-agreement starts every local node without an agreement: drop --agreement")
        return cls(
            {name: TableSource.of(table).located() for name, table in nodes.items()},
            {name: Path(path) for name, path in (agreements or {}).items()},
            no_agreement,
            secure,
            node_runtime,
        )

    @classmethod
    def remote(cls, address: str, ca: Path | None, chosen: str = "") -> Federation:
        """A coordinator's federation, reached at ``address`` (HOST:PORT) with its CA certificate;
        ``chosen`` (NAME,NAME) limits it to some of its admitted nodes."""
        if ca is None or not ca.is_file():
            raise UsageError(f"--ca {str(ca) if ca else ''!r}: give the federation's CA certificate to reach {address}")
        return cls(coordinator=Connection(address, ca.resolve()), chosen=chosen)

    @contextlib.contextmanager
    def kept_up(self, workspace: Path, spec: TaskSpec) -> Iterator[Federation]:
        """This federation with its local nodes started once (their default agreements for ``spec``)
        and kept running for every run until the ``with`` block ends (then, or on a failure or
        Ctrl-C, every process is stopped); a coordinator's federation is returned as it is."""
        if self.coordinator is not None or self.standing is not None:
            yield self
            return
        specs = node_specs(self.nodes, self.agreements, workspace=workspace, spec=spec, no_agreement=self.no_agreement)
        with LocalFederation(workspace, specs, secure=self.secure, node_runtime=self.node_runtime) as live:
            yield replace(self, standing=live)

    def tracking_uri(self, workspace: Path, tracking_uri: str) -> str:
        """Where this federation's runs are recorded (a coordinator's, on its tracking server)."""
        if self.coordinator is None:
            return tracking_uri_for(workspace, tracking_uri)
        from lab.runtime.coordinator_host import tracking_uri_inside

        return tracking_uri or tracking_uri_inside()

    def settings(
        self,
        spec: TaskSpec,
        workspace: Path,
        tracking_uri: str,
        values: dict[str, Any],
        *,
        source: str = "run settings",
    ) -> RunSettings:
        """The run's settings for this federation: ``values`` by field name (``num_rounds``) on the
        defaults; an error names them as coming from ``source`` (``--set``)."""
        uri = self.tracking_uri(workspace, tracking_uri)
        if self.coordinator is None:
            return run_settings(spec, tracking_uri=uri, nodes=len(self.nodes), values=values, source=source)
        values = {**values, "only_nodes": self.chosen} if self.chosen else values
        return run_settings(spec, tracking_uri=uri, nodes=0, values=values, source=source)

    def preflight_settings(self, spec: TaskSpec, workspace: Path, tracking_uri: str) -> RunSettings:
        """The settings of the pre-flight: the catalog query, answered by whichever nodes can."""
        return replace(self.settings(spec, workspace, tracking_uri, {}), query="catalog", min_nodes=1)

    def resumed(self, run_id: str, workspace: Path, tracking_uri: str) -> RunSettings:
        """The settings of MLflow run ``run_id``, to resume it on this federation."""
        from lab.registry.checkpoints import resumable
        from lab.runtime.app import code_version
        from lab.runtime.environ import project_root

        uri = self.tracking_uri(workspace, tracking_uri)
        chosen = {"only_nodes": self.chosen} if self.chosen else {}
        return resumable(uri, run_id).settings_for(
            tracking_uri=uri, expected_nodes=len(self.nodes), code_version=code_version(project_root()), **chosen
        )

    def describe(self) -> str:
        if self.coordinator is None:
            return f"{len(self.nodes)} nodes"
        return f"the nodes of {self.coordinator.address}" + (f" ({self.chosen})" if self.chosen else "")

    def train(
        self, settings: RunSettings, *, workspace: Path, on_event: Callable[[Event], None] = lambda _: None
    ) -> RunResult:
        """Train the model ``settings`` describe (``settings(...)``, or ``resumed(...)``) on this
        federation; ``.summary`` of the result is the run's."""
        if settings.query:
            raise UsageError(f"train: these settings ask query {settings.query!r}; use check() or stats()")
        return self._federate(settings, workspace=workspace, on_event=on_event)

    def check(
        self,
        spec: TaskSpec,
        *,
        workspace: Path,
        tracking_uri: str = "",
        on_event: Callable[[Event], None] = lambda _: None,
    ) -> PreflightAnswer:
        """The pre-flight (the catalog query): every node's catalog and problems against the spec
        (with its organisation), or why it refused; by node name."""
        settings = self.preflight_settings(spec, workspace, tracking_uri)
        return self._federate(settings, workspace=workspace, on_event=on_event).preflight

    @staticmethod
    def stats_request(
        spec: TaskSpec,
        columns: Sequence[str],
        *,
        by: str | None = None,
        crosstab: tuple[str, str] | None = None,
        correlation: bool = False,
        bins: Mapping[str, list[float]] | None = None,
        min_count: int = DEFAULT_MIN_COUNT,
    ) -> StatsRequest:
        """The statistics of ``columns`` to ask for (``stats``): counts, means, sds, quantiles and
        histograms, by ``by``, the ``crosstab`` of two columns and the correlation. A column the
        spec does not have fails here, before any process starts."""
        request = StatsRequest(
            columns=tuple(columns),
            by=by,
            crosstab=crosstab,
            correlation=correlation,
            edges=dict(bins or {}),
            min_count=min_count,
        )
        request.check(spec)
        return request

    def stats(
        self,
        spec: TaskSpec,
        request: StatsRequest,
        *,
        workspace: Path,
        tracking_uri: str = "",
        on_event: Callable[[Event], None] = lambda _: None,
    ) -> RunResult:
        """Federated statistics (``.stats`` of the result), pooled over every node's table, small
        counts suppressed at each node; ``request`` as ``stats_request`` makes it."""
        request.check(spec)
        settings = self.settings(spec, workspace, tracking_uri, {})
        settings = replace(settings, query="stats", query_request=request.to_json(), min_nodes=1)
        return self._federate(settings, workspace=workspace, on_event=on_event)

    def mock_folder(self, spec: TaskSpec, rows: int, out: Path) -> Path:
        """What ``mock`` can check before any process starts (the rows, the output folder, the
        local nodes against the spec); the folder, created. Raises UsageError or DataError."""
        return check_request(spec, self.nodes, rows, out)

    def mock(
        self,
        spec: TaskSpec,
        rows: int,
        out: Path,
        *,
        seed: int = 0,
        answers: PreflightAnswer | None = None,
        workspace: Path,
        tracking_uri: str = "",
        on_event: Callable[[Event], None] = lambda _: None,
    ) -> dict[str, Path]:
        """Mock tables to write code against: per node, ``rows`` rows (before the spec's
        ``drop-row`` policy) of the spec's columns drawn from the catalog the node releases, in the
        format the spec gives it, written into ``out`` (created), each node's drawn from ``seed``
        and its name; no real row in them. The nodes are asked for their catalogs through the
        pre-flight (``check``), unless its ``answers`` are given. Returns each node's file; nothing
        is written unless every node's mock could be drawn.

        Raises UsageError if ``rows`` is under 1, ``out`` cannot be written, or a local node is not
        one the spec lists (before any process starts); DataError if a node refused, could not
        describe its table, or its catalog lacks what a column needs (lab.core.mock says which)."""
        if answers is None:
            self.mock_folder(spec, rows, out)
            answers = self.check(spec, workspace=workspace, tracking_uri=tracking_uri, on_event=on_event)
        return mock_tables(spec, answers, rows, out, seed)

    def _federate(
        self, settings: RunSettings, *, workspace: Path, on_event: Callable[[Event], None] = lambda _: None
    ) -> RunResult:
        """Run ``settings`` on this federation: start the local nodes (or use them, kept up), or
        submit to the coordinator."""
        if self.coordinator is not None:
            return run_on(self.coordinator, settings, workspace=workspace, on_event=on_event)
        if self.standing is not None:
            return run_on(self.standing.connection, settings, workspace=workspace, on_event=on_event)
        return run_federation(
            settings,
            self.nodes,
            workspace=workspace,
            agreements=self.agreements,
            no_agreement=self.no_agreement,
            secure=self.secure,
            node_runtime=self.node_runtime,
            on_event=on_event,
        )
