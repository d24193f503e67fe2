"""Analyst SQL over the lakehouse with DuckDB, time travel included.

Every table is registered from ``deltalake`` as an Arrow dataset (no DuckDB extension to
download). Delta-style time travel works inside the query::

    SELECT count(*) FROM interactions VERSION AS OF 1
    SELECT * FROM recommendations TIMESTAMP AS OF '2024-06-30 12:00:00'

``TIMESTAMP AS OF`` picks the newest commit made at or before that time, by the commit
times inside the log (:func:`pipelines.storage.delta.version_at`), so a copied lakehouse
answers the same; a time before the table existed, or a version past its latest, is an
error that says which versions there are.

or for a whole table with ``as_of={"interactions": 3}``. Each merge-on-read table also has a
view of its current rows, ``current_recommendations`` and ``current_user_factors``, defined by
:meth:`schemas.tables.TableSpec.current_sql` (the query every other engine runs too). The engine cannot read or write
files on its own (``enable_external_access = false``): only the lakehouse tables are visible.

Example
-------
>>> cols, rows = query("/lh", "SELECT source, count(*) FROM recommendations GROUP BY 1")
... # doctest: +SKIP
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import os
import re
from collections.abc import Mapping

from pipelines.errors import UsageError
from pipelines.storage import delta
from schemas.tables import TABLES

log = logging.getLogger(__name__)

CURRENT_PREFIX = "current_"  # current_recommendations: see TableSpec.current_sql

_KINDS = ("VERSION", "TIMESTAMP")


def _tokens(sql: str) -> list[tuple[int, int, str, str]]:
    """``sql`` as DuckDB's own tokenizer sees it: ``(start, end, type, text)`` per token.

    A string literal or a comment is one token, so nothing inside one is ever rewritten.
    """
    import duckdb

    toks = duckdb.tokenize(sql)
    out = []
    for i, (start, kind) in enumerate(toks):
        end = toks[i + 1][0] if i + 1 < len(toks) else len(sql)
        text = sql[start:end].rstrip()
        out.append((start, start + len(text), kind.name, text))
    return out


def _travel_clauses(sql: str):
    """Each ``<table> VERSION|TIMESTAMP AS OF <value>`` of ``sql``, found in its tokens:
    ``(start, end, table, kind, value)``, with quotes taken off the table and the value."""
    toks = _tokens(sql)
    for i in range(len(toks) - 4):
        (start, _, t0, name), (_, _, t1, kind), (_, _, _, as_), (_, _, _, of) = toks[i:i + 4]
        _, end, t4, value = toks[i + 4]
        if (t0 == "identifier" and t1 == "keyword" and kind.upper() in _KINDS
                and as_.upper() == "AS" and of.upper() == "OF"):
            if t4 not in ("numeric_const", "string_const"):
                raise UsageError(f"{name} {kind.upper()} AS OF wants a number or a quoted "
                                 f"timestamp, got {value!r}")
            yield start, end, name.strip('"'), kind.upper(), value.strip("'")


def _version_at(lakehouse: str, table: str, ts_text: str) -> int:
    try:
        ts = _dt.datetime.fromisoformat(ts_text)
    except ValueError:
        raise UsageError(f"bad timestamp {ts_text!r} (use ISO-8601)") from None
    return delta.version_at(lakehouse, table, ts)


def _known_version(lakehouse: str, table: str, text: str) -> int:
    if not text.isdigit():
        raise UsageError(f"{table} VERSION AS OF wants a version number, got {text!r}")
    version = int(text)
    try:
        latest = delta.latest_version(lakehouse, table)
    except delta.BrokenTableError:
        # a damaged newest commit: its intact versions still read (opening one says if not)
        return version
    if latest is None:
        raise UsageError(f"table {table} does not exist")
    if version > latest:
        raise UsageError(f"{table} has no version {version}: its latest is v{latest} "
                         f"(`lakerec history {table}` lists them)")
    return version


def rewrite(sql: str, lakehouse: str) -> tuple[str, dict[str, tuple[str, int]]]:
    """Replace ``t VERSION|TIMESTAMP AS OF x`` by views; returns (sql, {view: (table, version)}).

    The clauses are found in DuckDB's tokens, not by a pattern over the text: a string
    literal or a comment that happens to read ``items VERSION AS OF 1`` is left alone.
    """
    views: dict[str, tuple[str, int]] = {}
    parts, pos = [], 0
    for start, end, name, kind, value in _travel_clauses(sql):
        table = name.lower()
        if table not in TABLES:
            raise UsageError(f"time travel on unknown table {name!r}")
        version = _known_version(lakehouse, table, value) if kind == "VERSION" else \
            _version_at(lakehouse, table, value)
        view = f"{table}__v{version}"
        views[view] = (table, version)
        parts += [sql[pos:start], view]
        pos = end
    return "".join(parts) + sql[pos:], views


def _referenced(sql: str) -> set[str] | None:
    """The table names ``sql`` reads (DuckDB's parser); None if it names none it can tell
    (``SHOW TABLES``, ``information_schema``) or cannot be parsed."""
    import duckdb

    try:
        names = {n.lower() for n in duckdb.get_table_names(sql)}
    except duckdb.Error:
        return None
    return names or None


def _register(con, lakehouse: str, view: str, table: str, version: int | None) -> None:
    try:
        con.register(view, delta.arrow_dataset(lakehouse, table, version))
    except delta.TableMissingError as e:
        raise UsageError(str(e)) from None
    except delta.BrokenTableError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged table fails only the queries using it
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise _unreadable(table, first, version) from None


def _unreadable(table: str, cause: str, version: int | None) -> delta.BrokenTableError:
    hint = "`lakerec doctor` says how to recover"
    if version is not None:  # an old version's files may be gone by design
        hint = ("an old version's files are deleted once it is older than the retention of "
                f"`lakerec maintain`; else {hint}")
    return delta.BrokenTableError(f"table {table} cannot be read ({cause}); {hint}")


def connect(lakehouse: str, as_of: Mapping[str, int] | None = None, sql: str = ""):
    """A DuckDB connection with the tables ``sql`` uses registered; returns (connection, the
    query with its time-travel clauses rewritten). See :func:`_connect`."""
    con, sql, _ = _connect(lakehouse, as_of, sql)
    return con, sql


def _connect(lakehouse: str, as_of: Mapping[str, int] | None, sql: str):
    """A DuckDB connection with the tables ``sql`` uses registered (``as_of`` pins versions).

    Only the tables the query names are opened, so a damaged table fails the queries that
    read it (:class:`~pipelines.storage.delta.BrokenTableError`, naming it) and no other;
    time travel to an intact version of a table whose latest commit is damaged works.
    """
    import duckdb

    as_of = dict(as_of or {})
    unknown = set(as_of) - set(TABLES)
    if unknown:
        raise UsageError(f"unknown table(s) in --as-of: {', '.join(sorted(unknown))}")
    for table, version in as_of.items():
        if delta.exists(lakehouse, table):
            _known_version(lakehouse, table, str(version))
    sql, views = rewrite(sql, lakehouse)
    used = _referenced(sql)
    # current_<table>: the current rows of a merge-on-read table, by the documented query
    current = {CURRENT_PREFIX + n: n for n, t in TABLES.items() if t.merge_on_read}
    wanted = {current[u] for u in used if u in current} if used is not None else set()
    con = duckdb.connect()
    registered = set()
    for name in TABLES:
        named = used is not None and (name in used or name in wanted) or name in as_of
        if used is not None and not named:
            continue
        if os.path.isdir(os.path.join(delta.table_path(lakehouse, name), "_delta_log")):
            try:
                _register(con, lakehouse, name, name, as_of.get(name))
                registered.add(name)
            except delta.BrokenTableError as e:
                if named:
                    raise
                # a query naming no table (SHOW TABLES): list the readable ones
                log.warning("%s", e)
        elif name in as_of:
            raise UsageError(f"table {name} does not exist")
    for view, table in current.items():
        if table in registered:
            con.execute(f"CREATE VIEW {view} AS {TABLES[table].current_sql()}")
        elif view in (used or ()):
            raise UsageError(f"table {table} does not exist")
    for view, (table, version) in views.items():
        if not os.path.isdir(os.path.join(delta.table_path(lakehouse, table), "_delta_log")):
            raise UsageError(f"table {table} does not exist")
        _register(con, lakehouse, view, table, version)
    con.execute("SET enable_external_access = false")
    return con, sql, views


def query(lakehouse: str, sql: str, *, as_of: Mapping[str, int] | None = None,
          limit: int | None = None) -> tuple[list[str], list[tuple]]:
    """Run ``sql``; returns (column names, rows). SQL errors are :class:`UsageError`; a data
    file missing under a table is :class:`~pipelines.storage.delta.BrokenTableError`."""
    import duckdb

    con, sql, views = _connect(lakehouse, as_of, sql)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchmany(limit) if limit else cur.fetchall()
    except duckdb.Error as e:
        first = str(e).splitlines()[0]
        table = _table_of_path(lakehouse, str(e))
        if table is not None:
            travelled = table in (as_of or {}) or any(t == table for t, _ in views.values())
            raise _unreadable(table, first[:300], 0 if travelled else None) from None
        raise UsageError(first) from None
    finally:
        con.close()
    return cols, rows


def _table_of_path(lakehouse: str, text: str) -> str | None:
    """The table a scan error names: DuckDB says which registered stream failed
    (``reading the stream registered as 'recommendations__v3' failed``)."""
    m = re.search(r"registered as '([A-Za-z_][A-Za-z0-9_]*)' failed", text)
    if m is None:
        return None
    name = m.group(1).split("__v")[0].lower()
    return name if name in TABLES else None


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | tuple):
        inner = ", ".join(_cell(x) for x in v[:4])
        return f"[{inner}{', ...' if len(v) > 4 else ''}]"
    return str(v)


def format_rows(cols: list[str], rows: list[tuple], fmt: str = "table", *,
                max_width: int = 48) -> str:
    """Render a result as an aligned text table, CSV, or JSON (one object per line)."""
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows([[("" if v is None else v) for v in r] for r in rows])
        return buf.getvalue().rstrip("\n")
    if fmt == "json":
        return "\n".join(json.dumps(dict(zip(cols, r, strict=True)), default=str)
                         for r in rows)
    cells = [[_cell(v)[:max_width] for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[j]) for r in cells]) for j, c in enumerate(cols)]
    line = "-+-".join("-" * w for w in widths)
    out = [" | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)), line]
    out += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)
