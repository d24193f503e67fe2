"""A lakehouse with data but no champion (or a champion whose factors are gone) is served
popular items, and the quality gate passes on it."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest

from pipelines.batch.quality import check_recommendations
from pipelines.batch.score import score
from pipelines.batch.train import ModelCard, train
from pipelines.dev.generate import SyntheticSpec
from pipelines.storage import delta, tracking
from schemas.tables import ITEM_FACTORS, RECOMMENDATIONS
from tests.conftest import ROOT, VENV_BIN, ingested, job_env

SPEC = SyntheticSpec(users=200, items=60, events=8_000, days=6, clusters=4, seed=9,
                     start=dt.date(2024, 4, 1))
PARAMS = ModelCard(rank=4, max_iter=3, window_days=6, holdout_days=2, k=5,
                   promote_if="better", min_eval_users=1, max_holdout_days=2)
K = 5


@pytest.fixture(scope="module")
def lh(spark, tmp_path_factory):
    lh = str(tmp_path_factory.mktemp("nochamp"))
    ingested(spark, lh, SPEC)
    report = train(spark, lh, PARAMS)
    # a registered model with served vectors, but no champion: what a model that lost to
    # popularity leaves behind
    if report.promoted:
        tracking.client(lh).delete_registered_model_alias(tracking.ALS_MODEL,
                                                          tracking.CHAMPION)
    assert tracking.get_alias(lh) is None
    return lh, report


def assert_served_popular(lh, n_users):
    recs = delta.current_table(lh, RECOMMENDATIONS)
    assert set(recs["source"].to_pylist()) == {"popular"}
    assert len(set(recs["user_id"].to_pylist())) == n_users
    assert recs.num_rows == n_users * K
    assert [c for c in check_recommendations(lh, k=K) if c.violations] == []


def test_no_champion_serves_popular_items_and_passes_the_gate(spark, lh):
    path, _ = lh
    r = score(spark, path, k=K)
    assert r.model_version is None and set(r.by_source) == {"popular"}
    assert_served_popular(path, r.users)
    check = subprocess.run([str(VENV_BIN / "lakerec"), "check", "--lakehouse", path,
                            "--k", str(K)], capture_output=True, text=True, env=job_env(),
                           cwd=ROOT, timeout=300)
    assert check.returncode == 0, check.stderr
    assert "passed" in check.stdout


def test_a_champion_whose_factors_are_missing_serves_popular_items(spark, lh, caplog):
    path, report = lh
    tracking.set_alias(path, report.model_version)
    try:
        delta.open_table(path, ITEM_FACTORS).delete(f"model_version = {report.model_version}")
        with caplog.at_level("WARNING"):
            r = score(spark, path, k=K)
        assert "has no item factors" in caplog.text
        assert r.model_version == report.model_version and set(r.by_source) == {"popular"}
        assert_served_popular(path, r.users)
    finally:
        tracking.client(path).delete_registered_model_alias(tracking.ALS_MODEL,
                                                            tracking.CHAMPION)
