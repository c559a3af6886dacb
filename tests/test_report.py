"""The run report, built from runs recorded in a real MLflow store in a temporary folder: a run with
every artifact the coordinator writes, an older run without the newer ones, and a query run."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lab.errors import UsageError
from lab.registry.report import NOT_RECORDED, REPORT_ARTIFACT, build_report, log_report, number, with_interval

from .conftest import HEART

NODES = ("cleveland", "hungary")
SUMMARY = {
    "nodes": [
        {
            "node": "cleveland",
            "organisation": "Cleveland <Clinic> & Co",
            "train_rows": 199,
            "test_rows": 104,
            "federated": {"accuracy": 0.779, "auc": 0.871, "loss": 0.45},
            "local_only": {"accuracy": 0.760, "auc": 0.844, "loss": 0.49},
            "epsilon": 2.5,
            "intervals": {"federated": {"accuracy": [0.69, 0.85]}, "local_only": {"accuracy": [0.67, 0.83]}},
            "auc_unreliable": False,
            "comparison": "intervals overlap",
        },
        {
            "node": "hungary",
            "organisation": "Hungarian Institute of Cardiology",
            "train_rows": 172,
            "test_rows": 89,
            "federated": {"accuracy": 0.798, "auc": 0.878, "loss": 0.43},
            "local_only": {"accuracy": 0.742, "auc": 0.863, "loss": 0.46},
            "epsilon": 2.9,
            "intervals": {"federated": {"accuracy": [0.70, 0.87]}, "local_only": {"accuracy": [0.64, 0.82]}},
            "auc_unreliable": True,
            "comparison": "federated higher",
        },
    ],
    "mean": {"federated.accuracy": 0.788, "local_only.accuracy": 0.751},
    "pooled": {
        "federated": {"accuracy": 0.787, "interval": [0.73, 0.84], "test_rows": 193},
        "local_only": {"accuracy": 0.751, "interval": [0.69, 0.80], "test_rows": 193},
        "comparison": "intervals overlap",
    },
    "level": 0.95,
}
CONTRIBUTIONS = {
    "utility": "mean accuracy of the final model over the nodes' test splits",
    "method": "exact",
    "permutations": None,
    "rounds": [1, 2],
    "empty_model": 0.55,
    "full_model": 0.79,
    "nodes": {
        "cleveland": {"shapley": 0.13, "standard_error": None, "leave_one_out": 0.04},
        "hungary": {"shapley": 0.11, "standard_error": None, "leave_one_out": 0.03},
    },
    "note": "scored by retraining on every subset of nodes",
}
CLAUSES = {
    "agreement.expires": "2027-12-01",
    "tasks": {"heart-disease": "ab" * 32},
    "allow.strategies": ["fedavg", "fedprox"],
    "allow.apps": ["cd" * 32],
    "allow.outputs": ["metrics", "model-updates", "statistics"],
    "allow.metrics": ["accuracy", "auc", "loss", "train-loss"],
    "allow.min-rows": 25,
    "allow.differential-privacy": True,
    "allow.epsilon-budget": 8.0,
    "allow.node-figures": False,
}


def _run(
    client: MlflowClient, experiment: str, *, params: dict[str, str], artifacts: dict[str, str], dp: bool = False
) -> str:
    run_id = client.create_run(experiment, run_name="heart-disease-fedavg-1").info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for path, text in artifacts.items():
        client.log_text(run_id, text, path)
    for step in range(3):
        for i, node in enumerate(NODES):
            client.log_metric(run_id, f"node.{node}.accuracy", 0.6 + 0.08 * step + 0.01 * i, step=step)
            if step:
                client.log_metric(run_id, f"node.{node}.train_loss", 0.6 - 0.05 * step, step=step)
                if dp:
                    client.log_metric(run_id, f"node.{node}.epsilon", 1.2 * step + 0.1 * i, step=step)
        client.log_metric(run_id, "mean.accuracy", 0.605 + 0.08 * step, step=step)
    for node in NODES:
        client.log_metric(run_id, f"node.{node}.baseline.accuracy", 0.71, step=0)
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A tracking store with a full DP training run, an older run and a query run."""
    folder = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("heart-disease", artifact_location=(folder / "artifacts").as_uri())
    spec = (HEART / "task.toml").read_text()
    params = {"nodes": ",".join(NODES), "num_rounds": "2", "strategy": "fedavg", "query": ""}
    fingerprints = {
        "members": {n: {"organisation": n.title(), "environment": "e" * 64, "data_sha256": "d" * 64} for n in NODES},
        "refused": {"va": "node 'va' refused: line 5 of va.data, column 'cp': unknown category '7'"},
    }
    full = _run(
        client,
        experiment,
        params={**params, "dp_target_epsilon": "3.0", "dp_delta": "1e-05", "dp_clipping_norm": "1.0"},
        dp=True,
        artifacts={
            "task/spec.toml": spec,
            "nodes/fingerprints.json": json.dumps(fingerprints),
            "nodes/summary.json": json.dumps(SUMMARY),
            "contributions/contributions.json": json.dumps(CONTRIBUTIONS),
            "nodes/agreements.json": json.dumps(
                {"cleveland": CLAUSES, "hungary": {"agreement": "none: the node holds no data-use agreement"}}
            ),
        },
    )
    older = _run(client, experiment, params=params, artifacts={"task/spec.toml": spec})
    query = _run(client, experiment, params={**params, "query": "stats"}, artifacts={"task/spec.toml": spec})
    unavailable = _run(
        client,
        experiment,
        params=params,
        artifacts={"task/spec.toml": spec, "contributions/contributions.json": '{"unavailable": "one node only"}'},
    )
    # Hungary's agreement keeps its figures: its row says so, and the two nodes' mean is held back.
    held = {
        **SUMMARY,
        "nodes": [SUMMARY["nodes"][0], {"node": "hungary", "organisation": "Hungary", "held_back": "held back: ..."}],
        "mean": {"federated.accuracy": float("nan"), "local_only.accuracy": float("nan")},
        "pooled": {},
        "held_back": {"mean.federated.accuracy": "with 2 node(s) pooled, each could work out the others' figures"},
    }
    contributions = {**CONTRIBUTIONS, "nodes": {"cleveland": CONTRIBUTIONS["nodes"]["cleveland"]}}
    hidden = _run(
        client,
        experiment,
        params=params,
        artifacts={
            "task/spec.toml": spec,
            "nodes/summary.json": json.dumps(held),
            "contributions/contributions.json": json.dumps({**contributions, "held_back": {"hungary": "held back"}}),
        },
    )
    runs = {"full": full, "older": older, "query": query, "unavailable": unavailable, "hidden": hidden}
    return uri, runs


