"""A node reads its table once a run: the rows its preparation read serve the run's later
messages, and a table changed on disk, or another run, is read again (lab.node.rows), through the
node's real message path."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from lab.contract.messages import NodeReport

from .attacks.node import Node, answer, zero_model
from .conftest import SILOS


def _reads(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lab.node.rows" and " read " in r.getMessage()]


def test_a_node_reads_its_table_once_a_run_and_again_when_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = tmp_path / "cleveland.data"
    shutil.copy(SILOS["cleveland"], table)
    node = Node(tmp_path / "cleveland", table=table)
    caplog.set_level(logging.INFO, logger="lab.node.rows")
    answer(node.prepare(7))
    instructions = node.instructions()
    first = node.train(7, instructions, zero_model())
    assert not first.has_error() and not node.evaluate(7, instructions, zero_model()).has_error()
    assert len(_reads(caplog)) == 1  # preparation read it; the train and evaluate messages did not
    # A row more on disk: the next message reads the table again, and says so in its fingerprint.
    lines = table.read_text().splitlines()
    table.write_text("\n".join([*lines, lines[0]]) + "\n")
    second = node.train(7, replace(instructions, server_round=2), zero_model())
    assert not second.has_error() and len(_reads(caplog)) == 2
    before, after = NodeReport.of(first), NodeReport.of(second)
    assert before is not None and after is not None and before.data_sha256 != after.data_sha256
    # Another run reads it again.
    answer(node.prepare(8))
    assert len(_reads(caplog)) == 3
