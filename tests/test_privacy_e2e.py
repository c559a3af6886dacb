"""Differential privacy and disclosure control on the real runtime: every node's epsilon comes
from its own accountant and ledger, a run over a node's budget is refused before training, and
metrics on fewer rows than a node's minimum never leave it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from lab.core.privacy import DPPlan, DPSettings
from lab.errors import Refusal
from lab.node.agreement import load_agreement
from lab.node.audit import AuditLog
from lab.node.ledger import Ledger, check_budget

from .conftest import HEART, SILOS, agreement_file, run_lab

pytestmark = pytest.mark.e2e

NOISE, STEPS, ROUNDS, DELTA, BATCH = 1.0, 20, 2, 1e-5, 16


def accountant_epsilon(rate: float, steps: int) -> float:
    """What Opacus' RDP accountant says for ``steps`` DP-SGD steps, stepped one by one as Opacus'
    own optimizer hook does (not through the lab's code)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=NOISE, sample_rate=rate)
    return float(accountant.get_epsilon(delta=DELTA))


ROWS = {"cleveland": 199, "switzerland": 30}  # training rows (the published split)


@dataclass(frozen=True)
class PrivateRun:
    workspace: Path
    agreements: dict[str, Path]
    stdout: str
    tracking_uri: str

    def ledger(self, node: str) -> Ledger:
        return Ledger(self.workspace / "nodes" / node / "privacy.jsonl")

    def audit(self, node: str) -> AuditLog:
        return AuditLog(self.workspace / "nodes" / node / "audit.jsonl")


def _run(workspace: Path, agreements: dict[str, Path], *nodes: str) -> Any:
    args = ["run", "--spec", str(HEART / "task.toml"), "--rounds", str(ROUNDS)]
    for node in nodes:
        args += ["--node", f"{node}={SILOS[node]}", "--agreement", f"{node}={agreements[node]}"]
    for setting in (f"dp-noise-multiplier={NOISE}", f"local-steps={STEPS}", "baseline-epochs=2", "register=false"):
        args += ["--set", setting]
    return run_lab(*args, workspace=workspace)


@pytest.fixture(scope="module")
def private_run(tmp_path_factory: pytest.TempPathFactory, heart_spec: Any) -> PrivateRun:
    """Cleveland requires DP and has a budget of 1.5 runs; Hungary's budget is smaller than one
    run; Switzerland keeps its minimum at 20 rows, more than its 16 test rows, and lets a run plan
    more epsilon than the default 10 (its 30 training rows are sampled at half, so a run costs 24).
    Where a budget holds the test rows' spending too, the scores spend little of it."""
    tmp = tmp_path_factory.mktemp("private")
    one_run = accountant_epsilon(1 / math.ceil(ROWS["cleveland"] / BATCH), STEPS * ROUNDS)
    cheap_scores = ("scores-epsilon = 10.0", "scores-epsilon = 0.2")

    def agreement(node: str, *replacements: tuple[str, str]) -> Path:
        return agreement_file(tmp, heart_spec, node, *replacements)

    agreements = {
        "cleveland": agreement(
            "cleveland",
            ("differential-privacy = false", f"differential-privacy = true\nepsilon-budget = {1.5 * one_run:.4f}"),
            cheap_scores,
        ),
        "hungary": agreement("hungary", ("differential-privacy = false", "epsilon-budget = 0.5"), cheap_scores),
        "switzerland": agreement(
            "switzerland",
            ("min-rows = 10", "min-rows = 20"),
            ("max-epsilon-per-run = 10.0", "max-epsilon-per-run = 50.0"),
        ),
    }
    workspace = tmp / "workspace"
    result = _run(workspace, agreements, "cleveland", "hungary", "switzerland")
    assert result.returncode == 0, result.stdout + result.stderr
    return PrivateRun(workspace, agreements, result.stdout, f"sqlite:///{workspace / 'mlflow.db'}")


def _mlflow_run(run: PrivateRun) -> Any:
    client = MlflowClient(run.tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "heart-disease"]
    (found,) = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
    return client, found


def test_each_node_reports_the_epsilon_its_accountant_computes(private_run: PrivateRun) -> None:
    client, run = _mlflow_run(private_run)
    for node in ("cleveland", "switzerland"):
        rate = 1 / math.ceil(ROWS[node] / BATCH)  # Opacus samples each record with this probability
        history = client.get_metric_history(run.info.run_id, f"node.{node}.epsilon")
        assert [m.step for m in history] == [1, 2]
        for metric in history:
            assert metric.value == pytest.approx(accountant_epsilon(rate, STEPS * metric.step), rel=1e-9)
        entries = [e for e in private_run.ledger(node).entries() if e["kind"] == "training"]
        assert [e["round"] for e in entries] == [1, 2]
        assert [e["steps"] for e in entries] == [STEPS, STEPS]  # what the node trained, as it booked it
        assert entries[-1]["epsilon"] == history[-1].value and entries[-1]["sample_rate"] == rate
    planned = float(run.data.params["node.cleveland.dp_planned_epsilon"])  # told at prepare, before training
    assert planned == pytest.approx(private_run.ledger("cleveland").spent(), rel=1e-9)


def test_a_node_over_its_budget_refuses_before_training(private_run: PrivateRun) -> None:
    assert "agreement clause allow.epsilon-budget" in private_run.stdout
    (entry,) = private_run.audit("hungary").entries()
    assert (entry["message_type"], entry["decision"]) == ("query.prepare", "refused")
    assert entry["clause"] == "allow.epsilon-budget"
    assert private_run.ledger("hungary").entries() == []  # it never trained nor released a score


def test_the_ledger_carries_over_so_the_same_run_again_is_over_budget(private_run: PrivateRun) -> None:
    """Cleveland's budget is 1.5 runs: what this run spent, read back from the node's own ledger,
    leaves too little for the same run again (the check the node makes at prepare and train)."""
    ledger = private_run.ledger("cleveland")
    (this_run,) = ledger.runs()  # one booking, under a key the node drew at preparation
    dp = DPSettings(noise_multiplier=NOISE, target_epsilon=0.0, clipping_norm=1.0, delta=DELTA)
    plan = DPPlan.make(dp, ROWS["cleveland"], rounds=ROUNDS, local_steps=STEPS, batch_size=BATCH)
    budget = load_agreement(private_run.agreements["cleveland"]).epsilon_budget
    assert budget is not None and ledger.spent() == pytest.approx(plan.planned_epsilon, rel=1e-9)
    assert ledger.spent() <= budget
    with pytest.raises(Refusal, match="earlier runs spent") as refused:
        check_budget(ledger, budget, plan, 0.0)  # the same run prepared again adds to what this one spent
    assert refused.value.clause == "allow.epsilon-budget"
    assert f"earlier runs spent {ledger.spent():.3f} of the budget" in str(refused.value)


def test_metrics_on_fewer_rows_than_the_minimum_stay_at_the_node(private_run: PrivateRun) -> None:
    client, run = _mlflow_run(private_run)
    metrics = run.data.metrics
    assert "node.switzerland.epsilon" in metrics  # it trained: 30 training rows >= 20
    assert not [k for k in metrics if k.endswith("train_loss")]  # a loss on training rows is not private
    assert not [k for k in metrics if k.startswith("node.switzerland.") and k.endswith(("accuracy", "auc"))]
    assert "node.cleveland.accuracy" in metrics
    fingerprints = json.loads(Path(client.download_artifacts(run.info.run_id, "nodes/fingerprints.json")).read_text())
    swiss = fingerprints["members"]["switzerland"]
    assert "fewer rows than the minimum of 20" in swiss["suppressed"] and swiss["test_rows"] == 0
    prepare = next(e for e in private_run.audit("switzerland").entries() if e["message_type"] == "query.prepare")
    assert "withheld" in prepare["suppressed"]
