"""Per-iteration ALS training time: lakerec's train (Spark ML) vs the implicit library's CPU ALS.

    pip install implicit            # only for this benchmark
    python bench/als_train.py [--users 50000] [--items 10000] [--events 2000000]
                              [--rank 64] [--iters 10] [--cores 2]

Same synthetic data (the project's generator), same temporal split (last 3 of 30 days held
out), same confidence weights (view 1, click 2, add_to_cart 4, purchase 8, rating = value),
same rank, alpha, regularisation constant and iterations. Per-iteration time of Spark is
(t(iters) - t(1)) / (iters - 1), which leaves out its fixed set-up; implicit's is its total
fit time / iters (it has almost no set-up). NDCG@10 of both on the same holdout, through the
same top-K kernel and metric code, with each model's own user factors.

The two regularise differently: Spark scales lambda by each row's number of ratings
(ALS-WR), implicit does not, so "the same reg" is not the same objective; the NDCG column
says how much that matters here. This is the baseline for the next step, so it is reported,
not tuned.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import numpy as np
from common import indexed_events, machine, session, timed


def ndcg_of(spark, user_vecs: dict, item_vecs: np.ndarray, train, relevant, k: int) -> dict:
    """NDCG etc. through lakerec's kernel and metrics, for arbitrary (user -> vector) factors."""
    from pyspark.sql import functions as F

    from pipelines import metrics, topk

    item_ids = [str(i) for i in range(item_vecs.shape[0])]
    rows = [(str(u), v.astype(np.float32).tolist()) for u, v in user_vecs.items()]
    users = spark.createDataFrame(rows, "user_id string, factors array<float>")
    users = users.join(relevant.select("user_id").distinct(), "user_id", "left_semi")
    seen = train.groupBy(F.col("user_idx").cast("string").alias("user_id")) \
        .agg(F.collect_list("item_idx").alias("seen"))
    recs = topk.recommend(spark, users.join(seen, "user_id", "left"), item_ids, item_vecs, k=k)
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
    a = p.parse_args()

    try:
        import implicit
        from implicit.als import AlternatingLeastSquares
    except ImportError:
        raise SystemExit("this benchmark needs the implicit library: pip install implicit") \
            from None
    import scipy.sparse as sp
    from pyspark.sql import functions as F

    from pipelines import als

    print(f"machine: {machine()}; implicit {implicit.__version__}")
    spark = session(a.cores)
    t: dict[str, float] = {}
    ev = indexed_events(spark, users=a.users, items=a.items, events=a.events).persist()
    cutoff = dt.datetime(2024, 6, 28, tzinfo=dt.UTC)  # 27 days train, 3 days holdout
    train = als.confidence(ev.where(F.col("ts") < F.lit(cutoff)), user_col="user_idx",
                           item_col="item_idx").persist()
    test = ev.where(F.col("ts") >= F.lit(cutoff)).select("user_idx", "item_idx").distinct()
    relevant = (test.join(train.select("user_idx").distinct(), "user_idx", "left_semi")
                .join(train.select("user_idx", "item_idx"), ["user_idx", "item_idx"],
                      "left_anti")
                .select(F.col("user_idx").cast("string").alias("user_id"),
                        F.col("item_idx").cast("string").alias("item_id"))).persist()
    n_pairs = train.count()
    print(f"data: {a.users:,} users x {a.items:,} items, {n_pairs:,} training pairs, "
          f"{relevant.count():,} held-out relevant pairs; rank {a.rank}, {a.iters} iterations")

    ratings = train.select("user_idx", "item_idx", F.col("r").cast("float"))
    with timed("Spark ALS, 1 iteration", t):
        als.fit(ratings, rank=a.rank, alpha=a.alpha, reg=a.reg, max_iter=1)
    with timed(f"Spark ALS, {a.iters} iterations", t):
        model = als.fit(ratings, rank=a.rank, alpha=a.alpha, reg=a.reg, max_iter=a.iters)
        uf = {r.id: np.array(r.features) for r in model.userFactors.collect()}
        itf = np.zeros((a.items, a.rank), np.float32)
        for r in model.itemFactors.collect():
            itf[r.id] = r.features
    spark_iter = (t[f"Spark ALS, {a.iters} iterations"] - t["Spark ALS, 1 iteration"]) / \
        (a.iters - 1)

    pdf = train.toPandas()
    mat = sp.csr_matrix((pdf.r.to_numpy(np.float32), (pdf.user_idx, pdf.item_idx)),
                        shape=(a.users, a.items))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS must not
        model_i = AlternatingLeastSquares(factors=a.rank, regularization=a.reg, alpha=a.alpha,
                                          iterations=a.iters, num_threads=a.cores,
                                          calculate_training_loss=False, random_state=7)
        t0 = time.perf_counter()
        model_i.fit(mat, show_progress=False)
        t["implicit ALS"] = time.perf_counter() - t0
    print(f"  implicit ALS, {a.iters} iterations: {t['implicit ALS']:.2f} s", flush=True)
    uf_i = {u: np.asarray(model_i.user_factors[u]) for u in range(a.users)}
    itf_i = np.asarray(model_i.item_factors, dtype=np.float32)

    m_spark = ndcg_of(spark, uf, itf, train, relevant, 10)
    m_impl = ndcg_of(spark, uf_i, itf_i, train, relevant, 10)
    print("\nresults")
    print(f"  per iteration: Spark (lakerec train) {spark_iter:.2f} s, "
          f"implicit {t['implicit ALS'] / a.iters:.2f} s -> implicit is "
          f"{spark_iter / (t['implicit ALS'] / a.iters):.1f}x faster")
    print(f"  NDCG@10 on the same holdout: Spark {m_spark['ndcg']:.4f}, implicit "
          f"{m_impl['ndcg']:.4f}  (recall@10 {m_spark['recall']:.4f} vs {m_impl['recall']:.4f})")
    spark.stop()


if __name__ == "__main__":
    main()
