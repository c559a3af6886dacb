"""The task spec: what a federation agrees on, validated once from TOML into typed objects."""

from __future__ import annotations

import codecs
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lab.core.toml import TomlReader
from lab.errors import SpecError

__all__ = [
    "Feature",
    "FileFormat",
    "NodeEntry",
    "TaskSpec",
    "Target",
    "load_spec",
    "parse_spec",
]

TargetKind = Literal["binary", "multiclass", "regression"]
FeatureType = Literal["numeric", "categorical"]
MissingPolicy = Literal["drop-row", "impute"]
Level = int | float | str

_TARGET_KINDS = ("binary", "multiclass", "regression")
_FEATURE_TYPES = ("numeric", "categorical")
_MISSING_POLICIES = ("drop-row", "impute")
_FORMATS = ("csv", "parquet")
_FAMILIES = ("linear", "mlp")
_SCALINGS = ("federated", "none")
_METRICS = {
    "binary": ("accuracy", "auc", "loss"),
    "multiclass": ("accuracy", "loss"),
    "regression": ("rmse", "mae", "r2", "loss"),
}


@dataclass(frozen=True)
class Feature:
    """One input column: its type, levels and missing-value policy.

    A categorical column's levels are its values, one model input each; a numeric column may list
    levels too (the values of a 0/1 column, say): the groups analytics may count it by, while the
    model reads it as a number."""

    name: str
    type: FeatureType
    levels: tuple[Level, ...] = ()
    drop_first: bool = False
    missing: MissingPolicy = "drop-row"

    @property
    def encoded_names(self) -> list[str]:
        """Names of the model inputs this column becomes after encoding."""
        if self.type == "numeric":
            return [self.name]
        kept = self.levels[1:] if self.drop_first else self.levels
        return [f"{self.name}={level}" for level in kept]


@dataclass(frozen=True)
class Target:
    """The column to predict and how its raw values map to what the model learns."""

    column: str
    kind: TargetKind
    positive: tuple[Level, ...] = ()
    negative: tuple[Level, ...] = ()
    classes: tuple[Level, ...] = ()

    @property
    def num_outputs(self) -> int:
        """Width of the model's output layer."""
        return len(self.classes) if self.kind == "multiclass" else 1


@dataclass(frozen=True)
class FileFormat:
    """How a node's table is stored."""

    format: Literal["csv", "parquet"] = "csv"
    header: bool = True
    missing_token: str = ""
    delimiter: str = ","
    encoding: str = "utf-8"
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeEntry:
    """A member of the federation named in the spec, with its file format."""

    name: str
    organisation: str
    file_format: FileFormat


@dataclass(frozen=True)
class TaskSpec:
    """The shared task: columns, target, preprocessing, model and metrics."""

    name: str
    description: str
    target: Target
    features: tuple[Feature, ...]
    scaling: Literal["federated", "none"]
    test_fraction: float
    split_seed: int
    stratify: bool
    model_family: Literal["linear", "mlp"]
    hidden_layers: tuple[int, ...]
    metrics: tuple[str, ...]
    file_format: FileFormat
    nodes: dict[str, NodeEntry] = field(default_factory=dict)
    text: str = ""

    @property
    def sha256(self) -> str:
        """Hash of the spec's TOML text, as recorded with every run."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def encoded_names(self) -> list[str]:
        """Names of the model's inputs, in order."""
        return [name for feature in self.features for name in feature.encoded_names]

    @property
    def raw_columns(self) -> list[str]:
        """Columns a table must have: the features and the target."""
        return [f.name for f in self.features] + [self.target.column]

    def format_for(self, node: str | None) -> FileFormat:
        """The file format of ``node``'s table, or the spec's default one."""
        if node is not None and node in self.nodes:
            return self.nodes[node].file_format
        return self.file_format

    def organisation(self, node: str) -> str:
        """Display name of a node's organisation (the node name if the spec has none)."""
        entry = self.nodes.get(node)
        return entry.organisation if entry else node


