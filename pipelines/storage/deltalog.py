"""The Delta log through delta-rs: tables, transactions, and the one stage -> commit core.

Spark executors (:mod:`pipelines.storage.spark_io`) or the driver with pyarrow
(:mod:`pipelines.storage.arrow_io`) write Parquet files into a staging folder of the table;
:func:`adopt` moves them into the table with their statistics, and :func:`commit` adds them
(and removes rewritten files) in one atomic Delta transaction. The JVM Delta connector is a
Maven artifact, out of reach of the machines lakerec is built on, hence delta-rs for the log.

delta-rs' own commit retry rebases a stale partition overwrite onto the new snapshot without
removing files committed meanwhile (seen with deltalake 1.6.6), so every commit here is made
with ``max_commit_retries=0`` and conflicts are judged by :func:`commit`: blind appends and
writes to partitions nobody else touched are retried (bounded); anything else raises
:class:`DeltaConflictError`.

**When is a write done?** Every write carries one or more :class:`Txn` (Delta application
transactions, ``txn`` actions in the log). :func:`done` is the one answer, used by every
writer and by :func:`commit`: a transaction is done when the table records its app id at
its version, or, for a *sequence* (a stream's batch ids, :meth:`Txn.batch`), at that version
or a later one. Content transactions (:meth:`Txn.of_content`, a hash of a batch job's inputs)
have no order, so only their own version counts.

Example
-------
>>> t = Txn.batch("lakerec.stream/feedback", 7)
>>> t.sequence, Txn.of_content("lakerec.score", "model=3").sequence
(True, False)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from pipelines.errors import ConflictError, DataError, UsageError
from schemas.tables import TableSpec

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"
# Reader features whose files cannot be read from a plain file list.
_READABLE_FEATURES = {"timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"}


class DeltaConflictError(ConflictError):
    """Another writer committed a conflicting change first. Re-run the job."""


class UnsupportedTableError(DataError):
    """The table exists but lakerec cannot read or write it as declared."""


class TableMissingError(DataError, LookupError):
    """The table (or the asked-for version) does not exist."""


class BrokenTableError(DataError):
    """The table's log or files are damaged; ``lakerec doctor`` says how to recover."""


@dataclass(frozen=True)
class Txn:
    """A Delta application transaction: ``(app_id, version)``, recorded with the commit.

    ``sequence`` marks versions that only grow (a stream's batch ids): then a recorded later
    version means this one is done too. See :func:`done`.
    """

    app_id: str
    version: int
    sequence: bool = False

    @classmethod
    def of_content(cls, app_id: str, *parts: object) -> Txn:
        """A batch job's write: the version is a hash of its inputs ("same inputs = done")."""
        digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()
        return cls(app_id, int(digest[:15], 16))  # 60 bits: a positive Delta long

    @classmethod
    def batch(cls, app_id: str, batch_id: int) -> Txn:
        """Batch ``batch_id`` of a stream's sequence of writes."""
        return cls(app_id, int(batch_id), sequence=True)

    def done_in(self, dt) -> bool:
        """Whether table snapshot ``dt`` records this transaction (the one rule)."""
        v = dt.transaction_version(self.app_id)
        return v is not None and (v >= self.version if self.sequence else v == self.version)


def _txns(txn: Txn | Iterable[Txn] | None) -> list[Txn]:
    if txn is None:
        return []
    return [txn] if isinstance(txn, Txn) else list(txn)


def done(dt, txn: Txn | Iterable[Txn] | None) -> bool:
    """True when every given transaction is done in ``dt`` (:meth:`Txn.done_in`)."""
    txns = _txns(txn)
    return bool(txns) and all(t.done_in(dt) for t in txns)


def skipped(spec: TableSpec, dt) -> CommitResult:
    """The result of a write whose transaction is already done."""
    return CommitResult(spec.name, dt.version(), skipped=True,
                        reason="transaction already committed")


