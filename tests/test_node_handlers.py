"""A node handler does each thing once per message: the agreement's checks around it and the
handler read the same decoded message (its spec parsed once, its instructions decoded once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import federation.client_app as client_app

from .attacks.node import Node, answer, zero_model


def _counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_a_query_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(tmp_path / "cleveland")
    parsed = _counting(monkeypatch, client_app, "parse_spec")
    assert answer(node.catalog(1))["catalog"]["rows"] > 0  # answered (and checked, and audited)
    assert len(parsed) == 1


def test_a_train_message_is_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(tmp_path / "cleveland")
    answer(node.prepare(1))
    decoded = _counting(monkeypatch, client_app.Instructions, "of")
    found = _counting(monkeypatch, client_app, "_spec")
    reply = node.train(1, node.instructions(), zero_model())
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert (len(decoded), len(found)) == (1, 1)
