"""Nothing beyond the spec leaves a node, and a node holds nothing back unseen.

- The catalog and the pre-flight (`lab node catalog`, `lab check`) used to describe every column
  of the file, those the spec never names too (an identifier, a date of birth with its exact
  earliest and latest), raw level strings even where their count was hidden, and raw cell values
  with their line numbers in the error texts sent to the coordinator. They now describe only the
  spec's columns, give values the spec does not list as a count, bound a numeric column by rounded
  edges, and say off the node what is wrong without the value, the line or the path.
- A node started without an agreement ran any app, silently: it now refuses everything unless its
  operator started it without one on purpose (``--no-agreement``), and then every audit entry says so.
- The audit log records each request in full, chained with a key only the node holds: a chain
  rewritten by someone who can write the file but not read the key no longer verifies; the data
  fingerprint is keyed the same way, so knowing all rows but one confirms no guess.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from lab.contract.messages import CandidateScores
from lab.core.analytics import StatsRequest
from lab.core.data import load_table, read_raw
from lab.core.spec import parse_spec
from lab.node.audit import AuditLog

from .node import HEART_TEXT, SILOS, SPEC, Node, answer, refused, zero_model

MARK = "MARKER-7731"  # a cell value no reply may carry


def _extended_table(folder: Path) -> tuple[Path, str]:
    """Cleveland's table with a header, an identifier and a date of birth beside the spec's
    columns, and one chest-pain value the spec does not list; the spec for it."""
    frame, _ = read_raw(SILOS["cleveland"], SPEC.format_for("cleveland"))
    frame = frame.copy()
    frame["patient_id"] = [f"P{1000 + i}" for i in range(len(frame))]
    frame["date_of_birth"] = [f"19{40 + i % 40}-0{1 + i % 9}-1{i % 10}" for i in range(len(frame))]
    frame.loc[5, "cp"] = MARK
    path = folder / "cleveland-export.csv"
    frame.to_csv(path, index=False)
    text = HEART_TEXT.replace('format = "csv"\nheader = false', 'format = "csv"\nheader = true')
    return path, text


def test_the_catalog_and_preflight_describe_only_the_spec_and_carry_no_cell_value_path_or_line(tmp_path: Path) -> None:
    table, text = _extended_table(tmp_path)
    spec = parse_spec(text)
    node = Node(tmp_path / "cleveland", table=table, spec=spec)
    reply = answer(node.catalog(1))
    said = json.dumps(reply)
    for secret in ("patient_id", "date_of_birth", "P1000", "1940-01", MARK, str(table), str(tmp_path)):
        assert secret not in said, secret
    columns = {c["column"]: c for c in reply["catalog"]["columns"]}
    assert set(columns) == set(spec.raw_columns)
    assert set(columns["cp"]["levels"]) == {"1", "2", "3", "4"} and columns["cp"]["unknown"] == "hidden"  # 1 row
    chol = load_table(SILOS["cleveland"], SPEC).features["chol"]
    edges = columns["chol"]["histogram"]["edges"]
    assert edges[0] < chol.min() and edges[-1] > chol.max()  # the range, never its ends
    (problem,) = reply["problems"]
    assert problem["column"] == "cp" and "holds a value the spec does not list" in problem["problem"]


def test_an_error_reply_carries_no_value_line_or_path(tmp_path: Path) -> None:
    table, text = _extended_table(tmp_path)
    node = Node(tmp_path / "cleveland", table=table, spec=parse_spec(text))
    reply = node.stats(StatsRequest(columns=("chol",)), 1)  # the table does not fit: cp holds MARK
    assert reply.has_error()
    reason = str(reply.error.reason)
    assert MARK not in reason and str(table) not in reason and "line" not in reason
    (entry,) = node.audit()
    assert MARK in entry["reason"] and str(table) in entry["reason"]  # the operator's record has it


def test_a_node_without_an_agreement_answers_nothing_unless_its_operator_says_so(tmp_path: Path) -> None:
    silent = Node(tmp_path / "silent", bound=False, knowing=False)
    assert "--no-agreement" in refused(silent.catalog(1), "agreement")
    assert "--no-agreement" in refused(silent.prepare(2), "agreement")
    knowing = Node(tmp_path / "knowing", bound=False)
    answer(knowing.catalog(1))
    (entry,) = knowing.audit()
    assert entry["decision"] == "accepted" and entry["agreement"].startswith("none: started with --no-agreement")


def test_the_audit_log_records_each_request_in_full_and_its_chain_is_keyed(tmp_path: Path) -> None:
    node = Node(tmp_path / "cleveland")
    answer(node.prepare(7))
    request = StatsRequest(columns=("chol", "age"), by="sex", correlation=True)
    answer(node.stats(request, 8))
    ins = node.instructions()
    assert not node.train(7, ins, zero_model()).has_error()
    candidates = node.candidates(7, ins, [zero_model()] * 3)
    assert len(CandidateScores.of(candidates).scores) == 3
    prepare, stats, train, scored = node.audit()
    assert prepare["asked"]["request"]["plan"]["batch_size"] == 16
    assert stats["asked"]["request"] == json.loads(request.to_json())
    assert {k: train["asked"][k] for k in ("local_steps", "batch_size", "learning_rate", "round", "models")} == {
        "local_steps": 100, "batch_size": 16, "learning_rate": 0.05, "round": 1, "models": 1,
    }  # fmt: skip
    assert scored["asked"]["models"] == 3
    log = AuditLog(node.home / "audit.jsonl", node.site.secret)
    assert log.verify() == []
    # Someone who can write the log but not read the node's secret edits an entry and rebuilds
    # the chain with plain sha256, as the chain was before it was keyed: it no longer verifies.
    entries = log.entries()
    entries[1]["asked"]["request"]["columns"] = ["age"]
    previous = "0" * 64
    for entry in entries:
        entry["prev"] = previous
        body = {k: v for k, v in entry.items() if k != "hash"}
        entry["hash"] = previous = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
    log.path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    assert [p.line for p in log.verify()] == [1, 2, 3, 4]


def test_the_data_fingerprint_is_keyed_with_the_nodes_secret(tmp_path: Path) -> None:
    train = load_table(SILOS["cleveland"], SPEC)
    first, second = Node(tmp_path / "a").site.secret, Node(tmp_path / "b").site.secret
    assert first != second and len(first) == 32
    assert train.fingerprint(first) == train.fingerprint(first) != train.fingerprint(second)
    changed = train.take(pd.RangeIndex(len(train) - 1).to_numpy())  # all rows but one
    assert changed.fingerprint(first) != train.fingerprint(first)


def test_a_preparation_asking_a_billion_baseline_epochs_trains_no_more_than_the_bound(tmp_path: Path) -> None:
    """The baseline's epochs come from the coordinator's message: asked for a billion, the node
    trains at most BASELINE_MAX_STEPS minibatches (lab.core.training.baseline_steps), answers, and
    its audit log records what was asked."""
    from lab.core.training import BASELINE_MAX_ROWS_SEEN, BASELINE_MAX_STEPS, baseline_steps

    rows = len(load_table(SILOS["cleveland"], SPEC, node="cleveland"))
    for epochs in (50, 10**9):
        steps, batch = baseline_steps(rows, epochs)
        assert steps <= BASELINE_MAX_STEPS and steps * batch <= BASELINE_MAX_ROWS_SEEN + batch
    assert baseline_steps(200, 50) == (2500, 4)  # the demo's tables train as they always did
    node = Node(tmp_path / "cleveland")
    assert answer(node.prepare(7, epochs=10**9))["baseline"]  # answered, with its (noised) baseline
    (entry,) = node.audit()
    assert entry["asked"]["request"]["baseline_epochs"] == 10**9 and entry["decision"] == "accepted"
