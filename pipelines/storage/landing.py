"""The landing zone: raw log partitions (``dt=YYYY-MM-DD``) and catalog files, before ingest.

Reading turns every input format into one ``raw`` payload column so that a single validator
(:mod:`pipelines.batch.validate`) judges them all; writing publishes whole folders by rename, so a
reader never sees half a generated or imported data set.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass

log = logging.getLogger(__name__)

_FORMATS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".txt": "json",
            ".parquet": "parquet", ".csv": "csv"}
_COMPRESSED = (".gz", ".bz2", ".zst", ".snappy", ".lz4", ".deflate")
_DT_DIR = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    mtime_ns: int
    fmt: str


def file_format(name: str) -> str | None:
    """``json`` / ``parquet`` / ``csv`` from a file name (compression suffixes allowed)."""
    base = name
    for suffix in _COMPRESSED:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return _FORMATS.get(os.path.splitext(base)[1].lower())


def list_files(folder: str) -> list[InputFile]:
    """Data files under ``folder`` (recursively), skipping hidden ``.``/``_`` entries."""
    out = []
    for dirpath, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(files):
            fmt = file_format(name)
            if name.startswith((".", "_")) or fmt is None:
                continue
            st = os.stat(os.path.join(dirpath, name))
            out.append(InputFile(os.path.join(dirpath, name), st.st_size, st.st_mtime_ns, fmt))
    return out


def partition_path(events_root: str, date: _dt.date) -> str:
    return os.path.join(events_root, f"dt={date.isoformat()}")


def list_dates(events_root: str) -> list[_dt.date]:
    """The ``dt=`` partitions present under a log folder, oldest first."""
    if not os.path.isdir(events_root):
        return []
    return sorted(_dt.date.fromisoformat(m.group(1)) for d in os.listdir(events_root)
                  if (m := _DT_DIR.match(d)))


class ContentHashes:
    """The SHA-256 of input files, remembered by ``(path, size, modification time)``.

    A file is read once per change of those three, so a daily run hashes only new files; a
    copied or moved lakehouse (new paths, new times) hashes each file once more and then
    finds its inputs unchanged. Kept in ``<lakehouse>/_lakerec/content_hashes.sqlite``; the
    cache is an optimisation only: without it (``None``, or it cannot be opened) every file
    is read.
    """

    def __init__(self, lakehouse: str | None):
        self.db = None
        if lakehouse is None:
            return
        import sqlite3

        try:
            os.makedirs(os.path.join(lakehouse, "_lakerec"), exist_ok=True)
            self.db = sqlite3.connect(os.path.join(lakehouse, "_lakerec",
                                                   "content_hashes.sqlite"), timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT, size INTEGER, "
                            "mtime_ns INTEGER, sha256 TEXT, PRIMARY KEY (path, size, "
                            "mtime_ns))")
        except (OSError, sqlite3.Error) as e:
            log.warning("content hash cache unavailable (%s): reading every input file", e)
            self.db = None

    def sha256(self, f: InputFile) -> str:
        key = (os.path.abspath(f.path), f.size, f.mtime_ns)
        if self.db is not None:
            row = self.db.execute("SELECT sha256 FROM hashes WHERE path = ? AND size = ? "
                                  "AND mtime_ns = ?", key).fetchone()
            if row:
                return row[0]
        h = hashlib.sha256()
        try:
            with open(f.path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except OSError as e:  # a FIFO, a broken link: what it is, not what it holds
            return f"unreadable:{type(e).__name__}"
        digest = h.hexdigest()
        if self.db is not None:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)",
                                (*key, digest))
        return digest

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def fingerprint(files: list[InputFile], *extra: object,
                hashes: ContentHashes | None = None) -> str:
    """A hash of what an input is: each file's name relative to nothing (its base name), size
    and content (plus ``extra``), never where it lies or when it was written, so a copy of a
    landing zone is the same input.

    Cost: reading the files whose content hash ``hashes`` does not already hold.
    """
    hashes = hashes or ContentHashes(None)
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        # a link is judged by where it points (it may lead out of the landing zone, and is
        # then refused unread); a FIFO or a folder is never opened
        content = (f"link:{os.readlink(f.path)}" if os.path.islink(f.path) else
                   hashes.sha256(f) if os.path.isfile(f.path) else "not-a-file")
        h.update(f"{os.path.basename(f.path)}\x1f{f.size}\x1f{content}\n".encode())
    for e in extra:
        h.update(f"{e}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class BadFile:
    """An input file that cannot be read as its format, and why (one quarantine row)."""

    file: InputFile
    cause: str  # machine-readable: corrupt_parquet, missing_column:ts, wrong_type:event_id ...
    detail: str  # one line for a person

    @property
    def reason(self) -> str:
        return f"unreadable_file:{self.cause}"


@dataclass(frozen=True)
class ReadGroup:
    """Files read together with one schema: ``fmt``, their columns (None: from the file)."""

    fmt: str
    columns: tuple[str, ...] | None
    paths: tuple[str, ...]


@dataclass(frozen=True)
class ReadPlan:
    """How an input is read: groups of files that share a schema, and the unreadable files."""

    groups: tuple[ReadGroup, ...]
    bad: tuple[BadFile, ...]

    def without(self, bad: list[BadFile]) -> ReadPlan:
        """This plan with ``bad`` files moved from the groups to :attr:`bad`."""
        drop = {b.file.path for b in bad}
        groups = tuple(ReadGroup(g.fmt, g.columns, tuple(p for p in g.paths if p not in drop))
                       for g in self.groups)
        return ReadPlan(tuple(g for g in groups if g.paths), (*self.bad, *bad))


def scan_partition(folder: str, root: str | None = None
                   ) -> tuple[list[InputFile], list[BadFile]]:
    """The files of one log partition: (readable by name, unexpected).

    Subfolders are read too (``dt=D/hour=07/part-0.jsonl``), except a nested ``dt=`` folder:
    a date inside a date is ambiguous, so its files are unexpected, as are files of an
    unknown format, anything that is not a regular file (a FIFO would block a reader
    forever), and -- when ``root`` is given -- a file or folder reached through a symlink
    leading out of ``root``. Hidden ``.``/``_`` entries are skipped. Cost: one ``stat``
    per file.
    """
    import stat as _stat

    home = os.path.realpath(root) if root else None
    files, bad = [], []
    for dirpath, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        nested = os.path.relpath(dirpath, folder)
        nested_dt = nested != "." and any(_DT_DIR.match(p) for p in nested.split(os.sep))
        for name in sorted(names):
            if name.startswith((".", "_")):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError as e:  # a broken symlink
                bad.append(BadFile(InputFile(path, 0, 0, "unknown"), "not_a_file",
                                   f"{name}: {e.strerror}"))
                continue
            f = InputFile(path, st.st_size, st.st_mtime_ns, file_format(name) or "unknown")
            real = os.path.realpath(path)
            if home and not real.startswith(home.rstrip(os.sep) + os.sep):
                bad.append(BadFile(f, "outside_source", f"{name} leads to {real}, outside "
                                   f"{home}"))
            elif not _stat.S_ISREG(st.st_mode):
                bad.append(BadFile(f, "not_a_file", f"{name}: not a regular file"))
            elif nested_dt:
                bad.append(BadFile(f, "unexpected_folder",
                                   f"inside a nested partition folder {nested}/"))
            elif f.fmt == "unknown":
                bad.append(BadFile(f, "unknown_format", f"{name}: not .jsonl/.json/.parquet/.csv"))
            else:
                files.append(f)
    return files, bad


def _arrow_kinds(t) -> set[str]:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return {"string", "date-time"}
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return {"number", "integer"}
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return {"date-time"}
    if pa.types.is_null(t):
        return {"null", "any"}
    if pa.types.is_boolean(t):
        return {"boolean"}
    return {"object"}


def _open_text(path: str):
    import bz2
    import gzip

    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    if path.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8-sig", newline="")
    if path.endswith(_COMPRESSED):
        return None  # a codec Spark reads and Python does not: its header is Spark's to read
    return open(path, encoding="utf-8-sig", newline="")  # -sig: Excel's byte-order mark


def plan_read(files: list[InputFile], kinds: dict[str, frozenset[str]],
              required: tuple[str, ...], bad: list[BadFile] = ()) -> ReadPlan:
    """Check each file against the declared columns on the driver and group what reads alike.

    Parquet: the footer's schema (a truncated or corrupt file fails here); every required
    column present; each declared column's type of a kind the schema allows (``event_id``
    as int64 is refused: reading it with the other files would fail the job). Files group by
    their schema, so files of one partition that disagree are read apart, never merged. CSV:
    the header names the columns (any order; optional ones may be absent). JSON Lines: read
    as text; each line is judged by validation. Cost: one footer or first line per file.
    """
    import csv

    import pyarrow.parquet as pq

    bad = list(bad)
    groups: dict[tuple, list[str]] = {}
    for f in files:
        if f.fmt == "json":
            groups.setdefault(("json", None), []).append(f.path)
            continue
        if f.fmt == "parquet":
            try:
                schema = pq.read_schema(f.path)
            except Exception as e:  # noqa: BLE001 - any unreadable footer is this file's fault
                bad.append(BadFile(f, "corrupt_parquet", _first_line(e)))
                continue
            twice = sorted({n for n in schema.names if schema.names.count(n) > 1})
            if twice:
                bad.append(BadFile(f, "duplicate_column", f"columns repeated: {twice}"))
                continue
            present = {n: schema.field(n).type for n in kinds if n in schema.names}
            wrong = [n for n, t in present.items()
                     if not (_arrow_kinds(t) & (kinds[n] | {"any"}))]
            cols = tuple(present)
            key = ("parquet", tuple((n, str(t)) for n, t in present.items()))
            if wrong:
                n = wrong[0]
                bad.append(BadFile(f, f"wrong_type:{n}",
                                   f"column {n} is {present[n]}, declared "
                                   f"{' or '.join(sorted(kinds[n]))}"))
                continue
        else:  # csv
            stream = _open_text(f.path)
            if stream is None:
                groups.setdefault(("csv", None, f.path), []).append(f.path)
                continue
            try:
                with stream:
                    header = next(csv.reader(stream), None)
            except (OSError, UnicodeDecodeError, EOFError, csv.Error) as e:
                bad.append(BadFile(f, "unreadable_csv", _first_line(e)))
                continue
            if header is None:
                continue  # an empty file: no records
            cols = tuple(c.strip() for c in header)
            if len(set(cols)) != len(cols):
                bad.append(BadFile(f, "duplicate_column", f"header repeats a column: {header}"))
                continue
            key = ("csv", cols)
        missing = [n for n in required if n not in cols]
        if missing:
            bad.append(BadFile(f, f"missing_column:{missing[0]}",
                               f"no column {', '.join(missing)} (has {', '.join(cols)})"))
            continue
        groups.setdefault(key, []).append(f.path)
    out = []
    for key, paths in groups.items():
        cols = None
        if key[0] == "parquet":
            cols = tuple(n for n, _ in key[1])
        elif key[0] == "csv" and key[1] is not None:
            cols = key[1]
        out.append(ReadGroup(key[0], cols, tuple(paths)))
    return ReadPlan(tuple(out), tuple(bad))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def read_raw(spark, plan: ReadPlan, fields: tuple[str, ...]):
    """Read a :class:`ReadPlan` into ``(raw string, ingest_source string)`` rows, one per record.

    JSON Lines stay as they are (lines of only whitespace are not records); Parquet rows and
    CSV rows are turned into JSON objects of ``fields``, without type inference: a CSV cell
    that reads as a number becomes a JSON number, anything else a string. Each group is read
    with its own schema; the results are unioned.
    """
    from functools import reduce

    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    parts = []
    source = F.col("_metadata.file_path").alias("ingest_source")
    for g in plan.groups:
        if g.fmt == "json":
            df = spark.read.option("lineSep", "\n").text(list(g.paths))
            # lines of only whitespace (a stray "\r", tabs) are not records, like empty ones
            parts.append(df.where(~F.col("value").rlike(r"^\s*$")).select(
                F.col("value").alias("raw"), source))
        elif g.fmt == "parquet":
            df = spark.read.parquet(*g.paths)
            cols = [c for c in fields if c in g.columns]
            parts.append(df.select(F.to_json(F.struct(*cols)).alias("raw"), source))
        else:
            # RFC 4180 quoting: a quote inside a quoted cell is doubled
            reader = spark.read.option("header", True).option("escape", '"')
            if g.columns is not None:  # the header probed: named columns, any order
                schema = T.StructType([T.StructField(c, T.StringType()) for c in g.columns])
                df = reader.schema(schema).option("enforceSchema", True).csv(list(g.paths))
            else:
                df = reader.csv(list(g.paths))
            cols = tuple(c for c in fields if c in df.columns)
            parts.append(df.select(_csv_json(cols).alias("raw"), source))
    if not parts:
        return spark.createDataFrame([], "raw string, ingest_source string")
    return reduce(lambda a, b: a.unionByName(b), parts)


def _csv_json(fields: tuple[str, ...]):
    """A JSON object from CSV cells: ``value``/``ts`` cells that read as numbers are numbers."""
    from pyspark.sql import functions as F

    number = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"

    def json_string(c):  # a correctly escaped JSON string literal
        return F.regexp_extract(F.to_json(F.array(F.col(c))), r"^\[(.*)\]$", 1)

    pairs = []
    for c in fields:
        literal = json_string(c)
        if c in ("value", "ts"):
            literal = F.when(F.col(c).rlike(number), F.col(c)).otherwise(literal)
        pairs.append(F.when(F.col(c).isNotNull(), F.concat(F.lit(f'"{c}":'), literal)))
    return F.concat(F.lit("{"), F.concat_ws(",", *pairs), F.lit("}"))


# --------------------------------------------------------------------------- publishing


def new_staging(parent: str) -> str:
    """A fresh hidden staging folder under ``parent`` (ignored by readers)."""
    path = os.path.join(parent, f".staging-{uuid.uuid4().hex}")
    os.makedirs(path)
    return path


def publish(staged: str, final: str) -> None:
    """Replace ``final`` by ``staged`` with renames; the old copy is removed afterwards."""
    old = None
    if os.path.exists(final):
        old = f"{final}.old-{uuid.uuid4().hex}"
        os.rename(final, old)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.rename(staged, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def tidy_spark_output(folder: str, ext: str = ".jsonl") -> int:
    """Drop Spark's ``_SUCCESS``/``.crc`` files and give part files a proper extension."""
    n = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            p = os.path.join(dirpath, name)
            if name.startswith(("_", ".")):
                os.remove(p)
            elif name.startswith("part-"):
                stem = name.split(".", 1)[0]
                os.rename(p, os.path.join(dirpath, stem + ext))
                n += 1
    return n


