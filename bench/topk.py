"""Top-K for every user: Spark's recommendForAllUsers vs lakerec's kernel vs the GEMM floor.

    python bench/topk.py [--users 50000] [--items 20000] [--rank 64] [--k 10]
                         [--events 2000000] [--iters 5] [--cores 2]

One process, the same learned factors (Spark ML implicit ALS on the project's synthetic
data) for every contender:

* Spark ``ALSModel.recommendForAllUsers(k)`` -- which does not filter seen items;
* lakerec's ``topk.recommend`` through Spark, seen items excluded, end to end (seen lists
  built from the interactions, the kernel on executors, the result materialised);
* the kernel alone in this process, single-threaded, and the GEMM alone with the same block
  shapes: the SGEMM rate measured here is the floor every top-K pays.

Prints wall times, the ratio to Spark, the fraction of the measured SGEMM rate reached, and
peak memory.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from common import indexed_events, machine, peak_rss_mb, session, timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--iters", type=int, default=5, help="ALS iterations for the factors")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--tile", type=int, default=2048)
    a = p.parse_args()

    from pyspark.sql import functions as F
    from threadpoolctl import threadpool_limits

    from pipelines import als, topk

    print(f"machine: {machine()}")
    spark = session(a.cores)
    t: dict[str, float] = {}
    print(f"data: {a.users:,} users x {a.items:,} items, ~{a.events:,} events, rank {a.rank}")
    with timed("generate + ALS fit (not compared)", t):
        ev = indexed_events(spark, users=a.users, items=a.items, events=a.events)
        pairs = als.confidence(ev, user_col="user_idx", item_col="item_idx").persist()
        model = als.fit(pairs.select("user_idx", "item_idx", F.col("r").cast("float")),
                        rank=a.rank, alpha=5.0, reg=0.05, max_iter=a.iters)
        uf = model.userFactors.persist()
        itf = sorted(model.itemFactors.collect(), key=lambda r: r.id)
        n_users, n_pairs = uf.count(), pairs.count()
    item_ids = [str(r.id) for r in itf]
    v = np.array([r.features for r in itf], dtype=np.float32)
    print(f"  learned factors: {n_users:,} users, {len(item_ids):,} items; "
          f"{n_pairs:,} seen user-item pairs")

    users = uf.select(F.col("id").cast("string").alias("user_id"),
                      F.col("features").alias("factors"))
    seen_pairs = pairs.select(F.col("user_idx").cast("string").alias("user_id"),
                              F.col("item_idx").cast("string").alias("item_id"))

    def spark_baseline(n=None):
        recs = model.recommendForAllUsers(a.k)
        (recs.limit(n) if n else recs).write.format("noop").mode("overwrite").save()

    def ours(n=None, prepared=None):
        inp = prepared
        if inp is None:
            seen = topk.seen_rows(seen_pairs, item_ids, spark)
            inp = users.join(seen, "user_id", "left")
        if n:
            inp = inp.limit(n)
        topk.recommend(spark, inp, item_ids, v, k=a.k, block=a.block, tile=a.tile,
                       backend="cpu").write.format("noop").mode("overwrite").save()

    # warm-up: JIT, Python workers, the kernel's compiled-code cache
    spark_baseline(2000)
    ours(2000)
    for rep in (1, 2, 3):
        print(f"run {rep}")
        with timed(f"Spark recommendForAllUsers (no seen filter) #{rep}", t):
            spark_baseline()
        with timed(f"lakerec: seen lists + join + recommend #{rep}", t):
            ours()
        prepared = users.join(topk.seen_rows(seen_pairs, item_ids, spark), "user_id",
                              "left").persist()
        prepared.count()
        with timed(f"lakerec: recommend from prepared inputs #{rep}", t):
            ours(prepared=prepared)
        prepared.unpersist()

    # in-process kernel and GEMM floor, one thread, same shapes
    u_all = np.array([r.features for r in uf.orderBy("id").collect()], dtype=np.float32)
    seen_pd = pairs.groupBy("user_idx").agg(F.collect_list("item_idx").alias("s")) \
        .orderBy("user_idx").toPandas()
    row_of = {int(i): j for j, i in enumerate(item_ids)}
    seen_map = {int(u): np.array([row_of[x] for x in s], np.int64)
                for u, s in zip(seen_pd.user_idx, seen_pd.s, strict=True)}
    ids_sorted = sorted(r.id for r in uf.select("id").collect())
    seen_list = [seen_map.get(u, np.zeros(0, np.int64)) for u in ids_sorted]
    key = topk.order_key(item_ids)
    index = topk.index_items(v, key)
    topk.topk_block(u_all[:8], index, seen_list[:8], a.k)  # compile once
    with threadpool_limits(1):
        t0 = time.perf_counter()
        for s0 in range(0, len(u_all), a.block):
            ub = u_all[s0:s0 + a.block]
            for c0 in range(0, len(v), a.tile):
                ub @ v[c0:c0 + a.tile].T
        t["GEMM only, 1 thread"] = gemm = time.perf_counter() - t0
        tracemalloc.start()
        t0 = time.perf_counter()
        for s0 in range(0, len(u_all), a.block):
            topk.topk_block(u_all[s0:s0 + a.block], index, seen_list[s0:s0 + a.block], a.k,
                            tile=a.tile)
        t["kernel only, 1 thread"] = kern = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        no_prune = topk.ItemIndex(index.factors, np.full(len(v), np.inf), index.key,
                                  index.order, index.position)
        t0 = time.perf_counter()
        for s0 in range(0, len(u_all), a.block):
            topk.topk_block(u_all[s0:s0 + a.block], no_prune, seen_list[s0:s0 + a.block],
                            a.k, tile=a.tile)
        t["kernel without the norm bound, 1 thread"] = full = time.perf_counter() - t0
    flops = 2.0 * len(u_all) * len(v) * a.rank
    rate = flops / gemm
    floor = flops / (rate * a.cores)

    best = {name: min(v_ for k_, v_ in t.items() if k_.startswith(name))
            for name in ("Spark recommendForAllUsers", "lakerec: seen lists",
                         "lakerec: recommend from prepared")}
    spark_t, e2e, job = best.values()
    print("\nresults (best of 3 after a warm-up; every run above)")
    print(f"  SGEMM rate measured here: {rate / 1e9:.1f} GFLOP/s per core; "
          f"{flops / 1e9:.0f} GFLOP in all")
    print(f"  GEMM floor on {a.cores} cores: {floor:.2f} s")
    print(f"  Spark recommendForAllUsers({a.k}), no seen filter: {spark_t:.2f} s")
    print(f"  lakerec, seen filtered, from raw pairs (seen lists + join + kernel): {e2e:.2f} s"
          f" -> {spark_t / e2e:.1f}x Spark, {floor / e2e:.0%} of the SGEMM rate")
    print(f"  lakerec, seen filtered, from prepared (user, factors, seen) rows: {job:.2f} s"
          f" -> {spark_t / job:.1f}x Spark, {floor / job:.0%} of the SGEMM rate")
    print(f"  kernel alone, 1 thread: {kern:.2f} s vs dense GEMM alone {gemm:.2f} s -> "
          f"{gemm / kern:.0%} of the SGEMM rate including selection and the seen filter "
          f"(the norm bound skips most of the GEMM)")
    print(f"  kernel without the norm bound, 1 thread: {full:.2f} s -> {gemm / full:.0%} "
          f"of the SGEMM rate (every score computed)")
    print(f"  kernel peak memory (tracemalloc): {peak / 2**20:.1f} MiB for blocks of "
          f"{a.block} users x tiles of {a.tile} items; bench process peak RSS "
          f"{peak_rss_mb():.0f} MiB")
    spark.stop()


if __name__ == "__main__":
    main()
