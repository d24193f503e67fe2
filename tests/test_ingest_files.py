"""Files that cannot be read as their format: quarantined one row each, the rest of the date
ingested, no hang, no half-written commit; reruns converge once the file is fixed or removed.

Each case is a reproduction of a hostile operator's finding (the job used to hang, or fail
with ``Py4JJavaError: An error occurred while calling o1109.parquet.`` and load nothing).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.batch.ingest import ingest_catalog, ingest_dates
from pipelines.storage import delta
from schemas.tables import INTERACTIONS, ITEMS, QUARANTINE
from tests.conftest import VENV_BIN, job_env

D = [dt.date(2024, 5, d) for d in range(1, 9)]


def events(prefix: str, n: int, day: dt.date) -> list[dict]:
    return [{"event_id": f"{prefix}-{j}", "user_id": f"u{j % 3}", "item_id": f"i{j % 4}",
             "event_type": "view", "ts": f"{day.isoformat()}T10:00:0{j % 10}Z"}
            for j in range(n)]


def jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def parquet(path, rows, **types):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    arrays = {k: pa.array([types[k][1](v) for v in vs], types[k][0]) if k in types
              else pa.array(vs) for k, vs in cols.items()}
    pq.write_table(pa.table(arrays), path)


def part(source, day):
    return os.path.join(source, f"dt={day.isoformat()}")


def quarantined_files(lh):
    q = delta.arrow_dataset(lh, QUARANTINE).to_table().to_pylist()
    return {os.path.basename(r["ingest_source"]): r["reason"] for r in q
            if r["reason"].startswith("unreadable_file:")}, q


@pytest.fixture(scope="module")
def broken(spark, tmp_path_factory):
    """One date per kind of unreadable file, each next to a good file of the same date."""
    root = tmp_path_factory.mktemp("broken")
    lh, src = str(root / "lh"), str(root / "landing")
    good = {}
    for j, day in enumerate(D):
        rows = events(f"good{j}", 4, day)
        jsonl(os.path.join(part(src, day), "good.jsonl"), rows)
        good[day] = {r["event_id"] for r in rows}
    # 0: a CSV without the ts column
    with open(os.path.join(part(src, D[0]), "no_ts.csv"), "w") as f:
        f.write("event_id,user_id,item_id,event_type\nc1,u1,i1,view\n")
    # 1: a truncated Parquet file
    p = os.path.join(part(src, D[1]), "cut.parquet")
    parquet(p, events("cut", 5, D[1]))
    data = pathlib.Path(p).read_bytes()
    pathlib.Path(p).write_bytes(data[: len(data) // 2])
    # 2: a stray nested dt= folder
    jsonl(os.path.join(part(src, D[2]), "dt=2024-05-02", "stray.jsonl"), events("stray", 2, D[2]))
    # 3: Parquet files disagreeing on a type: strings (good) and event_id int64 (refused)
    parquet(os.path.join(part(src, D[3]), "strings.parquet"), events("pq", 3, D[3]))
    good[D[3]] |= {f"pq-{j}" for j in range(3)}
    parquet(os.path.join(part(src, D[3]), "ints.parquet"),
            [{**e, "event_id": 7000 + j} for j, e in enumerate(events("x", 3, D[3]))])
    # 4: a gzip stream cut short: only Spark finds out (the name and size look fine)
    body = gzip.compress("".join(json.dumps(r) + "\n" for r in events("gz", 400, D[4])).encode())
    with open(os.path.join(part(src, D[4]), "cut.jsonl.gz"), "wb") as f:
        f.write(body[: len(body) // 2])
    # 5: a file of an unknown format; a CSV in another column order, value column absent
    pathlib.Path(part(src, D[5]), "notes.xlsx").write_text("not data")
    with open(os.path.join(part(src, D[5]), "reordered.csv"), "w") as f:
        f.write(f"ts,item_id,user_id,event_type,event_id\n{D[5]}T01:00:00Z,i9,u9,click,csv1\n")
    good[D[5]] |= {"csv1"}
    # 6: blank and whitespace-only lines are not records
    with open(os.path.join(part(src, D[6]), "blank.jsonl"), "w") as f:
        f.write("\r\n   \n\t\n\n")
    reports = ingest_dates(spark, lh, D, source=src)
    return lh, src, good, reports


def test_each_unreadable_file_is_quarantined_and_the_rest_of_its_date_ingested(spark, broken):
    lh, _, good, reports = broken
    files, q = quarantined_files(lh)
    gz = files.pop("cut.jsonl.gz", "")  # its cause is Spark's (failed_read_file)
    assert gz.startswith("unreadable_file:") and len(gz) > len("unreadable_file:"), gz
    assert files == {
        "no_ts.csv": "unreadable_file:missing_column:ts",
        "cut.parquet": "unreadable_file:corrupt_parquet",
        "stray.jsonl": "unreadable_file:unexpected_folder",
        "ints.parquet": "unreadable_file:wrong_type:event_id",
        "notes.xlsx": "unreadable_file:unknown_format",
    }
    # one commit each, although the first attempt failed in Spark; no staged leftovers
    assert delta.latest_version(lh, QUARANTINE) == 1
    assert delta.latest_version(lh, INTERACTIONS) == 1
    for spec in (QUARANTINE, INTERACTIONS):
        folder = os.path.join(lh, spec.name)
        on_disk = {os.path.relpath(os.path.join(d, n), folder) for d, _, ns in os.walk(folder)
                   for n in ns if n.endswith(".parquet") and "_delta_log" not in d}
        referenced = {unquote(a["path"]) for a in delta.add_actions(delta.open_table(lh, spec))}
        assert on_disk == referenced, on_disk ^ referenced
    inter = delta.arrow_dataset(lh, INTERACTIONS).to_table().to_pylist()
    got = {}
    for r in inter:
        got.setdefault(r["dt"], set()).add(r["event_id"])
    assert got == good  # every good file of every date, and nothing from a refused file
    rows = {r["ingest_source"]: r for r in q}
    cut = next(r for s, r in rows.items() if s.endswith("/ints.parquet"))
    # named as Spark names the rows of the good file next to it
    good_src = next(r["ingest_source"] for r in inter
                    if r["dt"] == D[3] and r["ingest_source"].endswith("/good.jsonl"))
    assert cut["ingest_source"] == good_src.replace("/good.jsonl", "/ints.parquet")
    assert "int64" in cut["raw"]
    assert cut["dt"] == D[3] and cut["origin"] == "events"
    # the accounting holds per date: valid + quarantined, files counted once each
    by_date = {r.date: r for r in reports}
    assert by_date[D[6]].rows == 4 and by_date[D[6]].quarantined == 0
    assert by_date[D[3]].valid == 7 and by_date[D[3]].reasons == {
        "unreadable_file:wrong_type:event_id": 1}


def test_fixing_or_removing_the_file_converges(spark, broken, tmp_path):
    lh, src, good, _ = broken
    before = delta.latest_version(lh, INTERACTIONS)
    assert all(r.skipped for r in ingest_dates(spark, lh, D, source=src))  # unchanged: no-op
    assert delta.latest_version(lh, INTERACTIONS) == before
    os.remove(os.path.join(part(src, D[3]), "ints.parquet"))
    fixed = events("fixed", 2, D[0])
    with open(os.path.join(part(src, D[0]), "no_ts.csv"), "w") as f:
        f.write("event_id,user_id,item_id,event_type,ts\n"
                + "".join(f"{e['event_id']},{e['user_id']},{e['item_id']},view,{e['ts']}\n"
                          for e in fixed))
    r = {x.date: x for x in ingest_dates(spark, lh, D, source=src)}
    assert not r[D[0]].skipped and not r[D[3]].skipped and r[D[1]].skipped
    files, _ = quarantined_files(lh)
    assert "ints.parquet" not in files and "no_ts.csv" not in files
    inter = delta.arrow_dataset(lh, INTERACTIONS).to_table().to_pylist()
    assert {e["event_id"] for e in inter if e["dt"] == D[0]} == \
        good[D[0]] | {e["event_id"] for e in fixed}


def test_unreadable_catalog_file(spark, tmp_path):
    lh, src = str(tmp_path / "lh"), str(tmp_path / "items")
    jsonl(os.path.join(src, "a.jsonl"), [{"item_id": "i1", "title": "One"}])
    parquet(os.path.join(src, "b.parquet"), [{"item_id": 5, "title": "Five"}],
            item_id=(pa.int64(), int))
    r = ingest_catalog(spark, lh, source=src)
    assert r.valid == 1 and r.reasons == {"unreadable_file:wrong_type:item_id": 1}
    assert [x["item_id"] for x in delta.arrow_dataset(lh, ITEMS).to_table().to_pylist()] == ["i1"]


def lakerec(*args, **kw):
    return subprocess.Popen([str(VENV_BIN / "lakerec"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=job_env(), **kw)


def test_mixed_parquet_types_through_the_cli_finish_promptly(tmp_path):
    """The reproduction that hung for 11 minutes: a good .jsonl, a Parquet file of strings,
    one with ``event_id`` int64, in one partition."""
    lh = tmp_path / "lh"
    src = lh / "landing" / "events"
    day = D[0]
    jsonl(os.path.join(part(src, day), "good.jsonl"), events("j", 3, day))
    parquet(os.path.join(part(src, day), "a.parquet"), events("s", 2, day))
    parquet(os.path.join(part(src, day), "b.parquet"),
            [{**e, "event_id": j} for j, e in enumerate(events("n", 2, day))])
    p = lakerec("ingest", "--date", day.isoformat(), "--lakehouse", str(lh))
    try:
        out, err = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "5 valid, 1 quarantined (unreadable_file:wrong_type:event_id 1)" in out, out


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_jvm_too(tmp_path):
    lh = tmp_path / "lh"
    src = lh / "landing" / "events"
    jsonl(os.path.join(part(src, D[0]), "good.jsonl"), events("t", 3, D[0]))
    p = lakerec("ingest", "--date", D[0].isoformat(), "--lakehouse", str(lh))
    jvm = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not jvm and p.poll() is None:
            jvm = [c for c in _children(p.pid)
                   if "java" in pathlib.Path(f"/proc/{c}/cmdline").read_text()]
            time.sleep(0.2)
        assert jvm, "the JVM never started"
        time.sleep(3)  # inside Spark's start-up or the job
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
        assert p.returncode == 128 + signal.SIGTERM
        end = time.monotonic() + 30
        while time.monotonic() < end and any(_alive(j) for j in jvm):
            time.sleep(0.2)
        assert not any(_alive(j) for j in jvm), "the JVM outlived the job"
    finally:
        p.kill()
        for j in jvm:
            if _alive(j):
                os.kill(j, signal.SIGKILL)
