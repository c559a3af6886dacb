"""Mock tables drawn from the nodes' catalogs: they load, say only what the catalog says, and hold
real rows no more often than chance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import poisson

from lab.core.catalog import build_catalog
from lab.core.data import load_table, read_raw
from lab.core.mock import SYNTHETIC_COLUMN, mock_table, write_mock
from lab.core.spec import TaskSpec, parse_spec
from lab.errors import DataError

from .conftest import HEART, SILOS, run_lab

ROWS = 400
HEART_TEXT = (HEART / "task.toml").read_text()
# Few columns, all of them discrete: chance matches are common, so the test below has teeth.
NARROW_TEXT = HEART_TEXT[: HEART_TEXT.index("[[features]]")] + HEART_TEXT[HEART_TEXT.index("[preprocessing]") :]
NARROW_TEXT = NARROW_TEXT.replace(
    "[preprocessing]",
    '[[features]]\nname = "age"\ntype = "numeric"\n\n[[features]]\nname = "sex"\ntype = "numeric"\n\n'
    '[[features]]\nname = "cp"\ntype = "categorical"\nlevels = [1, 2, 3, 4]\n\n[preprocessing]',
)


def _catalog(spec: TaskSpec, node: str) -> dict[str, Any]:
    return build_catalog(SILOS[node], spec, node=node, min_rows=10)


def _columns(catalog: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["column"]: entry for entry in catalog["columns"]}


@pytest.mark.parametrize("node", sorted(SILOS))
def test_the_mock_loads_with_the_specs_own_loader(heart_spec: TaskSpec, node: str, tmp_path: Path) -> None:
    # Prepare
    mock = mock_table(_catalog(heart_spec, node), heart_spec, node=node, rows=ROWS, seed=1)
    # Execute
    path = write_mock(mock, heart_spec, node=node, folder=tmp_path)
    table = load_table(path, heart_spec, node=node)
    # Assert
    assert path.name == f"{node}.synthetic.csv"
    assert len(table) + table.dropped == ROWS and len(table) > 0
    assert list(mock.columns) == [*heart_spec.raw_columns, SYNTHETIC_COLUMN]


@pytest.mark.parametrize("node", sorted(SILOS))
def test_mock_values_are_levels_and_numbers_the_catalog_released(heart_spec: TaskSpec, node: str) -> None:
    catalog = _catalog(heart_spec, node)
    mock = mock_table(catalog, heart_spec, node=node, rows=ROWS, seed=2)
    for name, entry in _columns(catalog).items():
        if name not in mock:
            continue
        values = mock[name].dropna()
        if "levels" in entry:
            released = {float(level) for level in entry["levels"]}
            assert {float(v) for v in values} <= released, name
        else:
            edges = entry["histogram"]["edges"]
            assert values.between(edges[0], edges[-1]).all(), name
            if entry["histogram"]["integer"]:
                assert (values == values.round()).all(), name
        if entry["missing"] == 0:
            assert mock[name].notna().all(), name
    assert mock[SYNTHETIC_COLUMN].eq(True).all()


@pytest.mark.parametrize(
    ("fmt", "suffix"), [('format = "csv"\nheader = true', "csv"), ('format = "parquet"', "parquet")]
)
def test_a_mock_with_named_columns_carries_the_synthetic_column(
    heart_spec: TaskSpec, fmt: str, suffix: str, tmp_path: Path
) -> None:
    # The catalog is the real (headerless) table's; the mock is written for a spec of another format.
    spec = parse_spec(HEART_TEXT.replace('format = "csv"\nheader = false', fmt))
    mock = mock_table(_catalog(heart_spec, "va"), spec, node="va", rows=ROWS, seed=3)
    path = write_mock(mock, spec, node="va", folder=tmp_path)
    raw, _ = read_raw(path, spec.format_for("va"))
    assert path.name == f"va.synthetic.{suffix}"
    assert list(raw.columns) == [*spec.raw_columns, SYNTHETIC_COLUMN]
    assert raw[SYNTHETIC_COLUMN].astype(str).eq("True").all()
    assert len(load_table(path, spec, node="va")) > 0


def _as_numbers(frame: pd.DataFrame, spec: TaskSpec, missing_token: str) -> pd.DataFrame:
    """The spec's columns as numbers, NaN where missing (every heart column is numeric or numeric levels)."""
    return pd.DataFrame(
        {c: pd.to_numeric(frame[c].replace(missing_token, np.nan), errors="coerce") for c in spec.raw_columns}
    )


def _probability(entry: dict[str, Any], total: int, value: float) -> float:
    """The chance that one draw from the catalog's marginal (the documented rule: a hidden count
    shares equally what the released ones leave) equals ``value`` (NaN: missing)."""
    if "levels" in entry:
        cells, keys = [*entry["levels"].values(), entry["missing"]], [float(k) for k in entry["levels"]]
    else:
        cells, keys = [*entry["histogram"]["counts"], entry["missing"]], []
    released = [c for c in cells if not isinstance(c, str)]
    share = (total - sum(released)) / (len(cells) - len(released)) if len(released) < len(cells) else 0.0
    weights = [share if isinstance(c, str) else float(c) for c in cells]
    if "levels" in entry:
        if np.isnan(value):
            return weights[-1] / sum(weights)
        return weights[keys.index(value)] / sum(weights) if value in keys else 0.0
    edges = entry["histogram"]["edges"]
    last = len(edges) - 2
    integers = [
        list(range(int(np.ceil(lo)), int(np.floor(hi) if i == last else np.ceil(hi) - 1) + 1))
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))
    ]
    integer = entry["histogram"]["integer"]
    if integer:
        weights = [w if i == len(integers) or integers[i] else 0.0 for i, w in enumerate(weights)]
    if np.isnan(value):
        return weights[-1] / sum(weights)
    if not integer:
        return 0.0  # a continuous draw equals a given number with probability 0
    for i, members in enumerate(integers):
        if value in members:
            return weights[i] / sum(weights) / len(members)
    return 0.0


