"""Shared fixtures: one local[2] SparkSession for the whole run, fresh lakehouse folders."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Tests never touch the user's own config or MLflow server.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("LAKEREC_LAKEHOUSE", None)
os.environ.setdefault("LAKEREC_CONFIG", os.devnull)
os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


def fast_jvm_options() -> str:
    """JIT tier 1 and the serial GC start the JVM in about half the time on 2 cores."""
    log4j = resources.files("pipelines.runtime.conf").joinpath("log4j2.properties")
    return f"-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dlog4j2.configurationFile=file:{log4j}"


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pipelines.runtime.session import build_session

    tmp = tmp_path_factory.mktemp("spark")
    session = build_session(
        "lakerec-tests",
        master="local[2]",
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.ui.enabled": "false",
            "spark.driver.memory": "2g",
            "spark.driver.extraJavaOptions": fast_jvm_options(),
            "spark.sql.warehouse.dir": str(tmp / "warehouse"),
            "spark.local.dir": str(tmp / "local"),
        },
    )
    session.sparkContext.setCheckpointDir(str(tmp / "checkpoints"))
    yield session
    session.stop()


@pytest.fixture
def lakehouse(tmp_path) -> str:
    root = tmp_path / "lakehouse"
    root.mkdir()
    return str(root)


def job_env(**extra: str) -> dict[str, str]:
    """Environment for running ``lakerec``/``spark-submit`` as a user would, from the venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["LAKEREC_SPARK_CONF"] = (
        "spark.sql.shuffle.partitions=2,spark.driver.memory=1g,"
        f"spark.driver.extraJavaOptions={fast_jvm_options()}"
    )
    env["LAKEREC_SPARK_MASTER"] = "local[2]"
    env.update(extra)
    return env


def ingested(spark, lakehouse: str, spec) -> str:
    """Generate ``spec``'s logs and catalog into ``<lakehouse>/landing`` and ingest them all
    (catalog first, then every day); returns the landing folder."""
    from pipelines.batch.ingest import ingest_catalog, ingest_dates
    from pipelines.dev.generate import catalog_lines, event_lines
    from pipelines.storage import landing

    out = os.path.join(lakehouse, "landing")
    landing.write_landing(event_lines(spark, spec), catalog_lines(spark, spec), out, {})
    ingest_catalog(spark, lakehouse, source=os.path.join(out, "items"))
    ingest_dates(spark, lakehouse, landing.list_dates(os.path.join(out, "events")),
                 source=os.path.join(out, "events"))
    return out


def overwrite(lh: str, spec, table, **meta):
    """Replace ``spec``'s rows by the Arrow ``table`` in one commit carrying ``meta`` (how
    ``score`` writes ``recommendations``)."""
    from pipelines.storage import delta

    snap = delta.ensure_table(lh, spec)
    return delta.commit(delta.stage_arrow(table, lh, spec), snapshot=snap, mode="overwrite",
                        metadata=meta)


def store_lists(url: str) -> dict[str, tuple]:
    """Every list in the online store at ``url``: user -> (generated_at, [(item, source)])."""
    import json

    from pipelines.online.store import open_store

    st = open_store(url)
    try:
        out = {}
        for user in st.digests():
            doc = json.loads(st.get_list(user))
            out[user] = (doc["generated_at"], [(i[0], i[2]) for i in doc["items"]])
        return out
    finally:
        st.close()


def table_lists(lh: str) -> dict[str, tuple]:
    """The current lists of ``recommendations``, in :func:`store_lists`' shape."""
    from pipelines.storage import delta
    from schemas.tables import RECOMMENDATIONS

    t = delta.current_table(lh, RECOMMENDATIONS).sort_by([("user_id", "ascending"),
                                                          ("rank", "ascending")])
    out: dict[str, tuple] = {}
    for u, item, src, g in zip(*(t[c].to_pylist() for c in ("user_id", "item_id", "source",
                                                             "generated_at")), strict=True):
        stamp = g.isoformat().replace("+00:00", "Z")
        out.setdefault(u, (stamp, []))[1].append((item, src))
    return out


def assert_store_matches(lh: str, url: str) -> None:
    """The store holds exactly the table's current lists (users, items in order, times)."""
    want, got = table_lists(lh), store_lists(url)
    assert want, "the table holds no lists"
    missing, extra = set(want) - set(got), set(got) - set(want)
    differ = [u for u in set(want) & set(got) if want[u] != got[u]]
    assert not missing and not extra and not differ, (
        f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} extra, "
        f"{len(differ)} differ (e.g. {[(u, want[u], got[u]) for u in differ[:2]]})")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server (Debian's package) on a free loopback port, for the session."""
    import shutil
    import subprocess
    import time

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is missing: apt-get install redis-server (.ci/run does)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    r = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            r.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield {"url": f"redis://127.0.0.1:{port}/0", "port": port, "proc": proc, "exe": exe,
           "dir": str(folder)}
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def kafka(tmp_path_factory):
    """The local Kafka-compatible broker (tansu) over TCP, one per test module."""
    from pipelines.dev import broker

    folder = str(tmp_path_factory.mktemp("broker"))
    st = broker.start(folder)
    yield st
    broker.stop(folder)
