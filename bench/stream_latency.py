"""Freshness of the stream: produce time -> row visible in ``recommendations``, at given rates.

    python bench/stream_latency.py [--lakehouse PATH] [--rates 1000,2500,5000] [--seconds 30]
                                   [--backlog 100000]

One run, the real parts: the local broker over TCP, ``lakerec stream`` as a separate process
(local[2]), producer processes sending one record per batch at each rate, and Delta.

For every event: latency = commit time of the ``recommendations`` version whose transaction
(``lakerec.stream/<query>``, batch) holds the event's refresh - the time the producer handed
the event over. Both come from the run itself: the batch of each event is read back from
``interactions.ingest_id`` and the commit time from the Delta log. A rate counts as
sustained when the stream drains within 10 s of the producers stopping and the median
latency of the last third of the run is within 1 s of the first third (lag does not grow).
Each rate also prints the CPU the broker and the load generators used meanwhile: they share
the two cores with the stream. ``--backlog N`` adds a capacity run: N events on a new topic
first, then the stream drains them alone.

Without ``--lakehouse`` a lakehouse is generated, ingested and trained first (about 2
minutes: 20,000 users, 5,000 items, 300,000 events, rank 32).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import machine  # noqa: E402

BIN = os.path.dirname(sys.executable)
PER_PRODUCER = 2500  # records/s one load-generator process paces reliably here
BACKLOG_PER_TRIGGER = 20_000  # --max-offsets-per-trigger of the capacity run
WARM_ROUNDS, WARM_RECORDS = 3, 200


def lakerec(*args, **kw):
    return subprocess.run([os.path.join(BIN, "lakerec"), *args], check=True, **kw)


def prepare(lh: str) -> None:
    lakerec("demo", "--lakehouse", lh, "--users", "20000", "--items", "5000", "--events",
            "300000", "--days", "14", "--rank", "32", "--no-stream",
            stdout=subprocess.DEVNULL)


def produce(bootstrap, topic, users, items, rate, seconds, seed, prefix, out, count=None):
    """One load-generator process: ``rate`` events/s for ``seconds``, each stamped when handed
    to the producer.

    librdkafka (``confluent-kafka``) rather than kafka-python: kafka-python spends about
    0.36 ms of CPU per record here, so at 5,000 events/s the load generator alone would take
    most of the two cores the stream is measured on; librdkafka spends about 0.06 ms. One
    record per batch, for the local broker's end offsets (DEVELOPERS.md).
    """
    from confluent_kafka import Producer

    from pipelines.dev import feedback

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 1,
                  "acks": "1", "log_level": 3})
    n = count if count is not None else int(rate * seconds)  # count: as fast as possible
    sent = np.zeros(n)
    t0 = time.perf_counter()
    for i, (key, value) in enumerate(feedback.random_events(users, items, n, seed=seed,
                                                            prefix=prefix)):
        ahead = 0 if count is not None else t0 + i / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        while True:
            try:
                p.produce(topic, value=value, key=key)
                break
            except BufferError:  # local queue full: let deliveries drain
                p.poll(0.01)
        sent[i] = time.time()
        p.poll(0)
    p.flush()
    out.put((seed, sent))


def batches(metrics: str) -> list[dict]:
    """The stream's per-batch reports so far."""
    if not os.path.exists(metrics):
        return []
    with open(metrics) as f:
        return [json.loads(x) for x in f]


def commit_times(table_path: str, app: str) -> dict[int, float]:
    """batch id -> commit time (s) of the table's commits by ``app``, from the Delta log."""
    out = {}
    log_dir = os.path.join(table_path, "_delta_log")
    for name in sorted(os.listdir(log_dir)):
        if not name.endswith(".json"):
            continue
        ts, ver = None, None
        with open(os.path.join(log_dir, name)) as f:
            for line in f:
                a = json.loads(line)
                if "commitInfo" in a:
                    ts = a["commitInfo"]["timestamp"] / 1000
                if "txn" in a and a["txn"]["appId"] == app:
                    ver = a["txn"]["version"]
        if ts is not None and ver is not None:
            out[ver] = ts
    return out


