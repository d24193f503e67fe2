"""lakerec maintain: table upkeep, the weekly DAG task.

    lakerec maintain [--table TABLE ...] [--retention-hours 168] [--dry-run]
    spark-submit jobs/maintain.py  (same arguments)

For every table (or the ones named): compaction (``lakerec compact``: the stream's superseded
rows folded away, small files packed), a checkpoint of the log, log entries expired past the
log retention, and a vacuum of the files removed more than ``--retention-hours`` ago. Every
version committed within the retention stays readable (``VERSION AS OF``, ``lakerec
restore``); files a running job or stream is about to commit are never taken. Vacuum and
compaction add commits of their own, so a job keyed on its inputs' versions (``score``,
``train``) runs once more after a maintenance even on unchanged data.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import number


@dataclass(frozen=True)
class MaintainConfig:
    lakehouse: str
    tables: tuple[str, ...] | None
    retention_hours: float
    dry_run: bool
    log_level: str | None


def parse(argv: list[str] | None) -> MaintainConfig:
    from pipelines.storage.maintenance import DEFAULT_RETENTION_HOURS, check_retention
    from schemas.tables import TABLES

    p = cli.parser("maintain", "Compact, checkpoint and vacuum the tables.")
    p.add_argument("--table", action="append", choices=list(TABLES), metavar="TABLE",
                   help=f"only this table (repeatable; default all: {', '.join(TABLES)})")
    p.add_argument("--retention-hours", help="keep every version of the last this many hours "
                                             f"readable ({DEFAULT_RETENTION_HOURS}; at least 24)")
    p.add_argument("--dry-run", action="store_true",
                   help="say what vacuum would delete; compact, checkpoint and delete nothing")
    args, s = cli.parse_args(p, argv, section="maintain")
    retention = check_retention(s.get("retention_hours", flag=args.retention_hours,
                                      default=DEFAULT_RETENTION_HOURS, cast=number))
    s.existing_lakehouse()
    s.check_writable(s.lakehouse, "--lakehouse")
    return MaintainConfig(s.lakehouse, tuple(args.table) if args.table else None, retention,
                          args.dry_run, args.log_level)


def body(spark, cfg: MaintainConfig) -> int:
    from jobs.compact import CompactConfig
    from jobs.compact import body as compact_body
    from pipelines.batch.compact import APPEND_ONLY, MERGE_ON_READ
    from pipelines.storage import delta
    from pipelines.storage.maintenance import upkeep
    from schemas.tables import TABLES

    packable = {t.name for t in (*MERGE_ON_READ, *APPEND_ONLY)}
    wanted = cfg.tables or tuple(TABLES)
    if not cfg.dry_run:
        compact_body(spark, CompactConfig(cfg.lakehouse, tuple(t for t in wanted
                                                               if t in packable), None))
    with cli.step(f"checkpoint and vacuum (retention {cfg.retention_hours:g} h"
                  f"{', dry run' if cfg.dry_run else ''})"):
        for name in wanted:
            if not delta.exists(cfg.lakehouse, name):
                continue
            u = upkeep(cfg.lakehouse, name, retention_hours=cfg.retention_hours,
                       dry_run=cfg.dry_run)
            verb = "would delete" if cfg.dry_run else "deleted"
            print(f"    {u.table}: v{u.version}"
                  f"{f', checkpoint at v{u.checkpoint}' if u.checkpoint is not None else ''}, "
                  f"{verb} {u.files_deleted:,} old files, log {u.log_files_before:,} -> "
                  f"{u.log_files_after:,} files")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("maintain", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
