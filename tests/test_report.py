"""``lakerec report``: its measures against brute force, its numbers on a lakehouse with a known
answer (real Delta tables, the real MLflow registry), and the page in a real headless Chromium.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.ops.report import gini, top_share, weighted_quantile
from pipelines.storage import delta
from schemas.tables import INTERACTIONS, ITEMS, LIST_LENGTH_KEY, QUARANTINE, RECOMMENDATIONS
from tests.conftest import ROOT, VENV_BIN, job_env, overwrite

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# where the browser test leaves its screenshot of the report (ignored by git)
ARTIFACTS = Path(os.environ.get("LAKEREC_TEST_ARTIFACTS", ROOT / ".test-artifacts"))
counts = st.lists(st.integers(0, 50), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(counts)
def test_gini_is_the_mean_absolute_difference_over_twice_the_mean(x):
    a = np.array(x, dtype=np.float64)
    brute = 0.0 if a.sum() == 0 else \
        np.abs(a[:, None] - a[None, :]).sum() / (2 * len(a) ** 2 * a.mean())
    assert gini(a) == pytest.approx(brute, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(counts, st.sampled_from([0.01, 0.1, 0.5]))
def test_top_share_is_the_slots_of_the_most_listed_items(x, share):
    a = sorted(x, reverse=True)
    top = max(1, int(np.ceil(share * len(a))))
    brute = 0.0 if sum(a) == 0 else sum(a[:top]) / sum(a)
    assert top_share(np.array(x), share) == pytest.approx(brute)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.integers(1, 5)), min_size=1, max_size=30),
       st.sampled_from([0.5, 0.95]))
def test_weighted_quantile_is_the_quantile_of_the_repeated_values(pairs, q):
    v, w = zip(*pairs, strict=True)
    expanded = np.repeat(np.array(v), np.array(w))
    assert weighted_quantile(v, w, q) == pytest.approx(
        float(np.quantile(expanded, q, method="inverted_cdf")))


def test_gini_known_values():
    assert gini(np.array([1, 1, 1, 1])) == 0.0
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # (n-1)/n: one item, all slots


NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = NOW.date()


def _recs(rows, at, version=1):
    return pa.Table.from_pylist([
        {"user_id": u, "rank": r, "item_id": i, "score": 1.0 / r, "source": s,
         "model_version": version, "generated_at": at} for u, r, i, s in rows],
        schema=RECOMMENDATIONS.arrow_schema())


def _register(lh, ndcgs):
    """Model versions in the real registry, as ``train`` logs them: a run with the metrics,
    a registered version of it, the champion alias on the last."""
    import mlflow

    from pipelines.storage import tracking

    exp = tracking.experiment_id(lh)
    c = tracking.client(lh)
    c.create_registered_model(tracking.ALS_MODEL)
    for model, pop in ndcgs:
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_params({"trainer": "als"})
            mlflow.log_metrics({"ndcg_at_2": model, "pop_ndcg_at_2": pop})
        mv = c.create_model_version(tracking.ALS_MODEL, f"runs:/{run.info.run_id}/model",
                                    run.info.run_id)
    tracking.promote(lh, int(mv.version), reason="test", by="test")


@pytest.fixture
def known(tmp_path):
    """A lakehouse whose report has a known answer: 8 catalog items; two score writes and a
    stream refresh; a day with 10 events and 2 + 1 quarantined rows; 3 stream batches."""
    from pipelines.streaming.microbatch import BatchReport, log_batch

    lh = str(tmp_path / "lh")
    delta.append_arrow(lh, ITEMS, pa.Table.from_pylist([
        {"item_id": f"i{j}", "title": f"t{j}", "description": None, "category": "c",
         "created_at": NOW, "ingest_source": "t", "ingest_id": "t"} for j in range(8)],
        schema=ITEMS.arrow_schema()))
    delta.append_arrow(lh, INTERACTIONS, pa.Table.from_pylist([
        {"event_id": f"e{n}", "user_id": f"u{n % 4}", "item_id": "i7", "event_type": "view",
         "value": None, "ts": NOW, "session_id": None, "source": None, "ingest_source": "t",
         "ingest_id": "ingest:x", "ingested_at": NOW, "dt": DAY} for n in range(10)],
        schema=INTERACTIONS.arrow_schema()))
    delta.append_arrow(lh, QUARANTINE, pa.Table.from_pylist([
        {"raw": "{", "raw_bytes": None, "raw_size": 1, "reason": reason, "event_id": None,
         "ingest_source": "t", "ingest_id": "x", "quarantined_at": NOW, "origin": origin,
         "dt": DAY} for reason, origin in (("malformed_json", "events"),
                                           ("missing_field:user_id", "events"),
                                           ("missing_field:item_id", "stream"))],
        schema=QUARANTINE.arrow_schema()))
    _register(lh, [(0.20, 0.10), (0.25, 0.11)])
    early = NOW - dt.timedelta(hours=30)
    # score 1: 4 users x 2 slots on i0, i1 only
    overwrite(lh, RECOMMENDATIONS, _recs([(f"u{u}", r, f"i{r - 1}", "als")
                                           for u in range(4) for r in (1, 2)], early),
               **{"lakerec.model_version": 1, LIST_LENGTH_KEY: 2})
    # score 2: users 0-1 on the model (i0, i1), users 2-3 popular (i2, i3)
    overwrite(lh, RECOMMENDATIONS, _recs(
        [(f"u{u}", r, f"i{r - 1 + (2 if u >= 2 else 0)}", "als" if u < 2 else "popular")
         for u in range(4) for r in (1, 2)], NOW - dt.timedelta(hours=2)),
        **{"lakerec.model_version": 2, LIST_LENGTH_KEY: 2})
    # the stream refreshes u0: fold_in lists i4, i5
    delta.append_arrow(lh, RECOMMENDATIONS, _recs([("u0", 1, "i4", "fold_in"),
                                                   ("u0", 2, "i5", "fold_in")], NOW))
    log = os.path.join(lh, "_stream", "feedback", "batches.jsonl")
    hour = NOW.replace(minute=0, second=0).timestamp()
    for n, (p50, p95, valid) in enumerate([(1.0, 2.0, 10), (3.0, 4.0, 30), (9.0, 9.5, 0)]):
        log_batch(log, "feedback", BatchReport(n, records=valid, valid=valid,
                                               event_lag_s={"p50": p50, "p95": p95,
                                                            "max": p95}), at=hour + 60 * n)
    return lh


def test_the_report_numbers_on_a_known_lakehouse(known):
    from pipelines.ops import report

    models = report.model_history(known)
    assert [(m["version"], m["ndcg"], m["popularity"], m["champion"]) for m in models] == \
        [(1, 0.20, 0.10, False), (2, 0.25, 0.11, True)]
    snaps = report.served_snapshots(known, 10)
    assert [s.label for s in snaps] == ["v1", "v2", "now"]
    first, second, now = snaps
    # 8 catalog items; score 1 lists 2 of them, 4 slots each
    assert (first.coverage, first.users) == (2 / 8, 4)
    assert first.gini == pytest.approx(gini(np.array([4, 4, 0, 0, 0, 0, 0, 0])))
    assert first.top_share == pytest.approx(0.5)  # ceil(1% of 8) = 1 item: 4 of 8 slots
    assert second.first_source == {"als": 0.5, "popular": 0.5}
    # the current lists: u0's stream refresh replaces its score list
    assert now.coverage == 6 / 8 and now.first_source == {"fold_in": 0.25, "als": 0.25,
                                                          "popular": 0.5}
    (fresh,) = report.stream_freshness(known, NOW - dt.timedelta(days=1))
    # batches of 10 and 30 records (the empty one counts for nothing)
    assert (fresh["batches"], fresh["records"]) == (2, 40)
    assert (fresh["p50_s"], fresh["p95_s"]) == (3.0, 4.0)
    days, rates, totals = report.quarantine_by_day(known, DAY - dt.timedelta(days=1))
    assert days == [str(DAY)] and totals == [13]
    assert rates == {"missing_field": [2 / 13], "malformed_json": [1 / 13]}


def _browser_check(page_path: Path, screenshot: Path) -> dict:
    """Open the page in headless Chromium: console errors, page errors, each plot's size."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            plots = page.eval_on_selector_all(
                "img.plot", "els => els.map(e => ({id: e.closest('section').id, "
                "ok: e.complete, w: e.naturalWidth, h: e.naturalHeight}))")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "plots": plots, "requests": requests}


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason="Chromium is missing: apt-get install chromium (.ci/run does)")
def test_lakerec_report_renders_every_plot_in_a_real_browser(known):
    r = subprocess.run([str(VENV_BIN / "lakerec"), "report", "--lakehouse", known],
                       capture_output=True, text=True, env=job_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    folder = Path(known) / "_report"
    assert f"report: {folder / 'report.html'} (5 plots: models, lists, fallbacks, " \
        "freshness, quarantine)" in r.stdout
    assert sorted(p.name for p in folder.iterdir()) == [
        "fallbacks.png", "freshness.png", "lists.png", "models.png", "quarantine.png",
        "report.html"]
    page = (folder / "report.html").read_text()
    assert "<script" not in page and "http" not in page.split("<body>")[1]  # self-contained
    got = _browser_check(folder / "report.html", ARTIFACTS / "report.png")
    assert got["errors"] == []
    assert [p["id"] for p in got["plots"]] == ["models", "lists", "fallbacks", "freshness",
                                                "quarantine"]
    assert all(p["ok"] and p["w"] > 300 and p["h"] > 200 for p in got["plots"]), got["plots"]
    assert all(u.startswith(("file:", "data:")) for u in got["requests"]), got["requests"]
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
    # the numbers are on the page too
    assert "75.0%" in page  # the current lists' coverage: 6 of 8 items
    # again: the folder is replaced whole, nothing left of the first
    (folder / "stale.png").write_bytes(b"x")
    r = subprocess.run([str(VENV_BIN / "lakerec"), "report", "--lakehouse", known],
                       capture_output=True, text=True, env=job_env(), timeout=300)
    assert r.returncode == 0 and not (folder / "stale.png").exists()
    assert not [n for n in os.listdir(known) if n.startswith(".staging")]


def test_a_report_of_a_new_lakehouse_says_what_is_missing(tmp_path):
    lh = tmp_path / "lh"
    (lh / "landing").mkdir(parents=True)
    r = subprocess.run([str(VENV_BIN / "lakerec"), "report", "--lakehouse", str(lh),
                        "--out", str(lh / "r")], capture_output=True, text=True,
                       env=job_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "(0 plots: none)" in r.stdout and "no trained model yet" in r.stdout
    assert os.listdir(lh / "r") == ["report.html"]
    r = subprocess.run([str(VENV_BIN / "lakerec"), "report", "--lakehouse", str(lh),
                        "--out", "/etc/lakerec-report"], capture_output=True, text=True,
                       env=job_env(), timeout=300)
    assert r.returncode == 2 and "system folder" in r.stderr
    assert not os.path.exists("/etc/lakerec-report")
    # a report folder is replaced whole: never the lakehouse, a table, or someone's folder
    (lh / "items" / "_delta_log").mkdir(parents=True)
    (lh / "notes").mkdir()
    (lh / "notes" / "mine.txt").write_text("keep")
    before = sorted(os.walk(lh))
    for out, why in ((lh, "holds the lakehouse"), (lh.parent, "holds the lakehouse"),
                     (lh / "items", "inside the lakehouse's items"),
                     (lh / "landing" / "r", "inside the lakehouse's landing"),
                     (lh / "notes", "not an earlier report"),
                     (lh / "notes" / "mine.txt", "is a file")):
        r = subprocess.run([str(VENV_BIN / "lakerec"), "report", "--lakehouse", str(lh),
                            "--out", str(out)], capture_output=True, text=True,
                           env=job_env(), timeout=300)
        assert r.returncode == 2 and why in r.stderr, (out, r.stderr)
    assert sorted(os.walk(lh)) == before


def test_batch_log_lines_are_what_the_report_reads(tmp_path):
    """The stream's writer and the report's reader share one line format."""
    from pipelines.ops.report import stream_freshness
    from pipelines.streaming.microbatch import BatchReport, log_batch

    lh = str(tmp_path)
    log = os.path.join(lh, "_stream", "q", "batches.jsonl")
    log_batch(log, "q", BatchReport(0, valid=5, event_lag_s={"p50": 0.5, "p95": 0.9,
                                                             "max": 1.0}))
    with open(log, "a") as f:
        f.write('{"query": "q", "at": 1')  # a line cut by a crash
    (row,) = stream_freshness(lh, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert (row["query"], row["records"], row["p50_s"], row["p95_s"]) == ("q", 5, 0.5, 0.9)


def test_the_batch_log_rolls_over_and_both_parts_are_read(tmp_path, monkeypatch):
    from pipelines.ops.report import stream_freshness
    from pipelines.streaming import microbatch

    monkeypatch.setattr(microbatch, "BATCH_LOG_BYTES", 200)
    log = str(tmp_path / "_stream" / "q" / "batches.jsonl")
    for n in range(6):
        microbatch.log_batch(log, "q", microbatch.BatchReport(n, valid=1, event_lag_s={
            "p50": float(n), "p95": float(n), "max": float(n)}))
    assert os.path.getsize(log + ".1") < 2 * 200 + 400 and os.path.getsize(log) <= 400
    (row,) = stream_freshness(str(tmp_path), dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    # the live log and the last rolled-over one; older parts were dropped
    assert 2 <= row["batches"] < 6
