"""Top-K in Spark: the kernels of :mod:`pipelines.model.topk` over Arrow batches on executors.

* :func:`recommend` -- top-``k`` of every row of a ``user_id, factors, seen`` DataFrame
  against one broadcast item matrix (evaluation, similar items);
* :func:`seen_rows` -- ``user_id, item_id`` pairs -> ``user_id, seen`` row numbers;
* :func:`item_matrix` -- an item-factor DataFrame -> (Y, item_idx, item ids) on the driver;
* :func:`choose_backend`, :func:`gpu_kernel` -- the GPU kernel on tasks granted a GPU.

Example
-------
>>> recs = recommend(spark, users.join(seen_rows(pairs, ids, spark), "user_id", "left"),
...                  ids, y, k=10)                                    # doctest: +SKIP
"""

from __future__ import annotations

import logging

import numpy as np

from pipelines.errors import DataError
from pipelines.model.topk import index_items, order_key, topk_block, topk_block_torch

log = logging.getLogger(__name__)
OUTPUT_SCHEMA = "user_id string, rank int, item_id string, score float"


def task_gpu() -> int | None:
    """The GPU address Spark granted this task, if any."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        gpus = ctx.resources().get("gpu") if ctx else None
        return int(gpus.addresses[0]) if gpus and gpus.addresses else None
    except Exception:  # no task context or no resources API: no GPU
        return None


def choose_backend(backend: str = "auto") -> str:
    """``cuda`` when asked for, or (``auto``) when the task has a GPU and torch can use it."""
    if backend not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown top-K backend {backend!r}")
    if backend != "auto":
        return backend
    if task_gpu() is None:
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def recommend(spark, users, item_ids: list[str], item_factors: np.ndarray, *, k: int,
              block: int = 256, tile: int = 2048, backend: str = "auto"):
    """Top-``k`` for every row of ``users`` (``user_id, factors array<float>, seen array<int>``).

    ``seen`` holds row numbers into ``item_factors``/``item_ids`` (null = nothing seen). Runs
    on executors over Arrow batches, with the item matrix broadcast once; uses the GPU
    kernel when the task was granted a GPU (``backend="auto"``). Returns
    ``user_id, rank, item_id, score``.
    """
    import pyarrow as pa

    v = np.ascontiguousarray(item_factors, dtype=np.float32)
    ids = pa.array(list(item_ids), pa.string())
    key = order_key(item_ids)
    # the sorted index only (half the bytes of sending the matrix twice); the GPU path
    # restores the original row order from it
    bc = spark.sparkContext.broadcast((ids, index_items(v, key)))
    rank_dim = v.shape[1]

    def run(batches):
        import pyarrow as pa
        import pyarrow.compute as pc

        ids_, index = bc.value
        mode = choose_backend(backend)
        if mode == "cuda":
            import torch

            gpu = task_gpu()
            device = torch.device("cuda", gpu or 0)
            v_dev = torch.as_tensor(index.factors[index.position], device=device)
            key_ = index.key[index.position]
            gpu_block = max(1, min(65536, (1 << 28) // max(1, len(key_))))
        for batch in batches:
            n = batch.num_rows
            fac = batch.column("factors")
            u_all = pc.list_flatten(fac).to_numpy(zero_copy_only=False) \
                .astype(np.float32, copy=False).reshape(n, rank_dim)
            seen = batch.column("seen")
            lens = pc.fill_null(pc.list_value_length(seen), 0).to_numpy()
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lens, out=indptr[1:])
            indices = pc.list_flatten(seen).to_numpy(zero_copy_only=False).astype(np.int64)
            # one output batch per input batch: Arrow batches of a few thousand rows cost
            # Spark a fixed conversion each (measured: ~0.1 s of a 0.7 s job at 256 users)
            parts: list[tuple] = []
            if mode == "cuda":
                for s0 in range(0, n, gpu_block):
                    s1 = min(n, s0 + gpu_block)
                    sub = (indptr[s0:s1 + 1] - indptr[s0], indices[indptr[s0]:indptr[s1]])
                    parts.append((s0, *topk_block_torch(u_all[s0:s1], v_dev, sub, k, key_,
                                                        device=device)))
            elif n:  # the compiled kernel walks the blocks itself
                parts.append((0, *topk_block(u_all, index, (indptr, indices), k, tile=tile,
                                             block=block)))
            if not parts:
                continue
            cols = []
            for s0, idx, score, count in parts:
                valid = idx >= 0
                cols.append((np.repeat(np.arange(s0, s0 + len(idx)), count),
                             np.cumsum(valid, axis=1)[valid].astype(np.int32), idx[valid],
                             score[valid].astype(np.float32)))
            rows, ranks, items, scores = (np.concatenate(c) for c in zip(*cols, strict=True))
            yield pa.RecordBatch.from_arrays(
                [batch.column("user_id").take(pa.array(rows)), pa.array(ranks),
                 ids_.take(pa.array(items)), pa.array(scores)],
                names=["user_id", "rank", "item_id", "score"])

    # The kernel is compute-bound: one task per core, no more (coalesce never shuffles).
    tasks = spark.sparkContext.defaultParallelism
    return users.select("user_id", "factors", "seen").coalesce(tasks) \
        .mapInArrow(run, OUTPUT_SCHEMA)


def seen_rows(seen, item_ids: list[str], spark):
    """``user_id, item_id`` pairs -> ``user_id, seen`` (array of row numbers into ``item_ids``).

    Items outside ``item_ids`` cannot be recommended anyway and are dropped.
    """
    from pyspark.sql import functions as F

    rows = spark.createDataFrame([(i, r) for r, i in enumerate(item_ids)],
                                 "item_id string, row int")
    return (seen.join(F.broadcast(rows), "item_id")
            .groupBy("user_id").agg(F.collect_list("row").alias("seen")))


def gpu_kernel(index, device):
    """A kernel with :func:`pipelines.model.topk.topk_block`'s contract, on ``device`` (CUDA).

    The index's factors are moved to the GPU once; each call scores a block there.
    """
    import torch

    from pipelines.model.topk import as_csr

    v_dev = torch.as_tensor(index.factors[index.position], device=device)
    key = index.key[index.position]
    # users per GPU call: a block's dense scores stay within 2^28 floats (1 GiB)
    step = max(1, min(65536, (1 << 28) // max(1, len(key))))

    def run(users, _index, seen, k):
        indptr, indices = as_csr(seen)
        parts = []
        for s0 in range(0, len(users), step):
            s1 = min(len(users), s0 + step)
            sub = (indptr[s0:s1 + 1] - indptr[s0], indices[indptr[s0]:indptr[s1]])
            parts.append(topk_block_torch(users[s0:s1], v_dev, sub, k, key, device=device))
        if not parts:
            return (np.zeros((0, k), np.int64), np.zeros((0, k), np.float32),
                    np.zeros(0, np.int64))
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))

    return run


def item_matrix(factors) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Collect ``item_idx, item_id, factors`` -> (Y float32, item_idx array, item ids), in
    ``item_idx`` order. Cost: items x rank floats to the driver."""
    rows = sorted(factors.select("item_idx", "item_id", "factors").collect(),
                  key=lambda r: r.item_idx)
    if not rows:
        raise DataError("no item factors")
    y = np.array([r.factors for r in rows], dtype=np.float32)
    return y, np.array([r.item_idx for r in rows], dtype=np.int64), [r.item_id for r in rows]
