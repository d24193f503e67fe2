"""Delta Lake tables: Spark writes and reads the Parquet files, delta-rs commits the log.

Why: the JVM Delta connector is a Maven artifact, out of reach here (SPEC section 4). So
executors write Parquet in parallel into a staging folder, the driver moves the files into the
table and commits them in one atomic Delta transaction through ``deltalake``; reads resolve the
snapshot's file list from the log (never by listing folders, which would resurrect removed
files) and let Spark read those files in parallel.

delta-rs' own commit retry rebases a stale partition overwrite onto the new snapshot without
removing files committed meanwhile (seen with deltalake 1.6.6), so every commit here is made
with ``max_commit_retries=0`` and conflicts are judged by :func:`commit`: blind appends and
writes to partitions nobody else touched are retried (bounded); anything else raises
:class:`DeltaConflictError`.

Example
-------
>>> from schemas.tables import TABLES
>>> res = write(spark, df, "/lh", TABLES["interactions"],                # doctest: +SKIP
...             mode="overwrite", partition={"dt": "2024-05-01"},
...             txn=Txn("lakerec.ingest/dt=2024-05-01", 42))
>>> read(spark, "/lh", TABLES["interactions"], version=3).count()       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlparse

from schemas.tables import TableSpec

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"
# Reader features whose files cannot be read from a plain file list.
_READABLE_FEATURES = {"timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"}


class DeltaConflictError(RuntimeError):
    """Another writer committed a conflicting change first. Re-run the job."""


class UnsupportedTableError(RuntimeError):
    """The table exists but lakerec cannot read or write it as declared."""


class TableMissingError(LookupError):
    """The table (or the asked-for version) does not exist."""


@dataclass(frozen=True)
class Txn:
    """A Delta application transaction: ``(app_id, version)``, recorded with the commit.

    A write whose txn is already the table's latest for ``app_id`` is skipped, which makes
    re-running it a no-op. Streaming writes use the batch id as version; batch jobs use
    :meth:`of_content`, a hash of the inputs, so "same inputs" means "already done".
    """

    app_id: str
    version: int

    @classmethod
    def of_content(cls, app_id: str, *parts: object) -> Txn:
        digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()
        return cls(app_id, int(digest[:15], 16))  # 60 bits: a positive Delta long


def _txns(txn: Txn | Iterable[Txn] | None) -> list[Txn]:
    if txn is None:
        return []
    return [txn] if isinstance(txn, Txn) else list(txn)


def already_committed(dt, txn: Txn | Iterable[Txn] | None) -> bool:
    """True when every given transaction is already the table's latest for its app id."""
    txns = _txns(txn)
    return bool(txns) and all(dt.transaction_version(t.app_id) == t.version for t in txns)


def _allowed(partition: Mapping[str, object] | None) -> dict[str, set]:
    """``{"dt": d}`` or ``{"dt": [d1, d2]}`` -> ``{"dt": {"d1", "d2"}}`` (string values)."""
    out = {}
    for k, v in (partition or {}).items():
        vs = v if isinstance(v, list | tuple | set | frozenset) else [v]
        out[k] = {_partition_str(x) for x in vs}
    return out


def _filters(partition: Mapping[str, object] | None) -> list | None:
    out = []
    for k, vs in _allowed(partition).items():
        out.append((k, "=", next(iter(vs))) if len(vs) == 1 else (k, "in", sorted(vs)))
    return out or None


@dataclass(frozen=True)
class CommitResult:
    """What a write did: the new ``version`` or ``skipped`` (with why)."""

    table: str
    version: int | None
    skipped: bool = False
    reason: str = ""
    files_added: int = 0
    files_removed: int = 0
    rows: int = 0


@dataclass
class StagedWrite:
    """Parquet files written by Spark and moved into the table, not yet committed."""

    table_path: str
    spec: TableSpec
    adds: list = field(default_factory=list)
    rows: int = 0
    write_id: str = ""

    def discard(self) -> None:
        """Delete the staged files (used when the commit is abandoned)."""
        for a in self.adds:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.table_path, unquote(a.path)))


# --------------------------------------------------------------------------- tables