def _text(html: str) -> str:
    """The page's visible text, tags stripped and blanks folded."""
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<style.*?</style>", "", html, flags=re.S))))


def test_scores_show_with_their_intervals_and_the_comparison(store: tuple[str, dict[str, str]]) -> None:
    uri, runs = store
    text = _text(build_report(uri, runs["full"]))
    assert "0.78 (0.69–0.85)" in text and "0.76 (0.67–0.83)" in text
    assert "intervals overlap" in text and "federated higher" in text
    assert "0.79 (0.73–0.84)" in text and "0.75 (0.69–0.80)" in text  # pooled over every test row
    assert "the 95% Wilson interval" in text
    assert "0.88 †" in text  # hungary's AUC flagged unreliable
    assert f"comparison of federated with local-only: {NOT_RECORDED}" not in text


def test_contributions_privacy_and_agreements_of_a_run_that_recorded_them(store: tuple[str, dict[str, str]]) -> None:
    uri, runs = store
    html = build_report(uri, runs["full"])
    text = _text(html)
    assert "Shapley value" in text and "0.13" in text and "leave-one-out" in text
    assert html.count("data:image/png;base64,") == 2  # the round curves and the contributions chart
    assert "epsilon spent" in text and "2.40" in text and "2.50" in text  # each node's epsilon at the last round
    assert "trains no local-only model" in text  # why a DP run's local-only column is empty
    assert "allow.epsilon-budget" in text and "8.0" in text and "25" in text
    assert "hungary : none: the node holds no data-use agreement" in text
    assert "unknown category '7'" in text  # the node refused at preparation


