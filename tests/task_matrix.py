"""The task matrix: small generated federations covering every combination the spec allows.

Each case is one task spec and two or three nodes' tables, written in one of the formats a node
can hold (CSV with and without a header, Parquet, SQLite, a cp1252 export with ``;``). The cases
come from an orthogonal array over four factors of three values each, so every pair of values of
(target kind, level type, missing values, file format) appears in some case; the model family
alternates so each target kind is trained by both. Two cases add what the array cannot hold: a
database and a legacy encoding. Every regression target is in the thousands (a cost in euros).

The tables are drawn from a known rule (a latent score of two numbers and a category plus noise),
so a model that learns is expected to beat chance by a margin the tests check.
"""

from __future__ import annotations

import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

KINDS = ("binary", "multiclass", "regression")
LEVEL_TYPES = ("integer", "float", "string")
MISSING = ("none", "drop-row", "impute")
FORMATS = ("csv-header", "csv-no-header", "parquet")

#: The category's levels, by level type; the cp1252 cases use accented ones.
CATEGORY_LEVELS: dict[str, list[Any]] = {
    "integer": [1, 2, 3],
    "float": [0.5, 1.5, 2.5],
    "string": ["north", "south", "east"],
    "accented": ["Montréal", "Zürich", "Köln"],
}
#: Target levels by kind and level type: binary (negative, positive) and multiclass classes.
BINARY_LEVELS: dict[str, tuple[list[Any], list[Any]]] = {
    "integer": ([0], [1]),
    "float": ([0.5], [1.5]),
    "string": (["no"], ["yes"]),
}
CLASSES: dict[str, list[Any]] = {
    "integer": [1, 2, 3],
    "float": [0.25, 0.5, 0.75],
    "string": ["low", "medium", "high"],
}
COLUMNS = ["dose", "visits", "region", "outcome"]
MISSING_TOKEN = "NA"


@dataclass(frozen=True)
class Case:
    """One cell of the matrix: what the task is and how its nodes hold their rows."""

    kind: str
    level_type: str
    missing: str
    file_format: str
    family: str
    nodes: int = 3
    accented: bool = False  # the category's levels are accented town names (for legacy encodings)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.level_type}-{self.missing}-{self.file_format}-{self.family}"

    @property
    def category_levels(self) -> list[Any]:
        return CATEGORY_LEVELS["accented" if self.accented else self.level_type]


def orthogonal_cases() -> list[Case]:
    """Nine cases from the orthogonal array L9(3^4): every pair of values of two factors occurs once."""
    cases = []
    for a in range(3):
        for b in range(3):
            kind, level = KINDS[a], LEVEL_TYPES[b]
            cases.append(
                Case(
                    kind=kind,
                    level_type=level,
                    missing=MISSING[(a + b) % 3],
                    file_format=FORMATS[(a + 2 * b) % 3],
                    family=("linear", "mlp")[(a + b) % 2],
                    nodes=2 + (a + b) % 2,
                )
            )
    return cases


def extra_cases() -> list[Case]:
    """What the array leaves out: a node in SQLite, and a cp1252 export with accented levels."""
    return [
        Case("multiclass", "string", "impute", "sqlite", "linear"),
        Case("binary", "string", "drop-row", "cp1252", "mlp", nodes=2, accented=True),
    ]


CASES = orthogonal_cases() + extra_cases()


def _latent(rows: int, rng: np.random.Generator, shift: float) -> tuple[pd.DataFrame, np.ndarray]:
    """Features and the score every target is derived from (each node's doses are shifted)."""
    dose = rng.normal(50 + shift, 10, rows)
    visits = rng.integers(0, 21, rows)
    region = rng.integers(0, 3, rows)
    score = 0.08 * (dose - 50) + 0.15 * (visits - 10) + np.array([-1.0, 0.2, 0.8])[region]
    score = score + rng.normal(0, 0.4, rows)
    return pd.DataFrame({"dose": dose.round(2), "visits": visits, "region": region}), score


def _target(case: Case, score: np.ndarray) -> list[Any]:
    if case.kind == "binary":
        negative, positive = BINARY_LEVELS[case.level_type]
        return [positive[0] if s > 0 else negative[0] for s in score]
    if case.kind == "multiclass":
        classes = CLASSES[case.level_type]
        cuts = np.quantile(score, [1 / 3, 2 / 3])  # three classes of about the same size
        return [classes[int(np.searchsorted(cuts, s))] for s in score]
    # A target in the thousands (a cost in euros): integer-valued for the integer level type.
    values = 5000 + 800 * score
    return [int(round(v)) for v in values] if case.level_type == "integer" else list(values.round(2))


