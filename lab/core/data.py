"""Load a node's table with pandas and check it against the task spec."""

from __future__ import annotations

import codecs
import hashlib
import hmac
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lab.core.preprocess import Scaler, encode
from lab.core.sources import TableSource
from lab.core.spec import Feature, FileFormat, Level, TaskSpec
from lab.core.sql import read_sql
from lab.errors import DataError

__all__ = [
    "Table",
    "as_levels",
    "check_column",
    "check_frame",
    "is_blank",
    "load_table",
    "read_raw",
    "split_table",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Table:
    """A node's rows after checking: typed feature columns, and the target when present.

    ``line`` gives, for each kept row, where it stands in the file (a line for CSV,
    a row number for Parquet), so messages can point at it.
    """

    features: pd.DataFrame
    target: np.ndarray | None
    line: np.ndarray
    dropped: int
    source: str
    _memo: dict[tuple[object, ...], np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.features)

    def encoded(self, spec: TaskSpec) -> np.ndarray:
        """These rows encoded as the spec says (lab.core.preprocess.encode), once: a node keeps its
        rows for a run. Not to be written to."""
        key = ("encoded", spec.sha256)
        if key not in self._memo:
            self._memo[key] = encode(self.features, spec)
        return self._memo[key]

    def scaled(self, spec: TaskSpec, scaler: Scaler) -> np.ndarray:
        """The model's input matrix of these rows, scaled once per scaler (a run's messages all use
        one). Not to be written to."""
        key = ("scaled", spec.sha256, scaler.mean.tobytes(), scaler.std.tobytes())
        if key not in self._memo:
            for old in [k for k in self._memo if k[0] == "scaled"]:  # one scaler at a time
                del self._memo[old]
            self._memo[key] = scaler.transform(self.encoded(spec))
        return self._memo[key]

    def fingerprint(self, key: bytes = b"") -> str:
        """HMAC-SHA256 under ``key`` (the node's secret) of the rows as loaded (typed features and
        encoded target), in order: the same rows give the same fingerprint at the same node, and
        without the key no one can confirm a guess of the rows (all but one known, say) against it."""
        frame = self.features.copy()
        if self.target is not None:
            frame["__target__"] = self.target
        digest = hmac.new(key, ",".join(map(str, frame.columns)).encode(), hashlib.sha256)
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        return digest.hexdigest()

    def take(self, index: np.ndarray) -> Table:
        """The rows at the given positions."""
        return Table(
            features=self.features.iloc[index].reset_index(drop=True),
            target=None if self.target is None else self.target[index],
            line=self.line[index],
            dropped=0,
            source=self.source,
        )


def read_raw(source: str | Path, file_format: FileFormat) -> tuple[pd.DataFrame, int]:
    """Read a table as strings (CSV), as stored (Parquet, SQL).

    ``source`` is a file path or a database URL (lab.core.sql). Returns the frame and the offset to
    add to a row's position to get its line in the file.
    """
    if TableSource.of(source).is_sql:
        return read_sql(str(source)), 1
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"{str(path)!r} does not exist or is not a file; check the path (on a node: its data-path setting)",
            public="the node's table is not where its operator said it is (its data-path setting)",
        )
    fmt = file_format.format
    if path.suffix.lower() in (".parquet", ".pq"):
        fmt = "parquet"
    try:
        if fmt == "parquet":
            return pd.read_parquet(path), 1
        frame = pd.read_csv(
            io.StringIO(_decoded(path, file_format.encoding)),
            sep=file_format.delimiter,
            header=0 if file_format.header else None,
            names=None if file_format.header else list(file_format.columns),
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
        )
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{str(path)!r} cannot be read as {fmt.upper()}: {reason}; check the file against the format "
            "the spec gives for this node (format, header, delimiter, columns)",
            public=f"the node's table cannot be read as {fmt.upper()}: check the format the spec gives for this node "
            "(format, header, delimiter, columns)",
        ) from None
    return frame, 2 if file_format.header else 1


def _decoded(path: Path, encoding: str) -> str:
    """The file's text in ``encoding`` (a UTF-8 byte-order mark dropped); a byte the encoding cannot
    read is an error naming the byte, its line and the setting to change."""
    data = path.read_bytes()
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        context = data[start : exc.start + 1].decode(codec, errors="replace")[-30:]
        other = "cp1252" if codecs.lookup(encoding).name != "cp1252" else "utf-8"
        raise DataError(
            f"{str(path)!r}, line {line}: byte 0x{data[exc.start]:02x} (after {context[:-1]!r}) is not valid "
            f'{encoding}; set the file\'s encoding in the spec (encoding = {other!r}, or "latin-1", under '
            "[data] or this node's [nodes.NAME] table), or save the file as UTF-8",
            public=f"the node's table is not valid {encoding}: set its encoding in the spec (this node's "
            "[nodes.NAME] table)",
        ) from None


