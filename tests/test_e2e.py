"""End to end as users run it: jobs killed mid-write then re-run, and the demo's lakehouse
taken on by every later command (every job through real ``spark-submit``: the Airflow test)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from pipelines.storage import delta
from pipelines.storage.sql import query
from schemas.tables import INTERACTIONS, QUARANTINE, RECOMMENDATIONS
from tests.conftest import ROOT, VENV_BIN, job_env

pytestmark = pytest.mark.slow

SMALL = ["--users", "300", "--items", "80", "--events", "15000", "--days", "8",
         "--clusters", "4", "--dirty-fraction", "0.01"]
TRAIN = ["--window-days", "8", "--holdout-days", "2", "--rank", "8", "--max-iter", "5",
         "--k", "5"]

def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, env=job_env(), timeout=600,
                       cwd=ROOT, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def content(lh, table, drop):
    spec = {"interactions": INTERACTIONS, "quarantine": QUARANTINE,
            "recommendations": RECOMMENDATIONS,
            "current_recommendations": RECOMMENDATIONS}[table]
    # lineage names files by absolute path: compare it relative to the lakehouse
    cols = ", ".join(f"replace({c}, '{lh}', '<lh>')" if c == "ingest_source" else c
                     for c in spec.column_names if c not in drop)
    return sorted(query(lh, f"SELECT {cols} FROM {table}")[1], key=repr)


def kill_when(cmd, condition, timeout=300) -> bool:
    """Run ``cmd``; SIGKILL its whole process group as soon as ``condition()`` holds.

    Returns whether the kill happened before the job finished on its own.
    """
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=job_env(), cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        if condition():
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.01)
    p.wait()
    return False


def writing(lh, table):
    """Spark is writing the table's Parquet files (not yet committed)."""
    staging = os.path.join(lh, table, "_staging")
    return lambda: os.path.isdir(staging) and bool(os.listdir(staging))


def committed(lh, table, version=1):
    return os.path.exists(os.path.join(lh, table, "_delta_log", f"{version:020d}.json"))


def test_killed_jobs_converge_on_rerun(tmp_path):
    ref, crash = str(tmp_path / "ref"), str(tmp_path / "crash")
    lakerec = str(VENV_BIN / "lakerec")
    run([lakerec, "generate", "--lakehouse", ref, *SMALL])
    # same files, same modification times: the same input as far as ingest can tell
    shutil.copytree(os.path.join(ref, "landing"), os.path.join(crash, "landing"))
    run([lakerec, "ingest", "--lakehouse", ref, "--all"])

    ingest = [lakerec, "ingest", "--lakehouse", crash, "--all", "--no-catalog"]
    # Ingest stages both tables' files (all its Spark work) before it commits either:
    # 1. killed while Spark writes the quarantine files, 2. while it writes the
    # interactions files: nothing is committed; 3. killed as soon as the quarantine commit
    # lands, which is between the two commits or just after the second
    assert kill_when(ingest, writing(crash, "quarantine"))
    assert not committed(crash, "quarantine")
    assert kill_when(ingest, writing(crash, "interactions"))
    assert not committed(crash, "quarantine") and not committed(crash, "interactions")
    assert kill_when(ingest, lambda: committed(crash, "quarantine"))
    run(ingest)
    run([lakerec, "ingest", "--lakehouse", crash, "--all"])  # the catalog too
    assert content(crash, "interactions", {"ingested_at"}) == \
        content(ref, "interactions", {"ingested_at"})
    assert content(crash, "quarantine", {"quarantined_at"}) == \
        content(ref, "quarantine", {"quarantined_at"})

    run([lakerec, "train", "--lakehouse", ref, *TRAIN])
    run([lakerec, "score", "--lakehouse", ref, "--k", "5"])
    first = content(ref, "recommendations", {"generated_at"})
    version = delta.latest_version(ref, RECOMMENDATIONS)
    # a new input version forces a new scoring; kill it mid-write, then let it finish
    run([lakerec, "score", "--lakehouse", ref, "--k", "5", "--popularity-days", "7"])
    assert kill_when([lakerec, "score", "--lakehouse", ref, "--k", "5"],
                     writing(ref, "recommendations"))
    assert delta.latest_version(ref, RECOMMENDATIONS) == version + 1
    run([lakerec, "score", "--lakehouse", ref, "--k", "5"])
    assert delta.latest_version(ref, RECOMMENDATIONS) == version + 2
    assert content(ref, "recommendations", {"generated_at"}) == first

    # the stream's refreshed lists are appended (merge-on-read); compaction, killed while it
    # writes, changes nothing, and its re-run folds them in without changing the current lists
    fresh = stream_lists(ref, 3)
    delta.append_arrow(ref, RECOMMENDATIONS, fresh)
    current = content(ref, "current_recommendations", set())
    assert len(query(ref, "SELECT * FROM recommendations")[1]) > len(current)
    version = delta.latest_version(ref, RECOMMENDATIONS)
    assert kill_when([lakerec, "compact", "--lakehouse", ref], writing(ref, "recommendations"))
    assert delta.latest_version(ref, RECOMMENDATIONS) == version
    run([lakerec, "compact", "--lakehouse", ref])
    assert delta.latest_version(ref, RECOMMENDATIONS) == version + 1
    assert content(ref, "recommendations", set()) == current
    assert content(ref, "current_recommendations", set()) == current
    out = run([lakerec, "compact", "--lakehouse", ref])
    assert "nothing to fold" in out.stdout
    assert delta.latest_version(ref, RECOMMENDATIONS) == version + 1


