"""Typed access to the records inside a Flower message, with errors that name the missing key."""

from __future__ import annotations

import math
import re

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from lab.contract import keys
from lab.errors import MessageError

__all__ = [
    "arrays_of",
    "config_of",
    "error_reason",
    "finite",
    "metrics_of",
    "number",
    "numbers",
    "text",
    "whole",
]

Record = ConfigRecord | MetricRecord


def config_of(msg: Message, key: str = keys.CONFIG) -> ConfigRecord:
    """The message's ConfigRecord under ``key``."""
    return msg.content.config_records[key]


def metrics_of(msg: Message) -> MetricRecord:
    """The message's MetricRecord."""
    return msg.content.metric_records[keys.METRICS]


def arrays_of(msg: Message) -> ArrayRecord:
    """The message's ArrayRecord (the model's parameters)."""
    return msg.content.array_records[keys.ARRAYS]


def number(record: Record, key: str) -> float:
    """A numeric value; LabError when it is missing or not a number."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MessageError(f"message record has no number under {key!r} (got {value!r})")
    return float(value)


def numbers(record: Record, key: str) -> list[float]:
    """A list of numbers."""
    value = record.get(key)
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise MessageError(f"message record has no list of numbers under {key!r} (got {str(value)[:60]})")
    return [float(v) for v in value]


def whole(record: Record, key: str, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high``; LabError naming the key otherwise."""
    value = number(record, key)
    if not (math.isfinite(value) and value == int(value) and low <= value <= high):
        raise MessageError(f"message record has {key} = {value!r}; a whole number from {low} to {high} was expected")
    return int(value)


def finite(record: Record, key: str, *, positive: bool = False, most: float = math.inf) -> float:
    """A finite number (greater than 0 when ``positive``, at most ``most``); LabError naming the key
    otherwise."""
    value = number(record, key)
    if not math.isfinite(value) or (positive and value <= 0) or value > most:
        wanted = "a positive finite number" if positive else "a finite number"
        bound = f" up to {most:g}" if most < math.inf else ""
        raise MessageError(f"message record has {key} = {value!r}; {wanted}{bound} was expected")
    return value


def text(record: ConfigRecord, key: str) -> str:
    """A string value."""
    value = record.get(key)
    if not isinstance(value, str):
        raise MessageError(f"message record has no text under {key!r} (got {type(value).__name__})")
    return value


def error_reason(reply: Message) -> str:
    """An error reply's reason, without the exception-class wrapper Flower puts around it."""
    reason = reply.error.reason or f"error {reply.error.code}"
    wrapped = re.fullmatch(r"<class '[\w.]+'>:<'(.*)'>", reason, flags=re.DOTALL)
    return wrapped.group(1) if wrapped else reason