def load_table(path: str | Path, spec: TaskSpec, *, node: str | None = None, require_target: bool = True) -> Table:
    """Read ``path`` (a file, or a database URL) in the format the spec gives for ``node`` and
    check every column.

    Rows with a missing value in a ``drop-row`` column are dropped (and counted); any
    value that cannot be read, or a category the spec does not list, is an error that
    names the file, the column, the line and the fix.
    """
    file_format = spec.format_for(node)
    frame, offset = read_raw(path, file_format)
    return check_frame(
        frame,
        spec,
        source=TableSource.of(path).label,
        file_format=file_format,
        offset=offset,
        require_target=require_target,
    )


def check_frame(
    frame: pd.DataFrame,
    spec: TaskSpec,
    *,
    source: str,
    file_format: FileFormat,
    offset: int = 1,
    require_target: bool = True,
) -> Table:
    """Check a raw frame against the spec (see ``load_table``); ``offset`` maps rows to lines."""
    missing_cols = [c for c in spec.raw_columns if c not in frame.columns]
    if not require_target and spec.target.column in missing_cols:
        missing_cols.remove(spec.target.column)
    if missing_cols:
        raise DataError(
            f"{source!r} has no column {missing_cols[0]!r} (the spec needs {missing_cols!r}); "
            f"the file has {list(map(str, frame.columns))!r}: rename the column or fix the spec",
            public=f"the node's table has no column {missing_cols[0]!r} (the spec needs {missing_cols!r})",
        )
    frame = frame.reset_index(drop=True)
    lines = np.arange(len(frame)) + offset
    missing = pd.DataFrame(index=frame.index)
    columns: dict[str, pd.Series] = {}
    for feature in spec.features:
        values, is_missing = check_column(frame[feature.name], feature, file_format, source, lines)
        columns[feature.name] = values
        missing[feature.name] = is_missing
    features = pd.DataFrame(columns, index=frame.index)
    target = None
    has_target = spec.target.column in frame.columns
    if has_target:
        target, target_missing = _target(frame[spec.target.column], spec, file_format, source, lines)
        missing[spec.target.column] = target_missing
    drop_cols = [f.name for f in spec.features if f.missing == "drop-row"]
    if has_target:
        drop_cols.append(spec.target.column)
    keep = ~missing[drop_cols].any(axis=1).to_numpy() if drop_cols else np.ones(len(frame), bool)
    dropped = int((~keep).sum())
    if not keep.any():
        worst = missing[drop_cols].sum().idxmax() if drop_cols else "?"
        raise DataError(
            f"{source!r} has no rows left after dropping rows with missing values "
            f"({len(frame)} read; column {worst!r} is missing in {int(missing[worst].sum())}); "
            f'set missing = "impute" for that feature in the spec, or supply complete rows',
            public=f"the node's table has no row left after dropping rows with missing values (most of them in "
            f'column {worst!r}): set missing = "impute" for that feature in the spec',
        )
    if dropped:
        logger.info("%s: dropped %d of %d rows with missing values", source, dropped, len(frame))
    return Table(
        features=features[keep].reset_index(drop=True),
        target=None if target is None else target[keep],
        line=lines[keep],
        dropped=dropped,
        source=source,
    )


def split_table(table: Table, spec: TaskSpec) -> tuple[Table, Table]:
    """Split a node's rows into train and test as the spec says (seeded, stratified)."""
    from sklearn.model_selection import train_test_split  # heavy; only nodes and reruns need it

    index = np.arange(len(table))
    stratify = None
    if spec.stratify and table.target is not None and spec.target.kind != "regression":
        _, counts = np.unique(table.target, return_counts=True)
        if len(counts) > 1 and counts.min() > 2:
            stratify = table.target
    if len(table) < 4:
        raise DataError(
            f"{table.source!r} has {len(table)} usable rows, too few to split into train and test; "
            "a node needs at least 4",
            public="the node's table has too few usable rows to split into train and test",
        )
    train_idx, test_idx = train_test_split(
        index, test_size=spec.test_fraction, random_state=spec.split_seed, stratify=stratify
    )
    return table.take(np.asarray(train_idx)), table.take(np.asarray(test_idx))


