"""Typed reading of a TOML file the user wrote (a task spec, an agreement), with errors that name
the file, the key, the bad value and the fix."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from lab.errors import ConfigError

__all__ = ["MISSING", "TomlReader"]

#: A key with no default: it must be given.
MISSING: Any = object()


class TomlReader:
    """The parsed TOML of ``source``; every error is an ``error`` (a ConfigError) whose message
    says how to fix it, pointing at ``example`` for a whole missing table."""

    def __init__(self, text: str, source: str, *, error: type[ConfigError], example: str) -> None:
        self.source, self.error, self.example = source, error, example
        try:
            self.raw: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise error(f"{source}: not valid TOML ({exc}); fix the syntax at that line") from None

    def fail(self, message: str) -> ConfigError:
        """An error about this file: ``raise reader.fail("key = 1; give ...")``."""
        return self.error(f"{self.source}: {message}")

    def only(
        self, t: dict[str, Any], known: Iterable[str], *, where: str, elsewhere: Mapping[str, str] | None = None
    ) -> None:
        """Refuse a key of ``t`` this file kind does not know, naming the nearest known one (or,
        from ``elsewhere``, the table it belongs in): a misspelt key would otherwise be read as
        absent, and its default would hold unseen."""
        names = list(known)
        for key in t:
            if key in names:
                continue
            if elsewhere and key in elsewhere:
                raise self.fail(f"{where}.{key} belongs under [{elsewhere[key]}]; move it there")
            near = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            prefix = f"{where}." if where else ""
            hint = f"did you mean {prefix + near[0]!r}?" if near else f"the known keys are {sorted(names)!r}"
            place = prefix + key
            raise self.fail(f"unknown key {place!r}; {hint} (an unknown key is never ignored)")

    def table(self, key: str, *, required: bool = True) -> dict[str, Any]:
        value = self.raw.get(key, MISSING)
        if value is MISSING:
            if required:
                raise self.fail(f"missing table [{key}]; add it ({self.example})")
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{key!r} must be a table [{key}], got {value!r}")
        return value

    def array_of_tables(self, key: str, *, required: bool = False) -> list[dict[str, Any]]:
        value = self.raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value) or (required and not value):
            raise self.fail(f"{key!r} must be written as one or more [[{key}]] tables")
        return value

    def get(self, t: dict[str, Any], key: str, kind: type, *, default: Any = MISSING, where: str) -> Any:
        """``t[key]`` as a ``kind`` (an int is read as a float where a float is wanted); ``default``
        when absent (None allowed)."""
        value = t.get(key, default)
        if value is MISSING:
            raise self.fail(f"missing key {where}.{key}; add it")
        if value is None and default is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(f"{where}.{key} = {value!r} should be a {kind.__name__}; fix its value")
        return value

    def name(self, t: dict[str, Any], key: str, *, where: str) -> str:
        """``t[key]`` as a name: a string with something in it."""
        value: str = self.get(t, key, str, where=where)
        if not value.strip():
            raise self.fail(f"{where}.{key} is empty; give it a name (for a column: its name in the table)")
        return value

    def choice(
        self, t: dict[str, Any], key: str, options: tuple[str, ...], *, default: Any = MISSING, where: str
    ) -> Any:
        value = self.get(t, key, str, default=default, where=where)
        if value not in options:
            raise self.fail(f"{where}.{key} = {value!r} is not one of {list(options)!r}; pick one")
        return value

    def strings(self, t: dict[str, Any], key: str, *, where: str) -> list[str]:
        value = self.get(t, key, list, where=where)
        if not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where}.{key} = {value!r}; give a list of strings")
        return [str(v) for v in value]
