"""Loading a node's table: the published counts, and errors that name file, column, line and fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lab.core.data import load_table, split_table
from lab.core.spec import TaskSpec, parse_spec
from lab.errors import DataError

from .conftest import HEART, SILOS

# FLamby's Fed-Heart-Disease: rows kept after dropping missing values, and its train/test split.
PUBLISHED = {"cleveland": (303, 199, 104), "hungary": (261, 172, 89), "switzerland": (46, 30, 16), "va": (130, 85, 45)}


@pytest.mark.parametrize("node", sorted(PUBLISHED))
def test_heart_silos_load_and_split_as_published(node: str, heart_spec: TaskSpec) -> None:
    table = load_table(SILOS[node], heart_spec, node=node)
    train, test = split_table(table, heart_spec)
    assert (len(table), len(train), len(test)) == PUBLISHED[node]
    assert set(np.unique(table.target)) <= {0.0, 1.0}
    assert not set(train.line) & set(test.line)


def test_split_is_the_same_every_time(heart_spec: TaskSpec) -> None:
    first = split_table(load_table(SILOS["cleveland"], heart_spec), heart_spec)[1]
    again = split_table(load_table(SILOS["cleveland"], heart_spec), heart_spec)[1]
    assert list(first.line) == list(again.line)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "silo.data"
    path.write_text(text)
    return path


def _heart_rows(n: int = 6) -> list[str]:
    return HEART.joinpath("processed.cleveland.data").read_text().splitlines()[:n]


def test_missing_file_names_the_path_and_the_setting(tmp_path: Path, heart_spec: TaskSpec) -> None:
    with pytest.raises(DataError, match=r"nowhere\.csv' does not exist.*check the path"):
        load_table(tmp_path / "nowhere.csv", heart_spec)


def test_text_in_a_numeric_column_names_line_column_and_value(tmp_path: Path, heart_spec: TaskSpec) -> None:
    rows = _heart_rows()
    fields = rows[3].split(",")
    fields[4] = "high"  # chol
    rows[3] = ",".join(fields)
    path = _write(tmp_path, "\n".join(rows) + "\n")
    with pytest.raises(DataError) as info:
        load_table(path, heart_spec)
    message = str(info.value)
    assert str(path) in message and "line 4" in message and "'chol'" in message and "'high'" in message
    assert "fix the value" in message


def test_unknown_category_names_the_allowed_levels(tmp_path: Path, heart_spec: TaskSpec) -> None:
    rows = _heart_rows()
    fields = rows[1].split(",")
    fields[2] = "9"  # cp
    rows[1] = ",".join(fields)
    with pytest.raises(DataError, match=r"line 2, column 'cp': unknown category '9'.*\[1, 2, 3, 4\]"):
        load_table(_write(tmp_path, "\n".join(rows) + "\n"), heart_spec)


def test_missing_column_names_the_column_and_what_the_file_has(tmp_path: Path) -> None:
    spec = parse_spec(
        HEART.joinpath("task.toml")
        .read_text()
        .replace('[data]\nformat = "csv"\nheader = false', '[data]\nformat = "csv"\nheader = true')
    )
    path = tmp_path / "with-header.csv"
    path.write_text("age,sex\n63,1\n")
    with pytest.raises(DataError, match=r"has no column 'cp'.*rename the column or fix the spec"):
        load_table(path, spec)


def test_table_empty_after_cleaning_says_which_column(tmp_path: Path, heart_spec: TaskSpec) -> None:
    rows = [",".join(r.split(",")[:4] + ["?"] + r.split(",")[5:]) for r in _heart_rows()]
    with pytest.raises(DataError, match=r"no rows left.*column 'chol' is missing in 6.*impute"):
        load_table(_write(tmp_path, "\n".join(rows) + "\n"), heart_spec)


def test_unreadable_file_is_a_clear_error(tmp_path: Path, heart_spec: TaskSpec) -> None:
    path = tmp_path / "binary.data"
    path.write_bytes(b"\xff\xfe\x00garbage\x00\x81")
    with pytest.raises(DataError, match=r"line 1: byte 0xff .*is not valid utf-8; set the file's encoding"):
        load_table(path, heart_spec)


def test_parquet_with_impute_policy_keeps_rows_with_gaps(tmp_path: Path, heart_spec: TaskSpec) -> None:
    spec = parse_spec(
        heart_spec.text.replace(
            'name = "chol"\ntype = "numeric"', 'name = "chol"\ntype = "numeric"\nmissing = "impute"'
        )
    )
    frame = pd.read_csv(SILOS["hungary"], header=None, names=list(spec.file_format.columns), na_values="?")
    path = tmp_path / "hungary.parquet"
    frame.to_parquet(path)
    imputed = load_table(path, spec)
    dropped = load_table(SILOS["hungary"], heart_spec)
    assert len(imputed) > len(dropped)  # rows missing only chol are kept and imputed
    assert imputed.features["chol"].isna().sum() > 0


ANALYTIC = """
[task]
name = "visits"
[target]
column = "outcome"
kind = "binary"
positive = ["yes"]
negative = ["no"]
[[features]]
name = "town"
type = "categorical"
levels = ["Montréal", "Zürich", "Köln"]
[[features]]
name = "age"
type = "numeric"
[data]
header = true
delimiter = ";"
"""


def _agency_export(tmp_path: Path, encoding: str, *, bom: bool = False) -> Path:
    """A semicolon-separated export with accented town names, as an agency's system writes it."""
    text = "town;age;outcome\nMontréal;41;yes\nZürich;37;no\nKöln;52;no\nMontréal;29;yes\n"
    path = tmp_path / f"export-{encoding}.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return path