def txn_version(dt, app_id: str) -> int | None:
    """The version recorded for ``app_id`` (a stream's last batch id), or ``None``."""
    return dt.transaction_version(app_id)


def _allowed(partition: Mapping[str, object] | None) -> dict[str, set]:
    """``{"dt": d}`` or ``{"dt": [d1, d2]}`` -> ``{"dt": {"d1", "d2"}}`` (string values)."""
    out = {}
    for k, v in (partition or {}).items():
        vs = v if isinstance(v, list | tuple | set | frozenset) else [v]
        out[k] = {partition_str(x) for x in vs}
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
    """The folder of a table under the lakehouse root.

    A table folder that is a symlink leading out of the lakehouse is refused
    (:class:`pipelines.errors.UsageError`): every write would go through it, elsewhere.
    """
    path = os.path.join(root, spec if isinstance(spec, str) else spec.name)
    if os.path.islink(path) or os.path.islink(os.path.join(path, "_delta_log")):
        real, home = os.path.realpath(path), os.path.realpath(root)
        if not real.startswith(home.rstrip(os.sep) + os.sep):
            raise UsageError(f"table folder {path} is a symlink to {real}, outside the "
                             f"lakehouse {home}: refused")
    return path


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
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        if version is not None and _log_file(path, version) is None:
            raise TableMissingError(f"table {name} has no version {version}") from None
        at = f" at version {version}" if version is not None else ""
        raise BrokenTableError(f"table {name}{at} cannot be read ({first}); `lakerec doctor` "
                               "says how to recover") from None


@dataclass(frozen=True)
class Commit:
    """One entry of a table's history, as its log records it."""

    version: int
    at: _dt.datetime  # the commit time written inside the commit (survives a copy)
    operation: str
    metadata: Mapping[str, str]  # the writer's ``lakerec.*`` keys (job, inputs, k ...)
    metrics: Mapping[str, object]


def _commit_time(info: Mapping) -> _dt.datetime:
    # in-commit timestamp when the table has them, else the commitInfo timestamp: both live in
    # the commit's own JSON, so a copied lakehouse keeps them (file modification times do not)
    ms = info.get("inCommitTimestamp") or info["timestamp"]
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC)


def history(root: str, spec: TableSpec | str, limit: int | None = None, *,
            counts: bool = True) -> list[Commit]:
    """The table's commits, newest first (``limit`` of them).

    Cost: one small JSON read per commit returned (``counts``: a second one, parsing its
    actions for the rows and files it added and removed); the log's retained commits bound it.
    """
    dt = open_table(root, spec)
    path = table_path(root, spec)
    out = []
    for h in dt.history(limit):
        meta = {k: str(v) for k, v in h.items() if k.startswith("lakerec.")}
        v = int(h["version"])
        if h.get("operation") == "RESTORE":  # what it restored, for readers of the metadata
            meta["lakerec.restored_version"] = str(
                (h.get("operationParameters") or {}).get("version", ""))
        out.append(Commit(v, _commit_time(h), str(h.get("operation", "")), meta,
                          {**(_action_counts(path, v) if counts else {}),
                           **(h.get("operationMetrics") or {})}))
    return out


def undone_skipped(commits: list[Commit]) -> list[Commit]:
    """``commits`` (newest first) without those a later restore undid: after ``RESTORE`` to
    v3, the commits after v3 up to the restore no longer describe the table's rows."""
    out, below = [], None
    for c in commits:
        if below is not None and c.version > below:
            continue
        restored = c.metadata.get("lakerec.restored_version", "")
        if c.operation == "RESTORE" and restored.isdigit():
            below = int(restored) if below is None else min(below, int(restored))
            continue
        out.append(c)
    return out


def _action_counts(path: str, version: int) -> dict:
    """Files and rows a commit added and removed, from its actions (commits written through a
    transaction carry no operation metrics). ``{}`` if the commit file is gone."""
    try:
        actions = _log_changes(path, version - 1, version)
    except FileNotFoundError:
        return {}
    adds = [a["add"] for a in actions if "add" in a]
    rows = [json.loads(a["stats"]).get("numRecords") if a.get("stats") else None
            for a in adds]
    return {"num_added_files": len(adds),
            "num_removed_files": sum("remove" in a for a in actions),
            "num_added_rows": sum(rows) if None not in rows else None}


_COMMIT_FILE = re.compile(r"^(\d{20})\.json$")


def _commit_info_time(path: str, version: int) -> _dt.datetime | None:
    """The commit time recorded inside commit ``version`` (its ``commitInfo``), or None."""
    try:
        with open(os.path.join(path, "_delta_log", f"{version:020d}.json")) as fh:
            for line in fh:
                if '"commitInfo"' in line:
                    return _commit_time(json.loads(line)["commitInfo"])
    except (OSError, ValueError, KeyError):
        return None
    return None


def version_at(root: str, spec: TableSpec | str, when: _dt.datetime) -> int:
    """The table's version as of ``when``: the newest commit made at or before it.

    Commit times come from the log's commit records, never from file modification times, so
    the answer is the same on a copied lakehouse. A time before the table's earliest retained
    commit is a :class:`~pipelines.errors.UsageError` naming it, not silently version 0.
    Cost: one listing of the log folder and a binary search over the retained commits (about
    log2(commits) commit files read): a week back on a table the stream commits to every
    second is ~20 reads, not 600,000. Commit times increase with the version (Delta's rule;
    in-commit timestamps guarantee it).
    """
    name = spec if isinstance(spec, str) else spec.name
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    path = table_path(root, spec)
    latest = open_table(root, spec).version()
    versions = sorted(int(m.group(1)) for n in os.listdir(os.path.join(path, "_delta_log"))
                      if (m := _COMMIT_FILE.match(n)) and int(m.group(1)) <= latest)
    first_at = _commit_info_time(path, versions[0]) if versions else None
    if first_at is None:  # no commit file to read (a log of checkpoints only): the history
        return _version_at_by_history(root, spec, name, when)
    if first_at > when:
        raise _before_history(name, when, versions[0], first_at)
    lo, hi = 0, len(versions) - 1  # invariant: versions[lo] was committed at or before `when`
    while lo < hi:
        mid = (lo + hi + 1) // 2
        at = _commit_info_time(path, versions[mid])
        if at is not None and at <= when:
            lo = mid
        else:
            hi = mid - 1
    return versions[lo]


def _before_history(name: str, when: _dt.datetime, version: int,
                    at: _dt.datetime) -> UsageError:
    return UsageError(f"{name} has no version as of {when.isoformat()}: its "
                      f"{'first' if version == 0 else 'earliest retained'} commit, "
                      f"v{version}, was made at {at.isoformat()}")


def _version_at_by_history(root: str, spec, name: str, when: _dt.datetime) -> int:
    """:func:`version_at` through delta-rs' history, newest first in growing pages."""
    limit = 16
    while True:
        commits = history(root, spec, limit, counts=False)
        for c in commits:  # newest first
            if c.at <= when:
                return c.version
        if len(commits) < limit:
            raise _before_history(name, when, commits[-1].version, commits[-1].at)
        limit *= 4


def _log_file(path: str, version: int) -> str | None:
    """The commit file of ``version`` if present (or a checkpoint at it)."""
    log_dir = os.path.join(path, "_delta_log")
    f = os.path.join(log_dir, f"{version:020d}.json")
    if os.path.exists(f):
        return f
    cps = [n for n in os.listdir(log_dir) if n.startswith(f"{version:020d}.checkpoint")] \
        if os.path.isdir(log_dir) else []
    return os.path.join(log_dir, cps[0]) if cps else None


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
    dt = open_table(root, spec)
    _add_new_columns(dt, spec)
    check_schema(dt, spec)
    return dt


