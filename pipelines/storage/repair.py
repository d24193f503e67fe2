"""Diagnosis and recovery of damaged tables: what ``lakerec doctor`` and ``restore`` run.

A table is healthy when its log reads to the latest version and every data file that
version references is present. Two kinds of damage are met in practice:

* **an unreadable log** (a commit file truncated by a full disk or a bad copy): the latest
  version cannot be loaded, earlier ones still can (delta-rs reads the log only up to the
  version asked for). Recovery: :func:`restore` to the latest readable version sets the
  damaged commit files aside (moved into ``<table>/_lakerec_damaged/<stamp>/``, never
  deleted), after which the table is that version again.
* **missing or corrupt data files** (deleted by hand, a vacuum run elsewhere, a truncated
  copy): the log is fine but a read fails. Recovery: :func:`restore` to the latest version
  whose files are all present and readable: a new commit (Delta ``RESTORE``), the history
  kept.

A restore also rolls back what the table records as done: the application transactions
(``lakerec.ingest/dt=...``, ``lakerec.stream/<query>``, the batch jobs' input hashes) are
set back to their values at the restored version, so that re-running ``ingest``, ``score``
or the stream writes again what the restore took away instead of finding it done.

Stop the table's writers (the stream, scheduled jobs) before a restore.

Example
-------
>>> [h.line() for h in diagnose("/lh")]                    # doctest: +SKIP
['ok      interactions  v12, 34 files', ...]
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shutil
from dataclasses import dataclass

from pipelines.errors import DataError, UsageError
from pipelines.storage.deltalog import add_actions, table_path
from schemas.tables import TABLES

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(\.\d+\.\d+)?\.parquet$")
# any log file of a version: commits, checkpoints, checksums, compacted ranges (by their end)
_VERSIONED = re.compile(r"^(?:\d{20}\.)?(\d{20})\.")
# How far back a diagnosis looks for a sound version (each try reads one snapshot).
MAX_VERSIONS_BACK = 100


@dataclass(frozen=True)
class TableHealth:
    """One table's state: ``ok`` or what is wrong, and the command that repairs it."""

    table: str
    ok: bool
    version: int | None = None
    files: int = 0
    problem: str = ""
    restore_to: int | None = None

    @property
    def command(self) -> str | None:
        if self.ok or self.restore_to is None:
            return None
        return f"lakerec restore {self.table} --version {self.restore_to}"

    def line(self) -> str:
        if self.ok:
            return f"ok      {self.table:<16} v{self.version}, {self.files} files"
        fix = f"\n        recover with: {self.command}" if self.command else \
            "\n        no sound version found in the log: restore the folder from a backup"
        return f"BROKEN  {self.table:<16} {self.problem}{fix}"


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def log_versions(path: str) -> list[int]:
    """Versions with a commit file in ``_delta_log``, newest first."""
    log_dir = os.path.join(path, "_delta_log")
    return sorted((int(m.group(1)) for n in os.listdir(log_dir) if (m := _COMMIT.match(n))),
                  reverse=True)


def _load(path: str, version: int | None = None):
    from deltalake import DeltaTable

    return DeltaTable(path, version=version)


def _missing(path: str, dt) -> list[str]:
    """Data files the snapshot references that are absent or whose Parquet footer does not
    read (one footer read per file)."""
    from urllib.parse import unquote

    import pyarrow.parquet as pq

    out = []
    for a in add_actions(dt):
        f = os.path.join(path, unquote(a["path"]))
        try:
            pq.read_metadata(f)
        except Exception:  # noqa: BLE001 - absent or unreadable: either way not servable
            out.append(a["path"])
    return out


def _sound_before(path: str, start: int) -> int | None:
    """The newest version <= ``start`` that loads and whose files are all present."""
    for v in [v for v in log_versions(path) if v <= start][:MAX_VERSIONS_BACK]:
        try:
            dt = _load(path, v)
        except Exception:  # noqa: BLE001 - a damaged version: look further back
            continue
        if not _missing(path, dt):
            return v
    return None


def check_table(lakehouse: str, name: str) -> TableHealth:
    """Diagnose one table. Cost: the latest snapshot and one ``stat`` per data file; when
    damaged, one snapshot per version looked back at (at most :data:`MAX_VERSIONS_BACK`)."""
    path = table_path(lakehouse, name)
    try:
        dt = _load(path)
    except Exception as e:  # noqa: BLE001 - delta-rs raises generic errors for a bad log
        latest = (log_versions(path) or [None])[0]
        return TableHealth(name, False, latest, problem=f"log unreadable at v{latest}: "
                           f"{_first(e)}",
                           restore_to=_sound_before(path, latest - 1) if latest else None)
    missing = _missing(path, dt)
    files = len(add_actions(dt))
    if missing:
        return TableHealth(name, False, dt.version(), files,
                           problem=f"v{dt.version()}: {len(missing)} of {files} data files "
                           f"missing or unreadable (e.g. {missing[0]})",
                           restore_to=_sound_before(path, dt.version() - 1))
    return TableHealth(name, True, dt.version(), files)


