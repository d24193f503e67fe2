"""Scale: each batch job and the stream at two lakehouse sizes, side by side in one run.

    python bench/scale.py [--sizes 1000000:20000:5000,10000000:200000:20000] [--days 30]
                          [--cache /tmp/lakerec-scale] [--rate 1000] [--seconds 30]
                          [--jobs generate,ingest,train,score,compact] [--no-stream]

A size is ``EVENTS:USERS:ITEMS``. For each, a lakehouse is built with the real commands
(``lakerec generate``, ``ingest --all``, ``train``, ``score``, ``compact``), each a separate
process as a user runs it, on the default settings (``local[2]``, driver memory 4g), and
measured: wall time, peak memory of the job's process tree (PSS: the driver JVM, its
Python and workers, shared pages counted once) and the bytes Spark spilled (memory and disk, from the job's event log).
A lakehouse and its job figures are cached under ``--cache`` and reused by a later run with
the same size (delete the folder to rebuild).

Then, on each lakehouse in turn, the stream at ``--rate`` events/s for ``--seconds``
(``bench/stream_latency.py``'s run: the local broker over TCP, ``lakerec stream`` as its own
process, load generators sharing the cores): produce -> visible p50/p95, and from the
stream's own per-batch report the median time and the median bytes read and written by the
driver in each phase. The last lines print each ratio (large / small) against the goals:
a job's time at 10x the data within 10x, no spill, the stream's p95 within 1.2x and at most
2.5 s, per-phase bytes flat.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import machine  # noqa: E402

BIN = os.path.dirname(sys.executable)
JOBS = ("generate", "ingest", "train", "score", "compact")


def job_args(job: str, events: int, users: int, items: int, days: int) -> list[str]:
    return {
        "generate": ["--users", str(users), "--items", str(items), "--events", str(events),
                     "--days", str(days), "--seed", "7"],
        "ingest": ["--all"],
        "train": ["--window-days", str(days), "--holdout-days", "3"],
        "score": [],
        "compact": [],
        "embed": [],
    }[job]


def tree_pss_mb(root: int) -> float:
    """Proportional set size of ``root`` and all its descendants now (MiB): resident memory
    with the pages forked workers share counted once, not once per process."""
    kids: dict[int, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(pid))
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration, ValueError):
            pass
        todo.extend(kids.get(p, ()))
    return total / 1024


def spilled(event_dir: str) -> tuple[int, int]:
    """(memory, disk) bytes spilled by every task in the event logs under ``event_dir``."""
    mem = disk = 0
    # Spark 4 writes a folder per application (rolling event files in it)
    for path in glob.glob(os.path.join(event_dir, "**", "*"), recursive=True):
        if not os.path.isfile(path) or os.path.basename(path).startswith("appstatus"):
            continue
        with open(path) as f:
            for line in f:
                if '"SparkListenerTaskEnd"' not in line:
                    continue
                m = json.loads(line).get("Task Metrics") or {}
                mem += int(m.get("Memory Bytes Spilled", 0))
                disk += int(m.get("Disk Bytes Spilled", 0))
    return mem, disk


def run_job(lh: str, job: str, args: list[str], work: str) -> dict:
    """One ``lakerec <job>`` process: wall time, peak memory of its tree (PSS), spill."""
    events = os.path.join(work, f"events-{job}")
    shutil.rmtree(events, ignore_errors=True)
    os.makedirs(events)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    env["LAKEREC_SPARK_CONF"] = (f"spark.eventLog.enabled=true,spark.eventLog.dir=file://{events},"
                                 "spark.eventLog.compress=false")
    cmd = [os.path.join(BIN, "lakerec"), job, "--lakehouse", lh, *args]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    peak = [0.0]

    def poll():
        while p.poll() is None:
            peak[0] = max(peak[0], tree_pss_mb(p.pid))
            time.sleep(0.25)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = p.communicate()
    seconds = time.perf_counter() - t0
    th.join()
    if p.returncode != 0:
        raise SystemExit(f"lakerec {job} failed ({p.returncode}):\n{err[-3000:]}")
    mem, disk = spilled(events)
    return {"seconds": round(seconds, 2), "peak_mb": round(peak[0]),
            "spill_memory_mb": round(mem / 2**20, 1), "spill_disk_mb": round(disk / 2**20, 1)}


def build(cache: str, size: tuple[int, int, int], days: int, jobs: list[str]) -> tuple[str, dict]:
    """The lakehouse of ``size`` (cached) and its job figures."""
    events, users, items = size
    folder = os.path.join(cache, f"{events}-{users}-{items}-{days}d")
    lh = os.path.join(folder, "lh")
    figures_file = os.path.join(folder, "jobs.json")
    figures = {}
    if os.path.exists(figures_file):
        with open(figures_file) as f:
            figures = json.load(f)
    for job in jobs:
        if job in figures:
            continue
        print(f"  {events:,} events: lakerec {job} ...", flush=True)
        figures[job] = run_job(lh, job, job_args(job, events, users, items, days), folder)
        print(f"    {figures[job]}", flush=True)
        with open(figures_file, "w") as f:
            json.dump(figures, f, indent=1)
    return lh, figures


def stream_figures(lh: str, rate: int, seconds: float) -> dict:
    """bench/stream_latency's run at ``rate`` on ``lh``, plus the per-phase medians."""
    from bench import stream_latency
    from pipelines.dev import broker
    from pipelines.storage.sql import query

    for d in ("_broker", "_checkpoints", "_stream"):
        shutil.rmtree(os.path.join(lh, d), ignore_errors=True)
    users = [r[0] for r in query(lh, "SELECT DISTINCT user_id FROM interactions")[1]]
    items = [r[0] for r in query(lh, "SELECT DISTINCT item_id FROM item_factors")[1]]
    st = broker.start(os.path.join(lh, "_broker"))
    try:
        r = stream_latency.run_rate(lh, st.bootstrap, rate, seconds, users, items)
    finally:
        broker.stop(os.path.join(lh, "_broker"))
    metrics = sorted(glob.glob(os.path.join(lh, "_stream", "*", "batches.jsonl")),
                     key=os.path.getmtime)[-1]
    with open(metrics) as f:
        runs = [json.loads(x) for x in f][-r["batches"]:] if r["batches"] else []
    phases = list(dict.fromkeys(p for b in runs for p in b.get("phases", {})))  # run order
    r["phases"] = {
        p: {"median_s": float(np.median([b["phases"][p] for b in runs if p in b["phases"]])),
            "median_read_kb": float(np.median([b["io"][p][0] for b in runs
                                               if p in b.get("io", {})])) / 1024,
            "median_written_kb": float(np.median([b["io"][p][1] for b in runs
                                                  if p in b.get("io", {})])) / 1024}
        for p in phases}
    return r