def node_frame(case: Case, index: int, seed: int = 0) -> pd.DataFrame:
    """Node ``index``'s rows as values (None where missing), before they are written to a file."""
    rng = np.random.default_rng([seed, index, zlib.crc32(case.name.encode())])
    rows = 160 + 60 * index
    frame, score = _latent(rows, rng, shift=4.0 * index)
    levels = case.category_levels
    out = pd.DataFrame(
        {
            "dose": frame["dose"].astype(object),
            "visits": frame["visits"].astype(object),
            "region": [levels[r] for r in frame["region"]],
            "outcome": _target(case, score),
        }
    )
    if case.missing != "none":  # gaps in a number and in the category, and (drop-row) in the target
        for column in ("dose", "region") + (("outcome",) if case.missing == "drop-row" else ()):
            out.loc[rng.random(rows) < 0.08, column] = None
    return out


def typed_frame(case: Case, index: int) -> pd.DataFrame:
    """Node ``index``'s rows with column types, as a Parquet file or a database table holds them."""
    frame = node_frame(case, index)
    return pd.DataFrame(
        {
            "dose": pd.to_numeric(frame["dose"]),
            "visits": pd.array(frame["visits"], dtype="Int64"),
            "region": frame["region"],
            "outcome": frame["outcome"],
        }
    )


def _text(value: Any) -> str:
    return MISSING_TOKEN if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def write_node(case: Case, index: int, folder: Path) -> str:
    """Write node ``index``'s table in the case's format; its data source (a path or a URL)."""
    frame = node_frame(case, index)
    stem = folder / f"node{index}"
    if case.file_format == "parquet" or (case.file_format == "sqlite" and index == 0):
        typed = typed_frame(case, index)
        if case.file_format == "parquet":
            typed.to_parquet(stem.with_suffix(".parquet"), index=False)
            return str(stem.with_suffix(".parquet"))
        database = stem.with_suffix(".db")
        with sqlite3.connect(database) as db:
            typed.astype(object).where(typed.notna(), None).to_sql("records", db, index=False)
        return f"sqlite:///{database}?table=records"
    lines = [[_text(v) for v in row] for row in frame.itertuples(index=False)]
    delimiter = ";" if case.file_format == "cp1252" else ","
    header = [] if case.file_format == "csv-no-header" else [COLUMNS]
    text = "\n".join(delimiter.join(cells) for cells in header + lines) + "\n"
    path = stem.with_suffix(".csv")
    path.write_bytes(text.encode("cp1252" if case.file_format == "cp1252" else "utf-8"))
    return str(path)


def spec_text(case: Case) -> str:
    """The case's task spec."""
    levels = case.category_levels
    policy = "drop-row" if case.missing == "none" else case.missing
    lines = [
        "[task]",
        f'name = "matrix-{case.name}"',
        "[target]",
        'column = "outcome"',
        f'kind = "{case.kind}"',
    ]
    if case.kind == "binary":
        negative, positive = BINARY_LEVELS[case.level_type]
        lines += [f"positive = {_toml(positive)}", f"negative = {_toml(negative)}"]
    elif case.kind == "multiclass":
        lines.append(f"classes = {_toml(CLASSES[case.level_type])}")
    lines += [
        "[[features]]",
        'name = "dose"',
        'type = "numeric"',
        f'missing = "{policy}"',
        "[[features]]",
        'name = "visits"',
        'type = "numeric"',
        "[[features]]",
        'name = "region"',
        'type = "categorical"',
        f"levels = {_toml(levels)}",
        f'missing = "{policy}"',
        "[preprocessing]",
        "test-fraction = 0.3",
        "split-seed = 7",
        "[model]",
        f'family = "{case.family}"',
        "hidden-layers = [8]",
        "[data]",
        f'format = "{"parquet" if case.file_format == "parquet" else "csv"}"',
        f"header = {'false' if case.file_format == 'csv-no-header' else 'true'}",
        f'missing-token = "{MISSING_TOKEN}"',
        f"columns = {_toml(COLUMNS)}",
    ]
    if case.file_format == "cp1252":
        lines += ['delimiter = ";"', 'encoding = "cp1252"']
    return "\n".join(lines) + "\n"


def _toml(values: list[Any]) -> str:
    return "[" + ", ".join(f'"{v}"' if isinstance(v, str) else repr(v) for v in values) + "]"


def write_case(case: Case, folder: Path) -> tuple[Path, list[tuple[str, str]]]:
    """Write the case's spec and every node's table under ``folder``; (spec path, [(node, source)])."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "task.toml"
    spec.write_text(spec_text(case), encoding="utf-8")
    return spec, [(f"site-{chr(ord('a') + i)}", write_node(case, i, folder)) for i in range(case.nodes)]


def floor(case: Case) -> tuple[str, float]:
    """The metric a learning model must reach on the nodes' test splits (mean over nodes)."""
    return {"binary": ("accuracy", 0.7), "multiclass": ("accuracy", 0.5), "regression": ("r2", 0.5)}[case.kind]
