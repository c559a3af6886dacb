"""The task spec: one TOML file validated into typed objects, with errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.core.spec import TaskSpec, load_spec, parse_spec
from lab.errors import SpecError

from .conftest import HEART

MINIMAL = """
[task]
name = "readmission"

[target]
column = "readmitted"
kind = "binary"
positive = ["yes"]
negative = ["no"]

[[features]]
name = "age"
type = "numeric"

[[features]]
name = "ward"
type = "categorical"
levels = ["a", "b", "c"]

[data]
format = "csv"
header = true
"""


def test_heart_spec_encodes_thirteen_inputs_as_in_the_published_recipe(heart_spec: TaskSpec) -> None:
    assert heart_spec.name == "heart-disease"
    assert len(heart_spec.encoded_names) == 13
    assert "cp=1" not in heart_spec.encoded_names  # first level dropped
    assert heart_spec.encoded_names[2:5] == ["cp=2", "cp=3", "cp=4"]
    assert heart_spec.target.positive == (1, 2, 3, 4)
    assert heart_spec.test_fraction == pytest.approx(0.34)
    assert heart_spec.organisation("va") == "V.A. Medical Center, Long Beach"


def test_spec_hash_changes_with_its_text(heart_spec: TaskSpec) -> None:
    changed = parse_spec(heart_spec.text.replace("split-seed = 43", "split-seed = 44"))
    assert changed.sha256 != heart_spec.sha256
    assert parse_spec(heart_spec.text).sha256 == heart_spec.sha256


def test_a_different_table_needs_only_a_new_spec() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.target.kind == "binary"
    assert spec.encoded_names == ["age", "ward=a", "ward=b", "ward=c"]
    assert spec.metrics == ("accuracy", "auc", "loss")


def test_missing_spec_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does-not-exist.toml.*does not exist"):
        load_spec(tmp_path / "does-not-exist.toml")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('kind = "binary"', 'kind = "ordinal"'), r"target\.kind = 'ordinal' is not one of"),
        (lambda t: t.replace('levels = ["a", "b", "c"]', 'levels = ["a"]'), r"levels = \['a'\]; list two or more"),
        (lambda t: t.replace('type = "numeric"', "type = 3"), r"type = 3 should be a str"),
        (lambda t: t.replace("header = true", "header = false"), "needs data.columns"),
        (lambda t: t.replace('[task]\nname = "readmission"', "[task]"), r"missing key task\.name"),
        (lambda t: t.replace('negative = ["no"]', 'negative = ["yes"]'), "non-empty and disjoint"),
        (lambda t: t + '\n[metrics]\nreport = ["rmse"]\n', r"'rmse'.*not defined for a binary target"),
        (lambda t: t.replace('name = "age"', 'name = "readmitted"'), "is also a feature"),
        (lambda t: t + "\n[model\n", "not valid TOML"),
    ],
)
def test_invalid_spec_is_refused_with_the_key_and_the_fix(edit, message: str, tmp_path: Path) -> None:
    path = tmp_path / "task.toml"
    path.write_text(edit(MINIMAL))
    with pytest.raises(SpecError, match=message) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_multiclass_and_regression_targets_are_specs_too() -> None:
    multi = parse_spec(
        MINIMAL.replace(
            'kind = "binary"\npositive = ["yes"]\nnegative = ["no"]',
            'kind = "multiclass"\nclasses = ["none", "mild", "severe"]',
        )
    )
    assert multi.target.num_outputs == 3
    assert multi.metrics == ("accuracy", "loss")
    reg = parse_spec(MINIMAL.replace('kind = "binary"\npositive = ["yes"]\nnegative = ["no"]', 'kind = "regression"'))
    assert reg.target.num_outputs == 1
    assert "rmse" in reg.metrics


def test_every_demo_silo_is_named_in_the_heart_spec(heart_spec: TaskSpec) -> None:
    assert set(heart_spec.nodes) == {"cleveland", "hungary", "switzerland", "va"}
    assert (HEART / "task.toml").is_file()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('positive = ["yes"]', "positive = [true]"), r"a level is a number or text"),
        (lambda t: t.replace('positive = ["yes"]', "positive = [1]"), r"mixes numbers and text"),
        (lambda t: t + '\n[[features]]\nname = "unit"\ntype = "categorical"\nlevels = ["a", " b"]\n', "without blanks"),
        (lambda t: t + '\n[[features]]\nname = "unit"\ntype = "categorical"\nlevels = [1, 1.0]\n', "twice"),
        (lambda t: t.replace("header = true", 'header = true\nencoding = "utf9"'), "not an encoding Python knows"),
        (lambda t: t.replace("header = true", 'header = true\ndelimiter = ";;"'), "give one character"),
    ],
)
def test_levels_and_file_formats_that_could_never_match_are_refused_up_front(
    edit, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "task.toml"
    path.write_text(edit(MINIMAL))
    with pytest.raises(SpecError, match=message):
        load_spec(path)