def ratio(a, b) -> str:
    return "n/a" if not a or b is None else f"{b / a:.2f}x"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000:20000:5000,10000000:200000:20000")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--cache", default=os.path.join("/tmp", "lakerec-scale"))
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--jobs", default=",".join(JOBS),
                    help=f"jobs to build and measure, in order ({','.join(JOBS)}; 'embed' "
                         "too needs `make models`)")
    ap.add_argument("--no-stream", action="store_true")
    args = ap.parse_args(argv)
    sizes = [tuple(int(float(x)) for x in s.split(":")) for s in args.sizes.split(",")]
    if len(sizes) != 2 or any(len(s) != 3 for s in sizes):
        ap.error("--sizes takes two EVENTS:USERS:ITEMS")
    jobs = args.jobs.split(",")
    print(machine(), flush=True)
    built = [build(args.cache, s, args.days, jobs) for s in sizes]
    streams = [] if args.no_stream else [stream_figures(lh, args.rate, args.seconds)
                                         for lh, _ in built]

    (small, fs), (large, fl) = built
    label = [f"{s[0]:,} events, {s[1]:,} users, {s[2]:,} items" for s in sizes]
    print(f"\nsizes: A = {label[0]}; B = {label[1]} ({args.days} days)")
    print(f"{'job':<10} {'A s':>8} {'B s':>8} {'B/A':>7} {'A MiB':>7} {'B MiB':>7} "
          f"{'A spill':>9} {'B spill':>9}  goal: B/A <= 10x, no spill")
    ok = True
    for job in jobs:
        a, b = fs[job], fl[job]
        spill_a = a["spill_memory_mb"] + a["spill_disk_mb"]
        spill_b = b["spill_memory_mb"] + b["spill_disk_mb"]
        met = b["seconds"] <= 10 * a["seconds"] and spill_b == 0
        ok &= met
        print(f"{job:<10} {a['seconds']:>8.1f} {b['seconds']:>8.1f} "
              f"{ratio(a['seconds'], b['seconds']):>7} {a['peak_mb']:>7} "
              f"{b['peak_mb']:>7} {spill_a:>8.0f}M {spill_b:>8.0f}M  "
              f"{'met' if met else 'NOT met'}")
    if streams:
        sa, sb = streams
        print(f"\nstream at {args.rate}/s for {args.seconds:.0f} s: p50 {sa['p50']:.2f} -> "
              f"{sb['p50']:.2f} s, p95 {sa['p95']:.2f} -> {sb['p95']:.2f} s "
              f"({ratio(sa['p95'], sb['p95'])}; goal <= 1.2x and <= 2.5 s: "
              f"{'met' if sb['p95'] <= 1.2 * sa['p95'] and sb['p95'] <= 2.5 else 'NOT met'}); "
              f"{sa['batches']} / {sb['batches']} batches of {sa['mean_batch_records']:.0f} / "
              f"{sb['mean_batch_records']:.0f} records")
        print(f"{'phase':<16} {'A s':>7} {'B s':>7} {'A read KiB':>11} {'B read KiB':>11} "
              f"{'B/A':>7} {'A written':>10} {'B written':>10}")
        for p in sa["phases"]:
            a, b = sa["phases"][p], sb["phases"].get(p, {})
            print(f"{p:<16} {a['median_s']:>7.3f} {b.get('median_s', float('nan')):>7.3f} "
                  f"{a['median_read_kb']:>11.0f} {b.get('median_read_kb', float('nan')):>11.0f} "
                  f"{ratio(a['median_read_kb'], b.get('median_read_kb')):>7} "
                  f"{a['median_written_kb']:>10.0f} "
                  f"{b.get('median_written_kb', float('nan')):>10.0f}")
    out = os.path.join(args.cache, "results.json")
    with open(out, "w") as f:
        json.dump({"machine": machine(), "sizes": sizes, "jobs": [fs, fl], "stream": streams},
                  f, indent=1)
    print(f"\nbatch jobs: {'all goals met' if ok else 'some goals NOT met'}; details: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
