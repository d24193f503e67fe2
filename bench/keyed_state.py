"""The stream's history and dedup lookups at two table sizes: reads of ``interactions`` vs
the keyed state.

    python bench/keyed_state.py [--sizes 1000000,10000000] [--users-per-event 0.02]
                                [--batch-users 600] [--batches 30] [--days 30]

For each size an ``interactions`` table of that many events (``--days``, default 30) is
written with the stream's own writer (users uniform, ~50 events each); then, batch after batch, one new batch of events is
appended (as the stream does) and the touched users' history is read both ways: the old
scan (:func:`pipelines.streaming.microbatch.user_history`) and the keyed state (catch up
with the new commit, then look the users up); then the batch's event ids (plus copies of
earlier events, about a tenth) are deduplicated both ways: the read of the 7-day horizon's
partitions (:func:`pipelines.streaming.microbatch._known_ids` without a state) and the
state's id window. Both ways are checked to give the same answer. Prints the state's
one-off rebuild, and per size the median milliseconds and bytes read (``/proc/self/io``) of
each way, with the large/small ratios side by side. The table's last days are the batches'
dedup horizon: at 10x the events a day holds 10x the arrivals, as a busier stream's would.
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
    from pipelines.streaming.microbatch import _known_ids, user_history
    from pipelines.streaming.state import KeyedState
    from schemas import DEDUP_HORIZON_DAYS
    from schemas.tables import INTERACTIONS

    users, items = max(1000, int(size * args.users_per_event)), 20000
    lh = tempfile.mkdtemp(prefix=f"lakerec-state-{size}-")
    try:
        step = 1_000_000
        for k in range(0, size, step):  # in daily-ingest-like commits
            delta.append_arrow(lh, INTERACTIONS, events(rng, min(step, size - k), users, items,
                                                        f"seed{k}", days=args.days))
        today = (T0 + dt.timedelta(days=args.days)).date()  # the batches' day
        t = time.perf_counter()
        # the stream's id window: the horizon before today, and one day more
        state = KeyedState.open(os.path.join(lh, "_state"), id_days=DEDUP_HORIZON_DAYS + 1)
        state.sync(lh, [INTERACTIONS], today=today)
        rebuild_s = time.perf_counter() - t
        state_mb = os.path.getsize(state.path) / 2**20
        m = {k: [] for k in ("scan_ms", "scan_b", "st_ms", "st_b", "dscan_ms", "dscan_b",
                             "dst_ms", "dst_b", "hits")}

        def timed(ms, b, fn, *a, **kw):
            r, t = _rchar(), time.perf_counter()
            out = fn(*a, **kw)
            m[ms].append(1e3 * (time.perf_counter() - t))
            m[b].append(_rchar() - r)
            return out

        for b in range(args.batches):
            batch = events(rng, args.batch_users, users, items, f"b{b}", day0=args.days, days=1)
            delta.append_arrow(lh, INTERACTIONS, batch)
            who = sorted(set(batch["user_id"].to_pylist()))
            got = timed("st_ms", "st_b", lambda users: (
                state.sync(lh, [INTERACTIONS], today=today), state.history(users))[1], who)
            raw = timed("scan_ms", "scan_b", user_history, lh, who)
            assert got["n"].sum() == len(raw)  # the same events, both ways
            # the next batch's ids, and copies of earlier events (some inside the horizon)
            ids = [f"next{b}-{j}" for j in range(args.batch_users)] + \
                [f"seed{step * int(rng.integers(0, max(1, size // step)))}-"
                 f"{int(rng.integers(0, min(step, size)))}" for _ in range(args.batch_users // 10)]
            known = timed("dst_ms", "dst_b", _known_ids, lh, ids, today, DEDUP_HORIZON_DAYS,
                          state=state, today=today)
            want = timed("dscan_ms", "dscan_b", _known_ids, lh, ids, today, DEDUP_HORIZON_DAYS)
            assert known == want  # the same duplicates, both ways
            m["hits"].append(len(known))
        state.close()
        med = {k: float(np.median(v)) for k, v in m.items()}
        return {"events": size, "users": users, "rebuild_s": rebuild_s, "state_mb": state_mb,
                "scan_ms": med["scan_ms"], "scan_mb": med["scan_b"] / 2**20,
                "state_ms": med["st_ms"], "state_mb_read": med["st_b"] / 2**20,
                "dscan_ms": med["dscan_ms"], "dscan_mb": med["dscan_b"] / 2**20,
                "dstate_ms": med["dst_ms"], "dstate_mb": med["dst_b"] / 2**20,
                "hits": med["hits"]}
    finally:
        shutil.rmtree(lh, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--users-per-event", type=float, default=0.02)
    ap.add_argument("--batch-users", type=int, default=600, help="events per batch")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--days", type=int, default=30, help="the span of the seeded events")
    args = ap.parse_args(argv)
    print(machine())
    rng = np.random.default_rng(7)
    rows = [measure(int(s), args, rng) for s in args.sizes.split(",")]
    print(f"{'events':>11} {'users':>8} {'rebuild':>9} {'state':>8} | history: {'scan ms':>8} "
          f"{'MiB':>7} {'state ms':>8} {'MiB':>7} | dedup: {'scan ms':>8} {'MiB':>7} "
          f"{'state ms':>8} {'MiB':>7} {'dups':>5}")
    for r in rows:
        print(f"{r['events']:>11,} {r['users']:>8,} {r['rebuild_s']:>8.1f}s {r['state_mb']:>6.0f}MB"
              f" |          {r['scan_ms']:>8.1f} {r['scan_mb']:>7.2f} {r['state_ms']:>8.1f} "
              f"{r['state_mb_read']:>7.3f} |        {r['dscan_ms']:>8.1f} {r['dscan_mb']:>7.2f} "
              f"{r['dstate_ms']:>8.1f} {r['dstate_mb']:>7.3f} {r['hits']:>5.0f}")
    if len(rows) == 2:
        a, b = rows

        def x(k):
            return f"{b[k] / max(a[k], 1e-9):.2f}x"

        print(f"ratio large/small: history scan {x('scan_ms')} time, {x('scan_mb')} bytes; "
              f"keyed state {x('state_ms')} time, {x('state_mb_read')} bytes")
        print(f"ratio large/small: dedup read of the horizon {x('dscan_ms')} time, "
              f"{x('dscan_mb')} bytes; keyed state {x('dstate_ms')} time, {x('dstate_mb')} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
