"""The Airflow DAG, in Airflow's own environment: it imports, has the documented graph, and a
real `airflow dags test` run (SparkSubmitOperator -> spark-submit -> local Spark) fills the
tables; running the same date again changes nothing."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from pipelines.batch.quality import check_recommendations
from pipelines.online.store import default_store_url
from pipelines.storage import delta
from schemas.tables import (
    INTERACTIONS,
    ITEM_EMBEDDINGS,
    ITEM_FACTORS,
    ITEM_PLACEMENTS,
    QUARANTINE,
    RECOMMENDATIONS,
    SIMILAR_ITEMS,
    USER_FACTORS,
)
from tests.conftest import ROOT, VENV_BIN, assert_store_matches, job_env

AIRFLOW_BIN = ROOT / ".venv-airflow" / "bin"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (AIRFLOW_BIN / "airflow").exists(),
                       reason="Airflow's environment is missing: make airflow-venv"),
]
EDGES = [["compact", "quality_gate"], ["embed", "place"], ["ingest", "train_due"],
         ["maintain_due", "maintain"], ["maintain_due", "skip_maintain"],
         ["place", "score"], ["quality_gate", "maintain_due"], ["quality_gate", "publish"],
         ["quality_gate", "status"],
         ["score", "compact"],
         ["skip_train", "embed"], ["train", "embed"], ["train_due", "skip_train"],
         ["train_due", "train"], ["wait_for_logs", "ingest"]]
INSPECT = """
import json, os
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
dag = bag.dags.get("lakerec_daily")
print(json.dumps({
    "errors": {k: str(v)[:300] for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dags),
    "edges": sorted([t.task_id, d] for t in dag.tasks for d in t.downstream_task_ids),
    "operators": {t.task_id: type(t).__name__ for t in dag.tasks},
    "schedule": str(dag.schedule), "catchup": dag.catchup,
    "max_active_runs": dag.max_active_runs,
    "retries": {t.task_id: t.retries for t in dag.tasks},
}))
"""


def airflow_env(home, lakehouse, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "PYSPARK", "SPARK_", "LAKEREC"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow" / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_LOCAL": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "LAKEREC_SPARK_CONN": "spark_local",
        "LAKEREC_SPARK_SUBMIT": str(VENV_BIN / "spark-submit"),
        "LAKEREC_PYTHON": str(VENV_BIN / "python"),
        "LAKEREC_LAKEHOUSE": str(lakehouse),
        "LAKEREC_START_DATE": "2024-06-01",
        **extra,
    })
    return env


def airflow(*args, env, timeout=900):
    return subprocess.run([str(AIRFLOW_BIN / "airflow"), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_dag_imports_with_the_documented_graph(tmp_path):
    env = airflow_env(tmp_path / "airflow", tmp_path / "lh")
    r = subprocess.run([str(AIRFLOW_BIN / "python"), "-c", INSPECT], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["errors"] == {} and got["dags"] == ["lakerec_daily"]
    assert got["edges"] == EDGES
    assert got["schedule"] == "@daily" and got["catchup"] is False
    assert got["max_active_runs"] == 1
    spark_tasks = {t for t, op in got["operators"].items() if op == "SparkSubmitOperator"}
    assert spark_tasks == {"ingest", "train", "embed", "place", "score", "compact",
                           "quality_gate", "maintain"}
    assert {t for t, op in got["operators"].items() if op == "BashOperator"} == \
        {"status", "publish"}  # no Spark: no spark-submit
    assert all(got["retries"][t] > 0 for t in ("ingest", "train", "embed", "place", "score"))
    readme = (ROOT / "README.md").read_text()
    assert "wait_for_logs → ingest → train_due → train | skip_train → embed → place → " \
        "score → compact → quality_gate → publish, status, maintain_due → maintain | " \
        "skip_maintain" \
        in readme


def test_a_real_dag_run_and_its_rerun(tmp_path):
    lh = tmp_path / "lh"
    # generate through plain spark-submit (the DAG submits every other job), ingest as the
    # console command
    submit = [str(VENV_BIN / "spark-submit"), "--master", "local[2]", "--driver-java-options",
              "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC", "--conf", "spark.ui.enabled=false",
              "--conf", "spark.sql.shuffle.partitions=2", str(ROOT / "jobs" / "generate.py")]
    for cmd in ([*submit, "--users", "300", "--items", "80", "--events", "15000", "--days",
                 "8", "--clusters", "4"], [str(VENV_BIN / "lakerec"), "ingest", "--all"]):
        r = subprocess.run([*cmd, "--lakehouse", str(lh)], capture_output=True,
                           text=True, env=job_env(), timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
    # earlier days arrived by a backfill (ingest --all); the run for 2024-06-08 finds its
    # own day ingested already -- ingest is idempotent -- and goes on to train, score, check
    env = airflow_env(tmp_path / "airflow", lh, LAKEREC_TRAIN_EVERY="1", LAKEREC_TUNE_EVERY="1",
                      LAKEREC_RETRIES="0")
    assert airflow("db", "migrate", env=env).returncode == 0
    conf = json.dumps({"train_flags": ["--window-days", "8", "--holdout-days", "2",
                                       "--rank", "8", "--max-iter", "5", "--tune-trials", "2",
                                       "--promote-if", "better", "--min-eval-users", "1"],
                       "k": 5, "shuffle_partitions": 2})

    def run_date():
        return airflow("dags", "test", "lakerec_daily", "2024-06-08", "-c", conf, env=env)

    r = run_date()
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-5000:]
    assert "promoted to champion" in log
    assert "trial 2/2: validation NDCG@5" in log  # tuning was due: the train task tuned
    assert "quality gate: passed" in log, log[-5000:]
    # 2024-06-08 is 7 days after the start: table upkeep was due
    assert "checkpoint and vacuum (retention 168 h)" in log, log[-5000:]
    assert not [c for c in check_recommendations(str(lh), k=5) if c.violations]
    tables = (INTERACTIONS, QUARANTINE, USER_FACTORS, ITEM_FACTORS, ITEM_PLACEMENTS,
              RECOMMENDATIONS, ITEM_EMBEDDINGS, SIMILAR_ITEMS)
    versions = {t.name: delta.latest_version(str(lh), t) for t in tables}
    assert versions["recommendations"] is not None and versions["user_factors"] is not None
    assert versions["item_embeddings"] is not None and "80 of 80 items embedded" in log
    assert "recall@5" in log  # embed's cold-start evaluation of the champion
    # publish ran after the gate (score itself did not: --store=none) into the embedded store
    assert "published recommendations vNone ->" in log, log[-5000:]
    assert_store_matches(str(lh), default_store_url(str(lh)))

    r = run_date()  # the same logical date again: every task finds its work done
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-5000:]
    assert "already trained from these inputs" in log
    assert "already up to date" in log
    assert "all up to date" in log and "already evaluated on these inputs" in log
    assert "nothing to do: inputs unchanged" in log
    assert f"store already at recommendations v{versions['recommendations']}" in log
    assert {t.name: delta.latest_version(str(lh), t) for t in tables} == versions
