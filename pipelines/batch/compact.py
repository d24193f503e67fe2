"""Compaction: fold superseded rows out of the merge-on-read tables, pack small files.

``recommendations`` and ``user_factors`` take the stream's refreshed rows as appends
(:meth:`schemas.tables.TableSpec.current_sql`), so they grow by one small file per
micro-batch and keep every superseded list. :func:`compact` rewrites a table's snapshot as its
current rows only, range-partitioned and sorted by the current key (a point lookup by user
then reads one file), in one commit that keeps whatever the stream appended meanwhile
(:func:`pipelines.storage.delta.replace_snapshot`). Readers see the same current rows before
and after: compaction changes the layout, never the answer.

The append-only tables the stream writes (``interactions``, ``quarantine``, ``user_index``)
gain one small file per micro-batch too; every snapshot open, file listing and checkpoint
grows with their number. :func:`pack_table` bin-packs the small files of each partition that
holds many (delta-rs ``optimize.compact``): the rows are moved, not changed
(``dataChange = false``), so readers, concurrent appends and the stream's keyed state are
unaffected.

Example
-------
>>> [r.table for r in compact(spark, "/lh")]  # doctest: +SKIP
['user_factors', 'recommendations', 'interactions', 'quarantine', 'user_index']
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

from pipelines.storage import delta
from schemas.tables import INTERACTIONS, QUARANTINE, TABLES, USER_INDEX, TableSpec

log = logging.getLogger(__name__)

MERGE_ON_READ = tuple(t for t in TABLES.values() if t.merge_on_read)
# The tables the stream appends to and nothing rewrites row by row (their writers append or
# replace whole partitions): packing them cannot race a copy-on-write of the same files.
# ``items`` and ``item_embeddings`` are rewritten in place (``replace_rows``) and are not packed.
APPEND_ONLY = (INTERACTIONS, QUARANTINE, USER_INDEX)
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
    operation: str = "fold"  # "fold" (compact_table) or "pack" (pack_table: rows not counted)


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


def pack_table(lakehouse: str, spec: TableSpec, *,
               target_file_bytes: int = TARGET_FILE_BYTES) -> CompactReport:
    """Bin-pack the small files of each partition of ``spec`` holding at least
    :data:`MIN_SMALL_FILES` of them (smaller than a quarter of the target), one
    ``dataChange = false`` commit per partition; other partitions are left alone, so a
    re-run is a no-op.

    Cost: a read and a rewrite of every file under the target in those partitions (delta-rs,
    on the driver, streamed in record batches): what the stream appended since the last run,
    plus a busy partition's earlier packed output until it reaches the target size.
    """
    from deltalake import CommitProperties
    from deltalake.exceptions import CommitFailedError

    if not delta.exists(lakehouse, spec):
        return CompactReport(spec.name, skipped="table does not exist", operation="pack")
    snap = delta.open_table(lakehouse, spec)
    files = delta.add_actions(snap)
    small = Counter(tuple(sorted(a["partition"].items())) for a in files
                    if a["size"] < target_file_bytes // 4)
    todo = [p for p, n in sorted(small.items())
            if n >= MIN_SMALL_FILES and all(v is not None for _, v in p)]
    if not todo:
        return CompactReport(spec.name, files_before=len(files), files_after=len(files),
                             version=snap.version(), skipped="no partition with many small files",
                             operation="pack")
    removed = added = 0
    version, conflicted = None, []
    for part in todo:
        table = delta.open_table(lakehouse, spec)
        try:
            m = table.optimize.compact(
                partition_filters=[(k, "=", v) for k, v in part] or None,
                target_size=target_file_bytes,
                commit_properties=CommitProperties(custom_metadata={
                    "lakerec.table": spec.name, "lakerec.operation": "pack"}))
        except CommitFailedError as e:  # a concurrent commit touched the same files
            log.warning("%s: packing %s skipped, a concurrent commit conflicted (%s)",
                        spec.name, dict(part), e)
            conflicted.append(dict(part))
            continue
        removed, added = removed + m["numFilesRemoved"], added + m["numFilesAdded"]
        version = table.version()  # the table object follows its own commit
        log.info("%s: packed %s: %d -> %d files (v%d)", spec.name, dict(part),
                 m["numFilesRemoved"], m["numFilesAdded"], version)
    return CompactReport(
        spec.name, files_before=len(files), files_after=len(files) - removed + added,
        version=version, operation="pack",
        skipped=f"{len(conflicted)} of {len(todo)} partitions conflicted with a concurrent "
                f"commit, re-run: {conflicted}" if conflicted else "")


def compact(spark, lakehouse: str, tables: tuple[str, ...] | None = None) -> list[CompactReport]:
    """:func:`compact_table` for each merge-on-read table, then :func:`pack_table` for each
    append-only one (or only those named)."""
    def wanted(specs):
        return [t for t in specs if tables is None or t.name in tables]

    return [*(compact_table(spark, lakehouse, t) for t in wanted(MERGE_ON_READ)),
            *(pack_table(lakehouse, t) for t in wanted(APPEND_ONLY))]
