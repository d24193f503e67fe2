"""Shared set-up for the benchmarks: a local Spark session and learned factors on synthetic data."""

from __future__ import annotations

import datetime as dt
import os
import resource
import sys
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def session(cores: int = 2, memory: str = "8g"):
    from pipelines.runtime.session import build_session

    return build_session("lakerec-bench", master=f"local[{cores}]",
                         conf={"spark.driver.memory": memory,
                               "spark.sql.shuffle.partitions": str(2 * cores)})


@contextmanager
def timed(label: str, out: dict):
    t = time.perf_counter()
    yield
    out[label] = time.perf_counter() - t
    print(f"  {label}: {out[label]:.2f} s", flush=True)


def indexed_events(spark, *, users: int, items: int, events: int, days: int = 30,
                   seed: int = 1):
    """The project's synthetic events with dense int ids (``user-000123`` -> 123)."""
    from pyspark.sql import functions as F

    from pipelines.dev.generate import SyntheticSpec
    from pipelines.dev.generate import events as generate_events

    spec = SyntheticSpec(users=users, items=items, events=events, days=days, seed=seed,
                         clusters=20, start=dt.date(2024, 6, 1))
    ev = generate_events(spark, spec)
    return ev.select("user_id", "item_id", "event_type", "value", "ts",
                     F.substring("user_id", 6, 6).cast("int").alias("user_idx"),
                     F.substring("item_id", 6, 6).cast("int").alias("item_idx"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    import platform

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, load {load:.2f}"
