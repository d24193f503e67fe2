"""lakerec compact: fold the stream's superseded rows away and pack its small files.

    lakerec compact [--table TABLE ...]
    spark-submit jobs/compact.py  (same arguments)

``recommendations`` and ``user_factors`` take each micro-batch's refreshed rows as an append;
readers pick each user's latest rows (``current_recommendations``). Compaction rewrites the
table as those current rows only, in few large files sorted by user, in one commit that keeps
what the stream appends meanwhile. The append-only tables the stream writes (``interactions``,
``quarantine``, ``user_index``) get their small files packed, partition by partition, rows
unchanged. Run it in the DAG (after ``score``) and, while the stream runs, every hour or so:
the stream adds one file per batch to each table it writes.
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
    from pipelines.batch.compact import APPEND_ONLY, MERGE_ON_READ

    names = [t.name for t in (*MERGE_ON_READ, *APPEND_ONLY)]
    p = cli.parser("compact", "Fold superseded rows out of the merge-on-read tables and "
                              "pack the small files of the others.")
    p.add_argument("--table", action="append", choices=names, metavar="TABLE",
                   help=f"only this table (repeatable; default all: {', '.join(names)})")
    args, s = cli.parse_args(p, argv, section="compact")
    s.existing_lakehouse()  # reads one: a mistyped path is a usage error
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
        elif r.operation == "pack":  # rows moved, not counted
            print(f"    {r.table}: {r.files_before:,} -> {r.files_after:,} files (v{r.version})")
        else:
            print(f"    {r.table}: {r.rows_before:,} -> {r.rows_after:,} rows, "
                  f"{r.files_before:,} -> {r.files_after:,} files (v{r.version})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("compact", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
