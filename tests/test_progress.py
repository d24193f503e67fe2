"""Long steps say what they do: Spark jobs named after the step, a progress line meanwhile."""

from __future__ import annotations

import io
import time

from pipelines.runtime import cli
from pipelines.runtime.progress import Ticker


def test_a_step_names_its_spark_jobs_and_restores_the_name_after(spark):
    sc = spark.sparkContext
    with cli.step("ingest", out=io.StringIO()):
        assert sc.getLocalProperty("spark.job.description") == "ingest"
        with cli.step("dt=2024-06-01", out=io.StringIO()):
            assert sc.getLocalProperty("callSite.short") == "ingest / dt=2024-06-01"
        assert sc.getLocalProperty("callSite.short") == "ingest"
    assert sc.getLocalProperty("spark.job.description") is None


def _while_a_job_runs(spark, until, timeout=60.0):
    """Run a slow Spark job in the background until ``until()`` holds (or ``timeout``)."""
    import threading

    def slow(rows):
        for r in rows:
            time.sleep(0.2)
            yield r

    done = threading.Event()

    def job():
        while not done.is_set():
            spark.sparkContext.parallelize(range(4), 2).mapPartitions(slow).count()

    t = threading.Thread(target=job, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    t.join(timeout=30)
    return until()


def test_the_ticker_shows_the_running_stage_while_a_job_runs(spark):
    out = io.StringIO()
    with Ticker("score", out, interval=0.1):
        assert _while_a_job_runs(spark, lambda: "stage " in out.getvalue())
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("    score: ") for line in lines)
    assert any("tasks" in line and "stage " in line for line in lines), lines


def test_on_a_terminal_other_output_clears_the_progress_line_first(spark):
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term, before = Terminal(), sys.stdout
    with Ticker("score", term, interval=0.1) as t:
        assert _while_a_job_runs(spark, lambda: t._drawn)
        assert "\r\033[K    score: " in term.getvalue()
        with t._lock:  # no tick in between
            drawn = len(term.getvalue())
            print("model v2: promoted")  # what a step prints mid-way
            assert term.getvalue()[drawn:].startswith("\r\033[K") and not t._drawn
    assert sys.stdout is before  # restored


def test_a_log_handler_on_a_closed_stream_is_left_alone(spark):
    import logging

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    closed = io.StringIO()
    closed.close()
    handler = logging.StreamHandler(closed)
    logging.getLogger().addHandler(handler)
    try:
        with Ticker("score", Terminal(), interval=0.1):
            pass
    finally:
        logging.getLogger().removeHandler(handler)
    assert handler.stream is closed
