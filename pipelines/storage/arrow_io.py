"""Delta tables read and written with pyarrow on the driver: analysts' datasets and the
stream's small writes.

* :func:`arrow_dataset` -- a ``pyarrow.dataset`` over a snapshot, for DuckDB, Polars, pandas;
* :func:`append_arrow`, :func:`replace_rows_arrow` -- a micro-batch is small, and a Spark job
  per table would cost more than its data: these write from the driver and commit through
  the same :mod:`pipelines.storage.deltalog` core (same conflict rules, same transactions).

Example
-------
>>> arrow_dataset("/lh", "recommendations").to_table().num_rows     # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from urllib.parse import unquote

from pipelines.storage.deltalog import (
    CommitResult,
    StagedWrite,
    Txn,
    add_actions,
    adopt,
    commit,
    done,
    ensure_table,
    escape_partition,
    hive_consistent,
    open_table,
    partition_str,
    skipped,
    staging_folder,
    table_path,
)
from schemas.tables import TableSpec

log = logging.getLogger(__name__)


def arrow_dataset(root: str, spec: TableSpec | str, version: int | None = None):
    """A ``pyarrow.dataset`` over a table snapshot, for DuckDB, Polars and pandas.

    Built from the snapshot's file list (hive-style partition paths, as lakerec writes
    them) instead of ``DeltaTable.to_pyarrow_dataset()``: with deltalake 1.6.6 the latter
    attaches ``col >= null`` guarantees to files whose stats lack a column's min/max, and a
    filter on that column then silently skips those files (seen here; delta-rs issues #1496,
    #3173). Local files are opened through Arrow's native filesystem; deltalake's Python
    filesystem handler made processes abort at exit about one run in four.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs

    from schemas.tables import TABLES

    spec = TABLES[spec] if isinstance(spec, str) else spec
    dt = open_table(root, spec, version)
    path = table_path(root, spec)
    actions = add_actions(dt)
    schema = spec.arrow_schema()
    if not os.path.isdir(path) or not all(hive_consistent(a, spec) for a in actions):
        log.warning("%s: not a local hive-style table; using deltalake's own dataset", spec.name)
        return dt.to_pyarrow_dataset()
    fs = pafs.SubTreeFileSystem(os.path.abspath(path), pafs.LocalFileSystem())
    part_schema = pa.schema([schema.field(c) for c in spec.partition_by])
    return ds.dataset([unquote(a["path"]) for a in actions], schema=schema, format="parquet",
                      filesystem=fs, partitioning=ds.partitioning(part_schema, flavor="hive")
                      if spec.partition_by else None)


def current_table(root: str, spec: TableSpec, version: int | None = None, *,
                  where: str | None = None):
    """The current rows of a merge-on-read table as Arrow, by DuckDB running
    :meth:`~schemas.tables.TableSpec.current_sql` (the query analysts run).

    ``where`` is a SQL condition on the current rows (``"user_id = 'u1'"``). Cost: a scan of
    the snapshot's files; driver memory holds the result only.
    """
    import duckdb

    con = duckdb.connect()
    try:
        con.register(spec.name, arrow_dataset(root, spec, version))
        sql = spec.current_sql()
        if where:
            sql = f"SELECT * FROM ({sql}) AS c WHERE {where}"
        return con.sql(sql).to_arrow_table().cast(spec.arrow_schema())
    finally:
        con.close()


def _partition_groups(table, spec: TableSpec) -> list[tuple[dict, object]]:
    """Split an Arrow table by the spec's partition columns: ``[(values, rows), ...]``."""
    import pyarrow.compute as pc

    if not spec.partition_by:
        return [({}, table)]
    keys = table.select(list(spec.partition_by)).group_by(list(spec.partition_by)) \
        .aggregate([]).to_pylist()
    out = []
    for k in sorted(keys, key=lambda d: [str(v) for v in d.values()]):
        mask = None
        for c, v in k.items():
            m = pc.is_null(table[c]) if v is None else pc.equal(table[c], v)
            mask = m if mask is None else pc.and_(mask, m)
        out.append(({c: partition_str(v) for c, v in k.items()}, table.filter(mask)))
    return out


def stage_arrow(table, root: str, spec: TableSpec) -> StagedWrite:
    """Write an Arrow table as Parquet (one file per partition) and adopt it.

    The driver-side twin of :func:`pipelines.storage.spark_io.stage`, for writes too small
    to be worth a Spark job; both go through :func:`pipelines.storage.deltalog.adopt`.
    A nullable column the table lacks (an optional field added after the caller was
    written, e.g. ``interactions.request_id``) is written as null; a missing required
    column is an error. Cost: the rows written, on the driver.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = table_path(root, spec)
    write_id = uuid.uuid4().hex
    staging = staging_folder(path, write_id)
    schema = spec.arrow_schema()
    for c in spec.columns:
        if c.nullable and c.name not in table.column_names:
            table = table.append_column(c.name, pa.nulls(table.num_rows, schema.field(c.name).type))
    table = table.select(spec.column_names).cast(schema)
    try:
        for i, (values, rows) in enumerate(_partition_groups(table, spec)):
            if rows.num_rows == 0:
                continue
            folder = os.path.join(staging, *(f"{c}={escape_partition(values[c])}"
                                             for c in spec.partition_by))
            os.makedirs(folder, exist_ok=True)
            pq.write_table(rows.drop_columns(list(spec.partition_by)),
                           os.path.join(folder, f"{i:05d}.parquet"), compression="snappy")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return adopt(staging, spec, path, write_id)


def append_arrow(root: str, spec: TableSpec, table, *, txn: Txn | None = None,
                 metadata: Mapping[str, str] | None = None, snapshot=None) -> CommitResult:
    """Append an Arrow table in one commit (driver-side; see :func:`stage_arrow`)."""
    dt = snapshot or ensure_table(root, spec)
    if done(dt, txn):
        return skipped(spec, dt)
    staged = stage_arrow(table, root, spec)
    return commit(staged, snapshot=dt, mode="append", txn=txn, metadata=metadata)


def replace_rows_arrow(root: str, spec: TableSpec, table, *, on: Iterable[str],
                       txn: Txn | None = None, metadata: Mapping[str, str] | None = None,
                       snapshot=None) -> CommitResult:
    """Replace every row whose ``on`` key appears in ``table`` by ``table``'s rows: one commit.

    The driver-side twin of :func:`replace_rows` for small sources (a micro-batch's users):
    copy-on-write of the files that hold those keys, read and rewritten with pyarrow. With a
    group key (``user_id`` of ``recommendations``) each group's rows are swapped as a whole.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from deltalake.transaction import RemoveAction

    on = list(on)
    dt = snapshot or ensure_table(root, spec)
    if done(dt, txn):
        return skipped(spec, dt)
    path = table_path(root, spec)
    schema = spec.arrow_schema()
    table = table.select(spec.column_names).cast(schema)
    parts = {}
    if spec.partition_by:
        parts = {c: {partition_str(v) for v in pc.unique(table[c]).to_pylist()}
                 for c in spec.partition_by}
    data_on = [c for c in on if c not in spec.partition_by]
    wanted = pa.Table.from_pydict({c: table[c] for c in data_on})
    key = _row_key(wanted, data_on)
    removes, kept = [], []
    now = int(time.time() * 1000)
    for a in add_actions(dt):
        if any(a["partition"].get(c) not in vs for c, vs in parts.items()):
            continue
        file = os.path.join(path, unquote(a["path"]))
        keys = pq.read_table(file, columns=data_on)
        hit = pc.is_in(_row_key(keys, data_on), value_set=key)
        if not pc.any(hit).as_py():
            continue
        rows = pq.read_table(file).filter(pc.invert(hit))
        for c in spec.partition_by:  # partition values live in the path
            field_ = schema.field(c)
            v = a["partition"].get(c)
            rows = rows.append_column(field_, pa.array(
                [None if v is None else _parse_partition(v, field_.type)] * rows.num_rows,
                field_.type))
        kept.append(rows.select(spec.column_names).cast(schema))
        removes.append(RemoveAction(path=a["path"], data_change=True, deletion_timestamp=now,
                                    size=a["size"], partition_values=a["partition"]))
    staged = stage_arrow(pa.concat_tables([*kept, table]), root, spec)
    return commit(staged, snapshot=dt, mode="append", removes=removes, txn=txn,
                  metadata=metadata)


def _row_key(table, cols: list[str]):
    """One comparable column for a (possibly composite) key."""
    import pyarrow.compute as pc

    if len(cols) == 1:
        return table[cols[0]]
    return pc.binary_join_element_wise(*[pc.cast(table[c], "string") for c in cols], "\x1f")


def _parse_partition(v: str, type_):
    import pyarrow as pa

    if pa.types.is_date(type_):
        return _dt.date.fromisoformat(v)
    if pa.types.is_integer(type_):
        return int(v)
    return v