def test_a_cp1252_export_reads_with_its_encoding_and_delimiter_from_the_spec(tmp_path: Path) -> None:
    spec = parse_spec(ANALYTIC.replace('delimiter = ";"', 'delimiter = ";"\nencoding = "cp1252"'))
    table = load_table(_agency_export(tmp_path, "cp1252"), spec)
    assert table.features["town"].tolist() == ["Montréal", "Zürich", "Köln", "Montréal"]
    assert table.target.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_a_cp1252_export_read_as_utf8_names_the_byte_the_line_and_the_setting(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_table(_agency_export(tmp_path, "cp1252"), parse_spec(ANALYTIC))
    message = str(info.value)
    assert "line 2: byte 0xe9 (after 'Montr') is not valid utf-8" in message
    assert "encoding = 'cp1252'" in message and "[nodes.NAME]" in message


def test_a_utf8_byte_order_mark_does_not_become_part_of_the_first_column(tmp_path: Path) -> None:
    table = load_table(_agency_export(tmp_path, "utf-8", bom=True), parse_spec(ANALYTIC))
    assert len(table) == 4 and table.features["town"].iloc[1] == "Zürich"


def _sqlite(tmp_path: Path) -> Path:
    import sqlite3

    path = tmp_path / "records.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE visits (town TEXT, age INTEGER, outcome TEXT, site INTEGER)")
        db.executemany(
            "INSERT INTO visits VALUES (?, ?, ?, ?)",
            [("Montréal", 41, "yes", 1), ("Zürich", 37, "no", 1), ("Köln", None, "no", 2), ("Köln", 60, "yes", 2)],
        )
    return path


def test_a_node_reads_a_sqlite_table_or_a_read_only_query(tmp_path: Path) -> None:
    spec = parse_spec(ANALYTIC)
    db = _sqlite(tmp_path)
    whole = load_table(f"sqlite:///{db}?table=visits", spec)
    assert (len(whole), whole.dropped) == (3, 1)  # the row without an age is dropped
    assert whole.features["age"].tolist() == [41.0, 37.0, 60.0]
    site = load_table(f"sqlite:///{db}?query=SELECT * FROM visits WHERE site = 1", spec)
    assert site.features["town"].tolist() == ["Montréal", "Zürich"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///{db}?query=DELETE FROM visits", r"should be one SELECT"),
        ("sqlite:///{db}?query=SELECT 1; DROP TABLE visits", r"should be one SELECT"),
        ("sqlite:///{db}", r"exactly one of table=NAME or query=SELECT"),
        ("sqlite:///{db}?table=visits;x", r"is not a table name"),
        ("sqlite:///{db}?table=nowhere", r"cannot be read: no such table: nowhere"),
        ("sqlite:///{tmp}/missing.db?table=visits", r"the SQLite file .*missing.db' does not exist"),
        ("postgresql://lab:hunter2@127.0.0.1:1/agency?table=visits", r"holds a password.*LAB_DATA_PASSWORD"),
    ],
)
def test_a_bad_database_source_is_a_clear_error_that_never_shows_a_password(
    url: str, message: str, tmp_path: Path
) -> None:
    db = _sqlite(tmp_path)
    with pytest.raises(DataError, match=message) as info:
        load_table(url.format(db=db, tmp=tmp_path), parse_spec(ANALYTIC))
    assert "hunter2" not in str(info.value)


def test_a_query_cannot_write_to_the_nodes_database(tmp_path: Path) -> None:
    import sqlite3

    db = _sqlite(tmp_path)
    sneaky = "WITH x AS (SELECT 1) SELECT * FROM visits"  # a read is fine; the connection is read-only anyway
    assert len(load_table(f"sqlite:///{db}?query={sneaky}", parse_spec(ANALYTIC))) == 3
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT count(*) FROM visits").fetchone() == (4,)
