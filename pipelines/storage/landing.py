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

from pipelines.errors import UsageError

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


def partition_files(events_root: str, date: _dt.date) -> list[InputFile]:
    """The files of one log partition; a missing partition is a :class:`UsageError`."""
    folder = partition_path(events_root, date)
    if not os.path.isdir(folder):
        raise UsageError(f"no input partition {folder}")
    return list_files(folder)


def fingerprint(files: list[InputFile], *extra: object) -> str:
    """A hash of what an input is: file names, sizes and modification times (plus ``extra``)."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{os.path.basename(f.path)}\x1f{f.size}\x1f{f.mtime_ns}\n".encode())
    for e in extra:
        h.update(f"{e}\n".encode())
    return h.hexdigest()


def read_raw(spark, files: list[InputFile], fields: tuple[str, ...]):
    """Read input files into ``(raw string, ingest_source string)`` rows, one per record.

    JSON Lines stay as they are (blank lines are not records and are skipped); Parquet rows
    and CSV rows are turned into JSON objects of ``fields``, without type inference: a CSV
    cell that reads as a number becomes a JSON number, anything else a string.
    """
    from functools import reduce

    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    parts = []
    by_fmt: dict[str, list[str]] = {}
    for f in files:
        by_fmt.setdefault(f.fmt, []).append(f.path)
    source = F.col("_metadata.file_path").alias("ingest_source")
    if "json" in by_fmt:
        df = spark.read.option("lineSep", "\n").text(by_fmt["json"])
        parts.append(df.where(F.trim(F.col("value")) != "").select(
            F.col("value").alias("raw"), source))
    if "parquet" in by_fmt:
        df = spark.read.parquet(*by_fmt["parquet"])
        cols = [c for c in fields if c in df.columns]
        parts.append(df.select(F.to_json(F.struct(*cols)).alias("raw"), source))
    if "csv" in by_fmt:
        schema = T.StructType([T.StructField(c, T.StringType()) for c in fields])
        df = spark.read.option("header", True).option("enforceSchema", False).schema(schema) \
            .csv(by_fmt["csv"])
        parts.append(df.select(_csv_json(fields).alias("raw"), source))
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
