"""Ranking quality on several data shapes: popularity (all-time, tuned window), ALS with the
defaults, ALS after ``train --tune``, and EASE, through lakerec's own ``train``.

    python bench/quality.py [--quick] [--trials 8] [--tune-minutes 20]
                            [--shapes movielens,dense,sparse,dynamics]

Every model is a real ``pipelines.batch.train.train`` on a real lakehouse (generated or
imported, then ingested), so the numbers are what ``lakerec train`` prints: the same
time split, the same sized holdout, the same evaluated users for every row of a shape (the
users with history in the default window; the bench checks the counts agree). The tuned
popularity row is the gate's own baseline; the all-time row counts every event before the
holdout. Intervals are 95% percentile bootstraps of the per-user mean (2,000 resamples);
coverage@10 is a catalog share, not a per-user mean, and has none. ``time`` is the wall
clock of each ``train`` call (tuning included) on this machine.

Shapes:

* ``movielens`` -- pyspark's bundled ``sample_movielens_ratings.txt`` (30 users, 100 items,
  1,501 ratings). Every rating there carries the same timestamp, so the bench re-stamps
  them: each rating gets a day drawn uniformly from 28 (a seeded, per-user random split in
  time's clothing). Tiny: its intervals are wide, and it says little.
* ``dense`` -- generated, 2,000 users x 200 items, stationary tastes, 60 days.
* ``sparse`` -- generated, 6,000 users x 3,000 items, few events per user, 60 days.
* ``dynamics`` -- generated with ``--dynamics`` (180 days, taste drift, items that arrive
  and fade, users who join late or go quiet), 3,000 users x 600 items.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tempfile
import time

import numpy as np
from common import machine, session

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

K = 10


def _ingest(spark, lh: str, lines, catalog) -> None:
    from pipelines.batch.ingest import ingest_catalog, ingest_dates
    from pipelines.storage import landing

    out = os.path.join(lh, "landing")
    landing.write_landing(lines, catalog, out, {"generator": "bench/quality.py"})
    ingest_catalog(spark, lh, source=os.path.join(out, "items"))
    ingest_dates(spark, lh, landing.list_dates(os.path.join(out, "events")),
                 source=os.path.join(out, "events"))


def synthetic(spark, lh: str, spec) -> None:
    from pipelines.dev.generate import catalog_lines, event_lines

    _ingest(spark, lh, event_lines(spark, spec), catalog_lines(spark, spec))


def movielens(spark, lh: str, *, days: int = 28, seed: int = 0) -> None:
    """The bundled sample, re-stamped (see the module docstring)."""
    import pyspark

    from pipelines.dev import movielens as ml

    src = os.path.join(os.path.dirname(pyspark.__file__), "data", "mllib", "als",
                       "sample_movielens_ratings.txt")
    t0 = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp())
    with open(src) as f:
        rows = [line.strip().split("::") for line in f if line.strip()]
    out = []
    for u in sorted({r[0] for r in rows}, key=int):
        rng = np.random.default_rng([seed, int(u)])
        mine = [r for r in rows if r[0] == u]
        for r, day in zip(mine, rng.integers(0, days, len(mine)), strict=True):
            out.append(f"{r[0]}::{r[1]}::{r[2]}::{t0 + int(day) * 86400 + 3600}")
    folder = os.path.join(lh, "_movielens")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "ratings.dat")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    files = ml.locate(path)
    ratings = ml.ratings(spark, files)
    items = ml.movies(spark, files, ratings.select("item").distinct())
    _ingest(spark, lh, ml.to_event_lines(ratings), ml.to_catalog_lines(items))


def all_time_popularity(spark, lh: str, report, card):
    """Popularity over every event before the holdout, on the report's evaluated users."""
    from pyspark.sql import functions as F

    from pipelines.batch import evaluate, split, trainers
    from pipelines.storage import delta
    from schemas.tables import INTERACTIONS

    start, cutoff, end = (dt.datetime.fromisoformat(t) for t in report.window)
    ev = delta.read(spark, lh, INTERACTIONS).where(F.col("ts") < F.lit(end))
    base_start = end - dt.timedelta(days=report.counts["base_window_days"])
    rel = split.relevant_pairs(ev, start=base_start, cutoff=cutoff, end=end,
                               max_users=card.max_eval_users)
    before = ev.where(F.col("ts") < F.lit(cutoff))
    hist = trainers.confidence(before.where(F.col("ts") >= F.lit(start)),
                               weights=card.weights)
    counted = trainers.confidence(before, weights=card.weights)
    return evaluate.evaluate_popularity(spark, train_hist=hist, relevant=rel, k=card.k,
                                        counted=counted)