def write_manifest(folder: str, params: dict) -> None:
    with open(os.path.join(folder, "_lakerec_manifest.json"), "w") as f:
        json.dump(params, f, indent=2, sort_keys=True, default=str)


def read_manifest(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "_lakerec_manifest.json")) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def sweep_stale_staging(parent: str) -> None:
    """Remove staging/old folders a killed run left behind."""
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        if name.startswith(".staging-") or ".old-" in name:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def write_landing(events_lines, catalog_lines, out: str, manifest: dict) -> dict:
    """Publish generated/imported data under ``out``: ``events/dt=*/part-*.jsonl`` and
    ``items/part-*.jsonl``, each folder swapped in whole.

    ``events_lines`` has columns ``raw`` and ``dt``; ``catalog_lines`` has ``raw``.
    Returns file counts.
    """
    os.makedirs(out, exist_ok=True)
    sweep_stale_staging(out)
    staging = new_staging(out)
    try:
        events_lines.select("raw", "dt").write.partitionBy("dt").text(
            os.path.join(staging, "events"))
        catalog_lines.select("raw").coalesce(1).write.text(os.path.join(staging, "items"))
        counts = {"event_files": tidy_spark_output(os.path.join(staging, "events")),
                  "catalog_files": tidy_spark_output(os.path.join(staging, "items"))}
        write_manifest(os.path.join(staging, "events"), manifest)
        publish(os.path.join(staging, "events"), os.path.join(out, "events"))
        publish(os.path.join(staging, "items"), os.path.join(out, "items"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts
