"""Federated analytics without the runtime: node summaries, their suppression, and pooling."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from federation.analytics import StatsRequest, default_edges, node_summary, pool, protect, stats_frame
from lab.data import load_table
from lab.errors import LabError
from lab.spec import load_spec
from tests.conftest import HEART, SILOS


@pytest.fixture(scope="module")
def spec():
    return load_spec(HEART / "task.toml")


@pytest.fixture(scope="module")
def frames(spec):
    return {name: stats_frame(load_table(path, spec, node=name), spec) for name, path in SILOS.items()}


def _summaries(frames, spec, request):
    return {name: node_summary(frame, spec, request) for name, frame in frames.items()}


def test_pooled_moments_and_correlation_equal_the_concatenated_tables(frames, spec):
    request = StatsRequest(columns=("age", "chol", "thalach"), correlation=True, min_count=5)
    pooled = pool(_summaries(frames, spec, request), request)
    everything = pd.concat(frames.values(), ignore_index=True)
    for column in request.columns:
        figures = pooled["columns"][column]["groups"]["all"]
        assert figures["n"] == everything[column].notna().sum()
        assert figures["mean"] == pytest.approx(everything[column].mean(), rel=1e-12)
        assert figures["sd"] == pytest.approx(everything[column].std(ddof=1), rel=1e-9)
    expected = everything[list(request.columns)].astype(float).dropna().corr().to_numpy()
    assert np.allclose(pooled["correlation"]["matrix"], expected, atol=1e-12)


def test_grouped_moments_and_histogram_equal_the_concatenated_tables(frames, spec):
    request = StatsRequest(columns=("age",), by="sex", edges={"age": [30, 40, 50, 60, 70]}, min_count=1)
    pooled = pool(_summaries(frames, spec, request), request)
    everything = pd.concat(frames.values(), ignore_index=True)
    age = pooled["columns"]["age"]
    for group, rows in everything.groupby(everything["sex"].astype(int).astype(str)):
        assert age["groups"][group]["mean"] == pytest.approx(rows["age"].mean(), rel=1e-12)
        assert age["groups"][group]["sd"] == pytest.approx(rows["age"].std(ddof=1), rel=1e-9)
    bins = np.searchsorted([30, 40, 50, 60, 70], everything["age"], side="right")
    assert age["histogram"] == np.bincount(bins, minlength=6).tolist()  # min-count 1 hides nothing
    assert not any(age["histogram_incomplete"])
    assert age["quantiles"]["values"]["q50"] == pytest.approx(everything["age"].median(), abs=10)


def _recoverable(cells: list[list[float | None]]) -> list[tuple[str, int]]:
    """Lines (rows or columns, margins included) with exactly one suppressed value: that value
    equals the line's total minus the others, so it could be recomputed by subtraction."""
    table = np.array(cells, dtype=object)
    lines = [("row", i, table[i]) for i in range(table.shape[0])] + [
        ("column", j, table[:, j]) for j in range(table.shape[1])
    ]
    return [(kind, i) for kind, i, line in lines if sum(v is None for v in line) == 1]


def test_small_crosstab_cells_are_suppressed_with_their_complements(frames, spec):
    request = StatsRequest(columns=(), crosstab=("cp", "restecg"), min_count=5)
    summary = node_summary(frames["switzerland"], spec, request)
    cells = summary["crosstab"]["cells"]
    raw = pd.crosstab(frames["switzerland"]["cp"], frames["switzerland"]["restecg"]).to_numpy()
    assert ((raw > 0) & (raw < 5)).any(), "the Swiss table has small cells, which is what this test is about"
    for i, j in itertools.product(range(raw.shape[0]), range(raw.shape[1])):
        if 0 < raw[i, j] < 5:
            assert cells[i][j] is None
        elif cells[i][j] is not None:
            assert cells[i][j] == raw[i, j]
    assert _recoverable(cells) == []
    assert any("suppressed" in note for note in summary["notes"])


def test_pooled_histogram_cells_are_exact_or_flagged_as_lower_bounds(frames, spec):
    request = StatsRequest(columns=("chol",), edges={"chol": [100, 150, 200, 250, 300, 350]}, min_count=5)
    chol = pool(_summaries(frames, spec, request), request)["columns"]["chol"]
    everything = pd.concat(frames.values(), ignore_index=True)
    truth = np.bincount(np.searchsorted(request.edges["chol"], everything["chol"], side="right"), minlength=7)
    pooled, incomplete = np.array(chol["histogram"]), np.array(chol["histogram_incomplete"])
    assert incomplete.any() and (~incomplete).sum() >= 3
    assert (pooled[~incomplete] == truth[~incomplete]).all()
    assert (pooled[incomplete] <= truth[incomplete]).all()


def test_suppression_leaves_no_line_with_a_single_hidden_cell():
    rng = np.random.default_rng(0)
    for _ in range(200):
        cells = rng.integers(0, 12, size=(rng.integers(1, 5), rng.integers(2, 6)))
        hidden = protect(cells, 5)
        assert hidden[:-1, :-1][(cells > 0) & (cells < 5)].all()
        for line in [*hidden, *hidden.T]:
            assert line.sum() != 1


def test_small_groups_hide_their_sums_and_a_complement(spec):
    frame = pd.DataFrame({"age": [40.0] * 20 + [70.0] * 3 + [55.0] * 9, "sex": [0.0] * 20 + [1.0] * 3 + [2.0] * 9})
    request = StatsRequest(columns=("age",), by="sex", min_count=5)
    summary = node_summary(frame, spec, request)["columns"]["age"]
    assert summary["n"][:3] == [20.0, None, None]  # 3 is small; 9 goes with it, else 32 - 20 - 9 = 3
    assert summary["sum"][1] is None and summary["sum"][2] is None
    assert summary["n"][3] == 32.0 and summary["total_sum"] == frame["age"].sum()


def test_default_edges_come_from_pooled_figures():
    edges = default_edges({"age": {"mean": 53.5, "sd": 9.4}})["age"]
    assert len(edges) == 11 and edges[1] - edges[0] == 5.0
    assert edges[0] <= 53.5 - 2.5 * 9.4 + 5 and edges[-1] >= 53.5 + 2.5 * 9.4 - 5


def test_a_request_naming_an_unknown_column_is_refused(spec):
    with pytest.raises(LabError, match="'weight' is not in task 'heart-disease'"):
        StatsRequest(columns=("weight",)).check(spec)
    with pytest.raises(LabError, match="below the floor"):
        StatsRequest(columns=("age",), min_count=2).check(spec)