def _add_new_columns(dt, spec: TableSpec) -> None:
    """Give a table made by an earlier lakerec the nullable columns declared after its own
    (a schema-only commit; old files read them as null). Anything else is left to
    :func:`check_schema` to refuse."""
    names = [f.name for f in dt.schema().fields]
    want = spec.column_names
    if names == want or names != want[:len(names)]:
        return
    new = [spec.column(c) for c in want[len(names):]]
    if not all(c.nullable for c in new):
        return
    from deltalake.schema import Field, PrimitiveType

    prim = {"string": "string", "int": "integer", "long": "long", "double": "double",
            "float": "float", "date": "date", "timestamp": "timestamp", "binary": "binary"}
    if any(c.type not in prim for c in new):
        return
    dt.alter.add_columns([Field(c.name, PrimitiveType(prim[c.type]), nullable=True)
                          for c in new])
    dt.update_incremental()
    log.info("table %s: added columns %s", spec.name, [c.name for c in new])


def check_schema(dt, spec: TableSpec) -> None:
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


def add_actions(dt) -> list[dict]:
    """The snapshot's add actions as a list of dicts (path, size, partition values)."""
    import pyarrow as pa

    tbl = pa.table(dt.get_add_actions(flatten=True))
    part_cols = [c for c in tbl.column_names if c.startswith("partition.")]
    out = []
    for row in tbl.select(["path", "size_bytes", *part_cols]).to_pylist():
        out.append({
            "path": row["path"],
            "size": row["size_bytes"],
            "partition": {c[len("partition."):]: partition_str(row[c]) for c in part_cols},
        })
    return out


def partition_str(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, _dt.datetime):
        return v.isoformat(sep=" ")
    return v.isoformat() if isinstance(v, _dt.date) else str(v)


def hive_consistent(action: dict, spec: TableSpec) -> bool:
    dirs = unquote(action["path"]).split("/")[:-1]
    expected = [f"{c}={escape_partition(action['partition'].get(c))}" for c in spec.partition_by]
    return dirs[-len(expected):] == expected if expected else True


def escape_partition(value: str | None) -> str:
    """Hive-style partition path escaping, as Spark writes it."""
    if value is None:
        return "__HIVE_DEFAULT_PARTITION__"
    return quote(value, safe=" !$&'()*+,;@[]^`{}~-._")


def latest_version(root: str, spec: TableSpec | str) -> int | None:
    """The table's current version, or ``None`` if it does not exist."""
    return open_table(root, spec).version() if exists(root, spec) else None


def partition_values(root: str, spec: TableSpec | str, column: str,
                     version: int | None = None) -> list[str]:
    """The distinct values of partition ``column`` in a snapshot (from the log, no data read)."""
    dt = open_table(root, spec, version)
    return sorted({a["partition"].get(column) for a in add_actions(dt)} - {None})



# --------------------------------------------------------------------------- staging and commit


