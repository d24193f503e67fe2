"""Top-K for every user: Spark's recommendForAllUsers vs lakerec's kernel vs the GEMM floor.

    python bench/topk.py [--users 50000] [--items 20000] [--rank 64] [--k 10]
                         [--events 2000000] [--iters 5] [--cores 2]

One process, the same learned factors (Spark ML implicit ALS on the project's synthetic
data) for every contender:

* Spark ``ALSModel.recommendForAllUsers(k)`` -- which does not filter seen items;
* lakerec's ``recommend.recommend`` through Spark, seen items excluded, end to end (seen lists
  built from the interactions, the kernel on executors, the result materialised);
* the kernel alone in this process, single-threaded, and the GEMM alone with the same block
  shapes, through numpy's BLAS and through the BLAS the kernel calls (SciPy's, from numba):
  the faster of the two SGEMM rates measured here is the floor every top-K pays.

Spark's baseline runs ``--spark-runs`` times and lakerec's job ``--runs`` times after a
warm-up; best and median of each are printed, and the ratios of both. The kernel's peak
memory is measured in a child process (the growth of its peak RSS while the kernel runs),
so allocations made inside compiled code count too.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import indexed_events, machine, peak_rss_mb, session, timed
from numba import njit


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
    p.add_argument("--spark-runs", type=int, default=3)
    p.add_argument("--runs", type=int, default=10, help="runs of each lakerec contender")
    a = p.parse_args()

    from pyspark.sql import functions as F
    from threadpoolctl import threadpool_limits

    from pipelines.batch import recommend, trainers
    from pipelines.model import topk
    from pipelines.model.card import ModelCard
    from schemas.events import default_weights

    print(f"machine: {machine()}")
    spark = session(a.cores)
    t: dict[str, float] = {}
    print(f"data: {a.users:,} users x {a.items:,} items, ~{a.events:,} events, rank {a.rank}")
    with timed("generate + ALS fit (not compared)", t):
        ev = indexed_events(spark, users=a.users, items=a.items, events=a.events)
        pairs = trainers.confidence(ev, weights=default_weights(), user_col="user_idx",
                                    item_col="item_idx").persist()
        model = trainers.get("als").fit(spark, pairs, ModelCard(
            rank=a.rank, alpha=5.0, reg=0.05, max_iter=a.iters)).native
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
            seen = recommend.seen_rows(seen_pairs, item_ids, spark)
            inp = users.join(seen, "user_id", "left")
        if n:
            inp = inp.limit(n)
        recommend.recommend(spark, inp, item_ids, v, k=a.k, block=a.block, tile=a.tile,
                       backend="cpu").write.format("noop").mode("overwrite").save()

    # warm-up: JIT, Python workers, the kernel's compiled-code cache
    spark_baseline(2000)
    ours(2000)
    prepared = users.join(recommend.seen_rows(seen_pairs, item_ids, spark), "user_id",
                          "left").persist()
    prepared.count()
    runs: dict[str, list[float]] = {"spark": [], "raw": [], "prepared": []}
    for rep in range(1, max(a.spark_runs, a.runs) + 1):
        print(f"run {rep}")
        if rep <= a.spark_runs:
            with timed(f"Spark recommendForAllUsers (no seen filter) #{rep}", t):
                spark_baseline()
            runs["spark"].append(t[f"Spark recommendForAllUsers (no seen filter) #{rep}"])
        if rep <= a.runs:
            with timed(f"lakerec: seen lists + join + recommend #{rep}", t):
                ours()
            runs["raw"].append(t[f"lakerec: seen lists + join + recommend #{rep}"])
            with timed(f"lakerec: recommend from prepared inputs #{rep}", t):
                ours(prepared=prepared)
            runs["prepared"].append(t[f"lakerec: recommend from prepared inputs #{rep}"])
    prepared.unpersist()

    # in-process kernel and GEMM floor, one thread, same shapes
    u_all = np.array([r.features for r in uf.orderBy("id").collect()], dtype=np.float32)
    seen_pd = pairs.groupBy("user_idx").agg(F.collect_list("item_idx").alias("s")) \
        .orderBy("user_idx").toPandas()
    row_of = {int(i): j for j, i in enumerate(item_ids)}
    seen_map = {int(u): np.array([row_of[x] for x in s], np.int64)
                for u, s in zip(seen_pd.user_idx, seen_pd.s, strict=True)}
    ids_sorted = sorted(r.id for r in uf.select("id").collect())
    seen_csr = topk.as_csr([seen_map.get(u, np.zeros(0, np.int64)) for u in ids_sorted])
    key = topk.order_key(item_ids)
    index = topk.index_items(v, key)
    no_prune = topk.ItemIndex(index.factors, np.full(len(v), np.inf), index.key,
                              index.order, index.position)
    # compile (and load SciPy's BLAS) before limiting threads: a BLAS loaded inside the
    # limit would escape it
    topk.topk_block(u_all[:8], index, (seen_csr[0][:9], seen_csr[1]), a.k)
    gemm_numba(u_all[:8], v, a.block, a.tile)
    gemm = {}
    with threadpool_limits(1):
        for name, fn in (("numpy", gemm_numpy), ("kernel's BLAS", gemm_numba)):
            best_g = np.inf
            for _ in range(2):
                t0 = time.perf_counter()
                fn(u_all, v, a.block, a.tile)
                best_g = min(best_g, time.perf_counter() - t0)
            gemm[name] = best_g
        kern = full = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            topk.topk_block(u_all, index, seen_csr, a.k, tile=a.tile, block=a.block)
            kern = min(kern, time.perf_counter() - t0)
        t0 = time.perf_counter()
        topk.topk_block(u_all, no_prune, seen_csr, a.k, tile=a.tile, block=a.block)
        full = time.perf_counter() - t0
    # one Arrow batch (what a Spark task holds at once: 10,000 rows by default), then all
    sizes = [min(10_000, len(u_all)), len(u_all)]
    peaks = kernel_peak_mib(u_all, v, key, seen_csr, a.k, a.block, a.tile, sizes)
    flops = 2.0 * len(u_all) * len(v) * a.rank
    gemm_t = min(gemm.values())
    rate = flops / gemm_t
    floor = flops / (rate * a.cores)

    spark_t = min(runs["spark"])
    spark_med = float(np.median(runs["spark"]))
    e2e, job = min(runs["raw"]), min(runs["prepared"])
    e2e_med, job_med = float(np.median(runs["raw"])), float(np.median(runs["prepared"]))
    print(f"\nresults ({len(runs['spark'])} Spark runs, {len(runs['prepared'])} of each "
          f"lakerec contender, after a warm-up; every run above)")
    print("  SGEMM rate measured here, 1 thread: " + ", ".join(
        f"{n} {flops / g / 1e9:.1f} GFLOP/s" for n, g in gemm.items())
        + f"; {flops / 1e9:.0f} GFLOP in all")
    print(f"  GEMM floor on {a.cores} cores at the faster rate: {floor:.2f} s")
    print(f"  Spark recommendForAllUsers({a.k}), no seen filter: best {spark_t:.2f} s, "
          f"median {spark_med:.2f} s")
    print(f"  lakerec, seen filtered, from raw pairs (seen lists + join + kernel): best "
          f"{e2e:.2f} s -> {spark_t / e2e:.1f}x Spark; median {e2e_med:.2f} s -> "
          f"{spark_med / e2e_med:.1f}x")
    print(f"  lakerec, seen filtered, from prepared (user, factors, seen) rows: best {job:.2f} s"
          f" -> {spark_t / job:.1f}x Spark, {floor / job:.0%} of the SGEMM rate; median "
          f"{job_med:.2f} s -> {spark_med / job_med:.1f}x")
    print(f"  kernel alone, 1 thread: {kern:.2f} s vs dense GEMM alone {gemm_t:.2f} s -> "
          f"{gemm_t / kern:.0%} of the SGEMM rate including selection and the seen filter "
          f"(the norm bound skips most of the GEMM)")
    print(f"  kernel without the norm bound, 1 thread: {full:.2f} s -> {gemm_t / full:.0%} "
          f"of the SGEMM rate (every score computed)")
    print("  kernel peak memory over its inputs (blocks of "
          f"{a.block} users x tiles of {a.tile} items): " + ", ".join(
              f"{m:.1f} MiB for {n:,} users" for n, m in zip(sizes, peaks, strict=True))
          + f" (a dense users x items score matrix would be "
          f"{len(u_all) * len(v) * 4 / 2**20:,.0f} MiB); bench process peak RSS "
          f"{peak_rss_mb():.0f} MiB")
    spark.stop()


def gemm_numpy(u, v, block, tile):
    """The dense GEMM in the kernel's shapes through numpy's BLAS, into one reused buffer."""
    out = np.empty(min(block, len(u)) * tile, np.float32)
    for s0 in range(0, len(u), block):
        ub = u[s0:s0 + block]
        for c0 in range(0, len(v), tile):
            vt = v[c0:c0 + tile]
            np.matmul(ub, vt.T, out=out[:len(ub) * len(vt)].reshape(len(ub), len(vt)))


@njit(nogil=True)
def gemm_numba(u, v, block, tile):  # pragma: no cover - compiled
    """The same through the BLAS the kernel calls (numba's ``np.dot``: SciPy's sgemm)."""
    out = np.empty(min(block, u.shape[0]) * tile, np.float32)
    for s0 in range(0, u.shape[0], block):
        ub = u[s0:s0 + block]
        for c0 in range(0, v.shape[0], tile):
            vt = v[c0:c0 + tile]
            np.dot(ub, vt.T, out[:ub.shape[0] * vt.shape[0]].reshape((ub.shape[0],
                                                                      vt.shape[0])))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _kernel_peak_child(folder, k, block, tile, sizes, conn):
    from pipelines.model import topk

    u = np.load(f"{folder}/u.npy")
    v = np.load(f"{folder}/v.npy")
    key = np.load(f"{folder}/key.npy")
    indptr, indices = np.load(f"{folder}/indptr.npy"), np.load(f"{folder}/indices.npy")
    index = topk.index_items(v, key)
    topk.topk_block(u[:8], index, (indptr[:9], indices), k)  # compile before measuring
    out = []
    for n in sizes:
        csr = (indptr[:n + 1], indices[:indptr[n]])
        rss = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
        topk.topk_block(u[:n], index, csr, k, tile=tile, block=block)
        out.append((_status_kib("VmHWM") - rss) / 1024)
    conn.send(out)


def kernel_peak_mib(u, v, key, csr, k, block, tile, sizes) -> list[float]:
    """Peak memory the kernel adds while it scores the first ``n`` users, for each ``n``.

    Measured in a fresh process from its peak RSS (reset just before each call), so
    allocations inside compiled code count, with glibc told to return every large block to
    the system at once: otherwise a freed buffer stays resident and hides the next one.
    """
    import multiprocessing as mp
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for name, arr in (("u", u), ("v", v), ("key", key), ("indptr", csr[0]),
                          ("indices", csr[1])):
            np.save(f"{folder}/{name}.npy", arr)
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        saved = {n: os.environ.get(n) for n in ("MALLOC_MMAP_THRESHOLD_",
                                                "MALLOC_TRIM_THRESHOLD_")}
        os.environ.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
        try:
            proc = ctx.Process(target=_kernel_peak_child,
                               args=(folder, k, block, tile, sizes, child))
            proc.start()
        finally:
            for n, val in saved.items():
                if val is None:
                    os.environ.pop(n, None)
                else:
                    os.environ[n] = val
        out = parent.recv()
        proc.join()
    return out


if __name__ == "__main__":
    main()