def table_path(root: str, spec: TableSpec | str) -> str:
    """The folder of a table under the lakehouse root."""
    return os.path.join(root, spec if isinstance(spec, str) else spec.name)


def exists(root: str, spec: TableSpec | str) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(table_path(root, spec))


def open_table(root: str, spec: TableSpec | str, version: int | None = None):
    """Open a table (at ``version``) or raise :class:`TableMissingError`."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    path = table_path(root, spec)
    name = spec if isinstance(spec, str) else spec.name
    if not DeltaTable.is_deltatable(path):
        raise TableMissingError(f"table {name} does not exist at {path}")
    try:
        return DeltaTable(path, version=version)
    except (TableNotFoundError, OSError, Exception) as e:  # delta-rs raises generic errors too
        if version is not None:
            raise TableMissingError(f"table {name} has no version {version}: {e}") from None
        raise


def ensure_table(root: str, spec: TableSpec):
    """Open the table, creating it empty from its declared schema if missing."""
    from deltalake import DeltaTable

    path = table_path(root, spec)
    if not DeltaTable.is_deltatable(path):
        os.makedirs(path, exist_ok=True)
        try:
            DeltaTable.create(
                path, schema=spec.arrow_schema(), partition_by=list(spec.partition_by) or None,
                mode="error", name=spec.name, description=spec.doc,
                configuration=dict(spec.properties) or None,
            )
            log.info("created table %s at %s", spec.name, path)
        except Exception:
            if not DeltaTable.is_deltatable(path):  # not a lost creation race: a real error
                raise
    dt = DeltaTable(path)
    _check_schema(dt, spec)
    return dt


def _check_schema(dt, spec: TableSpec) -> None:
    names = [f.name for f in dt.schema().fields]
    if names != spec.column_names:
        raise UnsupportedTableError(
            f"table {spec.name} at {dt.table_uri} has columns {names}; "
            f"lakerec expects {spec.column_names}"
        )
    proto = dt.protocol()
    unreadable = set(proto.reader_features or ()) - _READABLE_FEATURES
    if unreadable:
        raise UnsupportedTableError(
            f"table {spec.name} uses Delta reader features {sorted(unreadable)} that lakerec's "
            "file-list reader cannot honour"
        )


def _add_actions(dt):
    """The snapshot's add actions as a list of dicts (path, size, partition values)."""
    import pyarrow as pa

    tbl = pa.table(dt.get_add_actions(flatten=True))
    part_cols = [c for c in tbl.column_names if c.startswith("partition.")]
    out = []
    for row in tbl.select(["path", "size_bytes", *part_cols]).to_pylist():
        out.append({
            "path": row["path"],
            "size": row["size_bytes"],
            "partition": {c[len("partition."):]: _partition_str(row[c]) for c in part_cols},
        })
    return out


def _partition_str(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, _dt.datetime):
        return v.isoformat(sep=" ")
    return v.isoformat() if isinstance(v, _dt.date) else str(v)


# --------------------------------------------------------------------------- reading


