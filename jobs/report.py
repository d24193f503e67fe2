"""lakerec report: one self-contained HTML page of how the recommender is doing.

    lakerec report [--out PATH] [--days 30] [--snapshots 10]

Plots (PNG, embedded in the page and written beside it): each model version's NDCG with the
popularity baseline over time; the served lists' catalog coverage and popularity
concentration (the top 1% of items' share of the slots, the Gini coefficient); the share of
users on fallbacks; the stream's event -> commit lag per hour; the quarantine rate by reason
per day. Reads the lakehouse, writes only the report folder (default
``<lakehouse>/_report``), replaced whole.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import positive_int


@dataclass(frozen=True)
class ReportConfig:
    lakehouse: str
    out: str
    days: int
    snapshots: int
    log_level: str | None


def parse(argv: list[str] | None) -> ReportConfig:
    p = cli.parser("report", "An HTML report with plots: models, lists, freshness, quarantine.")
    p.add_argument("--out", help="the report folder, replaced whole (default: "
                                 "<lakehouse>/_report)")
    p.add_argument("--days", type=positive_int,
                   help="days of stream freshness and quarantine to plot (30)")
    p.add_argument("--snapshots", type=positive_int,
                   help="the last N lists score wrote, besides the current ones (10)")
    args, s = cli.parse_args(p, argv, section="report")
    lh = s.existing_lakehouse()
    from pipelines.ops.report import check_out

    out = check_out(lh, s.get("out", flag=args.out, default=os.path.join(lh, "_report")))
    out = s.check_writable(out, "--out")
    days = s.get("days", flag=args.days, default=30, cast=positive_int)
    snaps = s.get("snapshots", flag=args.snapshots, default=10, cast=positive_int)
    return ReportConfig(lh, out, days, snaps, args.log_level)


def body(_spark, cfg: ReportConfig) -> int:
    from pipelines.ops.report import build

    r = build(cfg.lakehouse, cfg.out, days=cfg.days, snapshots=cfg.snapshots)
    print(f"report: {r.html} ({len(r.figures)} plots: "
          f"{', '.join(f.name for f in r.figures) or 'none'})")
    for n in r.notes:
        print(f"    {n}")
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return cli.run("report", argv, parse, body, spark=False,
                   log_level=lambda c: c.log_level or "WARNING")


if __name__ == "__main__":
    sys.exit(main())