@pytest.mark.parametrize("text", [HEART_TEXT, NARROW_TEXT], ids=["heart-spec", "four-discrete-columns"])
@pytest.mark.parametrize("node", sorted(SILOS))
def test_mock_rows_equal_real_rows_no_more_often_than_chance(text: str, node: str) -> None:
    # Prepare: the real rows, and the chance that one mock row equals one of them under the
    # catalog's marginals drawn independently.
    spec = parse_spec(text)
    catalog = _catalog(spec, node)
    columns, total = _columns(catalog), catalog["rows"]
    token = spec.format_for(node).missing_token
    raw, _ = read_raw(SILOS[node], spec.format_for(node))
    real = _as_numbers(raw, spec, token).drop_duplicates()
    chance = sum(
        float(np.prod([_probability(columns[c], total, row[c]) for c in spec.raw_columns]))
        for _, row in real.iterrows()
    )
    # Execute
    mock = _as_numbers(mock_table(catalog, spec, node=node, rows=ROWS, seed=4).astype(object), spec, token)
    real_keys = {tuple(row) for row in real.fillna(-1e9).itertuples(index=False)}
    matches = sum(tuple(row) in real_keys for row in mock.fillna(-1e9).itertuples(index=False))
    # Assert
    expected = ROWS * chance
    assert matches <= poisson.ppf(0.999, expected), (matches, expected)
    if text is NARROW_TEXT:  # the expected count is the real one: a sampler that drifted would miss it
        assert matches >= poisson.ppf(0.001, expected), (matches, expected)


def test_hidden_counts_share_what_the_released_ones_leave(heart_spec: TaskSpec) -> None:
    # Switzerland's chest pain: levels 1, 2 and 3 are hidden, level 4 holds 98 of 123 rows.
    catalog = _catalog(heart_spec, "switzerland")
    cp = _columns(catalog)["cp"]
    assert cp["levels"] == {"1": "hidden", "2": "hidden", "3": "hidden", "4": 98} and cp["missing"] == 0
    mock = mock_table(catalog, heart_spec, node="switzerland", rows=20_000, seed=5)
    shares = mock["cp"].value_counts(normalize=True)
    assert shares[4] == pytest.approx(98 / 123, abs=0.015)
    for level in (1, 2, 3):
        assert shares[level] == pytest.approx(25 / 3 / 123, abs=0.01)


def test_a_column_with_every_count_hidden_is_refused_naming_node_column_and_fix(heart_spec: TaskSpec) -> None:
    catalog = _catalog(heart_spec, "switzerland")
    cp = _columns(catalog)["cp"]
    cp["levels"] = dict.fromkeys(cp["levels"], "hidden")
    cp["missing"] = "hidden"
    with pytest.raises(DataError, match=r"node 'switzerland', column 'cp': the catalog hides every count.*leave"):
        mock_table(catalog, heart_spec, node="switzerland", rows=10)


def test_a_node_under_its_minimum_and_an_older_catalog_are_refused(heart_spec: TaskSpec) -> None:
    catalog = _catalog(heart_spec, "va")
    with pytest.raises(DataError, match=r"node 'va': its catalog gives '<10' rows"):
        mock_table({**catalog, "rows": "<10"}, heart_spec, node="va", rows=10)
    chol = _columns(catalog)["chol"]
    del chol["histogram"]
    chol["range"] = [100.0, 400.0]  # an older lab's catalog: a range, no histogram
    with pytest.raises(DataError, match=r"node 'va', column 'chol': .*no histogram.*update the lab at the node"):
        mock_table(catalog, heart_spec, node="va", rows=10)


def test_the_same_seed_gives_the_same_mock_and_another_seed_another(heart_spec: TaskSpec) -> None:
    catalog = _catalog(heart_spec, "hungary")
    first = mock_table(catalog, heart_spec, node="hungary", rows=50, seed=7)
    assert first.equals(mock_table(catalog, heart_spec, node="hungary", rows=50, seed=7))
    assert not first.equals(mock_table(catalog, heart_spec, node="hungary", rows=50, seed=8))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--node", f"nowhere={SILOS['va']}", "--rows", "10"], "not a node of the spec"),
        (["--node", f"va={SILOS['va']}", "--rows", "0"], "--rows 0: give how many mock rows"),
        (["--node", f"va={HEART / 'no-such.data'}", "--rows", "10"], "does not exist; give the path of its table"),
        (["--node", f"va={SILOS['va']}", "--rows", "10", "--out", str(SILOS["va"])], "cannot be created"),
    ],
    ids=["unknown-node", "no-rows", "missing-table", "out-is-a-file"],
)
def test_lab_mock_refuses_bad_input_in_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    out = [] if "--out" in args else ["--out", str(tmp_path / "mocks")]
    result = run_lab("mock", "--spec", str(HEART / "task.toml"), *args, *out, workspace=tmp_path / "ws")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
