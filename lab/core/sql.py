"""A node's table read from a SQL database with SQLAlchemy: SQLite files, PostgreSQL by URL.

A node names its database with a SQLAlchemy URL in place of a file path, and says what to read
with one of the lab's own URL parameters, which are taken out before SQLAlchemy sees the URL:

- ``table=NAME`` (or ``SCHEMA.NAME``): every row of that table;
- ``query=SELECT ...``: one read-only query (percent-encode ``&`` and ``#`` in it);
- ``password-file=PATH``: a file whose first line is the password.

The password never goes in the URL: a node's ``data-path`` is part of its SuperNode's node config,
which Flower logs. It comes from ``password-file``, from the ``LAB_DATA_PASSWORD`` environment
variable of the node, or from the driver's own mechanisms (PostgreSQL's ``~/.pgpass`` or
``PGPASSFILE``). Every query runs in a read-only transaction, and errors show the URL with no
password.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from lab.core.environ import DATA_PASSWORD
from lab.core.sources import TableSource
from lab.errors import DataError

__all__ = ["read_sql"]


_LAB_PARAMS = ("table", "query", "password-file")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
_EXAMPLE = "sqlite:///path/to/records.db?table=patients"


def read_sql(source: str) -> pd.DataFrame:
    """Every row the URL's ``table`` or ``query`` names, as pandas reads them (typed as stored).

    Raises
    ------
    DataError
        If the URL is malformed, names no table or query, holds a password, or the database
        cannot be reached or read; the message shows the URL without its password.
    """
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    shown = TableSource(source).label
    try:
        url = make_url(source)
    except Exception:
        raise DataError(f"{shown!r} is not a database URL SQLAlchemy can read; write it like {_EXAMPLE!r}") from None
    params: dict[str, Any] = dict(url.query)
    lab = {key: params.pop(key) for key in _LAB_PARAMS if key in params}
    statement = _statement(shown, lab)
    if url.password is not None:
        raise DataError(
            f"{shown!r} holds a password: a node's data-path is logged by Flower. Take it out of the URL and "
            f"give it in a file (password-file=PATH) or in the node's {DATA_PASSWORD.name} environment variable"
        )
    password = _password(shown, lab.get("password-file"))
    url = url.set(query=params, password=password)
    if url.drivername == "postgresql":  # the pinned environment's driver (SQLAlchemy 2.1 would pick psycopg 3)
        url = url.set(drivername="postgresql+psycopg2")
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise DataError(f"{shown!r}: the SQLite file {database!r} does not exist; give its path, e.g. {_EXAMPLE!r}")
    try:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    except Exception as exc:  # an unknown dialect or a driver that is not installed
        raise DataError(f"{shown!r}: {_reason(exc, password)}; use a sqlite:/// or postgresql:// URL") from None
    try:
        with engine.connect() as connection:
            _read_only(connection)
            result = connection.execute(statement)
            frame = pd.DataFrame.from_records(result.fetchall(), columns=list(result.keys()))
            connection.rollback()
    except Exception as exc:
        raise DataError(f"{shown!r} cannot be read: {_reason(exc, password)}; check the URL, {_what(lab)}") from None
    finally:
        engine.dispose()
    return frame


def _statement(shown: str, lab: dict[str, Any]) -> Any:
    """The SELECT the URL asks for: a whole table, or one read-only query."""
    import sqlalchemy as sa

    table, query = lab.get("table"), lab.get("query")
    if bool(table) == bool(query):
        raise DataError(f"{shown!r} should name exactly one of table=NAME or query=SELECT...; e.g. {_EXAMPLE!r}")
    if table:
        if not isinstance(table, str) or not _NAME.match(table):
            raise DataError(f"{shown!r}: table={table!r} is not a table name; give NAME or SCHEMA.NAME")
        schema, _, name = table.rpartition(".")
        return sa.select(sa.text("*")).select_from(sa.table(name, schema=schema or None))
    text = str(query).strip().rstrip(";").strip()
    if ";" in text or not re.match(r"^(select|with)\b", text, re.IGNORECASE):
        raise DataError(
            f"{shown!r}: query={str(query)!r} should be one SELECT (or WITH ... SELECT) statement; the node only reads"
        )
    return sa.text(text)


def _read_only(connection: Any) -> None:
    """Make the connection's transaction read-only where the database can enforce it."""
    import sqlalchemy as sa

    backend = connection.engine.url.get_backend_name()
    if backend == "sqlite":
        connection.execute(sa.text("PRAGMA query_only = ON"))
    elif backend == "postgresql":
        connection.execute(sa.text("SET TRANSACTION READ ONLY"))


def _password(shown: str, password_file: Any) -> str | None:
    if password_file:
        path = Path(str(password_file)).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DataError(
                f"{shown!r}: password-file {str(path)!r} cannot be read ({exc.strerror}); "
                "give the path of a file holding the password"
            ) from None
        return lines[0].strip() if lines else ""
    return DATA_PASSWORD.get() or None


def _reason(exc: BaseException, password: str | None) -> str:
    """The driver's first line, with the password (if any) struck out."""
    first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    return first.replace(password, "***") if password else first


def _what(lab: dict[str, Any]) -> str:
    return f"the table {lab['table']!r}" if lab.get("table") else "the query"
