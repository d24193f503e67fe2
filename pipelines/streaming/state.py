"""The stream's keyed state: each user's history and ``user_idx``, looked up by user.

A micro-batch refreshes the users it touches, and needs for each of them the whole history
(to fold them in) and their index. Reading those from ``interactions`` and ``user_index``
costs a scan of the tables -- it grows with the lakehouse, not with the batch. So the stream
keeps them in :class:`KeyedState`, an embedded SQLite database on the driver's local disk,
keyed by user:

- ``pairs(user_id, item_id, event_type) -> n, total``: the number of events and the sum of
  their values per group, the sufficient statistics of the confidence ``r_ui``
  (:func:`schemas.events.pair_r`); a user's history is ``O(distinct items)`` rows, whatever
  the number of events.
- ``users(user_id) -> user_idx``.
- ``ids(event_id, dt) -> ingest_id``: the event ids of the last ``id_days`` arrival days
  (``dt``), when the state is opened with ``id_days``: the stream's deduplication looks the
  batch's ids up here, ``O(batch * log(state))``, instead of reading the ``event_id`` column
  of the horizon's partitions every batch -- a few days of arrivals, which at a real
  stream's rate dwarfs the batch. The window slides with the clock: ids older than it are
  pruned, a lookup reaching before it answers ``None`` (the caller reads the table).

The state is *derived*, never the source of truth: it records the Delta version and table
id of each table it reflects and catches up from the log (:func:`sync`), reading only the
files added since (the batch's own file, a day's ingest) -- the cost of the new rows, not of
the table. Files moved with ``dataChange = false`` (compaction) are skipped; a commit that
removed rows (a delete, an overwrite, ``restore``), a schema change, a log cleaned up past
the state's version, another table at the same path, or a newer layout makes it rebuild
from the snapshot, file by file (memory: one file). Every sync is one SQLite transaction,
so a process killed mid-way leaves the previous, consistent state. Deleting the folder is
always safe: the next start rebuilds it (``O(table)``, once).

Why not Spark's state store: ``transformWithStateInPandas`` keyed by user was measured here
(``local[2]``, RocksDB provider, a processor holding each user's history in one value): about
1 s per micro-batch of 1,000 users for the state operator alone, before any fold-in -- more
than this stream's whole latency budget. The lookups here take milliseconds.

Example
-------
>>> st = KeyedState.open("/lh/_stream/feedback/state")                  # doctest: +SKIP
>>> st.sync(lakehouse="/lh")                                            # doctest: +SKIP
>>> st.history(["user-1"])                                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from urllib.parse import unquote

from pipelines.storage import delta
from schemas.tables import INTERACTIONS, USER_INDEX, TableSpec

log = logging.getLogger(__name__)

LAYOUT = 2  # bump when the tables below change: a state of another layout is rebuilt
HISTORY_COLUMNS = ("user_id", "item_id", "event_type", "n", "total")
_CHUNK = 500  # keys per IN (...) lookup, well under SQLite's parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pairs (
    user_id TEXT NOT NULL, item_id TEXT NOT NULL, event_type TEXT NOT NULL,
    n INTEGER NOT NULL, total REAL NOT NULL,
    PRIMARY KEY (user_id, item_id, event_type)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, user_idx INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS users_by_idx ON users (user_idx);
CREATE TABLE IF NOT EXISTS ids (
    event_id TEXT NOT NULL, dt TEXT NOT NULL, ingest_id TEXT,
    PRIMARY KEY (event_id, dt)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ids_by_dt ON ids (dt);
"""


def aggregate_history(frame):
    """Events -> per-group statistics (the one aggregation, for the state and for tests).

    Parameters
    ----------
    frame : pandas.DataFrame
        ``user_id, item_id, event_type, value``.

    Returns
    -------
    pandas.DataFrame
        ``user_id, item_id, event_type, n, total``: one row per group, ``n`` its events and
        ``total`` the sum of their values (a missing value counts 0).
    """
    import pandas as pd

    if len(frame) == 0:
        return pd.DataFrame({"user_id": pd.Series(dtype=object),
                             "item_id": pd.Series(dtype=object),
                             "event_type": pd.Series(dtype=object),
                             "n": pd.Series(dtype="int64"), "total": pd.Series(dtype="float64")})
    keys = ["user_id", "item_id", "event_type"]
    f = frame[keys].copy()
    f["total"] = pd.to_numeric(frame["value"], errors="coerce").astype("float64").fillna(0.0)
    return f.groupby(keys, sort=True).agg(n=("total", "size"), total=("total", "sum")) \
        .reset_index()