def start_stream(lh, bootstrap, topic, per_trigger, *extra):
    """``lakerec stream`` as its own process (local[2], 0.5 s trigger) on ``topic``."""
    env = {**os.environ, "LAKEREC_SPARK_MASTER": "local[2]"}
    return subprocess.Popen(
        [os.path.join(BIN, "lakerec"), "stream", "--lakehouse", lh, "--bootstrap", bootstrap,
         "--topic", topic, "--query-name", topic, "--trigger-seconds", "0.5",
         "--max-offsets-per-trigger", str(per_trigger), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def stop_stream(stream) -> None:
    """SIGTERM (stop after the batch in flight), then kill if it does not exit in 120 s."""
    stream.send_signal(signal.SIGTERM)
    try:
        stream.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        stream.kill()


def run_producers(bootstrap, topic, users, items, n_procs, *, rate=None, seconds=None,
                  count=None) -> dict:
    """``n_procs`` load generators (see :func:`produce`); returns seed -> send times."""
    q = mp.Queue()
    procs = [mp.Process(target=produce, args=(bootstrap, topic, users, items, rate, seconds,
                                              seed, topic, q, count))
             for seed in range(n_procs)]
    for pr in procs:
        pr.start()
    sent = dict(q.get() for _ in procs)
    for pr in procs:
        pr.join()
    return sent


def run_rate(lh, bootstrap, rate, seconds, users, items):
    import pyarrow.compute as pc

    from pipelines.dev import broker
    from pipelines.storage import delta
    from schemas.tables import INTERACTIONS

    topic = f"bench-{rate}-{int(time.time())}"
    broker.create_topic(bootstrap, topic, partitions=2)
    query = topic
    stream = start_stream(lh, bootstrap, topic, max(2000, rate * 4))
    metrics = os.path.join(lh, "_stream", query, "batches.jsonl")
    # warm up: Spark start, Python workers, consumers, compiled code -- a stream that has been
    # running a while; not part of the measurement
    from pipelines.dev import feedback

    warm = 0
    for w in range(WARM_ROUNDS):
        p = feedback.make_producer(bootstrap, one_record_per_batch=True)
        feedback.send(p, topic, feedback.random_events(users, items, WARM_RECORDS, seed=99 + w,
                                                       prefix=f"warm-{topic}-{w}"))
        p.close()
        warm += WARM_RECORDS
        deadline = time.monotonic() + 600  # the first start rebuilds the keyed state
        while sum(b["records"] for b in batches(metrics)) < warm:
            if time.monotonic() > deadline:
                stream.kill()
                raise SystemExit(f"stream did not warm up: {stream.stderr.read()[-2000:]}")
            time.sleep(0.2)
    n_warm = len(batches(metrics))

    producers = max(1, -(-rate // PER_PRODUCER))
    broker_cpu0, kids0 = process_cpu("tansu"), os.times()
    stream_cpu0 = tree_cpu(stream.pid)
    t0 = time.time()
    sent = run_producers(bootstrap, topic, users, items, producers, rate=rate / producers,
                         seconds=seconds)
    t_end = time.time()
    # what the load itself costs on the shared cores: the broker and the load generators
    kids = os.times()
    stream_cores = (tree_cpu(stream.pid) - stream_cpu0) / (t_end - t0)
    broker_cores = (process_cpu("tansu") - broker_cpu0) / (t_end - t0)
    producer_cores = (kids.children_user + kids.children_system - kids0.children_user
                      - kids0.children_system) / (t_end - t0)
    n_sent = sum(len(v) for v in sent.values())
    want = n_sent + warm
    drained = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = sum(b["records"] for b in batches(metrics))
        if done >= want:
            drained = time.time() - t_end
            break
        time.sleep(0.2)
    # the stream's CPU per event: from the first event to the last one refreshed (or the
    # give-up), over the events it refreshed meanwhile
    stream_ms = 1e3 * (tree_cpu(stream.pid) - stream_cpu0) / max(1, done - warm)
    stop_stream(stream)

    inter = delta.arrow_dataset(lh, INTERACTIONS).to_table(
        columns=["event_id", "ingest_id"],
        filter=pc.starts_with(pc.field("ingest_id"), f"stream:{query}:"))
    batch_of = {e: int(i.rsplit(":", 1)[1]) for e, i in
                zip(inter["event_id"].to_pylist(), inter["ingest_id"].to_pylist(), strict=True)}
    visible = commit_times(os.path.join(lh, "recommendations"), f"lakerec.stream/{query}")
    lat, at = [], []
    for seed, times in sent.items():
        for i, t in enumerate(times):
            b = batch_of.get(f"{topic}-{seed}-{i}")
            if b is not None and b in visible:
                lat.append(visible[b] - t)
                at.append(t - t0)
    lat, at = np.array(lat), np.array(at)
    order = np.argsort(at)
    lat_sorted = lat[order]
    third = max(1, len(lat_sorted) // 3)
    first, last = (np.median(lat_sorted[:third]), np.median(lat_sorted[-third:])) \
        if len(lat) else (None, None)
    achieved = n_sent / max(1e-9, max(v.max() for v in sent.values()) - t0)
    runs = batches(metrics)[n_warm:]  # after the warm-up batches
    return {
        "rate": rate, "producers": producers, "sent": n_sent, "achieved_rate": achieved,
        "broker_cores": broker_cores, "producer_cores": producer_cores,
        "stream_cores": stream_cores, "stream_cpu_ms_per_event": stream_ms,
        "measured": len(lat), "p50": float(np.percentile(lat, 50)) if len(lat) else None,
        "p95": float(np.percentile(lat, 95)) if len(lat) else None,
        "p99": float(np.percentile(lat, 99)) if len(lat) else None,
        "first_third_p50": None if first is None else float(first),
        "last_third_p50": None if last is None else float(last),
        "drained_after_s": drained, "batches": len(runs),
        "mean_batch_records": float(np.mean([b["records"] for b in runs])) if runs else 0.0,
        "mean_batch_seconds": float(np.mean([b["seconds"] for b in runs])) if runs else 0.0,
        "sustained": bool(drained is not None and drained <= 10 and len(lat) == n_sent
                          and last <= first + 1.0),
    }


def _proc_stats() -> dict[int, tuple[int, float, float]]:
    """pid -> (parent pid, own CPU seconds, CPU seconds of its reaped children)."""
    out, tck = {}, os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tck,
                         (int(fields[13]) + int(fields[14])) / tck)
    return out


def process_cpu(name: str) -> float:
    """CPU seconds used so far by the processes whose command line contains ``name``."""
    total = 0.0
    for pid, (_, own, _) in _proc_stats().items():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if name.encode() in f.read():
                    total += own
        except OSError:
            continue
    return total


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root`` and all its descendants (the stream's driver, its
    JVM and the Python workers), exited-and-reaped ones included."""
    stats = _proc_stats()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1] + stats[pid][2]
            todo.extend(kids.get(pid, ()))
    return total


def run_backlog(lh, bootstrap, n, users, items, per_trigger):
    """The stream's capacity: ``n`` events already on the topic, the stream catching up.

    The load generators finish before the stream starts, so the stream has the cores to
    itself (the broker only serves its fetches). Capacity = records after the first batch /
    time from the first batch's end to the last one's (Spark's start and first-batch warm-up
    left out).
    """
    from pipelines.dev import broker

    topic = f"backlog-{int(time.time())}"
    broker.create_topic(bootstrap, topic, partitions=2)
    run_producers(bootstrap, topic, users, items, 2, count=n // 2)
    stream = start_stream(lh, bootstrap, topic, per_trigger, "--starting-offsets", "earliest")
    metrics = os.path.join(lh, "_stream", topic, "batches.jsonl")
    deadline = time.monotonic() + 600
    cpu_first = None  # the stream's CPU once the first (warm-up) batch is in (to 0.2 s)
    while True:
        done = batches(metrics)
        if sum(b["records"] for b in done) >= n:
            break
        if time.monotonic() > deadline or stream.poll() is not None:
            stream.kill()
            raise SystemExit(f"backlog not drained: {stream.stderr.read()[-2000:]}")
        if done and cpu_first is None:
            cpu_first = tree_cpu(stream.pid)
        time.sleep(0.2)
    cpu_last = tree_cpu(stream.pid)
    stop_stream(stream)
    runs = batches(metrics)
    first, last = runs[0], runs[-1]
    recs = sum(b["records"] for b in runs[1:])
    span = last["at"] - first["at"]
    return {"events": n, "batches": len(runs), "records_after_first": recs,
            "seconds": span, "capacity": recs / span if span > 0 else None,
            # None if the poll never saw the first batch alone (it lasts seconds)
            "stream_cpu_ms_per_event": (None if cpu_first is None else
                                        1e3 * (cpu_last - cpu_first) / max(1, recs)),
            "mean_batch_records": float(np.mean([b["records"] for b in runs[1:]])),
            "mean_batch_seconds": float(np.mean([b["seconds"] for b in runs[1:]]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lakehouse", help="a trained lakehouse to use (copied; default: build)")
    ap.add_argument("--rates", default="1000,2500,5000")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--backlog", type=int, default=0,
                    help="also drain a backlog of this many events (e.g. 100000): the "
                         "stream's capacity with no load generator running")
    args = ap.parse_args(argv)
    if 0 < args.backlog <= BACKLOG_PER_TRIGGER:
        # the first batch is left out as warm-up: capacity needs at least a second one
        ap.error(f"--backlog must exceed {BACKLOG_PER_TRIGGER:,} (one batch's worth)")

    from pipelines.dev import broker
    from pipelines.storage.sql import query

    work = tempfile.mkdtemp(prefix="lakerec-bench-stream-")
    lh = os.path.join(work, "lh")
    if args.lakehouse:
        import shutil

        shutil.copytree(args.lakehouse, lh, ignore=shutil.ignore_patterns(
            "landing", "_broker", "_checkpoints", "_stream"))
    else:
        print("preparing a trained lakehouse ...", flush=True)
        prepare(lh)
    users = [r[0] for r in query(lh, "SELECT DISTINCT user_id FROM interactions")[1]]
    items = [r[0] for r in query(lh, "SELECT item_id FROM item_factors")[1]]
    st = broker.start(os.path.join(work, "broker"))
    print(machine())
    print(f"lakehouse: {len(users):,} users, {len(items):,} items with factors; "
          f"{args.seconds:.0f} s per rate; producers and stream share the machine")
    results = []
    try:
        for rate in [int(r) for r in args.rates.split(",")]:
            r = run_rate(lh, st.bootstrap, rate, args.seconds, users, items)
            results.append(r)
            f = {k: ("n/a" if v is None else f"{v:.2f}") for k, v in r.items()
                 if isinstance(v, float) or v is None}
            print(f"rate {rate:>5}/s (achieved {r['achieved_rate']:.0f}/s, "
                  f"{r['producers']} producers, {r['measured']:,} of {r['sent']:,} events "
                  f"measured): p50 {f['p50']} s  p95 {f['p95']} s  "
                  f"p99 {f['p99']} s  | first/last third p50 {f['first_third_p50']}/"
                  f"{f['last_third_p50']} s, drained {r['drained_after_s']} s after the "
                  f"producers, {r['batches']} batches of {r['mean_batch_records']:.0f} "
                  f"records in {r['mean_batch_seconds']:.2f} s -> "
                  f"{'sustained' if r['sustained'] else 'NOT sustained'}; the broker used "
                  f"{r['broker_cores']:.2f} and the load generators {r['producer_cores']:.2f} "
                  f"of the 2 cores meanwhile, the stream {r['stream_cores']:.2f} "
                  f"({r['stream_cpu_ms_per_event']:.2f} ms of CPU per event)", flush=True)
        if args.backlog:
            b = run_backlog(lh, st.bootstrap, args.backlog, users, items,
                            per_trigger=BACKLOG_PER_TRIGGER)
            ms = b["stream_cpu_ms_per_event"]
            print(f"capacity: a backlog of {b['events']:,} events drained at "
                  f"{b['capacity']:,.0f} events/s ({b['batches']} batches of "
                  f"{b['mean_batch_records']:,.0f} records in {b['mean_batch_seconds']:.2f} s "
                  f"after the first), with no load generator running; the stream used "
                  f"{'n/a' if ms is None else f'{ms:.2f}'} ms of CPU per event", flush=True)
            results.append({"backlog": b})
    finally:
        broker.stop(os.path.join(work, "broker"))
    ok = [r["rate"] for r in results if r.get("sustained")]
    print(f"highest sustained rate: {max(ok) if ok else 'none'} events/s; "
          f"p95 at 1000/s: {next((r['p95'] for r in results if r.get('rate') == 1000), None)}")
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"details: {os.path.join(work, 'results.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
