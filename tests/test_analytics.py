"""Federated analytics without the runtime: node summaries, their suppression, and pooling."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from lab.core.analytics import StatsRequest, default_edges, node_summary, pool, protect, stats_frame
from lab.core.data import load_table
from lab.core.spec import load_spec
from lab.errors import LabError
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
    # Interpolated inside the pooled histogram: off by at most one bin width (10 years here).
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


def _attack(full: np.ndarray, hidden: np.ndarray, margins: bool = True) -> list[tuple[int, int]]:
    """Hidden cells an attacker can solve for exactly from the released cells and the table's
    sums, written independently of the code under test: least squares on the hidden unknowns,
    then each unknown is determined iff it does not move along the system's null space."""
    rows, cols = full.shape[0] - 1, full.shape[1] - 1
    lines = [[(i, j) for j in range(cols + 1)] for i in range(rows + (1 if margins else 0))]
    if margins:
        lines += [[(i, j) for i in range(rows + 1)] for j in range(cols + 1)]
    unknowns = sorted({p for line in lines for p in line if hidden[p]})
    a = np.array([[(p in line[:-1]) - (p == line[-1]) for p in unknowns] for line in lines], dtype=float)
    _, singular, vt = np.linalg.svd(a)
    null = vt[(singular > 1e-9).sum() :]
    return [p for k, p in enumerate(unknowns) if np.allclose(null[:, k], 0.0)]


def test_no_small_count_can_be_solved_for_from_what_is_released():
    rng = np.random.default_rng(0)
    for _ in range(1500):
        cells = rng.integers(0, rng.choice([8, 14, 30]), size=(rng.integers(1, 6), rng.integers(2, 7))).astype(float)
        hidden = protect(cells, 5)
        full = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1))
        full[:-1, :-1], full[:-1, -1], full[-1, :-1], full[-1, -1] = cells, cells.sum(1), cells.sum(0), cells.sum()
        assert hidden[(full > 0) & (full < 5)].all()
        for p in _attack(full, hidden):
            assert not 0 < full[p] < 5, (cells, p)
        for values, mask in [*zip(full, hidden, strict=True), *zip(full.T, hidden.T, strict=True)]:
            assert mask.sum() != 1  # else total minus the released cells gives the hidden one
            if not mask[-1]:  # the total is released: the hidden cells' sum is known
                assert values[:-1][mask[:-1]].sum() == 0 or values[:-1][mask[:-1]].sum() >= 5


def test_two_small_groups_are_not_released_as_a_small_sum(spec):
    hidden = protect(np.array([[20.0, 1.0, 3.0]]), 5, margins=False)
    assert hidden[0].tolist() == [True, True, True, False]  # 1 + 3 = 4 would be total - 20


def test_small_groups_hide_their_sums_and_a_complement(spec):
    frame = pd.DataFrame(
        {"chol": [200.0] * 20 + [300.0] * 9 + [250.0] * 3, "age": [40.0] * 20 + [55.0] * 9 + [70.0] * 3}
    )
    request = StatsRequest(columns=("chol",), by="age", edges={"age": [50.0, 60.0]}, min_count=5)
    summary = node_summary(frame, spec, request)["columns"]["chol"]
    assert summary["n"][:3] == [20.0, None, None]  # 3 is small; 9 goes with it, else 32 - 20 - 9 = 3
    assert summary["sum"][1] is None and summary["sum"][2] is None
    assert summary["n"][3] == 32.0 and summary["total_sum"] == frame["chol"].sum()


def test_default_edges_come_from_pooled_figures():
    edges = default_edges({"age": {"mean": 53.5, "sd": 9.4}})["age"]
    assert len(edges) == 11 and edges[1] - edges[0] == 5.0
    assert edges[0] <= 53.5 - 2.5 * 9.4 + 5 and edges[-1] >= 53.5 + 2.5 * 9.4 - 5


def test_every_figure_of_a_reply_comes_from_the_same_rows(spec):
    """A missing cholesterol must not make age's count differ from the correlation's count (their
    difference would single out that patient's age)."""
    frame = pd.DataFrame({"age": [40.0 + i for i in range(12)], "chol": [200.0] * 11 + [np.nan]})
    request = StatsRequest(columns=("age", "chol"), correlation=True, min_count=5)
    summary = node_summary(frame, spec, request)
    assert summary["columns"]["age"]["n"][-1] == summary["correlation"]["n"] == 11
    assert summary["columns"]["age"]["total_sum"] == summary["correlation"]["sum"][0]


def test_groups_come_from_the_spec_or_bins_never_from_a_nodes_values(spec):
    with pytest.raises(LabError, match="give its groups as bins, e.g. --bins age="):
        StatsRequest(columns=("chol",), by="age").check(spec)
    frame = pd.DataFrame({"chol": [200.0] * 12, "exang": [0.0] * 6 + [1.0] * 5 + [7.0]})
    request = StatsRequest(columns=("chol",), by="exang")  # the spec's levels of exang: 0 and 1
    summary = node_summary(frame, spec, request)
    assert summary["groups"] == ["0", "1"] and summary["columns"]["chol"]["n"] == [6.0, 5.0, 11.0]


def test_prepare_sums_hold_back_small_level_counts(spec):
    from lab.core.analytics import protect_column_sums
    from lab.core.preprocess import ColumnSums, encode

    swiss = load_table(SILOS["switzerland"], spec, node="switzerland")
    matrix = encode(swiss.features, spec)
    sums, notes = protect_column_sums(ColumnSums.of(matrix), spec, len(matrix), 5)
    released = sums.total[sums.count > 0]
    indicators = [i for i, name in enumerate(spec.encoded_names) if "=" in name]
    assert notes and all(not 0 < sums.total[i] < 5 for i in indicators)
    assert len(released) < len(spec.encoded_names)


def test_a_request_naming_an_unknown_column_is_refused(spec):
    with pytest.raises(LabError, match="'weight' is not in task 'heart-disease'"):
        StatsRequest(columns=("weight",)).check(spec)
    with pytest.raises(LabError, match="below the floor"):
        StatsRequest(columns=("age",), min_count=2).check(spec)


def test_the_catalog_hides_small_level_counts_with_their_complements(spec):
    from lab.core.catalog import build_catalog

    catalog = build_catalog(SILOS["switzerland"], spec, node="switzerland", min_rows=10)
    columns = {c["column"]: c for c in catalog["columns"]}
    cp = [*columns["cp"]["levels"].values(), columns["cp"]["missing"]]
    assert cp.count("hidden") >= 2 and 98 in cp  # three small chest-pain levels; 98 of level 4
    for entry in columns.values():
        values = [*entry.get("levels", {}).values(), entry["missing"]]
        assert not any(isinstance(v, int) and 0 < v < 10 for v in values)
