"""lakerec ingest: validate one day of logs into interactions (bad rows to quarantine).

    lakerec ingest --date YYYY-MM-DD [--source PATH] [--catalog PATH | --no-catalog]
                   [--dedup-horizon-days 7]
    lakerec ingest --all             (every landed date, oldest first)
    spark-submit jobs/ingest.py      (same arguments)

Re-running a date whose files did not change commits nothing. The catalog
(default <lakehouse>/landing/items, if present) is upserted into items on the way.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import UsageError, nonneg_int, parse_date
from schemas import DEDUP_HORIZON_DAYS


@dataclass(frozen=True)
class IngestConfig:
    lakehouse: str
    dates: tuple[dt.date, ...]
    source: str
    catalog: str | None
    dedup_horizon_days: int
    log_level: str | None


def parse(argv: list[str] | None) -> IngestConfig:
    from pipelines.storage import landing

    p = cli.parser("ingest", "Validate, deduplicate and load log partitions into Delta.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--date", help="the log partition dt=YYYY-MM-DD to ingest")
    which.add_argument("--all", action="store_true", help="every landed date, oldest first")
    p.add_argument("--source", help="log folder holding dt=*/ (default <lakehouse>/landing/events)")
    p.add_argument("--catalog", help="catalog folder (default <lakehouse>/landing/items)")
    p.add_argument("--no-catalog", action="store_true", help="do not load the catalog")
    p.add_argument("--dedup-horizon-days",
                   help="look duplicates up this many days of arrival either side "
                        f"({DEDUP_HORIZON_DAYS})")
    args, s = cli.parse_args(p, argv, section="ingest")
    source = s.check_no_escape(s.get("source", flag=args.source,
                                     default=s.path("landing", "events")), "--source")
    if args.all:
        dates = tuple(landing.list_dates(source))
        if not dates:
            raise UsageError(f"no dt=YYYY-MM-DD partitions under {source}")
    else:
        date = parse_date(args.date)
        if not os.path.isdir(landing.partition_path(source, date)):
            raise UsageError(f"no input partition {landing.partition_path(source, date)}")
        dates = (date,)
    catalog = None
    if not args.no_catalog:
        catalog = s.get("catalog", flag=args.catalog, default=s.path("landing", "items"))
        if args.catalog and not os.path.isdir(catalog):
            raise UsageError(f"no catalog folder {catalog}")
        catalog = s.check_no_escape(catalog, "--catalog") if os.path.isdir(catalog) else None
    s.check_writable(s.lakehouse, "--lakehouse")
    horizon = s.get("dedup_horizon_days", flag=args.dedup_horizon_days,
                    default=DEDUP_HORIZON_DAYS, cast=nonneg_int)
    return IngestConfig(s.lakehouse, dates, source, catalog, horizon, args.log_level)


def body(spark, cfg: IngestConfig) -> int:
    from pipelines.batch.ingest import ingest_catalog, ingest_dates

    if cfg.catalog:
        with cli.step("ingest catalog"):
            r = ingest_catalog(spark, cfg.lakehouse, source=cfg.catalog)
            print("    " + ("unchanged" if r.skipped else
                            f"{r.valid:,} items, {r.quarantined:,} quarantined"))
    label = f"dt={cfg.dates[0]}" if len(cfg.dates) == 1 else \
        f"{len(cfg.dates)} dates ({cfg.dates[0]} .. {cfg.dates[-1]})"
    with cli.step(f"ingest {label}"):
        print_reports(ingest_dates(spark, cfg.lakehouse, list(cfg.dates), source=cfg.source,
                                   dedup_horizon_days=cfg.dedup_horizon_days))
    return 0


def print_reports(reports) -> None:
    for r in reports:
        if r.skipped:
            print(f"    dt={r.date}: already ingested from these files; nothing to do")
        else:
            why = ", ".join(f"{k} {v}" for k, v in sorted(r.reasons.items()))
            print(f"    dt={r.date}: {r.rows:,} rows: {r.valid:,} valid, "
                  f"{r.quarantined:,} quarantined" + (f" ({why})" if why else ""))


def main(argv: list[str] | None = None) -> int:
    return cli.run("ingest", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