def run_shape(spark, name: str, build, base, budget) -> list[dict]:
    from pipelines.batch.train import train

    lh = tempfile.mkdtemp(prefix=f"lakerec-quality-{name}-")
    t = time.perf_counter()
    build(spark, lh)
    print(f"  {name}: lakehouse built in {time.perf_counter() - t:.0f} s ({lh})", flush=True)
    rows = []

    def fit(label, card, **kw):
        t = time.perf_counter()
        r = train(spark, lh, card, **kw)
        secs = time.perf_counter() - t
        print(f"    {label}: NDCG@{K} {r.metrics['ndcg']:.4f} ({r.metrics['users']} users, "
              f"{secs:.0f} s) {r.settings}", flush=True)
        return r, secs

    als, t_als = fit("ALS defaults", base)
    pop_all = all_time_popularity(spark, lh, als, base)
    rows.append(dict(model="popularity, all time", m=pop_all.metrics,
                     ci=pop_all.intervals(), secs=float("nan")))
    pop_days = als.settings.get("popularity_days")
    rows.append(dict(model=f"popularity, tuned ({pop_days or 'whole window'}"
                           f"{' d' if pop_days else ''})", m=als.baseline,
                     ci=als.intervals["popularity"], secs=float("nan")))
    rows.append(dict(model="ALS, defaults", m=als.metrics, ci=als.intervals["model"],
                     secs=t_als))
    tuned, t_tuned = fit("ALS tuned", base, tune=budget)
    rows.append(dict(model=f"ALS, tuned ({tuned.trials} trials)", m=tuned.metrics,
                     ci=tuned.intervals["model"], secs=t_tuned))
    ease, t_ease = fit("EASE", dataclasses.replace(base, trainer="ease"))
    rows.append(dict(model="EASE" if ease.trainer == "ease" else "EASE (fell back to ALS)",
                     m=ease.metrics, ci=ease.intervals["model"], secs=t_ease))
    users = {r["m"]["users"] for r in rows}
    assert len(users) == 1, f"{name}: the rows were judged on different users: {users}"
    for r in rows:
        r["shape"] = name
        r["holdout"] = f"{als.window[1][:10]}..{als.window[2][:10]}"
    return rows


def fmt(rows: list[dict]) -> str:
    def cell(r, m):
        lo, hi = r["ci"].get(m, (float("nan"), float("nan")))
        return f"{r['m'][m]:.4f} [{lo:.4f}, {hi:.4f}]"

    out = [f"| shape | model | NDCG@{K} [95% CI] | recall@{K} [95% CI] | coverage@{K} | "
           "users | time (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = "" if np.isnan(r["secs"]) else f"{r['secs']:.0f}"
        out.append(f"| {r['shape']} | {r['model']} | {cell(r, 'ndcg')} | {cell(r, 'recall')} | "
                   f"{r['m']['coverage']:.3f} | {r['m']['users']:,} | {secs} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller data, 3 trials")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--tune-minutes", type=float, default=20.0)
    p.add_argument("--shapes", default="movielens,dense,sparse,dynamics")
    args = p.parse_args(argv)

    from pipelines.dev.generate import SyntheticSpec
    from pipelines.model.card import ModelCard
    from pipelines.model.tuning import Budget

    q = 0.3 if args.quick else 1.0
    start = dt.date(2024, 1, 1)
    shapes = {
        "movielens": (movielens, dict(min_eval_users=20, holdout_days=3, max_holdout_days=3)),
        "dense": (lambda s, lh: synthetic(s, lh, SyntheticSpec(
            users=int(2000 * q), items=200, events=int(150_000 * q), days=60, clusters=8,
            seed=11, start=start)), {}),
        "sparse": (lambda s, lh: synthetic(s, lh, SyntheticSpec(
            users=int(6000 * q), items=int(3000 * q), events=int(60_000 * q), days=60,
            clusters=30, seed=12, start=start)), {}),
        "dynamics": (lambda s, lh: synthetic(s, lh, dataclasses.replace(
            SyntheticSpec.realistic(), users=int(3000 * q), items=600,
            events=int(150_000 * q), seed=13, start=start)), {}),
    }
    budget = Budget(trials=3 if args.quick else args.trials, minutes=args.tune_minutes, seed=1)
    print(f"bench/quality.py on {machine()}", flush=True)
    spark = session()
    rows = []
    try:
        for name in args.shapes.split(","):
            build, over = shapes[name]
            rows += run_shape(spark, name, build, ModelCard(k=K, **over), budget)
    finally:
        spark.stop()
    print()
    print(fmt(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
