"""Where a node's table lives: a file's path, or a database URL (read by lab.core.sql)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["display_url", "is_sql_url", "node_source", "source_exists", "source_label"]

_SCHEME = re.compile(r"^[a-z][a-z0-9+]*://", re.IGNORECASE)


def is_sql_url(source: str | Path) -> bool:
    """Whether a node's data source is a database URL rather than a file path."""
    return isinstance(source, str) and bool(_SCHEME.match(source))


def display_url(source: str) -> str:
    """The URL as errors and logs may show it: no password, the lab's parameters kept."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(source).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown up to its credentials
        return re.sub(r"//[^@/]*@", "//***@", source)


def node_source(text: str) -> str:
    """A node's data source as it is handed to its SuperNode: a database URL as written, a file's
    path made absolute (the SuperNode runs in another folder)."""
    return text if is_sql_url(text) else str(Path(text).expanduser().resolve())


def source_exists(source: str) -> bool:
    """Whether a file source exists (a database URL is only checked when it is read)."""
    return is_sql_url(source) or Path(source).is_file()


def source_label(source: str | Path) -> str:
    """How messages name a node's data: its path, or its database URL without a password."""
    return display_url(str(source)) if is_sql_url(source) else str(source)
