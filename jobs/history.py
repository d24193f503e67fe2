"""lakerec history: a table's commits, newest first (what ``VERSION AS OF`` and ``lakerec
restore --version`` take).

    lakerec history TABLE [--limit 20] [--format table|csv|json]

Each commit: its version, its commit time (recorded in the log, so the same on a copy of the
lakehouse), the operation, rows and files added and removed, and what lakerec recorded with
it (the model version served, the inputs' versions, the ingest ids, the stream batch).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import positive_int


@dataclass(frozen=True)
class HistoryConfig:
    lakehouse: str
    table: str
    limit: int
    fmt: str
    log_level: str | None


def parse(argv: list[str] | None) -> HistoryConfig:
    from schemas.tables import TABLES

    p = cli.parser("history", "A table's commits, newest first.")
    p.add_argument("table", choices=list(TABLES), metavar="TABLE",
                   help=f"one of: {', '.join(TABLES)}")
    p.add_argument("--limit", type=positive_int, default=20,
                   help="this many commits, newest first (20)")
    cli.add_format_option(p, "output")
    args, s = cli.parse_args(p, argv, section="history")
    s.existing_lakehouse(args.table)
    return HistoryConfig(s.lakehouse, args.table, args.limit, args.format, args.log_level)


# bookkeeping keys every commit carries: not worth a column
_SKIP = ("lakerec.table", "lakerec.write_id")


def body(_spark, cfg: HistoryConfig) -> int:
    from pipelines.storage import delta
    from pipelines.storage.sql import format_rows

    commits = delta.history(cfg.lakehouse, cfg.table, cfg.limit)
    m = lambda c, k: c.metrics.get(k)  # noqa: E731
    rows = [(c.version, c.at.isoformat(timespec="milliseconds"), c.operation,
             m(c, "num_added_rows"), m(c, "num_added_files"), m(c, "num_removed_files"),
             " ".join(f"{k.removeprefix('lakerec.')}={v}" for k, v in sorted(c.metadata.items())
                      if k not in _SKIP))
            for c in commits]
    cols = ["version", "committed_at", "operation", "rows_added", "files_added",
            "files_removed", "recorded"]
    print(format_rows(cols, rows, cfg.fmt, max_width=100))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("history", argv, parse, body, spark=False,
                   log_level=lambda c: c.log_level or "WARNING")


if __name__ == "__main__":
    sys.exit(main())
