"""The stream's history lookup at two table sizes: a scan of ``interactions`` vs the keyed state.

    python bench/keyed_state.py [--sizes 1000000,10000000] [--users-per-event 0.02]
                                [--batch-users 600] [--batches 30]

For each size an ``interactions`` table of that many events (30 days) is
written with the stream's own writer (users uniform, ~50 events each); then, batch after batch, one new batch of events is
appended (as the stream does) and the touched users' history is read both ways: the old
scan (:func:`pipelines.streaming.microbatch.user_history`) and the keyed state (catch up
with the new commit, then look the users up). Prints the state's one-off rebuild, and per
size the median milliseconds and bytes read (``/proc/self/io``) of each way, with the
large/small ratios side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import machine  # noqa: E402

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])


def events(rng, n: int, users: int, items: int, tag: str, day0: int = 0, days: int = 30):
    import pyarrow as pa

    from schemas.tables import INTERACTIONS

    # users uniform: at 10x the events and users a user's history stays the same size
    u = rng.integers(0, users, n)
    t = T0 + dt.timedelta(days=day0)
    ts = [t + dt.timedelta(seconds=int(s)) for s in rng.integers(0, days * 86400, n)]
    return pa.table({
        "event_id": [f"{tag}-{j}" for j in range(n)],
        "user_id": [f"user-{x:07d}" for x in u],
        "item_id": [f"item-{x:06d}" for x in rng.integers(0, items, n)],
        "event_type": rng.choice(["view", "click", "purchase"], n).tolist(),
        "value": pa.nulls(n, pa.float64()), "ts": ts, "session_id": pa.nulls(n, pa.string()),
        "source": ["bench"] * n, "ingest_source": ["bench://"] * n, "ingest_id": [tag] * n,
        "ingested_at": [T0] * n, "dt": [x.date() for x in ts],
    }).cast(INTERACTIONS.arrow_schema())


def measure(size: int, args, rng) -> dict:
    from pipelines.storage import delta
    from pipelines.streaming.microbatch import user_history
    from pipelines.streaming.state import KeyedState
    from schemas.tables import INTERACTIONS

    users, items = max(1000, int(size * args.users_per_event)), 20000
    lh = tempfile.mkdtemp(prefix=f"lakerec-state-{size}-")
    try:
        step = 1_000_000
        for k in range(0, size, step):  # in daily-ingest-like commits
            delta.append_arrow(lh, INTERACTIONS, events(rng, min(step, size - k), users, items,
                                                        f"seed{k}"))
        t = time.perf_counter()
        state = KeyedState.open(os.path.join(lh, "_state"))
        state.sync(lh, [INTERACTIONS])
        rebuild_s = time.perf_counter() - t
        state_mb = os.path.getsize(state.path) / 2**20
        scan_ms, scan_b, st_ms, st_b = [], [], [], []
        for b in range(args.batches):
            batch = events(rng, args.batch_users, users, items, f"b{b}", day0=30, days=1)
            delta.append_arrow(lh, INTERACTIONS, batch)
            who = sorted(set(batch["user_id"].to_pylist()))
            r, t = _rchar(), time.perf_counter()
            state.sync(lh, [INTERACTIONS])
            got = state.history(who)
            st_ms.append(1e3 * (time.perf_counter() - t))
            st_b.append(_rchar() - r)
            r, t = _rchar(), time.perf_counter()
            raw = user_history(lh, who)
            scan_ms.append(1e3 * (time.perf_counter() - t))
            scan_b.append(_rchar() - r)
            assert got["n"].sum() == len(raw)  # the same events, both ways
        state.close()
        return {"events": size, "users": users, "rebuild_s": rebuild_s, "state_mb": state_mb,
                "scan_ms": float(np.median(scan_ms)), "scan_mb": float(np.median(scan_b)) / 2**20,
                "state_ms": float(np.median(st_ms)), "state_mb_read":
                    float(np.median(st_b)) / 2**20}
    finally:
        shutil.rmtree(lh, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--users-per-event", type=float, default=0.02)
    ap.add_argument("--batch-users", type=int, default=600, help="events per batch")
    ap.add_argument("--batches", type=int, default=30)
    args = ap.parse_args(argv)
    print(machine())
    rng = np.random.default_rng(7)
    rows = [measure(int(s), args, rng) for s in args.sizes.split(",")]
    print(f"{'events':>11} {'users':>8} {'rebuild':>9} {'state':>8} | {'scan ms':>8} "
          f"{'scan MiB':>9} | {'state ms':>8} {'state MiB':>9}")
    for r in rows:
        print(f"{r['events']:>11,} {r['users']:>8,} {r['rebuild_s']:>8.1f}s {r['state_mb']:>6.0f}MB"
              f" | {r['scan_ms']:>8.1f} {r['scan_mb']:>9.2f} | {r['state_ms']:>8.1f} "
              f"{r['state_mb_read']:>9.3f}")
    if len(rows) == 2:
        a, b = rows
        print(f"ratio large/small: scan {b['scan_ms'] / a['scan_ms']:.2f}x time, "
              f"{b['scan_mb'] / max(a['scan_mb'], 1e-9):.2f}x bytes; keyed state "
              f"{b['state_ms'] / a['state_ms']:.2f}x time, "
              f"{b['state_mb_read'] / max(a['state_mb_read'], 1e-9):.2f}x bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
