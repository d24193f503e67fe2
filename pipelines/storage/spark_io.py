"""Delta tables read and written by Spark: parallel Parquet I/O, the log through delta-rs.

Reads resolve the snapshot's file list from the log (never by listing folders, which would
resurrect removed files) and let Spark read those files in parallel. Writes stage Parquet
with a Spark job and commit through :mod:`pipelines.storage.deltalog`.

Example
-------
>>> res = write(spark, df, "/lh", TABLES["interactions"],                # doctest: +SKIP
...             mode="overwrite", partition={"dt": "2024-05-01"},
...             txn=Txn("lakerec.ingest/dt=2024-05-01", 42))
>>> read(spark, "/lh", TABLES["interactions"], version=3).count()       # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote, urlparse

from pipelines.storage.deltalog import (
    CommitResult,
    StagedWrite,
    Txn,
    UnsupportedTableError,
    add_actions,
    adopt,
    check_schema,
    commit,
    done,
    ensure_table,
    hive_consistent,
    open_table,
    partition_str,
    skipped,
    staging_folder,
    table_path,
)
from schemas.tables import TableSpec


def current_rows(spark, df, spec: TableSpec):
    """The current rows of a merge-on-read table read as ``df``: Spark runs the very query
    :meth:`~schemas.tables.TableSpec.current_sql` documents for every engine.

    Cost: one shuffle of ``df`` by the table's ``current_key``.
    """
    return spark.sql(spec.current_sql(source="{t}"), t=df)


def read(spark, root: str, spec: TableSpec, *, version: int | None = None,
         partitions: Mapping[str, Iterable] | None = None, with_file: bool = False,
         current: bool = False):
    """Read a table snapshot into a Spark DataFrame.

    Parameters
    ----------
    spark : SparkSession
    root : str
        Lakehouse root.
    spec : TableSpec
    version : int, optional
        Time travel: read this table version instead of the latest.
    partitions : mapping, optional
        Prune on the driver: ``{"dt": ["2024-05-01"]}`` keeps only those partitions.
    with_file : bool
        Add ``_file``, the URI of the Parquet file each row came from (for rewrites).
    current : bool
        Only the current rows of a merge-on-read table (:func:`current_rows`).

    Example
    -------
    >>> read(spark, "/lh", TABLES["interactions"], partitions={"dt": ["2024-05-01"]})
    ... # doctest: +SKIP
    """
    from pyspark.sql import functions as F

    if current:
        if with_file:
            raise ValueError("current rows come from several files: no _file")
        return current_rows(spark, read(spark, root, spec, version=version,
                                        partitions=partitions), spec)
    dt = open_table(root, spec, version)
    check_schema(dt, spec)
    path = table_path(root, spec)
    actions = add_actions(dt)
    if partitions:
        wanted = {k: {partition_str(v) for v in vs} for k, vs in partitions.items()}
        actions = [a for a in actions
                   if all(a["partition"].get(k) in vs for k, vs in wanted.items())]
    schema = spec.spark_schema()
    if not actions:
        df = spark.createDataFrame([], schema)
        return df.withColumn("_file", F.lit(None).cast("string")) if with_file else df
    if all(hive_consistent(a, spec) for a in actions):
        # Spark infers partition columns from the hive-style paths, typed by the schema.
        files = [os.path.join(path, unquote(a["path"])) for a in actions]
        df = spark.read.schema(schema).option("basePath", path).parquet(*files)
        if with_file:
            df = df.withColumn("_file", F.col("_metadata.file_path"))
        return df.select(*spec.column_names, *(["_file"] if with_file else []))
    return _read_by_partition(spark, path, spec, actions, with_file)


def _read_by_partition(spark, path: str, spec: TableSpec, actions: list, with_file: bool):
    """Files whose paths do not carry their partition values (written by another engine)."""
    from functools import reduce

    from pyspark.sql import functions as F

    data_schema = spec.spark_schema()
    groups: dict[tuple, list[str]] = {}
    for a in actions:
        key = tuple(a["partition"].get(c) for c in spec.partition_by)
        groups.setdefault(key, []).append(os.path.join(path, unquote(a["path"])))
    parts = []
    from pyspark.sql import types as T

    file_schema = T.StructType([f for f in data_schema if f.name not in spec.partition_by])
    for key, files in groups.items():
        df = spark.read.schema(file_schema).parquet(*files)
        for c, v in zip(spec.partition_by, key, strict=True):
            df = df.withColumn(c, F.lit(v).cast(data_schema[c].dataType))
        if with_file:
            df = df.withColumn("_file", F.col("_metadata.file_path"))
        parts.append(df.select(*spec.column_names, *(["_file"] if with_file else [])))
    return reduce(lambda a, b: a.unionByName(b), parts)


def file_uri_to_relative(uri: str, table_root: str) -> str:
    """Map a Spark ``_metadata.file_path`` URI back to the table-relative Delta path."""
    p = unquote(urlparse(uri).path)
    return os.path.relpath(p, table_root)


def conform(df, spec: TableSpec):
    """Select the table's columns in order, cast to the declared types; a nullable column
    ``df`` lacks is null (as :func:`pipelines.storage.arrow_io.stage_arrow` does)."""
    from pyspark.sql import functions as F

    missing = [c.name for c in spec.columns if c.name not in df.columns and not c.nullable]
    if missing:
        raise ValueError(f"{spec.name}: DataFrame lacks columns {missing}")
    schema = spec.spark_schema()
    return df.select(*[(F.col(f.name) if f.name in df.columns else F.lit(None))
                       .cast(f.dataType).alias(f.name) for f in schema])


def stage(spark, df, root: str, spec: TableSpec, *,
          partition: Mapping[str, object] | None = None) -> StagedWrite:
    """Write ``df`` as Parquet with Spark into a staging folder and adopt the files
    (:func:`pipelines.storage.deltalog.adopt`): invisible to readers until committed.

    Cost: one Spark write job over ``df``; the driver then reads each file's footer.
    """
    path = table_path(root, spec)
    write_id = uuid.uuid4().hex
    staging = staging_folder(path, write_id)
    writer = conform(df, spec).write.mode("errorifexists").option("compression", "snappy")
    if spec.partition_by:
        writer = writer.partitionBy(*spec.partition_by)
    try:
        writer.parquet(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed job's partial files
        raise
    return adopt(staging, spec, path, write_id, partition=partition)


def write(spark, df, root: str, spec: TableSpec, *, mode: str = "append",
          partition: Mapping[str, object] | None = None,
          txn: Txn | Iterable[Txn] | None = None,
          metadata: Mapping[str, str] | None = None, read_version: int | None = None,
          conflict_scope: str = "partition", retries: int = 3) -> CommitResult:
    """Write a DataFrame to a table in one atomic commit.

    ``mode="append"`` adds rows; ``mode="overwrite"`` with ``partition={"dt": d}`` replaces that
    partition (adds and removes in one commit, replaceWhere semantics); without ``partition``
    it replaces the table. ``read_version`` is the table version the DataFrame was computed
    from, if it read this table: commits since then are checked for conflicts.

    Example
    -------
    >>> write(spark, recs, "/lh", TABLES["recommendations"], mode="overwrite",  # doctest: +SKIP
    ...       txn=Txn.of_content("lakerec.score", "model=3", "interactions=17"))
    """
    from deltalake import DeltaTable

    dt = ensure_table(root, spec)
    if done(dt, txn):  # before any Spark work
        return skipped(spec, dt)
    if read_version is not None and read_version != dt.version():
        dt = DeltaTable(table_path(root, spec), version=read_version)
    staged = stage(spark, df, root, spec, partition=partition)
    return commit(staged, snapshot=dt, mode=mode, partition=partition, txn=txn,
                  metadata=metadata, conflict_scope=conflict_scope, retries=retries)


def replace_rows(spark, source, root: str, spec: TableSpec, *, on: Iterable[str],
                 txn: Txn | None = None, metadata: Mapping[str, str] | None = None,
                 retries: int = 3) -> CommitResult:
    """Replace every row whose ``on`` key appears in ``source`` by ``source``'s rows: one commit.

    With ``on`` a unique key this is an upsert (``MERGE ... WHEN MATCHED UPDATE * WHEN NOT
    MATCHED INSERT *``); with a group key (e.g. ``user_id`` of ``recommendations``) it swaps
    each group's rows. Copy-on-write: only the files holding changed keys are rewritten, by
    Spark, and removed in the same commit. Keys whose rows are already identical are left
    alone, so re-running with the same source commits nothing.

    Example
    -------
    >>> replace_rows(spark, catalog_df, "/lh", TABLES["items"], on=["item_id"])  # doctest: +SKIP
    """
    import time as _time

    from deltalake.transaction import RemoveAction
    from pyspark.sql import functions as F

    on = list(on)
    dt = ensure_table(root, spec)
    if done(dt, txn):  # before any Spark work
        return skipped(spec, dt)
    path = table_path(root, spec)
    src = conform(source, spec).persist()
    target = changed = None
    try:
        parts = None
        if spec.partition_by:  # prune the target to the partitions the source touches
            rows = src.select(*spec.partition_by).distinct().collect()
            parts = {c: sorted({partition_str(r[c]) for r in rows}, key=str)
                     for c in spec.partition_by}
        target = read(spark, root, spec, version=dt.version(), partitions=parts,
                      with_file=True).persist()
        cols = spec.column_names
        tgt_rows = target.join(src.select(*on).distinct(), on, "left_semi").select(*cols)
        changed = (src.exceptAll(tgt_rows).select(*on)
                   .union(tgt_rows.exceptAll(src).select(*on)).distinct()).persist()
        if changed.isEmpty():
            return CommitResult(spec.name, dt.version(), skipped=True, reason="no change")
        files = [r["_file"] for r in target.join(changed, on, "left_semi")
                 .select("_file").distinct().collect()]
        kept = (target.where(F.col("_file").isin(files)).join(changed, on, "left_anti")
                .select(*cols))
        new_rows = kept.unionByName(src.join(changed, on, "left_semi").select(*cols))
        staged = stage(spark, new_rows, root, spec)
        by_path = {a["path"]: a for a in add_actions(dt)}
        now = int(_time.time() * 1000)
        removes = []
        for uri in files:
            rel = file_uri_to_relative(uri, path)
            a = by_path.get(rel) or by_path.get(quote(rel))
            if a is None:
                staged.discard()
                raise UnsupportedTableError(f"{spec.name}: cannot map {uri} to a log path")
            removes.append(RemoveAction(path=a["path"], data_change=True,
                                        deletion_timestamp=now, size=a["size"],
                                        partition_values=a["partition"]))
        return commit(staged, snapshot=dt, mode="append", removes=removes, txn=txn,
                      metadata=metadata, retries=retries)
    finally:
        for df in (src, target, changed):
            if df is not None:
                df.unpersist()


def replace_snapshot(spark, df, root: str, spec: TableSpec, *, snapshot,
                     txn: Txn | Iterable[Txn] | None = None,
                     metadata: Mapping[str, str] | None = None) -> CommitResult:
    """Replace every file of ``snapshot`` by ``df`` in one commit, keeping whatever was
    appended since: the rewrite of a merge-on-read table (``score``'s new lists, compaction).

    Rows appended after ``snapshot`` are newer than anything ``df`` was computed from, so they
    stay and stay current; only a concurrent removal of a replaced file is a conflict
    (``conflict_scope="files"``).

    Cost: one Spark write of ``df``; the commit lists the snapshot's files.
    """
    import time as _time

    from deltalake.transaction import RemoveAction

    if not spec.merge_on_read:
        raise ValueError(f"{spec.name} is not merge-on-read: use write(mode='overwrite')")
    if done(snapshot, txn):
        return skipped(spec, snapshot)
    staged = stage(spark, df, root, spec)
    now = int(_time.time() * 1000)
    removes = [RemoveAction(path=a["path"], data_change=True, deletion_timestamp=now,
                            size=a["size"], partition_values=a["partition"])
               for a in add_actions(snapshot)]
    return commit(staged, snapshot=snapshot, mode="append", removes=removes, txn=txn,
                  metadata=metadata, conflict_scope="files")