def read(spark, root: str, spec: TableSpec, *, version: int | None = None,
         partitions: Mapping[str, Iterable] | None = None, with_file: bool = False):
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

    Example
    -------
    >>> read(spark, "/lh", TABLES["interactions"], partitions={"dt": ["2024-05-01"]})
    ... # doctest: +SKIP
    """
    from pyspark.sql import functions as F

    dt = open_table(root, spec, version)
    _check_schema(dt, spec)
    path = table_path(root, spec)
    actions = _add_actions(dt)
    if partitions:
        wanted = {k: {_partition_str(v) for v in vs} for k, vs in partitions.items()}
        actions = [a for a in actions
                   if all(a["partition"].get(k) in vs for k, vs in wanted.items())]
    schema = spec.spark_schema()
    if not actions:
        df = spark.createDataFrame([], schema)
        return df.withColumn("_file", F.lit(None).cast("string")) if with_file else df
    if all(_hive_consistent(a, spec) for a in actions):
        # Spark infers partition columns from the hive-style paths, typed by the schema.
        files = [os.path.join(path, unquote(a["path"])) for a in actions]
        df = spark.read.schema(schema).option("basePath", path).parquet(*files)
        if with_file:
            df = df.withColumn("_file", F.col("_metadata.file_path"))
        return df.select(*spec.column_names, *(["_file"] if with_file else []))
    return _read_by_partition(spark, path, spec, actions, with_file)


def _hive_consistent(action: dict, spec: TableSpec) -> bool:
    dirs = unquote(action["path"]).split("/")[:-1]
    expected = [f"{c}={_escape(action['partition'].get(c))}" for c in spec.partition_by]
    return dirs[-len(expected):] == expected if expected else True


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
    actions = _add_actions(dt)
    schema = spec.arrow_schema()
    if not os.path.isdir(path) or not all(_hive_consistent(a, spec) for a in actions):
        log.warning("%s: not a local hive-style table; using deltalake's own dataset", spec.name)
        return dt.to_pyarrow_dataset()
    fs = pafs.SubTreeFileSystem(os.path.abspath(path), pafs.LocalFileSystem())
    part_schema = pa.schema([schema.field(c) for c in spec.partition_by])
    return ds.dataset([unquote(a["path"]) for a in actions], schema=schema, format="parquet",
                      filesystem=fs, partitioning=ds.partitioning(part_schema, flavor="hive")
                      if spec.partition_by else None)


# --------------------------------------------------------------------------- writing


def _escape(value: str | None) -> str:
    """Hive-style partition path escaping, as Spark writes it."""
    if value is None:
        return "__HIVE_DEFAULT_PARTITION__"
    return quote(value, safe=" !$&'()*+,;@[]^`{}~-._")


def conform(df, spec: TableSpec):
    """Select the table's columns in order, cast to the declared types."""
    from pyspark.sql import functions as F

    missing = [c for c in spec.column_names if c not in df.columns]
    if missing:
        raise ValueError(f"{spec.name}: DataFrame lacks columns {missing}")
    schema = spec.spark_schema()
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema])