def load_spec(path: str | Path) -> TaskSpec:
    """Read and validate a task spec file.

    Raises
    ------
    SpecError
        If the file is missing, is not TOML, or any key is invalid; the message names
        the file, the key, the bad value and the fix.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"task spec {str(path)!r} does not exist; pass the path of a .toml spec") from None
    except OSError as exc:
        raise SpecError(f"task spec {str(path)!r} cannot be read: {exc.strerror}") from None
    return parse_spec(text, source=str(path))


def parse_spec(text: str, *, source: str = "<spec>") -> TaskSpec:
    """Validate a task spec given as TOML text (see ``load_spec``)."""
    r = TomlReader(text, source, error=SpecError, example="see data/heart-disease/task.toml")
    task = r.table("task")
    target = _parse_target(r, r.table("target"))
    features = tuple(_parse_feature(r, i, t) for i, t in enumerate(r.array_of_tables("features")))
    if not features:
        raise SpecError(f"{source}: [[features]] is empty; list at least one input column")
    names = [f.name for f in features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"{source}: features {duplicates!r} are listed twice; keep one entry each")
    if target.column in names:
        raise SpecError(f"{source}: target.column {target.column!r} is also a feature; remove it from [[features]]")
    prep = r.table("preprocessing", required=False)
    model = r.table("model", required=False)
    family = r.choice(model, "family", _FAMILIES, default="linear", where="model")
    hidden = tuple(r.get(model, "hidden-layers", list, default=[16], where="model"))
    if family == "mlp" and (not hidden or not all(isinstance(h, int) and h > 0 for h in hidden)):
        raise SpecError(f"{source}: model.hidden-layers = {list(hidden)!r}; give positive integers, e.g. [16]")
    metrics_table = r.table("metrics", required=False)
    allowed = _METRICS[target.kind]
    metrics = tuple(r.get(metrics_table, "report", list, default=list(allowed), where="metrics"))
    unknown = [m for m in metrics if m not in allowed]
    if unknown:
        raise SpecError(
            f"{source}: metrics.report has {unknown!r}, not defined for a {target.kind} target; "
            f"choose from {list(allowed)!r}"
        )
    test_fraction = r.get(prep, "test-fraction", float, default=0.25, where="preprocessing")
    if not 0.0 < test_fraction < 1.0:
        raise SpecError(f"{source}: preprocessing.test-fraction = {test_fraction!r}; give a fraction between 0 and 1")
    file_format = _parse_format(r, r.table("data"), "data", FileFormat())
    nodes = {
        name: NodeEntry(
            name=name,
            organisation=r.get(entry, "organisation", str, default=name, where=f"nodes.{name}"),
            file_format=_parse_format(r, entry, f"nodes.{name}", file_format),
        )
        for name, entry in r.table("nodes", required=False).items()
        if isinstance(entry, dict)
    }
    for fmt in [file_format] + [n.file_format for n in nodes.values()]:
        if fmt.format == "csv" and not fmt.header and not fmt.columns:
            raise SpecError(f"{source}: a CSV without a header row needs data.columns, the column names in file order")
    return TaskSpec(
        name=r.name(task, "name", where="task"),
        description=r.get(task, "description", str, default="", where="task"),
        target=target,
        features=features,
        scaling=r.choice(prep, "scaling", _SCALINGS, default="federated", where="preprocessing"),
        test_fraction=float(test_fraction),
        split_seed=r.get(prep, "split-seed", int, default=0, where="preprocessing"),
        stratify=r.get(prep, "stratify", bool, default=True, where="preprocessing"),
        model_family=family,
        hidden_layers=hidden if family == "mlp" else (),
        metrics=metrics,
        file_format=file_format,
        nodes=nodes,
        text=text,
    )


def _parse_target(r: TomlReader, t: dict[str, Any]) -> Target:
    kind = r.choice(t, "kind", _TARGET_KINDS, where="target")
    column = r.name(t, "column", where="target")
    if kind == "binary":
        positive = _levels(r, r.get(t, "positive", list, where="target"), "target.positive")
        negative = _levels(r, r.get(t, "negative", list, where="target"), "target.negative")
        if not positive or not negative or set(positive) & set(negative):
            raise SpecError(
                f"{r.source}: target.positive and target.negative must be non-empty and disjoint "
                f"lists of raw values (got {list(positive)!r} and {list(negative)!r})"
            )
        _levels(r, [*positive, *negative], "target.positive and target.negative together")
        return Target(column=column, kind=kind, positive=positive, negative=negative)
    if kind == "multiclass":
        classes = _levels(r, r.get(t, "classes", list, where="target"), "target.classes")
        if len(classes) < 3 or len(set(classes)) != len(classes):
            raise SpecError(
                f"{r.source}: target.classes = {list(classes)!r}; a multiclass target needs 3 or more "
                'distinct values (use kind = "binary" for two)'
            )
        return Target(column=column, kind=kind, classes=classes)
    return Target(column=column, kind=kind)


def _parse_feature(r: TomlReader, index: int, t: dict[str, Any]) -> Feature:
    where = f"features[{index}]"
    name = r.name(t, "name", where=where)
    where = f"features[{index}] ({name!r})"
    ftype = r.choice(t, "type", _FEATURE_TYPES, where=where)
    levels: tuple[Level, ...] = ()
    if ftype == "categorical" or "levels" in t:  # a numeric column's levels: the groups analytics counts by
        levels = _levels(r, r.get(t, "levels", list, where=where), f"{where}.levels")
        if len(levels) < 2 or len(set(levels)) != len(levels):
            raise SpecError(f"{r.source}: {where}.levels = {list(levels)!r}; list two or more distinct levels")
        if ftype == "numeric" and not all(isinstance(v, int | float) for v in levels):
            raise SpecError(f"{r.source}: {where}.levels = {list(levels)!r}; a numeric column's levels are numbers")
    return Feature(
        name=name,
        type=ftype,
        levels=levels,
        drop_first=r.get(t, "drop-first", bool, default=False, where=where),
        missing=r.choice(t, "missing", _MISSING_POLICIES, default="drop-row", where=where),
    )


def _levels(r: TomlReader, values: list[Any], where: str) -> tuple[Level, ...]:
    """Levels as the spec lists them: all numbers or all text, each distinct, none blank.

    A table's values are matched to them as numbers ("1.0" is 1) or as trimmed text, so a list
    mixing the two, a boolean, or text with outer spaces could never match as written.
    """
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SpecError(
                f"{r.source}: {where} has {value!r}; a level is a number or text "
                '(write true/false as 1/0 or as "true"/"false")'
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{r.source}: {where} has {value!r}; a level is a finite number or text")
        if isinstance(value, str) and (not value.strip() or value != value.strip()):
            raise SpecError(f"{r.source}: {where} has {value!r}; give the level without blanks around it")
    numeric = [isinstance(v, (int, float)) for v in values]
    if any(numeric) and not all(numeric):
        as_text = [str(v) for v in values]
        raise SpecError(
            f"{r.source}: {where} = {values!r} mixes numbers and text; write them all as text ({as_text!r}) "
            "or all as numbers"
        )
    if len({str(v) for v in values} if not any(numeric) else set(values)) != len(values):
        raise SpecError(f"{r.source}: {where} = {values!r} lists a value twice; keep each once")
    return tuple(values)


def _parse_format(r: TomlReader, t: dict[str, Any], where: str, base: FileFormat) -> FileFormat:
    delimiter = r.get(t, "delimiter", str, default=base.delimiter, where=where)
    if len(delimiter) != 1 or delimiter in ('"', "\n", "\r"):
        raise SpecError(f'{r.source}: {where}.delimiter = {delimiter!r}; give one character, e.g. "," or ";" or "\\t"')
    encoding = r.get(t, "encoding", str, default=base.encoding, where=where)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SpecError(
            f'{r.source}: {where}.encoding = {encoding!r} is not an encoding Python knows; give e.g. "utf-8", '
            '"cp1252" or "latin-1"'
        ) from None
    columns = r.get(t, "columns", list, default=list(base.columns), where=where)
    if not all(isinstance(c, str) and c for c in columns) or len(set(columns)) != len(columns):
        raise SpecError(f"{r.source}: {where}.columns = {columns!r}; give the column names in file order, each once")
    return FileFormat(
        format=r.choice(t, "format", _FORMATS, default=base.format, where=where),
        header=r.get(t, "header", bool, default=base.header, where=where),
        missing_token=r.get(t, "missing-token", str, default=base.missing_token, where=where),
        delimiter=delimiter,
        encoding=encoding,
        columns=tuple(columns),
    )
