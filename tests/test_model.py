"""Preprocessing that travels with the model, the PyTorch models, metrics and the packaged model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lab.core.data import Table, load_table, split_table
from lab.core.metrics import compute_metrics, roc_auc
from lab.core.model import Predictor, build_model
from lab.core.preprocess import ColumnSums, Scaler, encode
from lab.core.spec import TaskSpec, parse_spec
from lab.core.training import evaluate, load_node_data, local_baseline, target_scaler_of, train_locally
from lab.errors import ModelError, TrainingError
from lab.registry.packaging import (
    check_packaging,
    input_example,
    load_bundle,
    output_frame,
    predict_frame,
    save_bundle,
    signature,
)

from .conftest import SILOS


def test_pooled_column_sums_give_the_scaler_of_the_concatenated_tables(heart_spec: TaskSpec) -> None:
    parts = [
        encode(split_table(load_table(SILOS[n], heart_spec), heart_spec)[0].features, heart_spec)
        for n in ("cleveland", "va")
    ]
    pooled = Scaler.from_sums(ColumnSums.of(parts[0]) + ColumnSums.of(parts[1]))
    direct = Scaler.fit(np.concatenate(parts))
    np.testing.assert_allclose(pooled.mean, direct.mean)
    np.testing.assert_allclose(pooled.std, np.concatenate(parts).std(axis=0))


def test_scaler_imputes_missing_values_with_the_mean() -> None:
    scaler = Scaler(np.array([10.0, 0.0]), np.array([2.0, 1.0]))
    out = scaler.transform(np.array([[12.0, np.nan]]))
    assert out.tolist() == [[1.0, 0.0]]


def test_categorical_levels_match_numerically(heart_spec: TaskSpec) -> None:
    frame = pd.DataFrame({f.name: [1.0] for f in heart_spec.features})
    frame["cp"] = [4]
    encoded = encode(frame, heart_spec)
    assert encoded[0, heart_spec.encoded_names.index("cp=4")] == 1.0
    assert encoded[0, heart_spec.encoded_names.index("cp=2")] == 0.0


@pytest.mark.parametrize("family", ["linear", "mlp"])
def test_local_training_lowers_the_loss(family: str, heart_spec: TaskSpec) -> None:
    spec = parse_spec(heart_spec.text.replace('family = "linear"', f'family = "{family}"\nhidden-layers = [8]'))
    data = load_node_data("cleveland", str(SILOS["cleveland"]), spec)
    predictor = Predictor(spec, Scaler.fit(encode(data.train.features, spec)), build_model(spec, seed=1))
    before = predictor.loss(data.train.features, data.train.target)
    train_locally(predictor, data.train, steps=200, batch_size=4, learning_rate=0.05, seed=1)
    assert predictor.loss(data.train.features, data.train.target) < before * 0.8
    assert evaluate(predictor, data.test)["accuracy"] > 0.7


def test_local_baseline_is_reproducible(heart_spec: TaskSpec) -> None:
    data = load_node_data("va", str(SILOS["va"]), heart_spec)
    first, second = (local_baseline(heart_spec, data, epochs=5, seed=3) for _ in range(2))
    assert first is not None and second is not None
    assert evaluate(first, data.test) == evaluate(second, data.test)
    assert 0.0 <= evaluate(first, data.test)["accuracy"] <= 1.0


def test_roc_auc_against_hand_computed_values() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), y) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), y) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([0.2, 0.9]), np.array([1, 1])))


def test_regression_metrics() -> None:
    spec = parse_spec(
        '[task]\nname = "los"\n[target]\ncolumn = "days"\nkind = "regression"\n'
        '[[features]]\nname = "age"\ntype = "numeric"\n[data]\nheader = true\n'
    )
    out = compute_metrics(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 5.0]), spec, loss=0.0)
    assert out["mae"] == pytest.approx(2 / 3)
    assert out["rmse"] == pytest.approx(np.sqrt(2 / 3))
    assert out["r2"] == pytest.approx(1 - 2 / 8)


def test_bundle_round_trip_predicts_the_same_scores(tmp_path: Path, heart_spec: TaskSpec) -> None:
    data = load_node_data("hungary", str(SILOS["hungary"]), heart_spec)
    predictor = Predictor(
        heart_spec, Scaler.fit(encode(data.train.features, heart_spec)), build_model(heart_spec, seed=5)
    )
    train_locally(predictor, data.train, steps=50, batch_size=4, learning_rate=0.05, seed=5)
    loaded = load_bundle(save_bundle(predictor, tmp_path / "bundle"))
    np.testing.assert_array_equal(loaded.scores(data.test.features), predictor.scores(data.test.features))


def test_packaged_model_takes_raw_rows_and_leaves_incomplete_ones_empty(heart_spec: TaskSpec) -> None:
    predictor = Predictor(heart_spec, Scaler.identity(13), build_model(heart_spec, seed=0))
    example = input_example(heart_spec, Scaler.identity(13))
    raw = pd.concat([example, example.assign(age=None)], ignore_index=True)
    out = predict_frame(predictor, raw, source="rows", file_format=heart_spec.file_format, offset=0)
    assert list(out.columns) == ["prediction", "probability"]
    assert out["probability"].notna().tolist() == [True, False]


def _regression_spec(*, family: str = "linear") -> TaskSpec:
    return parse_spec(
        '[task]\nname = "cost"\n[target]\ncolumn = "euros"\nkind = "regression"\n'
        '[[features]]\nname = "days"\ntype = "numeric"\n[[features]]\nname = "ward"\ntype = "categorical"\n'
        'levels = ["a", "b"]\n[data]\nheader = true\n'
        f'[model]\nfamily = "{family}"\nhidden-layers = [8]\n[metrics]\nreport = ["rmse", "r2", "loss"]\n'
    )


def _costs(rows: int, seed: int) -> Table:
    """Costs in euros: 4,000 a stay plus 900 a day, 2,500 more on ward b, noise of 300."""
    rng = np.random.default_rng(seed)
    days = rng.integers(1, 20, rows).astype(float)
    ward = rng.choice(["a", "b"], rows)
    euros = 4000 + 900 * days + 2500 * (ward == "b") + rng.normal(0, 300, rows)
    return Table(pd.DataFrame({"days": days, "ward": ward.astype(object)}), euros, np.arange(rows), 0, "costs")


@pytest.mark.parametrize("family", ["linear", "mlp"])
def test_a_target_in_thousands_trains_with_the_default_settings_once_standardised(family: str) -> None:
    spec, train, test = _regression_spec(family=family), _costs(300, 1), _costs(100, 2)
    scaler = Scaler.fit(encode(train.features, spec))
    predictor = Predictor(spec, scaler, build_model(spec, seed=1), target_scaler_of(spec, train))
    assert predictor.target_scaler.mean[0] == pytest.approx(train.target.mean())
    train_locally(predictor, train, steps=300, batch_size=4, learning_rate=0.05, seed=1)
    metrics = evaluate(predictor, test)
    assert metrics["r2"] > 0.9  # in euros: the scores are given back in the target's units
    assert metrics["rmse"] < 1000


def test_training_that_diverges_fails_and_says_what_to_change() -> None:
    spec, train = _regression_spec(), _costs(50, 3)
    predictor = Predictor(spec, Scaler.identity(3), build_model(spec, seed=1))  # nothing scaled
    with pytest.raises(TrainingError, match=r"training diverged: the loss became .* lower learning-rate \(now 0.05\)"):
        train_locally(predictor, train, steps=100, batch_size=4, learning_rate=0.05, seed=1)


def test_a_model_with_broken_weights_refuses_to_predict(heart_spec: TaskSpec) -> None:
    model = build_model(heart_spec, seed=0)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    predictor = Predictor(heart_spec, Scaler.identity(13), model)
    assert not predictor.is_finite()
    example = input_example(heart_spec, Scaler.identity(13))
    with pytest.raises(ModelError, match="no finite prediction for 1 of 1 rows"):
        predict_frame(predictor, example, source="rows", file_format=heart_spec.file_format, offset=0)


def test_a_regression_bundle_keeps_the_target_scaler(tmp_path: Path) -> None:
    spec, train = _regression_spec(), _costs(60, 4)
    predictor = Predictor(spec, Scaler.fit(encode(train.features, spec)), build_model(spec, seed=2))
    predictor.target_scaler = target_scaler_of(spec, train)
    loaded = load_bundle(save_bundle(predictor, tmp_path / "bundle"))
    np.testing.assert_array_equal(loaded.scores(train.features), predictor.scores(train.features))


CLASSES = {"integer": "[1, 2, 3]", "float": "[0.5, 1.5, 2.5]", "string": '["low", "mid", "high"]'}


@pytest.mark.parametrize(("kind", "classes"), CLASSES.items())
def test_multiclass_predictions_come_as_the_spec_writes_its_classes(kind: str, classes: str) -> None:
    spec = parse_spec(
        f'[task]\nname = "triage"\n[target]\ncolumn = "level"\nkind = "multiclass"\nclasses = {classes}\n'
        '[[features]]\nname = "age"\ntype = "numeric"\n[data]\nheader = true\n'
    )
    declared = {c.name: c.type.name for c in signature(spec).outputs.inputs}
    assert declared == {
        "prediction": {"integer": "long", "float": "double", "string": "string"}[kind],
        **{f"probability.{c}": "double" for c in spec.target.classes},
    }
    out = output_frame(np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1]]), spec)
    assert out["prediction"].tolist() == [spec.target.classes[1], spec.target.classes[0]]
    check_packaging(spec)  # saved, loaded and applied to its example as a run's end will


@pytest.mark.parametrize("family", ["linear", "mlp"])
def test_every_target_kind_packages_before_any_training(family: str, heart_spec: TaskSpec) -> None:
    check_packaging(_regression_spec(family=family))
    check_packaging(heart_spec)