def test_an_older_run_says_what_it_did_not_record_and_still_shows_its_scores(
    store: tuple[str, dict[str, str]],
) -> None:
    uri, runs = store
    text = _text(build_report(uri, runs["older"]))
    assert f"Each node's contribution: {NOT_RECORDED}" in text
    assert f"The nodes' agreement clauses: {NOT_RECORDED}" in text
    assert f"comparison of federated with local-only: {NOT_RECORDED}" in text
    assert "0.76" in text and "0.71" in text  # cleveland's last round, and its local-only baseline
    assert "did not train with differential privacy" in text
    assert "trains no local-only model" not in text


def test_contributions_the_coordinator_could_not_compute_say_why(store: tuple[str, dict[str, str]]) -> None:
    uri, runs = store
    assert "not computed for this run: one node only" in _text(build_report(uri, runs["unavailable"]))


def test_a_node_whose_agreement_keeps_its_figures_is_shown_held_back_with_why(
    store: tuple[str, dict[str, str]],
) -> None:
    uri, runs = store
    text = _text(build_report(uri, runs["hidden"]))
    assert "hungary Hungary held back held back" in text  # its rows and scores
    assert "0.78 (0.69–0.85)" in text  # Cleveland's own, shown
    assert "held back: the figures of hungary, whose agreement keeps them (allow.node-figures = false)" in text
    assert "mean.federated.accuracy, which would give them by subtraction" in text
    assert "0.11" not in text  # Hungary's Shapley value is not on the run, nor on the page


def test_the_page_escapes_what_the_run_recorded_and_fetches_nothing(store: tuple[str, dict[str, str]]) -> None:
    uri, runs = store
    html = build_report(uri, runs["full"])
    assert "Cleveland &lt;Clinic&gt; &amp; Co" in html and "<Clinic>" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "@import" not in html and "<script" not in html


def test_a_query_run_and_an_unknown_run_are_refused_naming_the_run_and_the_fix(
    store: tuple[str, dict[str, str]],
) -> None:
    uri, runs = store
    with pytest.raises(UsageError, match=rf"run {runs['query']} is a 'stats' query, not a training run.*lab runs"):
        build_report(uri, runs["query"])
    with pytest.raises(UsageError, match=r"no run 'f00d' in the tracking store .*lab runs"):
        build_report(uri, "f00d")


def test_the_report_is_logged_to_its_run(store: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    uri, runs = store
    log_report(uri, runs["older"], "<p>report</p>")
    client = MlflowClient(tracking_uri=uri)
    assert [a.path for a in client.list_artifacts(runs["older"], "report")] == [REPORT_ARTIFACT]


@pytest.mark.parametrize(
    ("value", "interval", "shown"),
    [
        (0.7791, [0.694, 0.851], "0.78 (0.69–0.85)"),
        (59.432, [51.0, 67.9], "59.4 (51.0–67.9)"),
        (0.5, None, "0.50"),
        (float("nan"), None, "n/a"),
        (None, [0.1, 0.2], "n/a (0.10–0.20)"),
    ],
)
def test_scores_are_shown_with_two_decimals_or_fewer_for_large_values(
    value: float | None, interval: list[float] | None, shown: str
) -> None:
    assert with_interval(value, interval) == shown
    assert number(1234.5) == "1234"
