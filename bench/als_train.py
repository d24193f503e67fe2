"""Per-iteration ALS training time: lakerec's train (Spark ML) vs the implicit library's CPU ALS.

    pip install -e '.[bench]'       # implicit, only for this benchmark
    python bench/als_train.py [--users 50000] [--items 10000] [--events 2000000]
                              [--rank 64] [--iters 10] [--cores 2] [--spark-repeats 2]

Same synthetic data (the project's generator), same temporal split (last 3 of 30 days held
out), same confidence weights (view 1, click 2, add_to_cart 4, purchase 8, rating = value),
same rank, iterations and threads (``local[cores]`` for Spark, ``num_threads=cores`` for
implicit, BLAS single-threaded under both).

The same objective, as far as the two allow:

* Confidence. Spark uses ``c_ui = 1 + alpha r_ui``; implicit uses the matrix entry times its
  own ``alpha``. implicit is given ``1 + alpha r_ui`` with its ``alpha = 1``, so both weigh
  every pair alike. The run checks this: implicit's own per-user solve with ``lambda n_u``
  reproduces lakerec's ``fold_in`` (Spark's normal equations) on Spark's item factors.
* Regularisation. Spark scales lambda by each row's number of positive entries (ALS-WR);
  implicit uses one lambda for every row, so no setting makes the objectives equal. implicit
  runs with the same nominal lambda and with lambda times the mean entries per user; both
  are printed.
* Solver. Spark solves each row exactly (Cholesky); implicit defaults to three conjugate-
  gradient steps warm-started from the last iteration. Both of implicit's solvers run.

Timing: Spark's per-iteration time is ``(t(iters) - t(1)) / (iters - 1)`` over fits that
end when the factors are materialised, which leaves out its fixed set-up; implicit's is the
median of its per-iteration times (its ``fit`` callback). Spark is warmed up with an untimed
fit first, and each length is fitted ``--spark-repeats`` times; the fastest of each counts.
Quality: NDCG@10 and recall@10 on the same holdout, through the same top-K kernel and metric
code, for every model and for the popularity baseline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import numpy as np
from common import indexed_events, machine, session, timed


def metrics_of(spark, user_vecs: dict, item_vecs: np.ndarray, train, relevant, k: int) -> dict:
    """NDCG etc. through lakerec's kernel and metrics, for arbitrary (user -> vector) factors."""
    from pyspark.sql import functions as F

    from pipelines.batch import metrics, recommend

    item_ids = [str(i) for i in range(item_vecs.shape[0])]
    rows = [(str(u), v.astype(np.float32).tolist()) for u, v in user_vecs.items()]
    users = spark.createDataFrame(rows, "user_id string, factors array<float>")
    users = users.join(relevant.select("user_id").distinct(), "user_id", "left_semi")
    seen = train.groupBy(F.col("user_idx").cast("string").alias("user_id")) \
        .agg(F.collect_list("item_idx").alias("seen"))
    recs = recommend.recommend(spark, users.join(seen, "user_id", "left"), item_ids, item_vecs, k=k)
    return metrics.ranking_metrics(recs, relevant, k=k, catalog_size=len(item_ids))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--alpha", type=float, default=5.0)
    p.add_argument("--reg", type=float, default=0.05)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--spark-repeats", type=int, default=2,
                   help="fits of each length; the fastest counts")
    a = p.parse_args()
    if a.iters < 2:
        p.error("--iters must be at least 2 (Spark's per-iteration time is a difference)")

    try:
        import implicit
        from implicit.als import AlternatingLeastSquares
        from implicit.cpu.als import user_factor
    except ImportError:
        raise SystemExit("this benchmark needs the implicit library: pip install implicit") \
            from None
    import scipy.sparse as sp
    from pyspark.sql import functions as F
    from threadpoolctl import threadpool_limits

    from pipelines.batch import trainers
    from pipelines.model import als
    from pipelines.model.card import ModelCard
    from pipelines.model.trainer import FoldInRule
    from schemas.events import default_weights

    def spark_fit(ratings, n):
        card = ModelCard(rank=a.rank, alpha=a.alpha, reg=a.reg, max_iter=n)
        return trainers.get("als").fit(spark, ratings, card).native

    print(f"machine: {machine()}; implicit {implicit.__version__}")
    spark = session(a.cores)
    t: dict[str, float] = {}
    ev = indexed_events(spark, users=a.users, items=a.items, events=a.events).persist()
    cutoff = dt.datetime(2024, 6, 28, tzinfo=dt.UTC)  # 27 days train, 3 days holdout
    train = trainers.confidence(ev.where(F.col("ts") < F.lit(cutoff)),
                                weights=default_weights(), user_col="user_idx",
                                item_col="item_idx").persist()
    test = ev.where(F.col("ts") >= F.lit(cutoff)).select("user_idx", "item_idx").distinct()
    relevant = (test.join(train.select("user_idx").distinct(), "user_idx", "left_semi")
                .join(train.select("user_idx", "item_idx"), ["user_idx", "item_idx"],
                      "left_anti")
                .select(F.col("user_idx").cast("string").alias("user_id"),
                        F.col("item_idx").cast("string").alias("item_id"))).persist()
    n_pairs = train.count()
    pdf = train.toPandas()
    n_u = np.bincount(pdf.user_idx, minlength=a.users)
    mean_nu = float(n_u[n_u > 0].mean())
    print(f"data: {a.users:,} users x {a.items:,} items, {n_pairs:,} training pairs "
          f"({mean_nu:.1f} per user with any), {relevant.count():,} held-out relevant pairs; "
          f"rank {a.rank}, alpha {a.alpha}, reg {a.reg}, {a.iters} iterations, "
          f"{a.cores} threads")

    # --- Spark ML (lakerec's train) -------------------------------------------------------
    ratings = train.select("user_idx", "item_idx", F.col("r").cast("float")).persist()
    ratings.count()
    fits: dict[int, list[float]] = {1: [], a.iters: []}
    model = None
    # untimed warm-up: the first fit of a session pays JIT and first-touch costs (11.9 s for
    # one iteration against 5.2 s for the next one here), which would shrink the difference
    with timed("Spark ALS, 1 iteration, warm-up (not counted)", t):
        spark_fit(ratings, 1)
    for rep in range(a.spark_repeats):
        for n in (1, a.iters):
            # ALS.fit returns once the final factors are materialised (cached and counted)
            with timed(f"Spark ALS, {n} iteration(s) #{rep + 1}", t):
                m = spark_fit(ratings, n)
            fits[n].append(t[f"Spark ALS, {n} iteration(s) #{rep + 1}"])
            if n == a.iters:
                model = m
    spark_iter = (min(fits[a.iters]) - min(fits[1])) / (a.iters - 1)
    uf = {r.id: np.array(r.features) for r in model.userFactors.collect()}
    itf = np.zeros((a.items, a.rank), np.float32)
    for r in model.itemFactors.collect():
        itf[r.id] = r.features

    # --- implicit ---------------------------------------------------------------------------
    # confidence 1 + alpha r as the matrix entries, implicit's own alpha 1: Spark's weights
    conf = sp.csr_matrix(((1.0 + a.alpha * pdf.r.to_numpy(np.float64)).astype(np.float32),
                          (pdf.user_idx, pdf.item_idx)), shape=(a.users, a.items))

    # objective check: implicit's row solve with lambda n_u == Spark's normal equations
    yty = itf.astype(np.float64).T @ itf.astype(np.float64)
    rng = np.random.default_rng(0)
    worst = 0.0
    for u in rng.choice(np.flatnonzero(n_u > 0), 200, replace=False):
        row = conf.getrow(u)
        mine = als.fold_in(itf, yty, row.indices, (row.data - 1.0) / a.alpha,
                           rule=FoldInRule(a.alpha, a.reg))
        theirs = user_factor(itf.astype(np.float64), yty, row, 0, a.reg * row.nnz, a.rank)
        worst = max(worst, float(np.abs(theirs - mine).max() / max(1e-12,
                                                                    np.abs(mine).max())))
    print(f"  objective check: implicit's per-user solve with lambda n_u vs lakerec fold_in "
          f"(Spark's normal equations), 200 users: max relative difference {worst:.1e}")

    configs = [("CG (default)", True, a.reg), ("CG (default)", True, a.reg * mean_nu),
               ("Cholesky", False, a.reg * mean_nu)]
    results = []
    with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS must not
        for solver, use_cg, lam in configs:
            per_iter: list[float] = []
            model_i = AlternatingLeastSquares(factors=a.rank, regularization=lam, alpha=1.0,
                                              iterations=a.iters, use_cg=use_cg,
                                              num_threads=a.cores, random_state=7,
                                              calculate_training_loss=False)
            t0 = time.perf_counter()
            model_i.fit(conf, show_progress=False,
                        callback=lambda _it, elapsed, _loss, out=per_iter: out.append(elapsed))
            total = time.perf_counter() - t0
            print(f"  implicit ALS {solver}, lambda {lam:.3g}: {total:.2f} s for {a.iters} "
                  f"iterations", flush=True)
            results.append((solver, lam, float(np.median(per_iter)), model_i))

    # --- quality on the holdout --------------------------------------------------------------
    m_spark = metrics_of(spark, uf, itf, train, relevant, 10)
    pop = np.bincount(pdf.item_idx, minlength=a.items).astype(np.float32)[:, None]
    m_pop = metrics_of(spark, {u: np.ones(1) for u in uf}, pop, train, relevant, 10)
    print("\nresults")
    print(f"  {'model':<52} {'per iteration':>14} {'vs Spark':>9} {'NDCG@10':>8} "
          f"{'recall@10':>9}")
    print(f"  {'Spark ML ALS (lakerec train), Cholesky, lambda n_u':<52} "
          f"{spark_iter:>12.2f} s {'1.0x':>9} {m_spark['ndcg']:>8.4f} {m_spark['recall']:>9.4f}")
    for solver, lam, it_t, model_i in results:
        uf_i = {u: np.asarray(model_i.user_factors[u]) for u in uf}
        m = metrics_of(spark, uf_i, np.asarray(model_i.item_factors, np.float32), train,
                       relevant, 10)
        label = f"implicit {implicit.__version__} {solver}, lambda {lam:.3g}"
        print(f"  {label:<52} {it_t:>12.2f} s {spark_iter / it_t:>8.1f}x {m['ndcg']:>8.4f} "
              f"{m['recall']:>9.4f}")
    print(f"  {'popularity (no training)':<52} {'':>14} {'':>9} {m_pop['ndcg']:>8.4f} "
          f"{m_pop['recall']:>9.4f}")
    print(f"  Spark fits: 1 iteration {min(fits[1]):.2f} s, {a.iters} iterations "
          f"{min(fits[a.iters]):.2f} s (best of {a.spark_repeats})")
    spark.stop()


if __name__ == "__main__":
    main()
