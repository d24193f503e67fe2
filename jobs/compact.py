"""lakerec compact: fold the stream's superseded rows out of the merge-on-read tables.

    lakerec compact [--table recommendations|user_factors]
    spark-submit jobs/compact.py  (same arguments)

``recommendations`` and ``user_factors`` take each micro-batch's refreshed rows as an append;
readers pick each user's latest rows (``current_recommendations``). Compaction rewrites the
table as those current rows only, in few large files sorted by user, in one commit that keeps
what the stream appends meanwhile. Run it in the DAG (after ``score``) and, while the stream
runs, every hour or so: the stream adds one file per batch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.runtime import cli


@dataclass(frozen=True)
class CompactConfig:
    lakehouse: str
    tables: tuple[str, ...] | None
    log_level: str | None


def parse(argv: list[str] | None) -> CompactConfig:
    from pipelines.batch.compact import MERGE_ON_READ

    names = [t.name for t in MERGE_ON_READ]
    p = cli.parser("compact", "Fold superseded rows out of the merge-on-read tables.")
    p.add_argument("--table", action="append", choices=names, metavar="TABLE",
                   help=f"only this table (repeatable; default all: {', '.join(names)})")
    args, s = cli.parse_args(p, argv, section="compact")
    s.check_writable(s.lakehouse, "--lakehouse")
    return CompactConfig(s.lakehouse, tuple(args.table) if args.table else None,
                         args.log_level)


def body(spark, cfg: CompactConfig) -> int:
    from pipelines.batch.compact import compact

    with cli.step("compact"):
        reports = compact(spark, cfg.lakehouse, cfg.tables)
    for r in reports:
        if r.skipped:
            print(f"    {r.table}: {r.skipped}")
        else:
            print(f"    {r.table}: {r.rows_before:,} -> {r.rows_after:,} rows, "
                  f"{r.files_before:,} -> {r.files_after:,} files (v{r.version})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("compact", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
