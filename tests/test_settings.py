"""Run settings: the ServerApp's typed view of Flower's run config."""

from __future__ import annotations

import tomllib
from dataclasses import fields

import pytest

from lab.contract.settings import RunSettings
from lab.errors import LabError

from .conftest import ROOT


def test_every_run_setting_has_a_default_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(config) == {f.name.replace("_", "-") for f in fields(RunSettings)}
    settings = RunSettings.from_run_config({**config, "task-spec": "[task]"})
    assert settings.environment_policy == "strict"
    assert settings.strategy == "fedavg"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("strategy", "fedfoo", "choose one of"),
        ("environment-policy", "lenient", "choose strict or warn"),
        ("num-rounds", 0, "give 1 or more"),
        ("learning-rate", "fast", "should be a float"),
        ("task-spec", "", "task-spec is empty"),
    ],
)
def test_bad_settings_are_refused_by_name(key: str, value: object, message: str) -> None:
    with pytest.raises(LabError, match=message):
        RunSettings.from_run_config({"task-spec": "[task]", key: value})
