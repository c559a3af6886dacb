"""Where a node's table lives: a file's path, or a database URL (read by lab.core.sql)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TableSource"]

_SCHEME = re.compile(r"^[a-z][a-z0-9+]*://", re.IGNORECASE)


@dataclass(frozen=True)
class TableSource:
    """A node's table as its operator names it: a database URL (``scheme://...``) or a file's path.
    Built with ``TableSource.of`` wherever a source arrives as text; what it is is decided here only."""

    text: str

    @classmethod
    def of(cls, value: str | Path | TableSource) -> TableSource:
        return value if isinstance(value, TableSource) else cls(str(value))

    @property
    def is_sql(self) -> bool:
        """Whether the table is in a database rather than a file."""
        return bool(_SCHEME.match(self.text))

    @property
    def label(self) -> str:
        """How messages, errors and logs name it: its path, or its URL without a password."""
        return _display_url(self.text) if self.is_sql else self.text

    def located(self) -> str:
        """The source as it is handed to a SuperNode: a database URL as written, a file's path made
        absolute (the SuperNode runs in another folder)."""
        return self.text if self.is_sql else str(Path(self.text).expanduser().resolve())

    def exists(self) -> bool:
        """Whether a file source exists (a database URL is only checked when it is read)."""
        return self.is_sql or Path(self.text).is_file()

    def __str__(self) -> str:
        return self.text


def _display_url(source: str) -> str:
    """The URL as errors and logs may show it: no password, the lab's parameters kept."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(source).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown up to its credentials
        return re.sub(r"//[^@/]*@", "//***@", source)
