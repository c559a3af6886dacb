"""Hostile and broken input, generated (Hypothesis): task specs, agreements and node tables.

Each generated case ends in one of two ways: the input is accepted, or the lab refuses it with
one of its own errors (LabError: exit status 2 at the command line), in one line that names the
file. Never another exception (a traceback for the user's own mistake). 1,000 cases per kind on
every run; derandomised, so a CI run is repeatable and a failure reproduces.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context, event

from lab.core.spec import load_spec, parse_spec
from lab.core.training import load_node_data
from lab.errors import LabError
from lab.node.agreement import parse_agreement, template

from .conftest import HEART

CASES = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SPEC_TEXT = (HEART / "task.toml").read_text()
SPEC = load_spec(HEART / "task.toml")
AGREEMENT_TEXT = template(SPEC, "a" * 64, SPEC.organisation("cleveland"), dt.date(2030, 1, 1))


def tally(outcome: str) -> None:
    """Count an outcome (pytest --hypothesis-show-statistics shows the shares)."""
    if currently_in_test_context():
        event(outcome)


def refused_in_one_line(exc: LabError, source: str) -> None:
    tally("refused")
    message = str(exc)
    assert message and "\n" not in message.strip(), message
    assert source in message, message


# -- documents: every field mistyped, missing, out of range, and unknown keys -------------------

Path_ = tuple[str | int, ...]


def _paths(node: Any, here: Path_ = ()) -> list[Path_]:
    """Every key and list index in a TOML document, as paths from the top."""
    out: list[Path_] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out += [(*here, key), *_paths(value, (*here, key))]
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += [(*here, index), *_paths(value, (*here, index))]
    return out


def _tables(node: Any, here: Path_ = ()) -> list[Path_]:
    """Every table (dict) in a TOML document, the top one included."""
    out: list[Path_] = [here] if isinstance(node, dict) else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in children:
        out += _tables(value, (*here, key))
    return out


def _at(doc: Any, path: Path_) -> Any:
    for step in path:
        doc = doc[step]
    return doc


#: Values of every TOML type, the edges of numbers among them.
junk = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 1, 10**18, 0.0, -0.0, 1e308, 5e-324, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", " ", "yes", "regression", "categorical", "parquet", "?", "../../etc/passwd", "é\u0000"]),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=5)), max_size=4),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
    st.dates(),
)


def mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with one to three fields set to another value, deleted, or added."""
    paths, tables = _paths(base), _tables(base)
    mutation = st.one_of(
        st.tuples(st.just("set"), st.sampled_from(paths), junk),
        st.tuples(st.just("delete"), st.sampled_from(paths), st.none()),
        st.tuples(st.just("add"), st.sampled_from(tables), st.tuples(st.text(min_size=1, max_size=12), junk)),
    )

    def apply(mutations: list[tuple[str, Path_, Any]]) -> dict[str, Any]:
        doc = copy.deepcopy(base)
        for action, path, value in mutations:
            try:
                if action == "add":
                    key, content = value
                    parent = _at(doc, path)
                    if isinstance(parent, dict):
                        parent[key] = content
                else:
                    parent, last = _at(doc, path[:-1]), path[-1]
                    if action == "set":
                        parent[last] = value
                    else:
                        del parent[last]
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation removed the place: skip this one
        return doc

    return st.lists(mutation, min_size=1, max_size=3).map(apply)


def _toml(doc: dict[str, Any]) -> str:
    try:
        return tomli_w.dumps(doc)
    except (TypeError, ValueError):  # what TOML cannot hold (a list mixing tables and values) stays text
        return "\n".join(f"{k} = {v!r}" for k, v in doc.items())


@CASES
@given(mutated(tomllib.loads(SPEC_TEXT)))
def test_a_mistyped_missing_or_unknown_spec_field_is_refused_in_one_line(doc: dict[str, Any]) -> None:
    try:
        spec = parse_spec(_toml(doc), source="task.toml")
    except LabError as exc:
        refused_in_one_line(exc, "task.toml")
    else:
        tally("accepted")
        assert spec.target.column and spec.features  # what was accepted is a usable task


@CASES
@given(mutated(tomllib.loads(AGREEMENT_TEXT)))
def test_a_mistyped_missing_or_unknown_agreement_field_is_refused_in_one_line(doc: dict[str, Any]) -> None:
    try:
        agreement = parse_agreement(_toml(doc), source="agreement.toml")
    except LabError as exc:
        refused_in_one_line(exc, "agreement.toml")
    else:
        tally("accepted")
        assert agreement.parties  # what was accepted names who agreed
        assert agreement.epsilon_budget is None or 0 < agreement.epsilon_budget < math.inf


