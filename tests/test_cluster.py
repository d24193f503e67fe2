"""A real Spark standalone cluster on loopback: a master and a two-core worker (its executor
unpacks the packed environment once per application: each unpack is ~1.4 GB of files, so one
executor, not two, keeps the test within the suite's time), packaged artifacts only."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tarfile
import time
import zipfile

import pytest

from pipelines.batch.quality import check_recommendations
from tests.conftest import VENV_BIN, job_env

pytestmark = pytest.mark.slow
SPARK_HOME = os.path.join(os.path.dirname(__import__("pyspark").__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    """No venv on PATH, no Python path of the test's own: only what the cluster is given."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK", "SPARK", "PYTHON", "LAKEREC", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(VENV_BIN)))
    env.update(SPARK_HOME=SPARK_HOME, SPARK_LOCAL_IP="127.0.0.1", **extra)
    return env


def wait_for(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture
def cluster(tmp_path):
    """A standalone master and one two-core worker; always shut down."""
    spark_class = os.path.join(SPARK_HOME, "bin", "spark-class")
    port = free_port()
    env = clean_env(SPARK_LOG_DIR=str(tmp_path / "logs"), SPARK_WORKER_DIR=str(tmp_path / "work"))
    procs = []
    try:
        procs.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(port), "--webui-port", str(free_port())],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        wait_for(port)
        for _ in range(1):
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker",
                 f"spark://127.0.0.1:{port}", "--cores", "2", "--memory", "2g",
                 "--host", "127.0.0.1", "--webui-port", str(free_port()),
                 "--work-dir", str(tmp_path / "work")],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True))
        time.sleep(5)  # workers register with the master
        yield f"spark://127.0.0.1:{port}"
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([str(VENV_BIN / "lakerec"), "package", "--out", str(out)],
                       capture_output=True, text=True, env=job_env(), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_ingest_train_score_on_a_standalone_cluster(cluster, packaged, tmp_path):
    lh = str(tmp_path / "lh")
    r = subprocess.run([str(VENV_BIN / "lakerec"), "generate", "--lakehouse", lh, "--users", "300",
                        "--items", "80", "--events", "15000", "--days", "8", "--clusters", "4"],
                       capture_output=True, text=True, env=job_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # the driver runs from the packed environment too, unpacked as ./env in the submit folder:
    # the stream's Kafka source plans its offsets in a Python worker on the driver, started
    # with the executors' interpreter path (./env/bin/python)
    driver_env = tmp_path / "env"
    with tarfile.open(packaged / "lakerec_env.tar.gz") as t:
        t.extractall(driver_env)
    apps = tmp_path / "apps"
    with zipfile.ZipFile(packaged / "lakerec_pipelines.zip") as z:
        z.extractall(apps, [n for n in z.namelist() if n.startswith("jobs/")])
    submit = [os.path.join(SPARK_HOME, "bin", "spark-submit"), "--master", cluster,
              "--py-files", str(packaged / "lakerec_pipelines.zip"),
              "--archives", f"{packaged / 'lakerec_env.tar.gz'}#env",
              "--conf", "spark.pyspark.python=./env/bin/python",
              "--conf", f"spark.pyspark.driver.python={driver_env / 'bin' / 'python'}",
              "--conf", "spark.executor.memory=1g", "--conf", "spark.sql.shuffle.partitions=4",
              "--driver-java-options", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"]
    env = clean_env()
    steps = [("ingest.py", ["--all"]),
             ("train.py", ["--window-days", "8", "--holdout-days", "2", "--rank", "8",
                           "--max-iter", "5", "--k", "5"]),
             ("score.py", ["--k", "5"])]
    for script, args in steps:
        r = subprocess.run([*submit, str(apps / "jobs" / script), "--lakehouse", lh, *args],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
        assert r.returncode == 0, f"{script}\n{r.stdout[-2000:]}\n{r.stderr[-5000:]}"
        if script == "train.py":
            assert "promoted to champion" in r.stdout
    # the stream on the cluster: the Kafka source's partitions read on the workers, the
    # micro-batches' appends, then compaction folding them in
    from pipelines.dev import broker, feedback
    from pipelines.storage import delta
    from pipelines.storage.sql import query
    from schemas.tables import RECOMMENDATIONS

    folder = str(tmp_path / "broker")
    st = broker.start(folder)
    try:
        broker.create_topic(st.bootstrap, "feedback", partitions=2)
        users = [r[0] for r in query(lh, "SELECT DISTINCT user_id FROM interactions "
                                         "ORDER BY 1 LIMIT 20")[1]]
        items = [r[0] for r in query(lh, "SELECT item_id FROM items ORDER BY 1")[1]]
        p = feedback.make_producer(st.bootstrap, one_record_per_batch=True)
        feedback.send(p, "feedback", feedback.random_events(users, items, 40, seed=3,
                                                            prefix="cluster"))
        p.close()
        snapshot = delta.latest_version(lh, RECOMMENDATIONS)
        r = subprocess.run([*submit, str(apps / "jobs" / "stream.py"), "--lakehouse", lh,
                            "--bootstrap", st.bootstrap, "--topic", "feedback", "--k", "5",
                            "--available-now"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
        assert r.returncode == 0, f"stream.py\n{r.stdout[-2000:]}\n{r.stderr[-5000:]}"
    finally:
        broker.stop(folder)
    # compaction, a Spark job like the ones above, folds the stream's appends in (locally:
    # one application fewer on the cluster)
    r = subprocess.run([str(VENV_BIN / "lakerec"), "compact", "--lakehouse", lh],
                       capture_output=True, text=True, env=job_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = query(lh, "SELECT count(*), count(DISTINCT user_id) FROM interactions "
                    "WHERE ingest_id LIKE 'stream:%'")[1][0]
    assert got[0] == 40 and 0 < got[1] <= 20
    assert delta.latest_version(lh, RECOMMENDATIONS) > snapshot + 1  # appends + compaction
    fresh = query(lh, "SELECT count(DISTINCT user_id) FROM recommendations "
                      "WHERE source = 'fold_in'")[1][0][0]
    assert fresh == got[1]
    # compacted: the table holds the current lists only
    assert query(lh, "SELECT count(*) FROM recommendations")[1] == \
        query(lh, "SELECT count(*) FROM current_recommendations")[1]
    # the same invariants as local mode
    failed = [c for c in check_recommendations(lh, k=5) if c.violations]
    assert not failed, failed
    shutil.rmtree(driver_env)
