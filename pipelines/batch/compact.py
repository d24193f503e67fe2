"""Compaction of the merge-on-read tables: fold superseded rows away, rewrite small files.

``recommendations`` and ``user_factors`` take the stream's refreshed rows as appends
(:meth:`schemas.tables.TableSpec.current_sql`), so they grow by one small file per
micro-batch and keep every superseded list. :func:`compact` rewrites a table's snapshot as its
current rows only, range-partitioned and sorted by the current key (a point lookup by user
then reads one file), in one commit that keeps whatever the stream appended meanwhile
(:func:`pipelines.storage.delta.replace_snapshot`). Readers see the same current rows before
and after: compaction changes the layout, never the answer.

Example
-------
>>> [r.table for r in compact(spark, "/lh")]  # doctest: +SKIP
['user_factors', 'recommendations']
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pipelines.storage import delta
from schemas.tables import TABLES, TableSpec

log = logging.getLogger(__name__)

MERGE_ON_READ = tuple(t for t in TABLES.values() if t.merge_on_read)
TARGET_FILE_BYTES = 128 << 20  # Delta's OPTIMIZE default
# With no superseded row, rewrite only once this many small files (< a quarter of the
# target) have piled up: Delta's auto-compaction threshold (minNumFiles)
MIN_SMALL_FILES = 50


@dataclass(frozen=True)
class CompactReport:
    table: str
    rows_before: int = 0
    rows_after: int = 0
    files_before: int = 0
    files_after: int = 0
    version: int | None = None
    skipped: str = ""  # why nothing was committed


def compact_table(spark, lakehouse: str, spec: TableSpec, *,
                  target_file_bytes: int = TARGET_FILE_BYTES) -> CompactReport:
    """Rewrite ``spec``'s snapshot as its current rows (one commit; see the module docstring).

    A table with no superseded row and fewer than :data:`MIN_SMALL_FILES` small files is left
    alone, so a re-run after a commit is a no-op (and after a kill before one, a clean redo).

    Cost: one scan and one shuffle of the table, on the executors (the row count before
    comes from the log's file stats); the driver holds the file list.
    """
    if not delta.exists(lakehouse, spec):
        return CompactReport(spec.name, skipped="table does not exist")
    snap = delta.ensure_table(lakehouse, spec)
    files = delta.add_actions(snap)
    size = sum(a["size"] for a in files)
    n_out = max(1, math.ceil(size / target_file_bytes))
    if spec.partition_by:  # at least one file per partition value
        n_out = max(n_out, len({tuple(sorted(a["partition"].items())) for a in files}))
    df = delta.read(spark, lakehouse, spec, version=snap.version())
    cur = delta.current_rows(spark, df, spec).persist()
    try:
        before, after = _logged_rows(snap) or df.count(), cur.count()
        small = sum(a["size"] < target_file_bytes // 4 for a in files)
        if before == after and small < MIN_SMALL_FILES:
            return CompactReport(spec.name, before, after, len(files), len(files),
                                 snap.version(), skipped="nothing to fold")
        out = cur.repartitionByRange(n_out, *spec.current_key) \
            .sortWithinPartitions(*spec.current_key, *spec.key)
        res = delta.replace_snapshot(
            spark, out, lakehouse, spec, snapshot=snap,
            txn=delta.Txn.of_content("lakerec.compact", spec.name, snap.version()),
            metadata={"lakerec.operation": "compact", "lakerec.superseded": before - after})
    finally:
        cur.unpersist()
    log.info("%s: compacted v%d -> v%s, %d -> %d rows, %d -> %d files", spec.name,
             snap.version(), res.version, before, after, len(files), res.files_added)
    return CompactReport(spec.name, before, after, len(files), res.files_added, res.version,
                         skipped=res.reason if res.skipped else "")


def _logged_rows(snap) -> int | None:
    """The snapshot's row count from its files' stats in the log (no scan), if all have one."""
    import pyarrow as pa

    n = pa.table(snap.get_add_actions(flatten=True)).column("num_records").to_pylist()
    return sum(n) if n and None not in n else None


def compact(spark, lakehouse: str, tables: tuple[str, ...] | None = None) -> list[CompactReport]:
    """:func:`compact_table` for each merge-on-read table (or those named)."""
    specs = [t for t in MERGE_ON_READ if tables is None or t.name in tables]
    return [compact_table(spark, lakehouse, t) for t in specs]