# -- node tables: CSV and Parquet, broken every way a real export breaks ----------------------

GOOD_ROW = ["63", "1", "1", "145", "233", "1", "2", "150", "0", "2.3", "3", "0", "6", "0"]

cell = st.one_of(
    st.sampled_from(GOOD_ROW),
    st.sampled_from(["?", "", " ", "nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e-320", "9" * 400, "0x1F"]),
    st.sampled_from(['"1,5"', '"63"', '"unterminated', 'a"b', "é", "\u00a0", "\t", "1;2", "None", "true"]),
    st.from_regex(r"-?[0-9]{1,6}(\.[0-9]{1,4})?", fullmatch=True),
    st.text(max_size=10),
)
row = st.one_of(
    st.just(GOOD_ROW),
    st.lists(cell, min_size=14, max_size=14),
    st.lists(cell, min_size=0, max_size=20),  # ragged
)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    rows = draw(st.lists(row, min_size=0, max_size=40))
    if draw(st.booleans()):
        rows = [GOOD_ROW] * draw(st.integers(0, 30)) + rows  # enough good rows that the checks go deep
    text = "\n".join(",".join(r) for r in rows) + draw(st.sampled_from(["", "\n", "\r\n", "\n\n"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 9)) == 0:
        data = draw(st.binary(max_size=200))  # not a table at all
    return data


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@CASES
@given(csv_files())
def test_a_broken_csv_table_is_loaded_or_refused_in_one_line(folder: Path, data: bytes) -> None:
    path = folder / "table.csv"
    path.write_bytes(data)
    try:
        loaded = load_node_data("cleveland", str(path), SPEC)
    except LabError as exc:
        refused_in_one_line(exc, "table.csv")
    else:
        tally("accepted")
        rows = len(loaded.train) + len(loaded.test)
        assert rows > 0 and loaded.train.features.notna().all().all()


#: One column's values, of one type each (as a Parquet writer stores them), edges included.
column_values = st.one_of(
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.lists(st.sampled_from([63, 1, 0, 4, -1, 2**62])),
    st.lists(st.floats(allow_nan=True, allow_infinity=True)),
    st.lists(st.sampled_from([63.0, 2.3, 1e308, -1e308, 5e-324, math.nan, math.inf])),
    st.lists(st.one_of(st.text(max_size=8), st.sampled_from(["63", "?", "1", ""]))),
    st.lists(st.one_of(st.none(), st.integers(0, 4))),
    st.lists(st.booleans()),
)


@st.composite
def parquet_frames(draw: st.DrawFn) -> pd.DataFrame:
    names = [*SPEC.raw_columns, "num", "extra"]
    columns = draw(st.lists(st.sampled_from(names), min_size=0, max_size=16))  # duplicates and gaps
    if draw(st.booleans()):
        columns = list(dict.fromkeys(columns))  # unique names, which Parquet can store
    length = draw(st.integers(0, 25))
    values = [draw(column_values.map(lambda v, n=length: (v * (n // max(len(v), 1) + 1))[:n])) for _ in columns]
    frame = pd.DataFrame({f"c{i}": v + [None] * (length - len(v)) for i, v in enumerate(values)})
    frame.columns = columns  # after building, so that duplicate names survive
    return frame


@CASES
@given(parquet_frames())
def test_a_broken_parquet_table_is_loaded_or_refused_in_one_line(folder: Path, frame: pd.DataFrame) -> None:
    path = folder / "table.parquet"
    try:
        frame.to_parquet(path)
    except Exception:  # pyarrow cannot store it (mixed types in a column, duplicate names): not a file anyone has
        tally("not storable as Parquet")
        return
    try:
        loaded = load_node_data("cleveland", str(path), SPEC)
    except LabError as exc:
        refused_in_one_line(exc, "table.parquet")
    else:
        tally("accepted")
        assert len(loaded.train) + len(loaded.test) > 0


# -- what arrives at a node over the wire ---------------------------------------------------


@pytest.fixture
def at_a_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower sets in a node's process: the run, node and task its messages belong to."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 11)
    monkeypatch.setattr(TaskIdentity, "_task_id", 3)


def _valid_content() -> tuple[dict[str, Any], dict[str, Any]]:
    """A train message's config and model, as the coordinator sends them for the heart task."""
    from lab.contract import keys
    from lab.contract.messages import Instructions
    from lab.core.model import build_model

    width = len(SPEC.encoded_names)
    instructions = Instructions(
        task=SPEC.name, spec_sha256=SPEC.sha256, strategy="fedavg", scaler_mean=[0.0] * width,
        scaler_std=[1.0] * width, seed=1, local_steps=2, batch_size=4, learning_rate=0.05,
    )  # fmt: skip
    config = dict(instructions.to_record())
    config[keys.SERVER_ROUND] = 1
    arrays = {name: tensor.numpy() for name, tensor in build_model(SPEC, seed=1).state_dict().items()}
    return config, arrays


CONFIG, ARRAYS = _valid_content()

#: A config value: the edges first (each type, non-finite, negative, huge, fractional), then anything.
config_value = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, -(2**63), 2**63 - 1, 1e300, 0.5, -0.5, True, False]),
    st.sampled_from(["", "x", "{}", "[1]", '{"noise_multiplier": "a"}', [1.0], [math.nan] * 13, ["a"], [True]]),
    st.just("x" * 100_000),  # oversized
    st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20)),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=15),
)


