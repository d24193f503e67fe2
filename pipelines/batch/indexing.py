"""Stable string id -> int id maps (``user_index``, ``item_index``): append-only, ids never move.

Spark ML ALS needs 32-bit ints. New ids get ``max(existing) + 1, + 2, ...`` in sorted order
of the string ids, so the assignment is deterministic for a given table state. Two writers
appending at once could hand out the same int twice, so the append is committed with
``conflict_scope="table"``: the loser gets a conflict and recomputes from the new state.

Example
-------
>>> users = update_index(spark, "/lh", USER_INDEX, ids_df)   # doctest: +SKIP  (user_id, user_idx)
"""

from __future__ import annotations

import datetime as _dt
import logging

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipelines.storage import delta
from schemas.tables import TableSpec

log = logging.getLogger(__name__)
MAX_INT = 2**31 - 1


def assign_new(ids: DataFrame, existing: DataFrame, *, id_col: str, idx_col: str,
               start: int) -> DataFrame:
    """Ids of ``ids`` absent from ``existing``, numbered ``start, start + 1, ...`` by id order."""
    new = ids.select(id_col).distinct().join(existing.select(id_col), id_col, "left_anti")
    # One ordered window: the number of *new* ids per run is small next to the events.
    w = Window.orderBy(id_col)
    return new.select(id_col, (F.row_number().over(w) + (start - 1)).cast("int").alias(idx_col))


def update_index(spark, lakehouse: str, spec: TableSpec, ids: DataFrame, *,
                 attempts: int = 5, now: _dt.datetime | None = None) -> DataFrame:
    """Append ids not yet in the index table; return the full map for ``ids``.

    Returns ``<id>, <idx>`` for every distinct id of ``ids``.
    """
    id_col, idx_col = spec.key[0], next(c for c in spec.column_names if c.endswith("_idx"))
    now = now or _dt.datetime.now(_dt.UTC)
    for attempt in range(1, attempts + 1):
        snap = delta.ensure_table(lakehouse, spec)
        version = snap.version()
        existing = delta.read(spark, lakehouse, spec, version=version).select(id_col, idx_col)
        top = existing.agg(F.max(idx_col)).first()[0]
        start = 0 if top is None else top + 1
        new = assign_new(ids, existing, id_col=id_col, idx_col=idx_col, start=start).persist()
        try:
            n_new = new.count()
            if start + n_new - 1 > MAX_INT:
                raise OverflowError(f"{spec.name}: more than 2^31 ids")
            if n_new:
                try:
                    delta.write(spark, new.withColumn("assigned_at", F.lit(now).cast("timestamp")),
                                lakehouse, spec, mode="append", read_version=version,
                                conflict_scope="table", retries=0,
                                metadata={"lakerec.new_ids": n_new})
                except delta.DeltaConflictError:
                    if attempt == attempts:
                        raise
                    log.info("%s: concurrent append, reassigning (%d/%d)", spec.name, attempt,
                             attempts)
                    continue
                log.info("%s: %d new ids from %d", spec.name, n_new, start)
        finally:
            new.unpersist()
        full = delta.read(spark, lakehouse, spec).select(id_col, idx_col)
        return full.join(ids.select(id_col).distinct(), id_col, "inner")
    raise AssertionError("unreachable")
