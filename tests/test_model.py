"""Preprocessing that travels with the model, the PyTorch models, metrics and the packaged model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from federation.task import evaluate, load_node_data, local_baseline, train_locally
from lab.data import load_table, split_table
from lab.metrics import compute_metrics, roc_auc
from lab.model import Predictor, build_model
from lab.packaging import input_example, load_bundle, predict_frame, save_bundle
from lab.preprocess import ColumnSums, Scaler, encode
from lab.spec import TaskSpec, parse_spec

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
    first = local_baseline(heart_spec, data, epochs=5, seed=3)
    assert first == local_baseline(heart_spec, data, epochs=5, seed=3)
    assert 0.0 <= first["accuracy"] <= 1.0


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
