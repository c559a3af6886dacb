"""Data-use agreements and the audit log: pure logic, before the runtime tests."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from lab.core.spec import TaskSpec
from lab.errors import LabError, Refusal
from lab.node.agreement import Request, parse_agreement, template
from lab.node.audit import AuditLog

FAB = "ab" * 32


def agreement_text(spec: TaskSpec, **changes: str) -> str:
    text = template(spec, FAB, "Cleveland Clinic Foundation", dt.date(2030, 1, 1))
    for old, new in changes.items():
        text = text.replace(old.replace("_", "-"), new)
    return text


def request(spec: TaskSpec, **overrides: object) -> Request:
    values: dict[str, object] = {
        "task": spec.name,
        "task_sha256": spec.sha256,
        "strategy": "fedavg",
        "outputs": frozenset({"model-updates", "metrics"}),
        "metrics": frozenset({"accuracy", "train-loss"}),
        "rows": 199,
    }
    values.update(overrides)
    return Request(**values)  # type: ignore[arg-type]


def test_demo_agreement_allows_the_demo_task(heart_spec: TaskSpec) -> None:
    agreement = parse_agreement(agreement_text(heart_spec))
    agreement.check(request(heart_spec), today=dt.date(2029, 1, 1))
    agreement.check_app(FAB)
    assert [field for field, _, _ in agreement.explain()][:3] == [
        "agreement.parties",
        "agreement.purpose",
        "agreement.expires",
    ]


def test_clauses_for_a_run_name_what_is_checked_and_nothing_about_the_parties(heart_spec: TaskSpec) -> None:
    text = agreement_text(heart_spec).replace("min-rows = 10", "min-rows = 20\nepsilon-budget = 6.0")
    text = text.replace("[[tasks]]", '[[tasks]]\nname = "other-task"\nsha256 = "' + "1" * 64 + '"\n\n[[tasks]]')
    clauses = parse_agreement(text, source="/home/cleveland/agreement.toml").clauses(heart_spec.name)
    assert set(clauses) == {name for name, _, _ in parse_agreement(text).explain()} - {
        "agreement.parties",
        "agreement.purpose",
    }
    assert clauses["tasks"] == {heart_spec.name: heart_spec.sha256}  # not the other tasks it covers
    assert clauses["allow.min-rows"] == 20
    assert clauses["allow.epsilon-budget"] == 6.0
    assert clauses["allow.apps"] == [FAB]
    assert clauses["agreement.expires"] == "2030-01-01"
    shown = json.dumps(clauses)
    assert "Cleveland Clinic" not in shown and "/home/cleveland" not in shown and "other-task" not in shown
    assert parse_agreement(text).clauses("unknown-task")["tasks"] == {"unknown-task": None}


@pytest.mark.parametrize(
    ("overrides", "clause", "detail"),
    [
        ({"task_sha256": "0" * 64}, "tasks", "has sha256 000000000000"),
        ({"task": "other-task"}, "tasks", "'other-task' is not covered"),
        ({"strategy": "scaffold"}, "allow.strategies", "'scaffold' is not allowed"),
        ({"outputs": frozenset({"analytics"})}, "allow.outputs", "analytics may not leave"),
        ({"metrics": frozenset({"f1"})}, "allow.metrics", "'f1' may not leave"),
        ({"rows": 9}, "allow.min-rows", "9 rows are fewer than the minimum of 10"),
    ],
)
def test_each_clause_refuses_what_it_does_not_allow(
    heart_spec: TaskSpec, overrides: dict[str, object], clause: str, detail: str
) -> None:
    agreement = parse_agreement(agreement_text(heart_spec).replace(', "analytics"]', "]"))
    with pytest.raises(Refusal, match=detail) as info:
        agreement.check(request(heart_spec, **overrides), today=dt.date(2029, 1, 1))
    assert info.value.clause == clause
    if clause == "allow.min-rows":  # off the node: the clause and its minimum, not the node's row count
        said = info.value.off_node()
        assert "9 rows" not in said and "fewer than the minimum of 10" in said and "node's log" in said


def test_expired_agreement_refuses_everything(heart_spec: TaskSpec) -> None:
    agreement = parse_agreement(agreement_text(heart_spec))
    with pytest.raises(Refusal, match="expired on 2030-01-01") as info:
        agreement.check(request(heart_spec), today=dt.date(2030, 1, 2))
    assert info.value.clause == "agreement.expires"


def test_required_differential_privacy_refuses_runs_without_it(heart_spec: TaskSpec) -> None:
    agreement = parse_agreement(
        agreement_text(heart_spec).replace("differential-privacy = false", "differential-privacy = true")
    )
    with pytest.raises(Refusal) as info:
        agreement.check(request(heart_spec), today=dt.date(2029, 1, 1))
    assert info.value.clause == "allow.differential-privacy"


def test_app_not_on_the_allow_list_is_refused(heart_spec: TaskSpec) -> None:
    with pytest.raises(Refusal, match="not on the node's allow-list") as info:
        parse_agreement(agreement_text(heart_spec)).check_app("cd" * 32)
    assert info.value.clause == "allow.apps"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("expires = 2030-01-01", 'expires = "soon"', "give a date like 2027-06-30"),
        ('"catalog", "analytics"]', '"catalog", "rows"]', r"allow.outputs has \['rows'\]"),
        ("min-rows = 10", "min-rows = 0", "1 or more"),
        ("[allow]", "[permit]", r"unknown key 'permit'"),
        ("[limits]", "", r"allow.min-batch-size belongs under \[limits\]"),
        ("min-batch-size = 16", "min-batch-size = 0", r"limits.min-batch-size = 0; give a number 1 or more"),
        ("max-learning-rate = 1.0", "max-learning-rate = 1e-9", "above limits.max-learning-rate"),
        ("max-delta = 1e-05", "max-delta = 1.5", "max-delta = 1.5; give a probability"),
        ("max-cells = 500", "max-cells = 5.5", "max-cells = 5.5 should be a int"),
    ],
)
def test_invalid_agreement_names_the_field_and_the_fix(heart_spec: TaskSpec, old: str, new: str, message: str) -> None:
    with pytest.raises(LabError, match=message):
        parse_agreement(agreement_text(heart_spec).replace(old, new), source="cleveland.toml")


@pytest.mark.parametrize(
    ("old", "new", "nearest"),
    [
        ("min-rows = 10", "min-row = 50", "allow.min-rows"),
        ("node-figures = false", "node_figures = true", "allow.node-figures"),
        ("max-rounds = 50", "max-round = 5", "limits.max-rounds"),
        ("purpose =", "purpse =", "agreement.purpose"),
        ('sha256 = "', 'sha265 = "', "tasks[0].sha256"),
    ],
)
def test_a_key_the_lab_does_not_know_is_refused_with_the_nearest_known_one(
    heart_spec: TaskSpec, old: str, new: str, nearest: str
) -> None:
    # `min-row = 50` used to be valid, and min-rows stayed 10: a threshold the organisation never had.
    with pytest.raises(LabError, match=f"unknown key .*did you mean '{re.escape(nearest)}'") as info:
        parse_agreement(agreement_text(heart_spec).replace(old, new), source="cleveland.toml")
    assert str(info.value).startswith("cleveland.toml: ")


def test_the_template_writes_every_limit_with_its_default_and_a_silent_agreement_holds_the_defaults(
    heart_spec: TaskSpec,
) -> None:
    from dataclasses import fields

    from lab.node.limits import Limits

    text = agreement_text(heart_spec)
    for f in fields(Limits):
        assert f"\n{Limits.key(f.name)} = {getattr(Limits(), f.name)!r}\n" in text
    head, _, _ = text.partition("[limits]")
    assert parse_agreement(head).limits == Limits() == parse_agreement(text).limits
    raised = parse_agreement(text.replace("min-batch-size = 16", "min-batch-size = 4"))
    assert raised.limits.min_batch_size == 4 and raised.clauses(heart_spec.name)["limits.min-batch-size"] == 4


def test_audit_chain_verifies_and_detects_an_edit(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(4):
        log.append(run_id=i, message_type="train", decision="accepted", clause=None, left_node=[])
    assert log.verify() == []
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["decision"] = "refused"
    lines[1] = json.dumps(entry, sort_keys=True)
    log.path.write_text("\n".join(lines) + "\n")
    problems = log.verify()
    assert [(p.line, "edited" in p.reason) for p in problems] == [(2, True)]


def test_audit_chain_detects_a_removed_and_a_reordered_entry(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(4):
        log.append(run_id=i, decision="accepted")
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([lines[0], lines[2], lines[3]]) + "\n")
    assert [p.line for p in log.verify()] == [2]
    log.path.write_text("\n".join([lines[0], lines[2], lines[1], lines[3]]) + "\n")
    assert {p.line for p in log.verify()} == {2, 3, 4}


def test_an_epsilon_budget_implies_private_training_but_not_for_analytics(heart_spec: TaskSpec) -> None:
    agreement = parse_agreement(agreement_text(heart_spec).replace("node-figures = false", "epsilon-budget = 4.0"))
    assert agreement.epsilon_budget == 4.0 and agreement.requires_dp
    with pytest.raises(Refusal, match="must use differential privacy") as info:
        agreement.check(request(heart_spec), today=dt.date(2029, 1, 1))
    assert info.value.clause == "allow.epsilon-budget"
    agreement.check(request(heart_spec, differential_privacy=True), today=dt.date(2029, 1, 1))
    analytics = request(heart_spec, strategy=None, outputs=frozenset({"analytics"}), metrics=frozenset())
    agreement.check(analytics, today=dt.date(2029, 1, 1))  # queries are governed by allow.outputs


def test_a_log_cut_at_its_end_or_rolled_back_no_longer_reaches_a_recorded_head(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    heads = [log.append(run_id=1, decision="accepted") for _ in range(3)]
    assert [h.count for h in heads] == [1, 2, 3]
    assert log.against(heads) == []
    lines = log.path.read_text().splitlines(keepends=True)
    log.path.write_text("".join(lines[:2]))  # cut at its end: the chain alone stays intact
    assert log.verify() == []
    (cut,) = log.against(heads)
    assert cut.line == 3 and "cut off its end" in cut.reason
    log.append(run_id=1, decision="refused")  # rolled back, then written again to the same length
    (rolled,) = log.against(heads)
    assert rolled.line == 3 and "rolled back" in rolled.reason
