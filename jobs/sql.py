"""lakerec sql: run an analyst query over the lakehouse tables with DuckDB.

    lakerec sql "SELECT source, count(*) FROM recommendations GROUP BY 1"
    lakerec sql "SELECT count(*) FROM interactions VERSION AS OF 1"
    lakerec sql "SELECT count(*) FROM interactions TIMESTAMP AS OF '2026-11-30 12:00:00'"
    lakerec sql --as-of interactions=3 --format csv "SELECT * FROM interactions LIMIT 10"

Tables: interactions, quarantine, items, user_index, item_index, user_factors,
item_factors, recommendations. Formats: table (default), csv, json (one object per line).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import UsageError, positive_int


@dataclass(frozen=True)
class SqlConfig:
    lakehouse: str
    query: str
    as_of: dict
    fmt: str
    max_rows: int | None
    log_level: str | None


def parse(argv: list[str] | None) -> SqlConfig:
    p = cli.parser("sql", "Analyst SQL (DuckDB) over the Delta tables, with time travel.")
    p.add_argument("query", help="the SQL query; 'TABLE VERSION AS OF n' and 'TABLE TIMESTAMP "
                                 "AS OF \'2026-11-30 12:00\'' travel in time (UTC, by "
                                 "commit time)")
    p.add_argument("--as-of", action="append", default=[], metavar="TABLE=VERSION",
                   help="read TABLE at VERSION (repeatable)")
    cli.add_format_option(p, "output")
    p.add_argument("--max-rows", type=positive_int, default=None,
                   help="print at most this many rows (default 1000 in the table format, all "
                        "in csv and json); a cut output says so on stderr")
    args, s = cli.parse_args(p, argv, section="sql")
    s.existing_lakehouse()  # reads one: a mistyped path is a usage error
    as_of = {}
    for item in args.as_of:
        table, sep, version = item.partition("=")
        if not sep or not version.isdigit():
            raise UsageError(f"--as-of wants TABLE=VERSION, got {item!r}")
        as_of[table] = int(version)
    max_rows = args.max_rows if args.max_rows is not None else (
        1000 if args.format == "table" else None)
    return SqlConfig(s.lakehouse, args.query, as_of, args.format, max_rows, args.log_level)


def body(_spark, cfg: SqlConfig) -> int:
    from pipelines.storage.sql import format_rows, query

    limit = cfg.max_rows
    # one row past the limit tells whether the output was cut, and the user is told so
    cols, rows = query(cfg.lakehouse, cfg.query, as_of=cfg.as_of,
                       limit=None if limit is None else limit + 1)
    cut = limit is not None and len(rows) > limit
    print(format_rows(cols, rows[:limit] if cut else rows, cfg.fmt))
    if cut:
        print(f"lakerec sql: output cut at {limit:,} rows (--max-rows N shows more; "
              "--format csv or json shows all)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("sql", argv, parse, body, spark=False,
                   log_level=lambda c: c.log_level or "WARNING")


if __name__ == "__main__":
    sys.exit(main())