def diagnose(lakehouse: str) -> list[TableHealth]:
    """Every existing table of the lakehouse, in declaration order."""
    from deltalake import DeltaTable

    out = []
    for name in TABLES:
        path = table_path(lakehouse, name)
        if os.path.isdir(os.path.join(path, "_delta_log")) or DeltaTable.is_deltatable(path):
            out.append(check_table(lakehouse, name))
    return out


@dataclass(frozen=True)
class RestoreResult:
    table: str
    version: int  # the table's version now
    restored_to: int
    set_aside: tuple[str, ...] = ()  # damaged log files moved out of the log


def restore(lakehouse: str, name: str, version: int, *, now: _dt.datetime | None = None
            ) -> RestoreResult:
    """Bring table ``name`` back to ``version`` (see the module docstring).

    Readable log: a Delta restore commit (history kept; refused if ``version``'s files are
    not all present). Unreadable latest commit: the commit and checkpoint files after
    ``version`` are moved into ``_lakerec_damaged/`` and the table is ``version`` again.
    """
    if name not in TABLES:
        raise UsageError(f"unknown table {name!r} (one of: {', '.join(TABLES)})")
    path = table_path(lakehouse, name)
    if not os.path.isdir(os.path.join(path, "_delta_log")):
        raise UsageError(f"table {name} does not exist at {path}")
    versions = log_versions(path)
    if version not in versions and not any(_CHECKPOINT.match(n) and int(n[:20]) == version
                                           for n in os.listdir(os.path.join(path,
                                                                            "_delta_log"))):
        raise UsageError(f"table {name} has no version {version} (log holds "
                         f"v{min(versions)}..v{max(versions)})" if versions else
                         f"table {name} has no commits")
    try:
        target = _load(path, version)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"version {version} of {name} cannot be read either ({_first(e)}); "
                        "`lakerec doctor` names a sound one") from None
    missing = _missing(path, target)
    if missing:
        raise DataError(f"version {version} of {name} references {len(missing)} missing data "
                        f"files (e.g. {missing[0]}); `lakerec doctor` names a sound version")
    try:
        latest = _load(path)
    except Exception:  # noqa: BLE001 - the damaged-log case
        latest = None
    if latest is not None:
        if latest.version() == version:
            log.info("table %s is already at v%d", name, version)
            return RestoreResult(name, version, version)
        done_then = _app_versions(path, version)
        latest.restore(version)
        _reset_app_versions(path, name, done_then, set(done_then))
        now_v = _load(path).version()
        log.info("table %s: restored to v%d as v%d", name, version, now_v)
        return RestoreResult(name, now_v, version)
    now = now or _dt.datetime.now(_dt.UTC)
    aside = os.path.join(path, "_lakerec_damaged", now.strftime("%Y%m%dT%H%M%SZ"))
    os.makedirs(aside, exist_ok=True)
    log_dir = os.path.join(path, "_delta_log")
    moved = []
    for n in sorted(os.listdir(log_dir)):
        m = _VERSIONED.match(n)
        if (m and int(m.group(1)) > version) or n == "_last_checkpoint" and \
                _last_checkpoint_after(log_dir, version):
            shutil.move(os.path.join(log_dir, n), os.path.join(aside, n))
            moved.append(n)
    now_v = _load(path).version()
    if now_v != version:
        raise DataError(f"table {name} reads as v{now_v} after setting aside {moved}")
    log.warning("table %s: set aside %d damaged log files in %s; the table is v%d again",
                name, len(moved), aside, version)
    return RestoreResult(name, now_v, version, tuple(moved))


def _app_ids_after(path: str, version: int) -> set[str]:
    """Application ids whose transactions commits after ``version`` recorded."""
    import json

    ids = set()
    for v in log_versions(path):
        if v <= version:
            break
        with open(os.path.join(path, "_delta_log", f"{v:020d}.json")) as f:
            for line in f:
                txn = json.loads(line).get("txn") if line.strip() else None
                if txn:
                    ids.add(txn["appId"])
    return ids


def _app_versions(path: str, version: int) -> dict[str, int]:
    """``{app id: version}`` of the ids recorded after ``version``, as ``version`` had them
    (-1: not at all)."""
    dt = _load(path, version)
    return {a: (dt.transaction_version(a) if dt.transaction_version(a) is not None else -1)
            for a in _app_ids_after(path, version)}


def _reset_app_versions(path: str, name: str, then: dict[str, int], ids: set[str]) -> None:
    """One commit with no data that records ``then``'s transaction versions again."""
    from deltalake import CommitProperties, Transaction

    if not ids:
        return
    spec = TABLES[name]
    dt = _load(path)
    dt.create_write_transaction(
        [], mode="append", schema=spec.arrow_schema(),
        partition_by=list(spec.partition_by) or None,
        commit_properties=CommitProperties(
            custom_metadata={"lakerec.table": name, "lakerec.note": "restore: transactions "
                             "set back"},
            app_transactions=[Transaction(app_id=a, version=then.get(a, -1))
                              for a in sorted(ids)]))


def _last_checkpoint_after(log_dir: str, version: int) -> bool:
    import json

    try:
        with open(os.path.join(log_dir, "_last_checkpoint")) as f:
            return int(json.load(f).get("version", -1)) > version
    except (OSError, ValueError):
        return True  # unreadable pointer: readers fall back to listing the log
