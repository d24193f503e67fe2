"""End to end as users run it: real spark-submit, and jobs killed mid-write then re-run."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from pipelines import delta
from pipelines.sql import query
from schemas.tables import INTERACTIONS, QUARANTINE, RECOMMENDATIONS
from tests.conftest import ROOT, VENV_BIN, job_env

pytestmark = pytest.mark.slow

SMALL = ["--users", "300", "--items", "80", "--events", "15000", "--days", "8",
         "--clusters", "4", "--dirty-fraction", "0.01"]
TRAIN = ["--window-days", "8", "--holdout-days", "2", "--rank", "8", "--max-iter", "5",
         "--k", "5"]
SUBMIT = [str(VENV_BIN / "spark-submit"), "--master", "local[2]",
          "--driver-java-options", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
          "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.ui.enabled=false"]


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, env=job_env(), timeout=600,
                       cwd=ROOT, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def test_every_job_through_spark_submit(tmp_path):
    lh = str(tmp_path / "lh")
    os.makedirs(lh)
    run([*SUBMIT, "jobs/generate.py", "--lakehouse", lh, *SMALL])
    out = run([*SUBMIT, "jobs/ingest.py", "--lakehouse", lh, "--all"])
    assert "quarantined" in out.stdout
    out = run([*SUBMIT, "jobs/train.py", "--lakehouse", lh, *TRAIN])
    assert "promoted to champion" in out.stdout
    run([*SUBMIT, "jobs/score.py", "--lakehouse", lh, "--k", "5"])
    _, rows = query(lh, "SELECT count(DISTINCT user_id), min(n), max(n) FROM "
                        "(SELECT user_id, count(*) n FROM recommendations GROUP BY 1)")
    users, lo, hi = rows[0]
    assert users > 250 and lo == hi == 5
    # the same jobs as console commands agree: a re-run of the day changes nothing
    v = delta.latest_version(lh, INTERACTIONS)
    run([str(VENV_BIN / "lakerec"), "ingest", "--lakehouse", lh, "--all"])
    assert delta.latest_version(lh, INTERACTIONS) == v


def content(lh, table, drop):
    spec = {"interactions": INTERACTIONS, "quarantine": QUARANTINE,
            "recommendations": RECOMMENDATIONS}[table]
    # lineage names files by absolute path: compare it relative to the lakehouse
    cols = ", ".join(f"replace({c}, '{lh}', '<lh>')" if c == "ingest_source" else c
                     for c in spec.column_names if c not in drop)
    return sorted(query(lh, f"SELECT {cols} FROM {table}")[1], key=repr)


def kill_at_random(cmd, delays, rng):
    """Start ``cmd`` and SIGKILL its whole process group after each delay; count kills."""
    kills = 0
    for delay in delays:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=job_env(), cwd=ROOT, start_new_session=True)
        time.sleep(delay * (0.5 + rng.random()))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
    return kills


def test_killed_jobs_converge_on_rerun(tmp_path):
    rng = random.Random(20261122)
    ref, crash = str(tmp_path / "ref"), str(tmp_path / "crash")
    lakerec = str(VENV_BIN / "lakerec")
    run([lakerec, "generate", "--lakehouse", ref, *SMALL])
    # same files, same modification times: the same input as far as ingest can tell
    shutil.copytree(os.path.join(ref, "landing"), os.path.join(crash, "landing"))
    run([lakerec, "ingest", "--lakehouse", ref, "--all"])

    kills = kill_at_random([lakerec, "ingest", "--lakehouse", crash, "--all"],
                           [12, 20, 28], rng)
    assert kills >= 2
    run([lakerec, "ingest", "--lakehouse", crash, "--all"])
    assert content(crash, "interactions", {"ingested_at"}) == \
        content(ref, "interactions", {"ingested_at"})
    assert content(crash, "quarantine", {"quarantined_at"}) == \
        content(ref, "quarantine", {"quarantined_at"})

    run([lakerec, "train", "--lakehouse", ref, *TRAIN])
    run([lakerec, "score", "--lakehouse", ref, "--k", "5"])
    first = content(ref, "recommendations", {"generated_at"})
    # kill scoring mid-way, then let it finish: same rows as before
    run([lakerec, "sql", "--lakehouse", ref, "SELECT 1"])
    shutil.rmtree(os.path.join(ref, "recommendations"))
    kill_at_random([lakerec, "score", "--lakehouse", ref, "--k", "5"], [20], rng)
    run([lakerec, "score", "--lakehouse", ref, "--k", "5"])
    assert content(ref, "recommendations", {"generated_at"}) == first