def is_blank(raw: pd.Series, file_format: FileFormat) -> pd.Series:
    if raw.dtype == object or pd.api.types.is_string_dtype(raw):
        text = raw.astype(str).str.strip()
        blank = raw.isna() | (text == "") | (text == file_format.missing_token)
        return blank
    return raw.isna()


def check_column(
    raw: pd.Series, feature: Feature, file_format: FileFormat, source: str, lines: np.ndarray
) -> tuple[pd.Series, pd.Series]:
    """One feature column's values as the spec types them, and where they are missing."""
    blank = is_blank(raw, file_format)
    where = f"{source!r}, line {{line}}, column {feature.name!r}"
    if feature.type == "numeric":
        return _numbers(raw, blank, where, lines, file_format, f"column {feature.name!r}"), blank
    fix = f"the spec allows {list(feature.levels)!r}: add the level to the spec or correct the value"
    return _levels(raw, blank, feature.levels, where, lines, "unknown category", fix, f"column {feature.name!r}"), blank


def _numbers(
    raw: pd.Series, blank: pd.Series, where: str, lines: np.ndarray, file_format: FileFormat, column: str
) -> pd.Series:
    """Numeric values; text that is neither a number nor the missing token is an error (``column``:
    how it names the column off the node, without the file, line or value)."""
    values = pd.to_numeric(raw.where(~blank), errors="coerce").astype(float)
    bad = values.isna() & ~blank
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{where.format(line=lines[pos])}: {raw.iloc[pos]!r} is not a number ({int(bad.sum())} such rows); "
            f"fix the value, or mark it missing with {file_format.missing_token or 'an empty field'!r}",
            public=f"{column} of the node's table holds text that is not a number (its operator sees which rows, "
            "in the node's log)",
        )
    return values


def _levels(
    raw: pd.Series,
    blank: pd.Series,
    levels: tuple[Level, ...],
    where: str,
    lines: np.ndarray,
    what: str,
    fix: str,
    column: str,
) -> pd.Series:
    """Values mapped onto the spec's levels; a value the spec does not list is an error (``column``:
    how it names the column off the node)."""
    values = as_levels(raw.where(~blank), levels)
    unknown = values.isna() & ~blank
    if unknown.any():
        pos = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(
            f"{where.format(line=lines[pos])}: {what} {raw.iloc[pos]!r} ({int(unknown.sum())} such rows); {fix}",
            public=f"{column} of the node's table holds a value the spec does not list (its operator sees which rows, "
            "in the node's log)",
        )
    return values


def as_levels(raw: pd.Series, levels: tuple[Level, ...]) -> pd.Series:
    """Map raw values onto the spec's levels (numbers compare as numbers: "1.0" is 1)."""
    if all(isinstance(level, (int, float)) for level in levels):
        values: pd.Series = pd.to_numeric(raw, errors="coerce")
        lookup: dict[Any, Level] = {float(level): level for level in levels}
        key: Any = float
    else:
        values, lookup, key = raw, {str(level): level for level in levels}, lambda v: str(v).strip()
    # Each distinct value is looked up once (a column of a million rows holds a handful).
    codes, distinct = pd.factorize(values, use_na_sentinel=True)
    mapped = np.array([lookup.get(key(v)) for v in distinct] + [None], dtype=object)
    return pd.Series(mapped[codes], index=raw.index, dtype=object)


def _target(
    raw: pd.Series, spec: TaskSpec, file_format: FileFormat, source: str, lines: np.ndarray
) -> tuple[np.ndarray, pd.Series]:
    target = spec.target
    blank = is_blank(raw, file_format)
    where = f"{source!r}, line {{line}}, target column {target.column!r}"
    if target.kind == "regression":
        named = f"target column {target.column!r}"
        return _numbers(raw, blank, where, lines, file_format, named).fillna(0.0).to_numpy(dtype=np.float32), blank
    if target.kind == "binary":
        levels: tuple[Level, ...] = target.negative + target.positive
        codes = [0.0] * len(target.negative) + [1.0] * len(target.positive)
    else:
        levels = target.classes
        codes = [float(i) for i in range(len(levels))]
    fix = f"the spec maps {list(levels)!r}: add it to the spec's target or correct the value"
    values = _levels(raw, blank, levels, where, lines, "unknown value", fix, f"target column {target.column!r}")
    code_of = dict(zip(levels, codes, strict=True))
    found, distinct = pd.factorize(values, use_na_sentinel=True)
    encoded = np.array([code_of.get(v, 0.0) for v in distinct] + [0.0], dtype=np.float32)[found]
    return encoded, blank