@st.composite
def hostile_messages(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A train or evaluate message with its config and model mutated one to three ways."""
    import numpy as np

    config, arrays = dict(CONFIG), dict(ARRAYS)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["set"] * 4 + ["delete", "array shape", "array gone", "array values", "extra"]))
        if how == "set":
            config[draw(st.sampled_from(sorted(config)))] = draw(config_value)
        elif how == "delete" and config:
            del config[draw(st.sampled_from(sorted(config)))]
        elif how == "array shape" and arrays:
            name = draw(st.sampled_from(sorted(arrays)))
            shape = draw(st.lists(st.integers(0, 20), min_size=0, max_size=3))
            arrays[name] = np.zeros(shape, dtype=np.float32)
        elif how == "array gone" and arrays:
            del arrays[draw(st.sampled_from(sorted(arrays)))]
        elif how == "array values" and arrays:
            name = draw(st.sampled_from(sorted(arrays)))
            fill = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38, 0.0]))
            arrays[name] = np.full_like(arrays[name], fill)
        elif how == "extra":
            arrays[draw(st.text(min_size=1, max_size=8))] = np.ones(3, dtype=np.float32)
    return draw(st.sampled_from(["train", "evaluate"])), config, arrays


def _sent(folder: Path, kind: str, config: dict[str, Any], arrays: dict[str, Any]) -> None:
    """Send one message to a node in this process: it answers or refuses (never a bug), with one
    audit entry for it, and raises nothing (it keeps serving)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from federation.client_app import SPECS, app
    from lab.contract import keys

    audit = folder / "wire" / "audit.jsonl"
    before = _lines(audit)
    # Unbound (--no-agreement): the message reaches the handlers whatever it asks; an agreement's
    # limits would refuse most of these before they are read (tests/attacks plays those).
    node_config = {
        "node-name": "cleveland",
        "data-path": str(HEART / "processed.cleveland.data"),
        "no-agreement": "true",
    }
    context = Context(7, 11, {**node_config, "audit-log": str(audit)}, RecordDict(), {})
    context.state.config_records[SPECS] = ConfigRecord({SPEC.sha256: SPEC.text})
    model = ArrayRecord({name: Array(values) for name, values in arrays.items()}) if arrays else ArrayRecord()
    content = RecordDict({keys.CONFIG: ConfigRecord(config), keys.ARRAYS: model})
    reply = app(Message(content, dst_node_id=11, message_type=kind), context)
    (entry,) = [json.loads(line) for line in audit.read_text().splitlines()[before:]]  # one entry per message
    if reply.has_error():
        tally("refused")
        assert reply.error.code == keys.REFUSED, reply.error.reason  # refused, not a bug of the lab
        assert entry["decision"] == "refused" and "\n" not in str(reply.error.reason)
    else:
        tally("answered")  # the mutation left a message the node can answer (a new seed, say)
        assert entry["decision"] == "accepted"


def _lines(path: Path) -> int:
    """The lines of an audit log so far (a thousand cases' log is not parsed whole for every case)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


EDGES = [math.nan, math.inf, -math.inf, -1, 0, 2**63 - 1, 1e300, 0.5, True, "", "x", [1.0], ["a"], "x" * 100_000]


@pytest.mark.parametrize("key", sorted(CONFIG))
def test_each_instruction_of_the_wrong_type_or_out_of_range_is_refused(at_a_node: None, folder: Path, key: str) -> None:
    for value in EDGES:
        for kind in ("train", "evaluate"):
            _sent(folder, kind, {**CONFIG, key: value}, ARRAYS)
        _sent(folder, "train", {k: v for k, v in CONFIG.items() if k != key}, ARRAYS)


@CASES
@given(hostile_messages())
def test_a_malformed_message_is_refused_with_an_error_reply_and_an_audit_entry(
    at_a_node: None, folder: Path, message: tuple[str, dict[str, Any], dict[str, Any]]
) -> None:
    _sent(folder, *message)
