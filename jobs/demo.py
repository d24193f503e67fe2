"""lakerec demo: the whole batch loop end to end on the embedded defaults.

    lakerec demo [--lakehouse ./lakehouse] [--users 20000] [--items 5000] [--events 1000000]
                 [--days 30] [--dirty-fraction 0.002] [--rank 32] [--k 10]

generate -> ingest every day (+ catalog) -> train (holdout evaluation, MLflow, champion)
-> score -> a summary: table row counts, metrics next to the popularity baseline, and one
user's recent history beside their recommendations. Steps already done on the same inputs
are skipped, so a second run only trains a new model and compares it with the champion.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from pipelines import cli
from pipelines.generate import SyntheticSpec
from pipelines.train import TrainParams


@dataclass(frozen=True)
class DemoConfig:
    lakehouse: str
    spec: SyntheticSpec
    params: TrainParams
    log_level: str | None


def parse(argv: list[str] | None) -> DemoConfig:
    from jobs.generate import add_spec_options, spec_from
    from jobs.train import add_train_options, params_from

    p = cli.parser("demo", "Generate, ingest, train, score and summarise, end to end.")
    add_spec_options(p)
    add_train_options(p, ("rank", "k", "max-iter"))
    args, s = cli.parse_args(p, argv, section="demo")
    spec = spec_from(args, s, dirty_default=0.002)
    params = params_from(args, s, window_days=spec.days,
                         holdout_days=min(TrainParams().holdout_days, max(1, spec.days // 5)),
                         seed=spec.seed)
    s.check_writable(s.lakehouse, "--lakehouse")
    return DemoConfig(s.lakehouse, spec, params, args.log_level or "WARNING")


def body(spark, cfg: DemoConfig) -> int:
    import os

    from jobs.generate import GenerateConfig
    from jobs.generate import body as generate_body
    from jobs.ingest import print_reports
    from jobs.train import format_report
    from pipelines import landing
    from pipelines.ingest import ingest_catalog, ingest_dates
    from pipelines.score import score
    from pipelines.train import train

    t0 = time.perf_counter()
    lh = cfg.lakehouse
    out = os.path.join(lh, "landing")
    print(f"lakerec demo in {lh}")
    generate_body(spark, GenerateConfig(out=out, spec=cfg.spec, force=False, log_level=None))
    with cli.step("ingest catalog"):
        ingest_catalog(spark, lh, source=os.path.join(out, "items"))
    dates = landing.list_dates(os.path.join(out, "events"))
    with cli.step(f"ingest {len(dates)} days of logs"):
        print_reports(ingest_dates(spark, lh, dates, source=os.path.join(out, "events")))
    with cli.step("train ALS + evaluate against popularity"):
        report = train(spark, lh, cfg.params)
    print(format_report(report, cfg.params.k))
    with cli.step(f"score top-{cfg.params.k} for every user"):
        s = score(spark, lh, k=cfg.params.k)
        if not s.skipped:
            print(f"    {s.users:,} users, {s.rows:,} rows {s.by_source}")
    summary(lh, cfg.params.k)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s. Explore: "
          f"lakerec sql --lakehouse {lh} \"SELECT * FROM recommendations LIMIT 10\"")
    return 0


def summary(lakehouse: str, k: int) -> None:
    from pipelines.sql import format_rows, query

    print("\n== tables")
    counts = query(lakehouse, """
        SELECT 'interactions' AS "table", count(*) AS rows FROM interactions
        UNION ALL SELECT 'quarantine', count(*) FROM quarantine
        UNION ALL SELECT 'items', count(*) FROM items
        UNION ALL SELECT 'user_factors', count(*) FROM user_factors
        UNION ALL SELECT 'item_factors', count(*) FROM item_factors
        UNION ALL SELECT 'recommendations', count(*) FROM recommendations""")
    print(format_rows(*counts))
    # an active user: most events on the last day, ties by id
    (user,), = query(lakehouse, """
        SELECT user_id FROM interactions WHERE dt = (SELECT max(dt) FROM interactions)
        GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1""")[1]
    print(f"\n== {user}: recent history")
    print(format_rows(*query(lakehouse, f"""
        SELECT i.ts, i.event_type, i.item_id, it.category, it.title
        FROM interactions i LEFT JOIN items it USING (item_id)
        WHERE i.user_id = '{user}' ORDER BY i.ts DESC LIMIT 8""")))
    print(f"\n== {user}: recommendations")
    print(format_rows(*query(lakehouse, f"""
        SELECT r.rank, r.item_id, round(r.score, 3) AS score, r.source, it.category, it.title
        FROM recommendations r LEFT JOIN items it USING (item_id)
        WHERE r.user_id = '{user}' ORDER BY r.rank LIMIT {k}""")))


def main(argv: list[str] | None = None) -> int:
    return cli.run("demo", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
