"""What an organisation's operator approves, and what it reviews first.

``allow_app``, ``allow_task`` and ``allow_strategy`` add an app, a task or a strategy to an
agreement file (`lab agreement allow`), so that no operator copies a hash by hand. The file is
edited as text, an item added at the end of one array or a table before ``[allow]``, so its
comments and layout stay; the result is read back with the node's own parser before it replaces
the file, and nothing is written when it does not hold what was asked. An app approved this way
is kept beside the agreement, as its FAB, in ``approved-apps/``: ``review`` compares an app with
the last one kept there (`lab app review`).
"""

from __future__ import annotations

import difflib
import hashlib
import io
import os
import re
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab.contract.strategies import STRATEGIES
from lab.core.spec import TaskSpec
from lab.errors import AgreementError, UsageError
from lab.node.agreement import Agreement, load_agreement, parse_agreement

__all__ = [
    "APPROVED_APPS",
    "AppContents",
    "AppFile",
    "Review",
    "allow_app",
    "allow_strategy",
    "allow_task",
    "check_strategy",
    "review",
    "visible",
]

#: The folder beside an agreement where each app approved with `lab agreement allow --app` is kept.
APPROVED_APPS = "approved-apps"


@dataclass(frozen=True)
class AppFile:
    """One file of an app: its path in the FAB, size, sha256, and its text (None if not UTF-8)."""

    name: str
    size: int
    sha256: str
    text: str | None


@dataclass(frozen=True)
class AppContents:
    """An app as a FAB carries it: its hash (what ``allow.apps`` names) and its files."""

    hash: str
    files: dict[str, AppFile]

    @classmethod
    def of(cls, fab: bytes, *, source: str) -> AppContents:
        """The contents of the FAB ``fab`` (read from ``source``, named in errors)."""
        try:
            archive = zipfile.ZipFile(io.BytesIO(fab))
        except zipfile.BadZipFile:
            raise UsageError(f"{source!r} is not a Flower app (FAB): give a .fab file or the app's folder") from None
        files = {}
        for info in archive.infolist():
            if info.is_dir() or info.filename.startswith(".info/"):
                continue  # Flower's own record of the files and their signatures
            data = archive.read(info)
            try:
                text: str | None = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            files[info.filename] = AppFile(info.filename, len(data), hashlib.sha256(data).hexdigest(), text)
        return cls(hashlib.sha256(fab).hexdigest(), dict(sorted(files.items())))


@dataclass(frozen=True)
class Review:
    """An app next to what an agreement approved: whether its hash is approved, and how its files
    differ from the last approved app kept beside the agreement (``against``; None when none is)."""

    app: AppContents
    approved: bool | None  # None: no agreement was given
    against: AppContents | None

    def status(self, name: str) -> str:
        """``new``, ``changed`` or ``same`` against the approved app (``new`` when there is none)."""
        if self.against is None or name not in self.against.files:
            return "new"
        return "same" if self.against.files[name].sha256 == self.app.files[name].sha256 else "changed"

    @property
    def removed(self) -> list[str]:
        """The approved app's files this one no longer has."""
        return [] if self.against is None else sorted(set(self.against.files) - set(self.app.files))

    def diff(self, name: str) -> str:
        """A changed text file's unified diff against the approved app's ("" if the same or binary)."""
        if self.against is None or self.status(name) != "changed":
            return ""
        old, new = self.against.files[name].text, self.app.files[name].text
        if old is None or new is None:
            return ""
        lines = difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), f"approved/{name}", f"this/{name}"
        )
        return "".join(lines)


def visible(text: str) -> str:
    """``text`` as an operator must read it: every control or format character other than a
    newline or a tab written as its escape (``\\x1b``, ``\\u202e``), so that no terminal sequence
    or bidirectional override in an app's file can hide or reorder what it shows."""
    return "".join(
        c if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf") else c.encode("unicode_escape").decode()
        for c in text
    )


def review(fab: bytes, *, source: str, agreement: Path | None = None) -> Review:
    """The app ``fab`` (read from ``source``) against ``agreement``: whether it approves the app,
    and the last app approved with ``allow_app`` that is kept beside it."""
    app = AppContents.of(fab, source=source)
    if agreement is None:
        return Review(app, None, None)
    approved = load_agreement(agreement).apps
    return Review(app, app.hash in approved, _last_kept(agreement, approved))


def _last_kept(agreement: Path, approved: frozenset[str]) -> AppContents | None:
    """The most recently kept FAB beside ``agreement`` whose hash the agreement still approves."""
    folder = agreement.parent / APPROVED_APPS
    kept = [p for p in folder.glob("*.fab") if p.stem in approved] if folder.is_dir() else []
    if not kept:
        return None
    latest = max(kept, key=lambda p: (p.stat().st_mtime_ns, p.name))
    return AppContents.of(latest.read_bytes(), source=str(latest))


def allow_app(agreement: Path, fab: bytes, *, source: str) -> list[str]:
    """Add the app ``fab`` to ``agreement``'s ``allow.apps`` and keep it beside the agreement; what
    was done, one line each."""
    app = AppContents.of(fab, source=source)
    current = load_agreement(agreement)
    done = []
    if app.hash in current.apps:
        done.append(f"allow.apps already approves app {app.hash}")
    else:
        _rewrite(agreement, _add_to_array(_text(agreement), "allow", "apps", app.hash), lambda a: app.hash in a.apps)
        done.append(f"added app {app.hash} to allow.apps")
    folder = agreement.parent / APPROVED_APPS
    folder.mkdir(exist_ok=True)
    kept = folder / f"{app.hash}.fab"
    kept.write_bytes(fab)
    done.append(f"kept the app as {kept} (what `lab app review` compares the next app with)")
    return done


