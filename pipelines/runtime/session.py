"""Building the SparkSession for a job.

Only the jobs call :func:`build_session`; library code takes the session as an argument.
Under ``spark-submit`` the session comes from spark-submit's own configuration (``--master``,
``--conf``, ``spark-defaults.conf``) and lakerec adds nothing but the two settings its data
depends on. Run in-process (``lakerec <job>``), it starts a local Spark with laptop defaults,
and makes Python workers use this interpreter on loopback.

Example
-------
>>> spark = build_session("lakerec-ingest")            # doctest: +SKIP
>>> spark.conf.get("spark.sql.session.timeZone")       # doctest: +SKIP
'UTC'
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from importlib import resources

log = logging.getLogger(__name__)

# Settings lakerec's data semantics depend on, applied on every session (runtime SQL confs):
# dates of events are UTC dates, and Delta readers expect int64 microsecond timestamps,
# not Spark's legacy INT96.
REQUIRED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
}


def under_spark_submit() -> bool:
    """True when this Python driver was launched by ``spark-submit`` (the JVM is already up)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def prepare_local_environment(master: str) -> None:
    """Make Python workers start with this interpreter and talk over loopback.

    Without these, Python UDF and data-source workers failed to connect back to the JVM on
    machines whose hostname resolves to an unreachable address. Explicit settings win.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def local_defaults(master: str) -> dict[str, str]:
    """Laptop defaults for a local Spark (each overridable with ``LAKEREC_SPARK_CONF``)."""
    cores = os.cpu_count() or 2
    log4j = resources.files("pipelines.runtime.conf").joinpath("log4j2.properties")
    return {
        "spark.master": master,
        "spark.driver.memory": os.environ.get("LAKEREC_DRIVER_MEMORY", "4g"),
        "spark.sql.shuffle.partitions": str(max(4, 2 * cores)),
        "spark.ui.enabled": os.environ.get("LAKEREC_SPARK_UI", "false"),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # pyspark.daemon minus a per-task re-read of the zips on PYTHONPATH (see the module)
        "spark.python.daemon.module": "pipelines.runtime.worker_daemon",
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{log4j}",
        "spark.sql.warehouse.dir": os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                "lakerec-spark-warehouse"),
    }


def parse_conf_env(text: str | None) -> dict[str, str]:
    """Parse ``LAKEREC_SPARK_CONF="spark.k1=v1,spark.k2=v2"`` (extra local-mode settings)."""
    import re

    from pipelines.errors import UsageError

    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if part.strip():
            k, sep, v = part.partition("=")
            if not sep or not re.fullmatch(r"spark\.[A-Za-z0-9_.\-]+", k.strip()):
                raise UsageError(f"LAKEREC_SPARK_CONF entry {part!r} is not spark.key=value")
            out[k.strip()] = v.strip()
    return out


def check_env(env: Mapping[str, str]) -> None:
    """Refuse bad Spark settings in the environment before the JVM starts (exit 2)."""
    import re

    from pipelines.errors import UsageError

    parse_conf_env(env.get("LAKEREC_SPARK_CONF"))
    rules = {
        "LAKEREC_DRIVER_MEMORY": (r"(?i)[0-9]+([kmgtp]b?)?", "a size such as 4g or 512m"),
        "LAKEREC_SPARK_UI": (r"true|false", "true or false"),
        "LAKEREC_SPARK_MASTER": (
            r"local(\[\s*([0-9]+|\*)\s*(,\s*[0-9]+\s*)?\])?|local-cluster\[[0-9, ]+\]"
            r"|(spark|k8s|mesos)://\S+|yarn", "local[N], spark://host:port, k8s://..., yarn"),
    }
    for name, (pattern, what) in rules.items():
        if name in env and not re.fullmatch(pattern, env[name]):
            raise UsageError(f"{name}={env[name]!r}: expected {what}")


def build_session(app_name: str, *, master: str | None = None,
                  conf: dict[str, str] | None = None):
    """Return the job's SparkSession.

    Parameters
    ----------
    app_name : str
        Spark application name.
    master : str, optional
        Local runs only: the master URL (default ``$LAKEREC_SPARK_MASTER`` or ``local[*]``).
        Ignored under ``spark-submit``, whose ``--master`` rules.
    conf : dict, optional
        Extra settings for a local run.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if not under_spark_submit():
        master = master or os.environ.get("LAKEREC_SPARK_MASTER", "local[*]")
        prepare_local_environment(master)
        settings = {**local_defaults(master),
                    **parse_conf_env(os.environ.get("LAKEREC_SPARK_CONF")), **(conf or {})}
        for k, v in settings.items():
            builder = builder.config(k, v)
    spark = builder.getOrCreate()
    for k, v in REQUIRED_CONF.items():
        spark.conf.set(k, v)
    log.debug("spark %s master=%s", spark.version, spark.sparkContext.master)
    return spark