def stage(spark, df, root: str, spec: TableSpec, *,
          partition: Mapping[str, object] | None = None) -> StagedWrite:
    """Write ``df`` as Parquet with Spark and move the files into the table folder.

    The files are invisible to readers until :func:`commit` adds them to the log; if the job
    dies first they are orphans that ``vacuum`` removes. With ``partition`` every row must
    belong to that partition (a value or a list of values per column), else nothing is
    staged and ``ValueError`` is raised.
    """
    from deltalake.transaction import AddAction

    path = table_path(root, spec)
    _sweep_staging(os.path.join(path, STAGING_DIR))
    write_id = uuid.uuid4().hex
    staging = os.path.join(path, STAGING_DIR, write_id)
    writer = conform(df, spec).write.mode("errorifexists").option("compression", "snappy")
    if spec.partition_by:
        writer = writer.partitionBy(*spec.partition_by)
    writer.parquet(staging)

    want = _allowed(partition)
    found = []
    for dirpath, _dirs, files in os.walk(staging):
        for name in files:
            if name.startswith((".", "_")):
                continue
            rel_dir = os.path.relpath(dirpath, staging)
            parts = {} if rel_dir == "." else dict(
                p.split("=", 1) for p in rel_dir.split(os.sep))
            values = {c: (None if parts.get(c) == "__HIVE_DEFAULT_PARTITION__"
                          else unquote(parts[c])) for c in spec.partition_by}
            if any(values.get(k) not in vs for k, vs in want.items()):
                shutil.rmtree(staging, ignore_errors=True)
                raise ValueError(f"{spec.name}: rows outside partition {want}: {values}")
            found.append((os.path.join(dirpath, name), rel_dir, values))

    staged = StagedWrite(table_path=path, spec=spec, write_id=write_id)
    now_ms = int(time.time() * 1000)
    for i, (src, rel_dir, values) in enumerate(sorted(found)):
        rel = f"part-{i:05d}-{write_id}.snappy.parquet"
        if rel_dir != ".":
            rel = f"{rel_dir}/{rel}"
        dest = os.path.join(path, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        stats = _file_stats(src, spec)
        os.replace(src, dest)
        staged.rows += stats["numRecords"]
        staged.adds.append(AddAction(
            path=rel, size=os.path.getsize(dest), partition_values=values,
            modification_time=now_ms, data_change=True, stats=json.dumps(stats),
        ))
    shutil.rmtree(staging, ignore_errors=True)
    _remove_if_empty(os.path.join(path, STAGING_DIR))
    return staged


def _sweep_staging(folder: str, max_age_s: float = 6 * 3600) -> None:
    """Remove staging folders that killed writers left behind (older than ``max_age_s``)."""
    if not os.path.isdir(folder):
        return
    cutoff = time.time() - max_age_s
    for name in os.listdir(folder):
        p = os.path.join(folder, name)
        try:
            if os.path.getmtime(p) < cutoff:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass


def _remove_if_empty(d: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(d)


def _file_stats(file: str, spec: TableSpec) -> dict:
    """Delta file statistics from the Parquet footer.

    Row and null counts for every flat column; min/max for integer, date, timestamp and
    short string columns, where the footer value is exact (timestamps widened to whole
    milliseconds, as Delta stats are millisecond strings). Floats get no min/max (NaN has no
    place in an order) and neither do strings of 64 bytes or more, which some writers
    truncate, so no reader can skip a file wrongly.
    """
    import pyarrow.parquet as pq

    md = pq.read_metadata(file)
    stats: dict = {"numRecords": md.num_rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
    types = {c.name: c.type for c in spec.data_columns}
    for j in range(md.num_columns):
        col = md.schema.column(j)
        name = col.path
        if name not in types:  # nested leaves such as factors.list.element
            continue
        nulls, lo, hi, complete = 0, None, None, True
        for r in range(md.num_row_groups):
            s = md.row_group(r).column(j).statistics
            if s is None or not s.has_null_count:
                complete = False
                break
            nulls += s.null_count
            if s.has_min_max:
                lo = s.min_raw if lo is None else min(lo, s.min_raw)
                hi = s.max_raw if hi is None else max(hi, s.max_raw)
            elif s.num_values > 0:
                lo = hi = None
                complete = False
        if not complete:
            continue
        stats["nullCount"][name] = nulls
        if lo is None or types[name] not in ("int", "long", "date", "timestamp", "string"):
            continue
        if types[name] == "string":
            if len(lo) >= 64 or len(hi) >= 64:
                continue
            try:
                lo, hi = lo.decode(), hi.decode()
            except UnicodeDecodeError:
                continue
        if types[name] == "date":
            lo, hi = (_dt.date(1970, 1, 1) + _dt.timedelta(days=v) for v in (lo, hi))
            lo, hi = lo.isoformat(), hi.isoformat()
        elif types[name] == "timestamp":  # int64 microseconds since the epoch, UTC
            lo, hi = _ms_iso(lo // 1000), _ms_iso(-(-hi // 1000))
        stats["minValues"][name] = lo
        stats["maxValues"][name] = hi
    return stats


def _ms_iso(ms: int) -> str:
    t = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _log_changes(path: str, after: int, upto: int) -> list[dict]:
    """The add/remove/commitInfo actions of commits ``after+1 .. upto``, from the log files."""
    out = []
    for v in range(after + 1, upto + 1):
        f = os.path.join(path, "_delta_log", f"{v:020d}.json")
        with open(f) as fh:
            for line in fh:
                if line.strip():
                    out.append({"version": v, **json.loads(line)})
    return out


def _conflict(path: str, spec: TableSpec, read_version: int, latest: int, *, mode: str,
              partition: Mapping | None, removes: list, scope: str) -> str | None:
    """Why retrying this commit on top of ``latest`` would be unsafe, or ``None`` if safe."""
    changes = _log_changes(path, read_version, latest)
    data = [a for a in changes if ("add" in a and a["add"].get("dataChange", True))
            or ("remove" in a and a["remove"].get("dataChange", True))]
    if any("metaData" in a or "protocol" in a for a in changes):
        return "the table's schema or protocol changed"
    if not data:
        return None
    ops = sorted({str(a.get("commitInfo", {}).get("operation"))
                  for a in changes if "commitInfo" in a} - {"None"})
    who = f"commits {read_version + 1}..{latest} ({', '.join(ops) or 'unknown'})"
    if scope == "table" or (mode == "overwrite" and not partition):
        return f"{who} changed the table while this write read it"
    if mode == "append" and not removes:
        return None  # a blind append commutes with anything
    if partition:
        want = _allowed(partition)
        for a in data:
            act = a.get("add") or a.get("remove")
            pv = act.get("partitionValues") or {}
            if all(pv.get(k) in vs for k, vs in want.items()):
                return f"{who} changed partition {dict(pv)} too"
        return None
    # A rewrite (removes + adds): unsafe if they touched the files or the partitions we rewrite.
    ours = {r.path for r in removes}
    touched = {json.dumps(r.partition_values or {}, sort_keys=True) for r in removes}
    for a in data:
        act = a.get("add") or a.get("remove")
        if unquote(act["path"]) in ours or not spec.partition_by or json.dumps(
                act.get("partitionValues") or {}, sort_keys=True) in touched:
            return f"{who} changed rows this write rewrites"
    return None


def commit(staged: StagedWrite, *, snapshot, mode: str = "append",
           partition: Mapping[str, object] | None = None, removes: list | None = None,
           txn: Txn | Iterable[Txn] | None = None, metadata: Mapping[str, str] | None = None,
           conflict_scope: str = "partition", retries: int = 3) -> CommitResult:
    """Commit staged files (and ``removes``) in one transaction, based on ``snapshot``.

    Parameters
    ----------
    mode : {"append", "overwrite"}
        ``overwrite`` with ``partition`` replaces that partition, without it the whole table.
    removes : list of RemoveAction, optional
        Files rewritten by this write (``mode="append"`` only).
    txn : Txn or list of Txn, optional
        Recorded with the commit; the write is skipped if they are already the table's latest.
    conflict_scope : {"partition", "table"}
        ``table`` when the data written was computed from the whole table, so that any
        concurrent data change makes it stale.
    retries : int
        Bounded re-commits after a concurrent commit that does not conflict.
    """
    from deltalake import CommitProperties, DeltaTable, Transaction
    from deltalake.exceptions import CommitFailedError

    spec, path = staged.spec, staged.table_path
    removes = list(removes or [])
    meta = {"lakerec.table": spec.name, "lakerec.write_id": staged.write_id,
            **{k: str(v) for k, v in (metadata or {}).items()}}
    filters = _filters(partition)
    if mode == "append" and filters:
        raise ValueError("partition replacement needs mode='overwrite'")
    dt = snapshot
    txns = _txns(txn)
    for attempt in range(retries + 1):
        if already_committed(dt, txns):
            staged.discard()
            return CommitResult(spec.name, dt.version(), skipped=True,
                                reason="transaction already committed")
        read_version = dt.version()
        try:
            dt.create_write_transaction(
                [*staged.adds, *removes], mode=mode, schema=spec.arrow_schema(),
                partition_by=list(spec.partition_by) or None, partition_filters=filters,
                commit_properties=CommitProperties(
                    custom_metadata=meta, max_commit_retries=0,
                    app_transactions=[Transaction(app_id=t.app_id, version=t.version)
                                      for t in txns] or None),
            )
        except CommitFailedError:
            latest = DeltaTable(path)
            if latest.version() <= read_version:
                staged.discard()
                raise
            why = _conflict(path, spec, read_version, latest.version(), mode=mode,
                            partition=partition, removes=removes, scope=conflict_scope)
            if why is not None or attempt == retries:
                staged.discard()
                raise DeltaConflictError(
                    f"table {spec.name}: {why or 'still conflicting after retries'}; "
                    "nothing was committed, re-run the job") from None
            log.info("table %s: concurrent commit at v%d, retrying (%d/%d)", spec.name,
                     latest.version(), attempt + 1, retries)
            time.sleep(0.05 * 2 ** attempt)
            dt = latest
            continue
        version = read_version + 1  # max_commit_retries=0: it landed exactly there
        log.info("table %s: committed v%d (+%d files, -%s, %d rows)", spec.name, version,
                 len(staged.adds), len(removes) if mode == "append" else "partition/all",
                 staged.rows)
        return CommitResult(spec.name, version, files_added=len(staged.adds),
                            files_removed=len(removes), rows=staged.rows)
    raise AssertionError("unreachable")


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
    if already_committed(dt, txn):
        return CommitResult(spec.name, dt.version(), skipped=True,
                            reason="transaction already committed")
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
    if already_committed(dt, txn):
        return CommitResult(spec.name, dt.version(), skipped=True,
                            reason="transaction already committed")
    path = table_path(root, spec)
    src = conform(source, spec).persist()
    target = changed = None
    try:
        parts = None
        if spec.partition_by:  # prune the target to the partitions the source touches
            rows = src.select(*spec.partition_by).distinct().collect()
            parts = {c: sorted({_partition_str(r[c]) for r in rows}, key=str)
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
        by_path = {a["path"]: a for a in _add_actions(dt)}
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


def latest_version(root: str, spec: TableSpec | str) -> int | None:
    """The table's current version, or ``None`` if it does not exist."""
    return open_table(root, spec).version() if exists(root, spec) else None


# --------------------------------------------------------------------------- small writes
# The stream's micro-batches are small: Spark jobs per write would cost more than the data.
# These helpers write Arrow tables from the driver with pyarrow and commit through the same
# :func:`commit` (same conflict rules, same transaction ids).


def committed_through(dt, app_id: str) -> int | None:
    """The highest transaction version recorded for ``app_id`` (a stream's last batch id)."""
    return dt.transaction_version(app_id)


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
        out.append(({c: _partition_str(v) for c, v in k.items()}, table.filter(mask)))
    return out


def stage_arrow(table, root: str, spec: TableSpec) -> StagedWrite:
    """Write an Arrow table as Parquet (one file per partition) and move it into the table.

    The driver-side twin of :func:`stage`, for writes too small to be worth a Spark job.
    """
    import pyarrow.parquet as pq
    from deltalake.transaction import AddAction

    path = table_path(root, spec)
    write_id = uuid.uuid4().hex
    staging = os.path.join(path, STAGING_DIR, write_id)
    os.makedirs(staging, exist_ok=True)
    table = table.select(spec.column_names).cast(spec.arrow_schema())
    staged = StagedWrite(table_path=path, spec=spec, write_id=write_id)
    now_ms = int(time.time() * 1000)
    try:
        for i, (values, rows) in enumerate(_partition_groups(table, spec)):
            if rows.num_rows == 0:
                continue
            rel = f"part-{i:05d}-{write_id}.snappy.parquet"
            if spec.partition_by:
                rel = "/".join(f"{c}={_escape(values[c])}" for c in spec.partition_by) + "/" + rel
            src = os.path.join(staging, f"{i:05d}.parquet")
            pq.write_table(rows.drop_columns(list(spec.partition_by)), src, compression="snappy")
            stats = _file_stats(src, spec)
            dest = os.path.join(path, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(src, dest)
            staged.rows += stats["numRecords"]
            staged.adds.append(AddAction(
                path=rel, size=os.path.getsize(dest), partition_values=values,
                modification_time=now_ms, data_change=True, stats=json.dumps(stats)))
    except BaseException:
        staged.discard()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(os.path.join(path, STAGING_DIR))
    return staged


def append_arrow(root: str, spec: TableSpec, table, *, txn: Txn | None = None,
                 metadata: Mapping[str, str] | None = None, snapshot=None) -> CommitResult:
    """Append an Arrow table in one commit (driver-side; see :func:`stage_arrow`)."""
    dt = snapshot or ensure_table(root, spec)
    if already_committed(dt, txn):
        return CommitResult(spec.name, dt.version(), skipped=True,
                            reason="transaction already committed")
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
    if already_committed(dt, txn):
        return CommitResult(spec.name, dt.version(), skipped=True,
                            reason="transaction already committed")
    path = table_path(root, spec)
    schema = spec.arrow_schema()
    table = table.select(spec.column_names).cast(schema)
    parts = {}
    if spec.partition_by:
        parts = {c: {_partition_str(v) for v in pc.unique(table[c]).to_pylist()}
                 for c in spec.partition_by}
    data_on = [c for c in on if c not in spec.partition_by]
    wanted = pa.Table.from_pydict({c: table[c] for c in data_on})
    key = _row_key(wanted, data_on)
    removes, kept = [], []
    now = int(time.time() * 1000)
    for a in _add_actions(dt):
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