def check_strategy(name: str) -> None:
    """Refuse a strategy the lab does not have, naming those it has."""
    if name not in STRATEGIES:
        raise UsageError(f"--strategy {name!r} is not a strategy of the lab; choose from {sorted(STRATEGIES)}")


def allow_strategy(agreement: Path, name: str) -> list[str]:
    """Add strategy ``name`` to ``agreement``'s ``allow.strategies``."""
    check_strategy(name)
    current = load_agreement(agreement)
    if name in current.strategies:
        return [f"allow.strategies already allows {name!r}"]
    edited = _add_to_array(_text(agreement), "allow", "strategies", name)
    _rewrite(agreement, edited, lambda a: name in a.strategies)
    return [f"added strategy {name!r} to allow.strategies"]


def allow_task(agreement: Path, spec: TaskSpec) -> list[str]:
    """Add the task ``spec`` to ``agreement``'s ``[[tasks]]``, or give its entry the spec's new sha256."""
    current = load_agreement(agreement)
    text = _text(agreement)
    known = current.tasks.get(spec.name)
    if known == spec.sha256:
        return [f"tasks already covers {spec.name!r} (sha256 {spec.sha256})"]
    if known is None:
        block = f'[[tasks]]\nname = "{spec.name}"\nsha256 = "{spec.sha256}"\n\n'
        header = _header(text, "allow")
        _rewrite(agreement, text[:header] + block + text[header:], lambda a: a.tasks.get(spec.name) == spec.sha256)
        return [f"added task {spec.name!r} (sha256 {spec.sha256}) to tasks"]
    if text.count(f'"{known}"') != 1:
        raise AgreementError(f"{str(agreement)!r}: task {spec.name!r}'s sha256 {known} is not written once; edit it")
    _rewrite(agreement, text.replace(f'"{known}"', f'"{spec.sha256}"'), lambda a: a.tasks.get(spec.name) == spec.sha256)
    return [f"task {spec.name!r}: sha256 {known} replaced by {spec.sha256} (the spec changed)"]


def _text(agreement: Path) -> str:
    return agreement.read_text(encoding="utf-8")


def _header(text: str, table: str) -> int:
    """Where the line ``[table]`` starts in ``text``."""
    found = re.search(rf"^\[{re.escape(table)}\][ \t]*(#.*)?$", text, flags=re.MULTILINE)
    if found is None:
        raise AgreementError(f"the agreement has no [{table}] table; `lab agreement template` prints a complete one")
    return found.start()


def _add_to_array(text: str, table: str, key: str, value: str) -> str:
    """``text`` with ``value`` added at the end of the array ``key`` of ``[table]``, everything
    else as it was (the items, their comments, one line or one item a line); the key is added
    under the table's header if it has none."""
    start = _header(text, table)
    body = text.index("\n", start) + 1 if "\n" in text[start:] else len(text)
    following = re.search(r"^\[", text[body:], flags=re.MULTILINE)
    end = body + following.start() if following else len(text)
    line = re.search(rf"^{re.escape(key)}[ \t]*=[ \t]*\[", text[body:end], flags=re.MULTILINE)
    if line is None:
        return text[:body] + f'{key} = ["{value}"]\n' + text[body:]
    opened = body + line.end() - 1
    closed, last, comma = _scan(text, opened)
    if last is None:  # an empty array
        return text[:opened] + f'["{value}"]' + text[closed + 1 :]
    line_start = text.rfind("\n", 0, closed) + 1
    if line_start > opened and not text[line_start:closed].strip():  # one item a line, "]" on its own line
        return text[:last] + ("" if comma else ",") + text[last:line_start] + f'    "{value}",\n' + text[line_start:]
    return text[:last] + f', "{value}"' + text[last:]


def _scan(text: str, opened: int) -> tuple[int, int | None, bool]:
    """The array opened at ``opened``: the index of its closing ``]``, the index just after its
    last string item (None if it has none), and whether a comma follows that item."""
    i, quote, last, comma = opened + 1, "", None, False
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote, last, comma = "", i + 1, False
        elif c in "\"'":
            quote = c
        elif c == "#":
            i = text.find("\n", i)
            if i < 0:
                break
        elif c == ",":
            comma = True
        elif c == "]":
            return i, last, comma
        i += 1
    raise AgreementError("an array of the agreement is not closed; `lab agreement check` names where")


def _rewrite(agreement: Path, text: str, holds: Callable[[Agreement], bool]) -> None:
    """Replace ``agreement`` with ``text`` once the node's parser reads it and what it reads
    ``holds`` what was asked; otherwise nothing is written."""
    parsed = parse_agreement(text, source=str(agreement))  # raises, naming the field
    if not holds(parsed):
        raise AgreementError(
            f"{str(agreement)!r} could not be edited as asked (its layout is unusual); edit it by hand"
        )
    mode = agreement.stat().st_mode & 0o777
    handle, staged = tempfile.mkstemp(dir=agreement.parent, prefix=f".{agreement.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(staged, mode)
        os.replace(staged, agreement)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