def stream_lists(lh, users):
    """New lists for ``users`` users, as the stream appends them (a later generated_at)."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.compute as pc

    old = delta.current_table(lh, RECOMMENDATIONS)
    ids = sorted(set(old["user_id"].to_pylist()))[:users]
    keep = old.filter(pc.is_in(old["user_id"], pa.array(ids)))
    now = pa.array([dt.datetime.now(dt.UTC)] * keep.num_rows, pa.timestamp("us", "UTC"))
    return keep.set_column(keep.schema.get_field_index("generated_at"), "generated_at", now) \
        .set_column(keep.schema.get_field_index("source"), "source",
                    pa.array(["fold_in"] * keep.num_rows))


def test_the_demo_leaves_a_lakehouse_every_command_accepts(tmp_path):
    """The demo's stream files its purchases under today's date: the logs end today too, so a
    second demo (which scores again), a plain ``train`` and ``check`` (K as score wrote it) all
    work."""
    lh = str(tmp_path / "lh")
    lakerec = str(VENV_BIN / "lakerec")
    demo = [lakerec, "demo", "--lakehouse", lh, "--users", "300", "--items", "80",
            "--events", "15000", "--days", "8", "--clusters", "4", "--rank", "8",
            "--max-iter", "3", "--k", "5"]
    out = run(demo)
    assert "refreshed" in out.stdout, out.stdout[-3000:]
    # the API answered before and after the stream's refresh, from the online store
    lines = out.stdout.splitlines()
    curls = [i for i, ln in enumerate(lines) if ln.startswith("$ curl -s 'http://127.0.0.1:")]
    assert len(curls) == 2, out.stdout[-3000:]
    before, after = (json.loads(lines[i + 1]) for i in curls)
    assert before["source"] == after["source"] == "personal"
    assert after["generated_at"] > before["generated_at"]
    assert after["items"] != before["items"] and {e["source"] for e in after["items"]} & \
        {"fold_in"}
    assert "positions the API served landed in the exposures table" in out.stdout
    (landed,), = query(lh, "SELECT count(*) FROM exposures")[1]
    assert landed >= len(before["items"]) + len(after["items"])
    (last,), = query(lh, "SELECT max(dt) FROM interactions WHERE ingest_id LIKE 'ingest:%'")[1]
    (streamed,), = query(lh, "SELECT max(dt) FROM interactions WHERE ingest_id LIKE 'stream:%'")[1]
    assert streamed is not None and last == streamed  # the stream's day is the logs' last
    run([*demo, "--no-stream"])  # and again
    run([lakerec, "train", "--lakehouse", lh, "--rank", "8", "--max-iter", "3",
         "--min-eval-users", "20"])
    out = run([lakerec, "check", "--lakehouse", lh])
    assert "lists of K = 5" in out.stdout and "quality gate: passed" in out.stdout
    out = run([lakerec, "report", "--lakehouse", lh])
    assert "(5 plots: models, lists, fallbacks, freshness, quarantine)" in out.stdout  # all
