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