class KeyedState:
    """The stream's per-user state (see the module docstring). One writer: the driver."""

    def __init__(self, db: sqlite3.Connection, path: str, id_days: int | None = None):
        self.db = db
        self.path = path
        self.id_days = id_days

    @classmethod
    def open(cls, folder: str, id_days: int | None = None) -> KeyedState:
        """Open (creating) the state in ``folder``; a state of another layout starts empty.

        ``id_days``: keep the event ids of ``interactions`` partitions ``dt`` within that many
        days before today (:meth:`known_ids`); ``None`` keeps none.
        """
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "state.sqlite")
        # the driver runs batches on Py4J callback threads, one at a time (the query's lock)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last sync
        db.executescript(_SCHEMA)
        st = cls(db, path)
        if st._meta("layout") not in (None, str(LAYOUT)):
            log.info("keyed state %s: layout %s, not %d; rebuilding", path, st._meta("layout"),
                     LAYOUT)
            db.executescript("DELETE FROM meta; DELETE FROM pairs; DELETE FROM users; "
                             "DELETE FROM ids;")
        if st._meta("layout") is None:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('layout', ?)", (str(LAYOUT),))
        st.id_days = id_days
        return st

    def close(self) -> None:
        self.db.close()

    # -- lookups -------------------------------------------------------------------------

    def history(self, users: Iterable[str]):
        """The statistics of ``users`` (pandas, :data:`HISTORY_COLUMNS`), sorted by key.

        Cost: ``O(rows returned * log(state))``, one indexed range per user.
        """
        import pandas as pd

        rows = []
        for chunk in _chunks(sorted(set(users))):
            marks = ",".join("?" * len(chunk))
            rows += self.db.execute(
                f"SELECT user_id, item_id, event_type, n, total FROM pairs "
                f"WHERE user_id IN ({marks}) ORDER BY 1, 2, 3", chunk).fetchall()
        out = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
        return out.astype({"n": "int64", "total": "float64"}) if len(out) else \
            aggregate_history(pd.DataFrame(columns=["user_id", "item_id", "event_type",
                                                    "value"]))

    def user_indexes(self, users: Iterable[str]) -> dict[str, int]:
        """``{user_id: user_idx}`` of those of ``users`` that have one. ``O(users log n)``."""
        out: dict[str, int] = {}
        for chunk in _chunks(sorted(set(users))):
            marks = ",".join("?" * len(chunk))
            out.update(self.db.execute(
                f"SELECT user_id, user_idx FROM users WHERE user_id IN ({marks})", chunk))
        return out

    def next_user_idx(self) -> int:
        """One more than the largest index (0 when none). ``O(log n)``: an index lookup."""
        got = self.db.execute("SELECT max(user_idx) FROM users").fetchone()[0]
        return 0 if got is None else int(got) + 1

    def known_ids(self, ids: Iterable[str], lo: _dt.date, hi: _dt.date
                  ) -> dict[str, str | None] | None:
        """``{event_id: ingest_id}`` of those of ``ids`` in ``interactions`` partitions
        ``lo <= dt <= hi``, or ``None`` when the state's id window does not reach back to
        ``lo`` (then only a read of the table answers).

        Cost: ``O(ids * log(state))``, one primary-key probe per id.
        """
        floor = self._meta("ids.floor")
        if floor is None or lo.isoformat() < floor:
            return None
        out: dict[str, str | None] = {}
        for chunk in _chunks(sorted(set(ids))):
            marks = ",".join("?" * len(chunk))
            out.update(self.db.execute(
                f"SELECT event_id, ingest_id FROM ids WHERE event_id IN ({marks}) "
                f"AND dt BETWEEN ? AND ?", [*chunk, lo.isoformat(), hi.isoformat()]))
        return out

    def version(self, spec: TableSpec) -> int | None:
        got = self._meta(f"{spec.name}.version")
        return None if got is None else int(got)

    # -- catching up ---------------------------------------------------------------------

    def sync(self, lakehouse: str, specs: Iterable[TableSpec] = (INTERACTIONS, USER_INDEX),
             snapshots: dict | None = None, *, today: _dt.date | None = None
             ) -> dict[str, str]:
        """Catch the state up with ``specs`` (at their latest versions, or at the opened
        ``snapshots`` given by table name); returns what it did per table.

        ``today`` (default: the UTC date) places the id window (``id_days``).

        Cost: the commit files since the last sync and the data files they added; a rebuild
        (see the module docstring) reads the snapshot once, a file at a time; a window that
        moved to a new day deletes the ids of the day that left it (an indexed range); a
        first or widened window reads the ``event_id`` column of the days it gains, once.
        """
        done = {}
        for spec in specs:
            snap = (snapshots or {}).get(spec.name)
            if snap is None and delta.exists(lakehouse, spec):
                snap = delta.open_table(lakehouse, spec)
            done[spec.name] = self._sync_table(lakehouse, spec, snap)
            if spec is INTERACTIONS and self.id_days is not None:
                today = today or _dt.datetime.now(_dt.UTC).date()
                self._slide_ids(lakehouse, snap, today - _dt.timedelta(days=self.id_days))
        return done

    def _slide_ids(self, lakehouse: str, snap, floor: _dt.date) -> None:
        """Move the id window's first day to ``floor``: forward, prune the days that left;
        back (or a first window), read the ids of the days that entered from the files of
        ``snap``, the snapshot the state now reflects."""
        have, want = self._meta("ids.floor"), floor.isoformat()
        if have == want:
            return
        with self._transaction():
            if have is not None and want > have:
                gone = self.db.execute("DELETE FROM ids WHERE dt < ?", (want,)).rowcount
                log.info("keyed state: id window now from %s (%d ids pruned)", want, gone)
            elif snap is not None:
                entered = [a for a in delta.add_actions(snap)
                           if want <= _day(a["partition"]) < (have or "9999-12-31")]
                rows = sum(self._apply_ids(lakehouse, a["path"], a["partition"])
                           for a in entered)
                log.info("keyed state: id window now from %s (%d files, %d ids read)",
                         want, len(entered), rows)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('ids.floor', ?)", (want,))

    def _sync_table(self, lakehouse: str, spec: TableSpec, snap) -> str:
        have, have_id = self.version(spec), self._meta(f"{spec.name}.id")
        if snap is None:
            if have is None:
                return "no table"
            return self._rebuild(lakehouse, spec, None, "the table is gone")
        latest, table_id = snap.version(), snap.metadata().id
        if have is None:
            return self._rebuild(lakehouse, spec, snap, "new state")
        if table_id != have_id:
            return self._rebuild(lakehouse, spec, snap, "another table at this path")
        if have == latest:
            return "current"
        if have > latest:
            return self._rebuild(lakehouse, spec, snap, f"the table went back to v{latest}")
        ch = delta.data_changes(lakehouse, spec, have, latest)
        if ch is None:
            return self._rebuild(lakehouse, spec, snap, f"log cleaned up past v{have}")
        if ch.removed_data or ch.schema_changed:
            return self._rebuild(lakehouse, spec, snap, f"rows removed or schema changed in "
                                                        f"v{have + 1}..v{latest}")
        # a stream stopped for longer than `lakerec maintain`'s retention: files it has not
        # read yet may have been compacted and vacuumed since (the rows live on in others)
        root = delta.table_path(lakehouse, spec)
        if not all(os.path.exists(os.path.join(root, f)) for f in ch.added):
            return self._rebuild(lakehouse, spec, snap, f"files of v{have + 1}..v{latest} "
                                                        "were vacuumed")
        with self._transaction():
            rows = sum(self._apply(lakehouse, spec, f, part)
                       for f, part in zip(ch.added, ch.added_partitions, strict=True))
            self._set_version(spec, latest, table_id)
        return f"v{have}->v{latest}: {len(ch.added)} files, {rows} rows"

    def _rebuild(self, lakehouse: str, spec: TableSpec, snap, why: str) -> str:
        t0 = time.perf_counter()
        files = delta.add_actions(snap) if snap is not None else []
        with self._transaction():
            for table in (("pairs", "ids") if spec is INTERACTIONS else ("users",)):
                self.db.execute(f"DELETE FROM {table}")
            rows = sum(self._apply(lakehouse, spec, a["path"], a["partition"]) for a in files)
            if snap is None:
                self.db.execute("DELETE FROM meta WHERE key IN (?, ?)",
                                (f"{spec.name}.version", f"{spec.name}.id"))
            else:
                self._set_version(spec, snap.version(), snap.metadata().id)
            took = time.perf_counter() - t0
            # the last rebuild, for operators and bench/scale.py
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (
                f"{spec.name}.rebuild", json.dumps({"why": why, "files": len(files),
                                                    "rows": rows, "seconds": round(took, 3)})))
        log.info("keyed state: rebuilt %s (%s): %d files, %d rows in %.1f s", spec.name, why,
                 len(files), rows, took)
        return f"rebuilt ({why}): {len(files)} files, {rows} rows"

    def _apply(self, lakehouse: str, spec: TableSpec, rel_path: str,
               partition: dict | None = None) -> int:
        """Fold one data file of ``spec`` (its partition values as the log holds them) into
        the state; returns its rows."""
        import pyarrow.parquet as pq

        file = os.path.join(delta.table_path(lakehouse, spec), unquote(rel_path))
        if spec is INTERACTIONS:
            floor = self._meta("ids.floor")
            with_ids = floor is not None and _day(partition) >= floor
            tbl = pq.read_table(file, columns=["user_id", "item_id", "event_type", "value",
                                               *(["event_id", "ingest_id"] if with_ids else [])])
            if with_ids:
                self._insert_ids(tbl, _day(partition))
            agg = aggregate_history(tbl.select(["user_id", "item_id", "event_type",
                                                "value"]).to_pandas())
            self.db.executemany(
                "INSERT INTO pairs VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, item_id, "
                "event_type) DO UPDATE SET n = n + excluded.n, total = total + excluded.total",
                zip(agg["user_id"], agg["item_id"], agg["event_type"],
                    agg["n"].astype(int).tolist(), agg["total"].tolist(), strict=True))
        elif spec is USER_INDEX:
            tbl = pq.read_table(file, columns=["user_id", "user_idx"])
            self.db.executemany("INSERT OR REPLACE INTO users VALUES (?, ?)",
                                zip(tbl["user_id"].to_pylist(), tbl["user_idx"].to_pylist(),
                                    strict=True))
        else:
            raise ValueError(f"the keyed state does not follow table {spec.name}")
        return tbl.num_rows

    def _apply_ids(self, lakehouse: str, rel_path: str, partition: dict) -> int:
        """The event ids of one ``interactions`` file into ``ids``; returns its rows."""
        import pyarrow.parquet as pq

        file = os.path.join(delta.table_path(lakehouse, INTERACTIONS), unquote(rel_path))
        tbl = pq.read_table(file, columns=["event_id", "ingest_id"])
        self._insert_ids(tbl, _day(partition))
        return tbl.num_rows

    def _insert_ids(self, tbl, day: str) -> None:
        # idempotent: a file read by a window's backfill and again by a catch-up counts once
        self.db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?, ?)",
                            ((e, day, i) for e, i in zip(tbl["event_id"].to_pylist(),
                                                        tbl["ingest_id"].to_pylist(),
                                                        strict=True) if e is not None))

    # -- plumbing ------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        got = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if got is None else got[0]

    def _set_version(self, spec: TableSpec, version: int, table_id: str) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            [(f"{spec.name}.version", str(version)),
                             (f"{spec.name}.id", str(table_id))])

    @contextlib.contextmanager
    def _transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

def _day(partition: dict | None) -> str:
    """The ``dt`` partition value (ISO date) of an ``interactions`` file, from the log."""
    day = (partition or {}).get("dt")
    if day is None:
        raise ValueError("an interactions file without a dt partition value in the log")
    return day


def _chunks(keys: list[str]):
    for i in range(0, len(keys), _CHUNK):
        yield keys[i:i + _CHUNK]
