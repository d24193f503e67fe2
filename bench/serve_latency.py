"""The HTTP API under load, both stores, and the freshness of what it serves.

    python bench/serve_latency.py [--users 200000] [--rate 1000] [--seconds 20]
                                  [--connections 16] [--freshness-lakehouse PATH]
                                  [--skip-freshness]

One run, the real parts, on loopback, client and server sharing the machine's cores:

1. **Publish at two sizes.** Lakehouses of 20,000 and ``--users`` users (10 items each,
   written with Arrow); the first ``lakerec publish`` (a full push) and an incremental one
   after a stream-like commit refreshing 1,000 users, to SQLite and to a real redis-server.
2. **Latency.** ``lakerec serve`` (one worker) on the big lakehouse, for each store, with
   exposure logging off and on (to the local broker): an open-loop load generator (its own
   process, asyncio + uvloop, ``--connections`` keep-alive connections) sends ``--rate``
   requests/s for ``--seconds`` (95% known users, 5% unknown; k=10). Latency is measured
   from each request's *scheduled* time, so a stalled server is not hidden (no coordinated
   omission). Then a closed loop: every connection back to back, for the throughput.
3. **Freshness.** A trained lakehouse (built by the demo at 20,000 users unless
   ``--freshness-lakehouse``), the local broker, ``lakerec stream`` pushing to the store,
   ``lakerec serve`` and load generators sending 1,000 feedback events/s. Every 100 ms a
   probe sends a purchase for a new user and polls the API every 10 ms until it returns
   that user's own list (``source = personal``, where before it served the popular list):
   produced -> served, per probe.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import machine  # noqa: E402
from bench.stream_latency import (  # noqa: E402
    PER_PRODUCER,
    prepare,
    run_producers,
    stop_stream,
    tree_cpu,
)

BIN = os.path.dirname(sys.executable)
K = 10
ITEMS = 20_000


# --------------------------------------------------------------------------- lakehouses


def build(lh: str, users: int, seed: int = 1) -> None:
    """``users`` lists of K items, a catalog of ITEMS items in 20 categories, interactions
    for the popular list and 10 similar items per item: Arrow only, a few seconds."""
    import pyarrow as pa

    from pipelines.storage import delta
    from schemas.tables import INTERACTIONS, RECOMMENDATIONS
    from schemas.tables import ITEMS as ITEMS_T

    rng = np.random.default_rng(seed)
    now = dt.datetime.now(dt.UTC)
    cat = pa.table({"item_id": [f"i{j}" for j in range(ITEMS)],
                    "title": [f"t{j}" for j in range(ITEMS)],
                    "description": pa.nulls(ITEMS, pa.string()),
                    "category": [f"c{j % 20}" for j in range(ITEMS)],
                    "created_at": pa.array([now] * ITEMS, pa.timestamp("us", "UTC")),
                    "ingest_source": ["bench"] * ITEMS, "ingest_id": ["bench"] * ITEMS})
    delta.ensure_table(lh, ITEMS_T)
    delta.append_arrow(lh, ITEMS_T, cat.cast(ITEMS_T.arrow_schema()))
    n_ev = 100_000
    ev = pa.table({
        "event_id": [f"e{j}" for j in range(n_ev)],
        "user_id": [f"u{j}" for j in rng.integers(0, users, n_ev)],
        "item_id": [f"i{j}" for j in np.minimum(rng.zipf(1.3, n_ev), ITEMS) - 1],
        "event_type": ["click"] * n_ev, "value": pa.nulls(n_ev, pa.float64()),
        "ts": pa.array([now] * n_ev, pa.timestamp("us", "UTC")),
        "session_id": pa.nulls(n_ev, pa.string()), "source": pa.nulls(n_ev, pa.string()),
        "ingest_source": ["bench"] * n_ev, "ingest_id": ["bench"] * n_ev,
        "ingested_at": pa.array([now] * n_ev, pa.timestamp("us", "UTC")),
        "dt": pa.array([now.date()] * n_ev, pa.date32()),
        "request_id": pa.nulls(n_ev, pa.string())})
    delta.ensure_table(lh, INTERACTIONS)
    delta.append_arrow(lh, INTERACTIONS, ev.cast(INTERACTIONS.arrow_schema()))
    delta.ensure_table(lh, RECOMMENDATIONS)
    for lo in range(0, users, 50_000):
        delta.append_arrow(lh, RECOMMENDATIONS, lists(range(lo, min(users, lo + 50_000)), now,
                                                      rng))


def lists(users, at, rng):
    import pyarrow as pa

    users = list(users)
    n = len(users) * K
    return pa.table({
        "user_id": np.repeat([f"u{u}" for u in users], K).tolist(),
        "rank": pa.array(np.tile(np.arange(1, K + 1, dtype=np.int32), len(users))),
        "item_id": [f"i{j}" for j in rng.integers(0, ITEMS, n)],
        "score": pa.array(np.tile(np.linspace(1, 0.1, K, dtype=np.float32), len(users))),
        "source": ["als"] * n, "model_version": pa.array(np.ones(n, np.int64)),
        "generated_at": pa.array([at] * n, pa.timestamp("us", "UTC"))})


def publish_sizes(small: int, big: int, redis_url: str, work: str) -> dict:
    """Full and incremental publishes at two sizes, both stores; returns the big lakehouse."""
    from pipelines.online.publish import Publisher
    from pipelines.online.store import open_store
    from pipelines.storage import delta
    from schemas.tables import RECOMMENDATIONS

    out = {}
    for users in (small, big):
        lh = os.path.join(work, f"lh-{users}")
        build(lh, users)
        for kind in ("sqlite", "redis"):
            url = ("sqlite://" + os.path.join(lh, "_online", "lists.db")) if kind == "sqlite" \
                else f"{redis_url}?prefix=b{users}"
            st = open_store(url)
            t = time.perf_counter()
            full = Publisher(lh, st).sync()
            t_full = time.perf_counter() - t
            out[(users, kind, "full")] = (t_full, full.written)
            st.close()
        # a stream-like commit of 1,000 refreshed users, then an incremental push to each
        refresh = lists(random.Random(2).sample(range(users), 1000),
                        dt.datetime.now(dt.UTC), np.random.default_rng(3))
        v = delta.append_arrow(lh, RECOMMENDATIONS, refresh).version
        for kind in ("sqlite", "redis"):
            url = ("sqlite://" + os.path.join(lh, "_online", "lists.db")) if kind == "sqlite" \
                else f"{redis_url}?prefix=b{users}"
            st = open_store(url)
            t = time.perf_counter()
            inc = Publisher(lh, st).sync(side=False)
            out[(users, kind, "incremental")] = (time.perf_counter() - t, inc.written)
            st.close()
        # the stream's own push: the batch's 1,000 lists from memory after its commit
        batch = lists(random.Random(5).sample(range(users), 1000), dt.datetime.now(dt.UTC),
                      np.random.default_rng(6))
        v = delta.append_arrow(lh, RECOMMENDATIONS, batch).version
        for kind in ("sqlite", "redis"):
            url = ("sqlite://" + os.path.join(lh, "_online", "lists.db")) if kind == "sqlite" \
                else f"{redis_url}?prefix=b{users}"
            st = open_store(url)
            t = time.perf_counter()
            b = Publisher(lh, st).push_batch(batch, v, stream_batch="bench:0")
            out[(users, kind, "batch")] = (time.perf_counter() - t, b.written)
            st.close()
        out[users] = lh
    return out


# --------------------------------------------------------------------------- load


def load_proc(port, users, rate, seconds, conns, closed, seed, q):
    """The load generator (its own process): open loop at ``rate``, or closed loop."""
    import uvloop

    uvloop.install()
    rng = random.Random(seed)

    def path():
        u = f"u{rng.randrange(users)}" if rng.random() < 0.95 else f"new{rng.randrange(10**9)}"
        return (f"GET /v1/users/{u}/recommendations?k={K} HTTP/1.1\r\nHost: b\r\n\r\n").encode()

    async def one(reader, writer, req):
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        return status

    async def main():
        pool = asyncio.Queue()
        for _ in range(conns):
            pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
        lat, codes = [], {}
        t0 = time.perf_counter() + 0.05
        end = t0 + seconds

        async def fire(at):
            r, w = await pool.get()
            try:
                code = await one(r, w, path())
            finally:
                pool.put_nowait((r, w))
            lat.append(time.perf_counter() - at)
            codes[code] = codes.get(code, 0) + 1

        if closed:
            async def worker():
                while time.perf_counter() < end:
                    await fire(time.perf_counter())
            await asyncio.gather(*(worker() for _ in range(conns)))
        else:
            tasks = []
            i = 0
            while True:
                at = t0 + i / rate
                if at >= end:
                    break
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(fire(at)))
                i += 1
            await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        q.put((lat, codes, wall))

    asyncio.run(main())


def run_load(port, users, *, rate=0, seconds=10, conns=16, closed=False):
    q = mp.Queue()
    p = mp.Process(target=load_proc, args=(port, users, rate, seconds, conns, closed, 7, q))
    c0 = os.times()
    p.start()
    lat, codes, wall = q.get()
    p.join()
    c1 = os.times()
    lat = np.array(lat) * 1e3
    return {"n": len(lat), "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "max": float(lat.max()),
            "rps": len(lat) / wall, "codes": codes,
            "client_cores": (c1.children_user + c1.children_system - c0.children_user
                             - c0.children_system) / wall}


def serve(lh, url, port, *extra):
    proc = subprocess.Popen([os.path.join(BIN, "lakerec"), "serve", "--lakehouse", lh,
                             "--store", url, "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"serve did not start: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latency(lh, url, users, args, extra, label):
    port = free_port()
    proc = serve(lh, url, port, *extra)
    try:
        run_load(port, users, rate=min(args.rate, 500), seconds=3, conns=args.connections)
        cpu0, t0 = tree_cpu(proc.pid), time.time()
        opened = run_load(port, users, rate=args.rate, seconds=args.seconds,
                          conns=args.connections)
        opened["server_cores"] = (tree_cpu(proc.pid) - cpu0) / (time.time() - t0)
        closed = run_load(port, users, seconds=min(10, args.seconds), conns=args.connections,
                          closed=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print(f"  {label:<28} open loop {opened['rps']:>6.0f} req/s: p50 {opened['p50']:.2f} ms, "
          f"p99 {opened['p99']:.2f} ms, max {opened['max']:.1f} ms, codes {opened['codes']}; "
          f"server {opened['server_cores']:.2f} cores, client {opened['client_cores']:.2f} | "
          f"closed loop {closed['rps']:,.0f} req/s (p50 {closed['p50']:.1f} ms, "
          f"p99 {closed['p99']:.1f} ms)", flush=True)
    return opened, closed


# --------------------------------------------------------------------------- freshness


def freshness(lh, rate, seconds):
    import urllib.request

    from pipelines.dev import broker, feedback
    from pipelines.online.store import default_store_url
    from pipelines.storage.sql import query

    folder = os.path.join(lh, "_broker")
    st = broker.start(folder)
    topic = f"fresh-{int(time.time())}"
    broker.create_topic(st.bootstrap, topic, partitions=2)
    users = [r[0] for r in query(lh, "SELECT DISTINCT user_id FROM interactions")[1]]
    items = [r[0] for r in query(lh, "SELECT item_id FROM items")[1]]
    env = {**os.environ, "LAKEREC_SPARK_MASTER": "local[2]"}
    stream = subprocess.Popen(
        [os.path.join(BIN, "lakerec"), "stream", "--lakehouse", lh, "--bootstrap", st.bootstrap,
         "--topic", topic, "--query-name", topic, "--trigger-seconds", "0.5",
         "--max-offsets-per-trigger", str(rate * 4)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    port = free_port()
    api = serve(lh, default_store_url(lh), port)
    results = []
    try:
        p = feedback.make_producer(st.bootstrap, one_record_per_batch=True)

        errors: dict = {}

        def personal(user):
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/v1/users/{user}/recommendations?k=5",
                        timeout=5) as r:
                    return json.loads(r.read())["source"] == "personal"
            except OSError as e:
                key = str(getattr(e, "code", type(e).__name__))
                errors[key] = errors.get(key, 0) + 1
                return False

        # warm up: the stream's start and first batches (until a probe user is served)
        deadline = time.monotonic() + 600
        w = 0
        while True:
            w += 1
            who = f"warm-{topic}-{w}"  # new to every run: a lakehouse may be reused
            feedback.send(p, topic, feedback.purchases([who], items[:1]))
            t = time.monotonic()
            while time.monotonic() - t < 5 and not personal(who):
                time.sleep(0.05)
            if personal(who) and w >= 3:  # three batches in: a stream running a while
                break
            if time.monotonic() > deadline or stream.poll() is not None:
                raise SystemExit(f"stream did not warm up: {stream.stderr.read()[-2000:]}")
        probes = []
        stop = threading.Event()

        def probe_loop():
            i = 0
            while not stop.is_set():
                user = f"probe-{int(time.time())}-{i}"
                feedback.send(p, topic, feedback.purchases([user], [random.choice(items)]))
                probes.append((user, time.time()))
                i += 1
                time.sleep(0.1)

        pending = {}
        done = threading.Event()

        def poll_loop():
            while not done.is_set() or pending:
                for user, sent in list(probes):
                    if user not in results_seen and user not in pending:
                        pending[user] = sent
                for user, sent in list(pending.items()):
                    if personal(user):
                        results.append(time.time() - sent)
                        results_seen.add(user)
                        del pending[user]
                    elif time.time() - sent > 60:
                        results.append(float("inf"))
                        results_seen.add(user)
                        del pending[user]
                time.sleep(0.01)

        results_seen: set = set()
        tp = threading.Thread(target=probe_loop, daemon=True)
        tq = threading.Thread(target=poll_loop, daemon=True)
        tp.start()
        tq.start()
        cpu0 = tree_cpu(stream.pid)
        t0 = time.time()
        n = max(1, -(-rate // PER_PRODUCER))
        sent = run_producers(st.bootstrap, topic, users, items, n, rate=rate / n,
                             seconds=seconds)
        stop.set()
        tp.join()
        done.set()
        tq.join(90)
        stream_cores = (tree_cpu(stream.pid) - cpu0) / (time.time() - t0)
        p.close()
        res = np.array(results)
        fin = res[np.isfinite(res)]
        # a probe never served counts as the slowest (inf), so it cannot flatter a quantile
        return {"probes": len(res), "served": int(fin.size),
                "background": sum(len(v) for v in sent.values()),
                "p50": float(np.percentile(res, 50, method="higher")),
                "p95": float(np.percentile(res, 95, method="higher")),
                "max": float(fin.max()) if fin.size else float("inf"),
                "stream_cores": stream_cores, "errors": dict(errors)}
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(30)
        stop_stream(stream)
        broker.stop(folder)


class _SkipError(Exception):
    pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--freshness-lakehouse")
    ap.add_argument("--freshness-rate", type=int, default=1000)
    ap.add_argument("--skip-freshness", action="store_true")
    ap.add_argument("--skip-latency", action="store_true", help="parts 1 and 2")
    ap.add_argument("--publish-only", action="store_true", help="part 1")
    args = ap.parse_args(argv)
    print(machine(), flush=True)
    work = tempfile.mkdtemp(prefix="lakerec-serve-")
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", work],
                             stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    redis_url = f"redis://127.0.0.1:{rport}/0"
    try:
        if args.skip_latency:
            raise _SkipError
        print("== publish (lakerec publish: first push, then 1,000 refreshed users)", flush=True)
        pub = publish_sizes(20_000, args.users, redis_url, work)
        for users in (20_000, args.users):
            for kind in ("sqlite", "redis"):
                (tf, nf), (ti, ni), (tb, nb) = (pub[(users, kind, m)] for m in
                                                ("full", "incremental", "batch"))
                print(f"  {users:>7,} users {kind:<6} full {tf:6.2f} s ({nf:,} lists, "
                      f"{nf / tf:,.0f}/s) | incremental {ti:5.2f} s ({ni:,} lists) | "
                      f"stream push {tb:5.3f} s ({nb:,} lists)", flush=True)
        lh = pub[args.users]
        if args.publish_only:
            raise _SkipError
        print(f"== latency at {args.rate:,} req/s for {args.seconds} s over {args.users:,} "
              f"users, {args.connections} connections, one server worker", flush=True)
        from pipelines.dev import broker

        bfolder = os.path.join(lh, "_broker")
        bst = broker.start(bfolder)
        try:
            for kind, url in (("sqlite", "sqlite://" + os.path.join(lh, "_online", "lists.db")),
                              ("redis", f"{redis_url}?prefix=b{args.users}")):
                latency(lh, url, args.users, args, ["--no-exposures"], f"{kind}, no exposures")
                latency(lh, url, args.users, args, ["--bootstrap", bst.bootstrap],
                        f"{kind}, exposures -> Kafka")
        finally:
            broker.stop(bfolder)
    except _SkipError:
        pass
    finally:
        redis.terminate()
    if not args.skip_freshness:
        flh = args.freshness_lakehouse
        if flh is None:
            flh = os.path.join(work, "trained")
            print("== freshness: building a trained lakehouse (the demo, 20,000 users)",
                  flush=True)
            prepare(flh)
        print(f"== freshness at {args.freshness_rate:,} feedback events/s", flush=True)
        f = freshness(flh, args.freshness_rate, 30)
        print(f"  produced -> served by the API, {f['probes']} probes ({f['served']} served "
              f"within 60 s) beside {f['background']:,} background events: p50 "
              f"{f['p50']:.2f} s, p95 {f['p95']:.2f} s, max served {f['max']:.2f} s; the "
              f"stream used {f['stream_cores']:.2f} cores; API errors {f['errors']}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
