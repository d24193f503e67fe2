"""lakerec's daily pipeline for Airflow 3.

wait for the day's log partition -> ingest that date -> train (on the configured cadence)
-> embed (item text features: only new or changed catalog texts are embedded) -> place (new
items into the champion's factor space, from their text) -> score -> compact (fold the
stream's appended lists in) -> quality gate -> publish (the lists that changed, to the online
store that ``lakerec serve`` reads: only lists that passed the gate reach it), status (the
alerts: a breach fails the run) and maintain (checkpoint and vacuum, on its own cadence). One run per logical date; every task is
idempotent for its date,
so clearing and re-running a date leaves the tables as they were.

Configuration, read when the DAG file is parsed (environment of the scheduler/dag processor):

=========================  ==================================================================
``LAKEREC_LAKEHOUSE``      lakehouse root (default ``/data/lakehouse``); also the ``lakehouse``
                           param of a run
``LAKEREC_SPARK_CONN``     Airflow Spark connection id (default ``spark_default``); its host
                           is the master (``local[2]``, ``spark://h:7077``, ``yarn``, ``k8s://..``)
``LAKEREC_SPARK_SUBMIT``   the spark-submit to run (the project venv's, or the cluster's)
``LAKEREC_PYTHON``         the Python that runs the jobs (the project venv's, or ``./env/bin/python``
                           inside the packed environment on a cluster); ``status`` and
                           ``publish`` need no Spark and run with it on the Airflow worker
``LAKEREC_PY_FILES``       the ``--py-files`` archive (``make package`` builds it)
``LAKEREC_ARCHIVES``       optional ``--archives`` value (the packed environment)
``LAKEREC_START_DATE``     first logical date (default 2024-06-01); ``LAKEREC_CATCHUP`` (0/1)
``LAKEREC_TRAIN_EVERY``    train cadence in days (default 7: a model a week, scoring daily)
``LAKEREC_TUNE_EVERY``     tuning cadence in days (default 28; 0: never): on those days train
                           runs with ``--tune`` and the winner becomes the lakehouse's
                           defaults for the trainings in between
``LAKEREC_MAINTAIN_EVERY`` table upkeep cadence in days (default 7; 0: never): ``lakerec
                           maintain`` (compact, checkpoint, vacuum with a 7-day retention)
``LAKEREC_RETRIES``        retries per task (default 2, five minutes apart)
``LAKEREC_STORE``           the online store ``publish`` writes (default: SQLite under the
                           lakehouse; ``redis://host:6379/0`` for ``lakerec serve`` on Redis)
``LAKEREC_ENCODER_DIR``    the ONNX encoder export for ``embed`` (default: the checkout's
                           ``models/build/minilm``, built by ``make models``)
=========================  ==================================================================

Run params (per run, e.g. ``airflow dags test lakerec_daily 2024-06-08 -c '{...}'``):
``lakehouse``, ``train_flags`` (a list of extra ``lakerec train`` flags), ``k``,
``shuffle_partitions``.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAKEHOUSE = os.environ.get("LAKEREC_LAKEHOUSE", "/data/lakehouse")
CONN = os.environ.get("LAKEREC_SPARK_CONN", "spark_default")
SPARK_SUBMIT = os.environ.get("LAKEREC_SPARK_SUBMIT", "spark-submit")
PYTHON = os.environ.get("LAKEREC_PYTHON", "python3")
PY_FILES = os.environ.get("LAKEREC_PY_FILES") or None
ARCHIVES = os.environ.get("LAKEREC_ARCHIVES") or None
JOBS = os.environ.get("LAKEREC_JOBS", os.path.join(ROOT, "jobs"))
TRAIN_EVERY = int(os.environ.get("LAKEREC_TRAIN_EVERY", "7"))
TUNE_EVERY = int(os.environ.get("LAKEREC_TUNE_EVERY", "28"))
MAINTAIN_EVERY = int(os.environ.get("LAKEREC_MAINTAIN_EVERY", "7"))
START = dt.datetime.fromisoformat(os.environ.get("LAKEREC_START_DATE", "2024-06-01")).replace(
    tzinfo=dt.UTC)
CATCHUP = os.environ.get("LAKEREC_CATCHUP", "0") == "1"
RETRIES = int(os.environ.get("LAKEREC_RETRIES", "2"))


def _spark_home() -> str | None:
    # spark-submit from a pip-installed pyspark: SPARK_HOME is the pyspark package folder
    sibling = os.path.join(os.path.dirname(PYTHON), "..", "lib")
    for root, dirs, _ in os.walk(sibling):
        if "pyspark" in dirs and os.path.isdir(os.path.join(root, "pyspark", "jars")):
            return os.path.abspath(os.path.join(root, "pyspark"))
        if root.count(os.sep) - sibling.count(os.sep) > 3:
            dirs[:] = []
    return os.environ.get("SPARK_HOME")


ENV = {k: v for k, v in {
    "SPARK_HOME": _spark_home(),
    "PYSPARK_PYTHON": PYTHON,
    "PYSPARK_DRIVER_PYTHON": PYTHON,
    "LAKEREC_LAKEHOUSE": LAKEHOUSE,
    "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI"),
    "LAKEREC_ENCODER_DIR": os.environ.get("LAKEREC_ENCODER_DIR"),
    "LAKEREC_STORE": os.environ.get("LAKEREC_STORE"),
    "PATH": os.environ.get("PATH", ""),
}.items() if v}


def spark_job(task_id: str, script: str, args, **kw) -> SparkSubmitOperator:
    """One lakerec job through spark-submit, master and conf from the Airflow connection.

    ``args`` is a list of templated strings, or one template rendering to a list (the DAG
    renders templates as native objects).
    """
    if isinstance(args, list):
        args = ["--lakehouse", "{{ params.lakehouse }}", *args]
    return SparkSubmitOperator(
        task_id=task_id,
        conn_id=CONN,
        application=os.path.join(JOBS, script),
        application_args=args,
        py_files=PY_FILES,
        archives=ARCHIVES,
        spark_binary=SPARK_SUBMIT,
        env_vars=ENV,
        name=f"lakerec-{task_id}-{{{{ ds }}}}",
        conf={"spark.sql.shuffle.partitions": "{{ params.shuffle_partitions | string }}"},
        **kw,
    )


def python_job(task_id: str, script: str, args: list[str], **kw) -> BashOperator:
    """A lakerec job that needs no Spark (``status``, ``publish``), run by ``LAKEREC_PYTHON``
    on the Airflow worker: no spark-submit, no JVM to start."""
    import shlex

    cmd = " ".join([shlex.quote(PYTHON), shlex.quote(os.path.join(JOBS, script)),
                    "--lakehouse", "'{{ params.lakehouse }}'", *map(shlex.quote, args)])
    return BashOperator(task_id=task_id, bash_command=cmd, env=ENV, append_env=True, **kw)


def tune_flags(logical_date) -> list[str]:
    """``["--tune"]`` on the days tuning is due (counted from the start date), else ``[]``."""
    days = (logical_date - START).days
    return ["--tune"] if TUNE_EVERY and days % TUNE_EVERY == 0 else []


with DAG(
    dag_id="lakerec_daily",
    description="ingest -> train -> embed -> place -> score -> compact -> quality gate -> "
                "publish, status, maintain, daily",
    schedule="@daily",
    start_date=START,
    catchup=CATCHUP,
    max_active_runs=1,
    render_template_as_native_obj=True,
    user_defined_macros={"tune_flags": tune_flags},
    default_args={"retries": RETRIES, "retry_delay": dt.timedelta(minutes=5)},
    params={
        "lakehouse": Param(LAKEHOUSE, type="string"),
        "train_flags": Param([], type="array", description="extra `lakerec train` flags"),
        "k": Param(10, type="integer", minimum=1),
        "shuffle_partitions": Param(8, type="integer", minimum=1),
    },
    tags=["lakerec"],
) as dag:

    @task.sensor(poke_interval=60, timeout=6 * 3600, mode="reschedule")
    def wait_for_logs(ds=None, params=None):
        """The log partition dt={{ ds }} has landed."""
        folder = os.path.join(params["lakehouse"], "landing", "events", f"dt={ds}")
        return os.path.isdir(folder) and any(not f.startswith((".", "_"))
                                             for f in os.listdir(folder))

    ingest = spark_job("ingest", "ingest.py", ["--date", "{{ ds }}"])

    @task.branch
    def train_due(logical_date=None):
        """Train every LAKEREC_TRAIN_EVERY days (counted from the start date)."""
        days = (logical_date - START).days
        return "train" if days % TRAIN_EVERY == 0 else "skip_train"

    train = spark_job("train", "train.py",
                      "{{ ['--lakehouse', params.lakehouse, '--as-of', ds, "
                      "'--k', params.k | string] + tune_flags(logical_date) "
                      "+ params.train_flags }}")
    skip_train = EmptyOperator(task_id="skip_train")
    # "--k=N" in one token: a native-rendered "{{ params.k }}" alone would become an int
    embed = spark_job("embed", "embed.py", ["--k={{ params.k }}"],
                      trigger_rule="none_failed_min_one_success")
    place = spark_job("place", "place.py", [])
    # the DAG publishes after the gate, not score itself
    score = spark_job("score", "score.py", ["--k={{ params.k }}", "--store=none"])
    # fold the stream's appended lists into the snapshot score just wrote
    compact = spark_job("compact", "compact.py", [])
    quality_gate = spark_job("quality_gate", "check.py", ["--k={{ params.k }}"],
                             retries=0)

    @task.branch
    def maintain_due(logical_date=None):
        """Table upkeep every LAKEREC_MAINTAIN_EVERY days (counted from the start date)."""
        days = (logical_date - START).days
        return "maintain" if MAINTAIN_EVERY and days % MAINTAIN_EVERY == 0 \
            else "skip_maintain"

    maintain = spark_job("maintain", "maintain.py", [])
    skip_maintain = EmptyOperator(task_id="skip_maintain")

    # the alerts (`lakerec status --check`: freshness, quarantine rate, fallback share,
    # coverage drop, stream lag) fail the run loudly, without holding up the upkeep
    status = python_job("status", "status.py", ["--check"], retries=0)
    publish = python_job("publish", "publish.py", [])
    due = maintain_due()

    wait_for_logs() >> ingest >> train_due() >> [train, skip_train] >> embed >> place >> score
    score >> compact >> quality_gate >> [publish, status, due]
    due >> [maintain, skip_maintain]
