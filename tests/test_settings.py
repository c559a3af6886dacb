"""Run settings: one typed object from the command line to the ServerApp, with the only defaults."""

from __future__ import annotations

import tomllib

import pytest

from lab.contract.settings import RunSettings
from lab.contract.strategies import STRATEGIES
from lab.errors import SettingsError

from .conftest import ROOT


def test_pyproject_lists_every_run_setting_with_the_dataclass_default() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert config == RunSettings.defaults()


def test_settings_survive_the_trip_through_flowers_run_config() -> None:
    settings = RunSettings(task_spec="[task]").with_values({"num_rounds": "7", "secure_aggregation": "true"})
    again = RunSettings.from_run_config(settings.to_run_config())
    assert again == settings
    assert again.num_rounds == 7 and again.secure_aggregation is True


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("strategy", "fedfoo", "choose one of"),
        ("environment-policy", "lenient", "choose strict or warn"),
        ("num-rounds", 0, "give 1 or more"),
        ("learning-rate", "fast", "should be a float"),
        ("register", "maybe", "should be a bool"),
        ("task-spec", "", "task-spec is empty"),
    ],
)
def test_bad_settings_are_refused_by_name(key: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        RunSettings.from_run_config({"task-spec": "[task]", key: value})


def test_an_unknown_setting_is_refused_with_the_known_ones() -> None:
    # In Python, settings are named by their fields; on the command line (--set), in kebab-case.
    with pytest.raises(SettingsError, match=r"unknown run setting 'learning-rate'.*'learning_rate'"):
        RunSettings(task_spec="[task]").with_values({"learning-rate": "0.1"})
    assert RunSettings.field_of("learning-rate") == "learning_rate"
    with pytest.raises(SettingsError, match=r"--set: unknown run setting 'learning_rate'.*'learning-rate'"):
        RunSettings.field_of("learning_rate")


def test_the_table_of_strategies_decides_what_goes_with_dp_and_secure_aggregation() -> None:
    base = RunSettings(task_spec="[task]")
    for name, kind in STRATEGIES.items():
        private = base.with_values({"strategy": name}) if kind.differential_privacy else None
        if private is not None:
            assert private.with_values({"dp_target_epsilon": "3"}).differential_privacy
        else:
            with pytest.raises(SettingsError, match="differential privacy"):
                base.with_values({"strategy": name, "dp_target_epsilon": "3"})
        if not kind.secure_aggregation:
            with pytest.raises(SettingsError, match="secure-aggregation"):
                base.with_values({"strategy": name, "secure_aggregation": "true"})


def test_contributions_are_refused_with_secure_aggregation_before_the_run() -> None:
    base = RunSettings(task_spec="[task]")
    assert base.with_values({"contributions": "true"}).contributions
    assert base.with_values({"secure_aggregation": "true"}).secure_aggregation
    with pytest.raises(SettingsError, match="SecAgg\\+ hides from the coordinator"):
        base.with_values({"secure_aggregation": "true", "contributions": "true"})
