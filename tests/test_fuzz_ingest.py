"""Fuzz tier: generated log partitions (JSON Lines plain and gzipped, Parquet, CSV, mixed in
one partition; junk of every type, nesting, size and encoding; unreadable files) through the
real ``ingest`` on real Delta tables.

For every case: the job finishes inside a hard time bound and never fails; every record of
a readable file is accounted for (``interactions`` + ``quarantine`` rows from that file =
its records); every unreadable file is exactly one ``unreadable_file:*`` quarantine row and
lands nothing; every record built valid (unique ids) lands in ``interactions`` as sent.

The cases are derandomised (the same ones in every CI run); ``FUZZ_EXAMPLES=200`` explores
more locally.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import signal
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.batch.ingest import ingest_dates
from pipelines.storage import delta
from schemas.tables import INTERACTIONS, QUARANTINE

pytestmark = pytest.mark.fuzz

DAYS = [dt.date(2024, 5, 1), dt.date(2024, 5, 2)]
CASE_SECONDS = 180  # the hard bound of one case: a hang fails the test instead of the suite
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
FIELDS = ("event_id", "user_id", "item_id", "event_type", "value", "ts", "session_id",
          "source")

# ids: any characters but surrogates and control characters (each is a valid record)
_id_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)


@st.composite
def good_event(draw, day: dt.date, n: int, prefix: str = "good") -> dict:
    etype = draw(st.sampled_from(["view", "click", "add_to_cart", "purchase", "rating"]))
    e = {"event_id": f"{prefix}-{day.day}-{n}", "user_id": draw(_id_text),
         "item_id": draw(_id_text), "event_type": etype,
         "ts": draw(st.sampled_from([f"{day.isoformat()}T12:34:56Z",
                                     f"{day.isoformat()}T23:59:59.5+00:00",
                                     f"{day.isoformat()}T10:00:00+02:00"]))}
    if etype == "rating":
        e["value"] = draw(st.sampled_from([0.5, 3, 5.0]))
    elif draw(st.booleans()):
        e["value"] = draw(st.floats(-1e6, 1e6, allow_nan=False))
    if draw(st.booleans()):
        e["session_id"] = draw(st.text(max_size=8))
    return e


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=False), st.text(max_size=30))
_json = st.recursive(_scalars, lambda c: st.lists(c, max_size=4) |
                     st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12)


@st.composite
def junk_line(draw) -> tuple[bytes, str | None]:
    """One line of a JSON Lines file that may or may not be a valid record, and the reason
    it must be quarantined with when that is known."""
    kind = draw(st.sampled_from(["object", "mutated", "text", "bytes", "blank", "deep",
                                 "surrogate", "glued_surrogates", "huge_number"]))
    known = {"deep": "malformed_json", "surrogate": "invalid_utf8",
             "glued_surrogates": "invalid_utf8", "huge_number": "value_out_of_range"}
    if kind == "object":
        keys = st.sampled_from([*FIELDS, "extra"]) | st.text(max_size=6)
        line = json.dumps(draw(st.dictionaries(keys, _json, max_size=9)))
    elif kind == "mutated":
        e = draw(good_event(DAYS[0], 0, "junk"))
        e[draw(st.sampled_from(FIELDS))] = draw(_json)
        line = json.dumps({**e, "event_id": draw(st.text(max_size=5) | st.just(e["event_id"]))})
    elif kind == "text":
        line = draw(st.text(max_size=60))
    elif kind == "bytes":
        return draw(st.binary(max_size=60)).replace(b"\n", b""), None
    elif kind == "blank":
        return draw(st.sampled_from([b"", b"\r", b"  \t ", b"\x0b\x0c"])), None
    elif kind == "deep":
        line = "[" * 3000 + "]" * 3000
    elif kind == "surrogate":
        line = json.dumps({**draw(good_event(DAYS[0], 0, "junk")), "event_id": "s"}) \
            .replace('"s"', '"s\\udc00"')
    elif kind == "glued_surrogates":  # two lone halves around an escaped backslash
        line = json.dumps({**draw(good_event(DAYS[0], 0, "junk")), "user_id": "s"}) \
            .replace('"s"', '"\\ud800\\\\\\udc00"')
    else:
        e = draw(good_event(DAYS[0], 0, "junk"))
        e.pop("value", None)
        line = json.dumps(e).replace('"ts"', '"value": 1e999, "ts"')
    return line.replace("\n", " ").encode("utf-8", "surrogatepass"), known.get(kind)


@dataclass
class File:
    name: str
    body: bytes
    records: int  # what ingest must account for (0 for an unreadable file)
    unreadable: bool = False
    good: list = field(default_factory=list)
    expect: list = field(default_factory=list)  # (payload text, reason) known up front


def _is_record(line: bytes) -> bool:
    return line.strip(b" \t\n\r\x0b\x0c") != b""


@st.composite
def a_file(draw, day: dt.date, j: int) -> File:
    fmt = draw(st.sampled_from(["jsonl", "jsonl.gz", "parquet", "csv", "broken"]))
    good = [draw(good_event(day, 100 * j + n)) for n in range(draw(st.integers(0, 4)))]
    if fmt in ("jsonl", "jsonl.gz"):
        junk = draw(st.lists(junk_line(), max_size=8))
        lines = [json.dumps(e).encode() for e in good] + [x for x, _ in junk]
        lines = draw(st.permutations(lines))
        body = b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"]))
        n = sum(_is_record(x) for x in lines)
        if fmt == "jsonl.gz":
            body = gzip.compress(body)
        expect = [(x.decode(), why) for x, why in junk if why]
        return File(f"f{j}.{fmt}", body, n, good=good, expect=expect)
    if fmt == "parquet":
        cols = {f: [e.get(f) for e in good] for f in FIELDS}
        if not good:
            return File(f"f{j}.parquet", b"", 0)  # no file at all
        types = {f: pa.float64() if f == "value" else pa.string() for f in FIELDS}
        table = pa.table({f: pa.array(cols[f], types[f]) for f in FIELDS})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return File(f"f{j}.parquet", sink.getvalue().to_pybytes(), len(good), good=good)
    if fmt == "csv":
        good = [e for e in good if not any(c in str(v) for v in e.values() for c in "\r\n")]
        order = draw(st.permutations([f for f in FIELDS if f not in ("session_id",)]))
        table = pa.table({f: pa.array([None if e.get(f) is None else str(e[f]) for e in good],
                                      pa.string()) for f in order})
        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(quoting_style="all_valid"))
        return File(f"f{j}.csv", sink.getvalue().to_pybytes(), len(good), good=good)
    # unreadable: a Parquet file with event_id as int64, a truncated Parquet or gzip file,
    # a CSV without the ts column
    kind = draw(st.sampled_from(["int_ids", "cut_parquet", "cut_gzip", "csv_no_ts"]))
    if kind == "int_ids":
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"event_id": [1, 2], "user_id": ["u", "v"]}), sink)
        return File(f"f{j}.parquet", sink.getvalue().to_pybytes(), 0, unreadable=True)
    if kind == "cut_parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"event_id": ["a"] * 50}), sink)
        body = sink.getvalue().to_pybytes()
        return File(f"f{j}.parquet", body[: len(body) // 2], 0, unreadable=True)
    if kind == "cut_gzip":
        body = gzip.compress(b"\n".join(json.dumps({"event_id": f"z{n}", "pad": "x" * 50})
                                        .encode() for n in range(200)))
        return File(f"f{j}.jsonl.gz", body[: len(body) // 2], 0, unreadable=True)
    return File(f"f{j}.csv", b"event_id,user_id,item_id,event_type\ne,u,i,view\n", 0,
                unreadable=True)


@st.composite
def partitions(draw) -> dict:
    days = DAYS[: draw(st.integers(1, 2))]
    return {d: [draw(a_file(d, j)) for j in range(draw(st.integers(1, 4)))] for d in days}


class CaseTimeoutError(Exception):
    pass


def _alarm(_signum, _frame):
    raise CaseTimeoutError(f"ingest did not finish within {CASE_SECONDS} s")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=partitions())
def test_generated_partitions_through_the_real_ingest(spark, case):
    root = tempfile.mkdtemp(prefix="lakerec-fuzz-")
    try:
        lh, src = os.path.join(root, "lh"), os.path.join(root, "landing")
        paths = {}
        for day, files in case.items():
            folder = os.path.join(src, f"dt={day.isoformat()}")
            os.makedirs(folder)
            for f in files:
                if f.body or f.unreadable:
                    path = os.path.join(folder, f.name)
                    with open(path, "wb") as out:
                        out.write(f.body)
                    paths[path] = f
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(CASE_SECONDS)
        try:
            ingest_dates(spark, lh, list(case), source=src)
        except CaseTimeoutError:
            spark.sparkContext.cancelAllJobs()
            raise
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        inter = delta.arrow_dataset(lh, INTERACTIONS).to_table().to_pylist()
        quar = delta.arrow_dataset(lh, QUARANTINE).to_table().to_pylist()
        landed = Counter(unquote(r["ingest_source"]).removeprefix("file:") for r in inter)
        rejected = Counter(unquote(r["ingest_source"]).removeprefix("file:") for r in quar)
        file_rows = {unquote(r["ingest_source"]).removeprefix("file:"): r["reason"]
                     for r in quar if r["reason"].startswith("unreadable_file:")}
        assert set(landed) | set(rejected) <= set(paths)
        for path, f in paths.items():
            if f.unreadable:
                assert path in file_rows and landed[path] == 0 and rejected[path] == 1, path
            else:
                assert path not in file_rows, (path, file_rows.get(path))
                assert landed[path] + rejected[path] == f.records, (path, f.name)
        # the last line of a file ending in "\r\n" keeps its "\r" (a record, as sent)
        reasons = {(unquote(r["ingest_source"]).removeprefix("file:"),
                    (r["raw"] or "").removesuffix("\r"), r["reason"]) for r in quar}
        for path, f in paths.items():
            for raw, why in f.expect:
                assert (path, raw, why) in reasons, (f.name, raw[:80], why)
        got = {r["event_id"]: r for r in inter}
        for f in paths.values():
            for e in f.good:
                r = got.get(e["event_id"])
                assert r is not None, e
                assert (r["user_id"], r["item_id"], r["event_type"]) == \
                    (e["user_id"], e["item_id"], e["event_type"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
