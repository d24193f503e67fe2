"""lakerec score: top-K recommendations for every user from the champion model.

    lakerec score [--k 10] [--model-version N] [--popularity-days N] [--new-item-slots 1]
                  [--store URL|none]
    spark-submit jobs/score.py  (same arguments)

Then publishes the lists that changed to the online store (``lakerec publish``; ``--store
none`` skips it, as the Airflow DAG does to publish only after the quality gate).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.model.card import DEFAULTS
from pipelines.runtime import cli
from pipelines.runtime.config import nonneg_int, positive_int


@dataclass(frozen=True)
class ScoreConfig:
    lakehouse: str
    k: int
    model_version: int | None
    popularity_days: int | None
    new_item_slots: int
    log_level: str | None
    store: str | None = None


def parse(argv: list[str] | None) -> ScoreConfig:
    p = cli.parser("score", "Top-K recommendations for every user, seen items excluded.")
    p.add_argument("--k", help=f"recommendations per user ({DEFAULTS.k})")
    p.add_argument("--model-version", help="score with this lakerec-als version, not the champion")
    p.add_argument("--popularity-days", help="window of the popularity fallback (model's window)")
    p.add_argument("--new-item-slots",
                   help="places per list reserved for items placed by their text "
                        f"({DEFAULTS.new_item_slots}; 0 = none)")
    from jobs.publish import add_store_option, store_url

    add_store_option(p)
    args, s = cli.parse_args(p, argv, section="score")
    s.existing_lakehouse("interactions")  # reads it: a mistyped path is a usage error
    s.check_writable(s.lakehouse, "--lakehouse")
    return ScoreConfig(
        s.lakehouse, s.get("k", flag=args.k, default=DEFAULTS.k, cast=positive_int),
        s.get("model_version", flag=args.model_version, default=None, cast=positive_int),
        s.get("popularity_days", flag=args.popularity_days, default=None, cast=positive_int),
        s.get("new_item_slots", flag=args.new_item_slots, default=DEFAULTS.new_item_slots,
              cast=nonneg_int),
        args.log_level, store_url(args, s, allow_none=True))


def body(spark, cfg: ScoreConfig) -> int:
    from pipelines.batch.score import score

    with cli.step(f"score top-{cfg.k}"):
        r = score(spark, cfg.lakehouse, k=cfg.k, model_version=cfg.model_version,
                  popularity_days=cfg.popularity_days, new_item_slots=cfg.new_item_slots)
    if r.skipped:
        print("    recommendations are already up to date with these inputs")
    else:
        print(f"    {r.users:,} users, {r.rows:,} rows {r.by_source} from model "
              f"v{r.model_version} -> recommendations v{r.version}")
    if cfg.store:
        from jobs.publish import PublishConfig
        from jobs.publish import body as publish

        with cli.step("publish to the online store"):
            publish(None, PublishConfig(cfg.lakehouse, cfg.store, 1000, cfg.log_level))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("score", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