def adopt(staging: str, spec: TableSpec, table_path_: str, write_id: str, *,
          partition: Mapping[str, object] | None = None) -> StagedWrite:
    """Move the Parquet files under ``staging`` into the table: the one staging core.

    ``staging`` holds files in hive-style partition folders (``dt=2024-05-01/x.parquet``),
    however they were written (Spark or pyarrow). Each file gets a table-relative name, its
    statistics from the footer and an ``AddAction``; the staging folder is removed. Nothing
    is visible to readers until :func:`commit`; a job killed before that leaves orphans that
    ``vacuum`` removes. With ``partition`` every file must belong to it (a value or a list of
    values per column), else nothing is adopted and ``ValueError`` is raised.
    """
    from deltalake.transaction import AddAction

    want = _allowed(partition)
    found = []
    try:
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
                    raise ValueError(f"{spec.name}: rows outside partition {want}: {values}")
                found.append((os.path.join(dirpath, name), rel_dir, values))
        staged = StagedWrite(table_path=table_path_, spec=spec, write_id=write_id)
        now_ms = int(time.time() * 1000)
        for i, (src, rel_dir, values) in enumerate(sorted(found)):
            rel = f"part-{i:05d}-{write_id}.snappy.parquet"
            if rel_dir != ".":
                rel = f"{rel_dir}/{rel}"
            dest = os.path.join(table_path_, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            stats = _file_stats(src, spec)
            os.replace(src, dest)
            staged.rows += stats["numRecords"]
            staged.adds.append(AddAction(
                path=rel, size=os.path.getsize(dest), partition_values=values,
                modification_time=now_ms, data_change=True, stats=json.dumps(stats)))
        return staged
    except BaseException:
        if "staged" in locals():
            staged.discard()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(os.path.dirname(staging))


def staging_folder(table_path_: str, write_id: str) -> str:
    """A new staging folder for one write (stale ones of killed writers are swept first)."""
    parent = os.path.join(table_path_, STAGING_DIR)
    _sweep_staging(parent)
    return os.path.join(parent, write_id)


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


def _changes_data(action: dict) -> bool:
    """Whether a log action adds or removes rows (not a compaction's ``dataChange=false``)."""
    act = action.get("add") or action.get("remove")
    return act is not None and act.get("dataChange", True)


@dataclass(frozen=True)
class DataChanges:
    """What commits ``after+1 .. upto`` did to a table's rows (:func:`data_changes`)."""

    added: tuple[str, ...]  # relative paths (unquoted) of the files added with dataChange
    added_partitions: tuple[dict, ...]  # their partition values (as the log holds them)
    removed_data: bool  # whether any commit removed rows (a delete, overwrite or restore)
    schema_changed: bool


def data_changes(root: str, spec: TableSpec | str, after: int, upto: int) -> DataChanges | None:
    """The data-changing actions of commits ``after+1 .. upto``, read from their log files,
    or ``None`` when one of those files is gone (the log was cleaned up past ``after``).

    Files added or removed with ``dataChange = false`` (compaction, ``optimize``) move rows
    without changing them, and are not reported. Cost: the commit files of the range.
    """
    try:
        changes = _log_changes(table_path(root, spec), after, upto)
    except FileNotFoundError:
        return None
    data = [a for a in changes if _changes_data(a)]
    adds = [a["add"] for a in data if "add" in a]
    return DataChanges(
        added=tuple(unquote(a["path"]) for a in adds),
        added_partitions=tuple(
            {k: partition_str(v) for k, v in (a.get("partitionValues") or {}).items()}
            for a in adds),
        removed_data=any("remove" in a for a in data),
        schema_changed=any("metaData" in a or "protocol" in a for a in changes))


def _conflict(path: str, spec: TableSpec, read_version: int, latest: int, *, mode: str,
              partition: Mapping | None, removes: list, scope: str) -> str | None:
    """Why retrying this commit on top of ``latest`` would be unsafe, or ``None`` if safe."""
    changes = _log_changes(path, read_version, latest)
    data = [a for a in changes if _changes_data(a)]
    if any("metaData" in a or "protocol" in a for a in changes):
        return "the table's schema or protocol changed"
    if scope == "files":
        # a snapshot rewrite of a merge-on-read table: rows appended since are newer and
        # stay current; only a concurrent removal of a file it replaces makes it unsafe
        ours = {r.path for r in removes}
        gone = [a for a in changes if "remove" in a and unquote(a["remove"]["path"]) in ours]
        return (f"commits {read_version + 1}..{latest} removed files this write replaces"
                if gone else None)
    if removes:
        # a rewrite of files that a concurrent commit removed -- even a compaction's
        # dataChange=false move: retried, it would keep the moved copy of the old rows too
        ours = {r.path for r in removes}
        if any("remove" in a and unquote(a["remove"]["path"]) in ours for a in changes):
            return f"commits {read_version + 1}..{latest} removed files this write rewrites"
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
    conflict_scope : {"partition", "table", "files"}
        ``table`` when the data written was computed from the whole table, so that any
        concurrent data change makes it stale; ``files`` for a rewrite of a merge-on-read
        table's ``removes``, which concurrent appends (newer rows) do not make stale.
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
        if done(dt, txns):
            staged.discard()
            return skipped(spec, dt)
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
