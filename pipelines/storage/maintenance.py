"""Table upkeep with delta-rs: checkpoint the log, expire old log entries, vacuum old files.

The retention is one number of hours, :data:`DEFAULT_RETENTION_HOURS` unless given, and it
bounds both time travel and what vacuum may delete: every version committed within the
retention stays readable (vacuum deletes only files removed longer ago than that, and the log
is expired only when its retention is at least as long). Files written but not yet committed
by a running job or stream are newer than the retention (or sit in ``_staging``), so vacuum
never takes them.

Example
-------
>>> upkeep("/lh", "interactions", retention_hours=168)  # doctest: +SKIP
Upkeep(table='interactions', version=41, checkpoint=41, files_deleted=12, ...)
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from urllib.parse import unquote

from pipelines.errors import UsageError
from pipelines.storage.deltalog import open_table, table_path
from schemas.tables import TableSpec

log = logging.getLogger(__name__)

DEFAULT_RETENTION_HOURS = 168  # Delta's own default (deletedFileRetentionDuration)
MIN_RETENTION_HOURS = 24  # less would race a day's jobs reading yesterday's snapshot
DEFAULT_LOG_RETENTION_HOURS = 30 * 24  # Delta's logRetentionDuration default
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(\.\d+\.\d+)?\.parquet$")


@dataclass(frozen=True)
class Upkeep:
    """What :func:`upkeep` did to one table."""

    table: str
    version: int
    checkpoint: int | None  # the version checkpointed now (None: it already was)
    files_deleted: int
    log_files_before: int
    log_files_after: int
    log_expired: bool  # False when the log retention is shorter than the file retention


def check_retention(hours: float) -> float:
    if not hours >= MIN_RETENTION_HOURS:
        raise UsageError(f"a retention of {hours:g} h is too short: at least "
                         f"{MIN_RETENTION_HOURS} h, so that no job still reading a recent "
                         "version loses its files")
    return hours


def _hours(value: str | None, default: float) -> float:
    """A Delta interval property (``interval 30 days``) in hours."""
    if not value:
        return default
    m = re.fullmatch(r"\s*interval\s+(\d+)\s+(\w+?)s?\s*", value.lower())
    unit = {"hour": 1, "day": 24, "week": 168, "minute": 1 / 60}.get(m.group(2)) if m else None
    return default if unit is None else int(m.group(1)) * unit


def _log_files(path: str) -> list[str]:
    folder = os.path.join(path, "_delta_log")
    return [n for n in os.listdir(folder) if not n.startswith(".")]


def upkeep(root: str, spec: TableSpec | str, *, retention_hours: float = DEFAULT_RETENTION_HOURS,
           dry_run: bool = False) -> Upkeep:
    """Vacuum the files removed more than ``retention_hours`` ago, then checkpoint the latest
    version and expire log entries past the log retention.

    Cost: one checkpoint write (a Parquet file of the table's live file list) and one listing
    of the table's folder; nothing proportional to the rows.
    """
    check_retention(retention_hours)
    name = spec if isinstance(spec, str) else spec.name
    path = table_path(root, spec)
    dt = open_table(root, spec)
    version = dt.version()
    before = _log_files(path)
    config = dt.metadata().configuration or {}
    hours = math.ceil(retention_hours)  # whole hours, never less than asked
    # checkpoints keep tombstones for the table's own deletedFileRetentionDuration only: with
    # a longer retention, older tombstones may be gone from the log, so list the folder
    full = hours > _hours(config.get("delta.deletedFileRetentionDuration"),
                          DEFAULT_RETENTION_HOURS)
    # delta-rs lists a tombstone's file again after it was deleted: count (and vacuum for)
    # only the files still there, so a second run deletes nothing and commits nothing
    listed = dt.vacuum(retention_hours=hours, dry_run=True, enforce_retention_duration=False,
                       full=full)
    deleted = [f for f in listed if os.path.exists(os.path.join(path, unquote(f)))]
    if deleted and not dry_run:
        dt.vacuum(retention_hours=hours, dry_run=False, enforce_retention_duration=False,
                  full=full)
        dt = open_table(root, spec)  # the vacuum's own commits: checkpoint after them
        version = dt.version()
    checkpointed = {int(m.group(1)) for n in _log_files(path) if (m := _CHECKPOINT.match(n))}
    checkpoint = None
    if not dry_run and version not in checkpointed:
        dt.create_checkpoint()
        checkpoint = version
    log_hours = _hours(config.get("delta.logRetentionDuration"), DEFAULT_LOG_RETENTION_HOURS)
    # expiring the log inside the file retention would break time travel the files still allow
    expire = log_hours >= retention_hours
    if expire and not dry_run:
        dt.cleanup_metadata()
    elif not expire:
        log.info("%s: log retention %g h < file retention %g h: log entries kept", name,
                 log_hours, retention_hours)
    after = _log_files(path)
    log.info("%s: v%d, checkpoint %s, %d files %s, log %d -> %d files", name, version,
             checkpoint, len(deleted), "to delete" if dry_run else "deleted", len(before),
             len(after))
    return Upkeep(name, version, checkpoint, len(deleted), len(before), len(after), expire)
