"""The stream for real: the local broker over TCP, ``lakerec stream`` as users run it, Delta.

A module fixture trains a small model and starts the broker; each test copies the trained
lakehouse, produces to its own topic and checks the tables.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time

import pyarrow.compute as pc
import pytest

from pipelines.batch.score import load_serving_model, score
from pipelines.batch.train import ModelCard, train
from pipelines.dev import broker, feedback
from pipelines.dev.generate import SyntheticSpec
from pipelines.online.store import default_store_url
from pipelines.storage import delta, tracking
from pipelines.storage.sql import query
from pipelines.streaming.microbatch import refresh, user_history
from schemas.tables import INTERACTIONS, QUARANTINE, RECOMMENDATIONS, USER_FACTORS
from tests.conftest import ROOT, VENV_BIN, assert_store_matches, ingested, job_env

SPEC = SyntheticSpec(users=300, items=80, events=15_000, days=8, clusters=8, seed=5,
                     start=dt.date(2024, 3, 1))
PARAMS = ModelCard(rank=8, max_iter=6, window_days=8, holdout_days=2, k=5,
                   promote_if="better", min_eval_users=1, max_holdout_days=2)
K = 5


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    lh = str(tmp_path_factory.mktemp("trained"))
    ingested(spark, lh, SPEC)
    train(spark, lh, PARAMS)
    score(spark, lh, k=K)
    return lh


@pytest.fixture
def lh(trained, tmp_path):
    dest = str(tmp_path / "lh")
    shutil.copytree(trained, dest, ignore=shutil.ignore_patterns("landing"))
    return dest


def topic_for(kafka, name: str) -> str:
    broker.create_topic(kafka.bootstrap, name, partitions=2)
    return name


def stream_cmd(lh, kafka, topic, *extra):
    return [str(VENV_BIN / "lakerec"), "stream", "--lakehouse", lh, "--bootstrap",
            kafka.bootstrap, "--topic", topic, "--k", str(K), "--trigger-seconds", "0.2",
            *extra]


def run_stream(lh, kafka, topic, *extra, timeout=300):
    return subprocess.run(stream_cmd(lh, kafka, topic, "--available-now", *extra),
                          capture_output=True, text=True, env=job_env(), cwd=ROOT,
                          timeout=timeout)


def known(lh):
    users = [r[0] for r in query(lh, "SELECT DISTINCT user_id FROM interactions ORDER BY 1")[1]]
    items = [r[0] for r in query(lh, "SELECT item_id FROM items ORDER BY 1")[1]]
    return users, items


def poison() -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, expected reason) for every kind of bad record."""
    ok = {"event_id": "p-ok", "user_id": "u", "item_id": "i", "event_type": "view",
          "ts": "2024-03-05T10:00:00Z"}

    def with_(**kw):
        e = {**ok, **kw}
        return json.dumps({k: v for k, v in e.items() if v is not ...}).encode()

    nested = b"[" * 5000 + b"]" * 5000
    return [
        (b"u", b"{not json", "malformed_json"),
        (b"u", b"", "empty_payload"),
        (None, b"\xff\xfe{\"event_id\": \"x\"}", "invalid_utf8"),
        (b"u", b"[1, 2, 3]", "not_an_object"),
        # nesting deeper than the JSON parser's limit is unreadable, whatever the outer type
        (b"u", nested, "malformed_json"),
        (b"u", b'{"a":' * 3000 + b"1" + b"}" * 3000, "malformed_json"),
        (b"u", json.dumps({**ok, "pad": "x" * (1 << 20)}).encode(), "oversized"),
        (b"u", with_(event_id="p1", user_id=5), "wrong_type:user_id"),
        (b"u", with_(event_id="p2", user_id=...), "missing_field:user_id"),
        (b"u", with_(event_id="p3", event_type="like"), "unknown_event_type"),
        (b"u", with_(event_id="p4", event_type="rating", value=9), "value_out_of_range"),
        (b"u", with_(event_id="p5", ts="yesterday"), "bad_timestamp"),
        (b"u", with_(event_id="p6", value="high"), "wrong_type:value"),
        (b"u", with_(event_id="p7", request_id="r" * 129), "bad_length:request_id"),
    ]


def producer(kafka):
    from kafka import KafkaProducer

    # one record per batch (the local broker's quirk); room for the oversized poison
    return KafkaProducer(bootstrap_servers=kafka.bootstrap, batch_size=1, linger_ms=0, acks=1,
                         enable_idempotence=False, max_request_size=3 << 20)


def expected_refresh(spark, lh, users):
    model = load_serving_model(spark, lh, tracking.get_alias(lh))
    _, rows = refresh(model, user_history(lh, users), users, k=K, new_item_slots=1)
    return model, sorted((r[0], r[1], r[2], r[4]) for r in rows), rows


def stream_rows(lh):
    inter = delta.arrow_dataset(lh, INTERACTIONS).to_table(
        filter=pc.starts_with(pc.field("ingest_id"), "stream:"))
    return inter


def assert_recommendations_are_a_fresh_fold_in(spark, lh, users):
    model, want, raw = expected_refresh(spark, lh, users)
    listed = ", ".join(f"'{u}'" for u in users)
    recs = delta.current_table(lh, RECOMMENDATIONS, where=f"user_id IN ({listed})")
    got = sorted(zip(recs["user_id"].to_pylist(), recs["rank"].to_pylist(),
                     recs["item_id"].to_pylist(), recs["source"].to_pylist(), strict=True))
    assert got == want
    scores = {(r[0], r[1]): r[3] for r in raw}
    for u, rk, s in zip(recs["user_id"].to_pylist(), recs["rank"].to_pylist(),
                        recs["score"].to_pylist(), strict=True):
        assert s == pytest.approx(scores[(u, rk)], rel=1e-5, abs=1e-6)
    assert set(recs["model_version"].to_pylist()) == {model.version}
    return model


def test_stream_end_to_end_with_poison_duplicates_and_a_new_taste(spark, lh, kafka):
    topic = topic_for(kafka, "e2e")
    users, items = known(lh)
    (demo_user,), = query(lh, """SELECT user_id FROM interactions JOIN items USING (item_id)
                                 GROUP BY 1 ORDER BY count(DISTINCT category), 1 LIMIT 1""")[1]
    category, new_items = feedback.untouched_cluster_items(lh, demo_user, n=4)
    assert feedback.untouched_cluster_items(lh, demo_user, n=2, skip=2) == \
        (category, new_items[2:])  # the demo's skip: the next best sellers
    before = [r[0] for r in query(lh, f"SELECT item_id FROM current_recommendations WHERE user_id = "
                                      f"'{demo_user}' ORDER BY rank")[1]]
    valid = list(feedback.random_events(users, items, 300, seed=1, prefix="e2e",
                                        new_users=0.1))
    bad = poison()
    p = producer(kafka)
    sent_bad = []
    for j, (key, value) in enumerate(valid):
        p.send(topic, key=key, value=value)
        if j % 20 == 0 and bad:
            k_, v_, why = bad.pop()
            md = p.send(topic, key=k_, value=v_).get(timeout=30)
            sent_bad.append((f"kafka://{topic}/{md.partition}/{md.offset}", why))
        if j % 40 == 0:  # a producer retry: the same event again
            p.send(topic, key=key, value=value)
    for key, value in feedback.purchases([demo_user], new_items):
        p.send(topic, key=key, value=value)
    # a click answering a served list carries its request_id
    clicked = feedback.event(demo_user, new_items[0], "click", event_id="answers-r1")
    p.send(topic, key=demo_user.encode(), value=json.dumps({**clicked,
                                                              "request_id": "r1"}).encode())
    p.flush()
    p.close()
    assert not bad

    r = run_stream(lh, kafka, topic, "--max-offsets-per-trigger", "120")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped:" in r.stdout

    valid_ids = {json.loads(v)["event_id"] for _, v in valid}
    inter = stream_rows(lh)
    ids = inter["event_id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(valid_ids) + len(new_items) + 1
    rid = dict(zip(ids, inter["request_id"].to_pylist(), strict=True))
    assert rid["answers-r1"] == "r1" and sum(r is not None for r in rid.values()) == 1
    assert valid_ids <= set(ids)
    assert all(s.startswith(f"kafka://{topic}/") for s in inter["ingest_source"].to_pylist())

    quar = delta.arrow_dataset(lh, QUARANTINE).to_table(filter=pc.field("origin") == "stream")
    reasons = dict(zip(quar["ingest_source"].to_pylist(), quar["reason"].to_pylist(),
                       strict=True))
    for source, why in sent_bad:
        assert reasons.get(source) == why, (source, why, reasons.get(source))
    assert list(reasons.values()).count("duplicate_event_id") == len(range(0, 300, 40))
    big = quar.filter(pc.field("reason") == "oversized")
    assert big["raw_size"].to_pylist()[0] > (1 << 20)
    raw_bytes = quar.filter(pc.field("reason") == "invalid_utf8")["raw_bytes"].to_pylist()
    assert raw_bytes[0].startswith(b"\xff\xfe")

    touched = sorted(set(inter["user_id"].to_pylist()))
    model = assert_recommendations_are_a_fresh_fold_in(spark, lh, touched)
    uf = delta.current_table(lh, USER_FACTORS,
                             where=f"source = 'fold_in' AND model_version = {model.version}")
    assert set(uf["user_id"].to_pylist()) <= set(touched)
    assert len(uf) == len(set(uf["user_id"].to_pylist())) > 0

    after = query(lh, f"""SELECT r.item_id, it.category FROM current_recommendations r
                         JOIN items it USING (item_id) WHERE user_id = '{demo_user}'
                         ORDER BY rank""")[1]
    assert [i for i, _ in after] != before
    assert any(c == category for _, c in after), (category, after)
    assert not set(new_items) & {i for i, _ in after}  # bought: never recommended
    assert_store_matches(lh, default_store_url(lh))  # each batch pushed what it committed

    # the same checkpoint again: nothing new, nothing written
    versions = {t.name: delta.latest_version(lh, t) for t in (INTERACTIONS, RECOMMENDATIONS)}
    r = run_stream(lh, kafka, topic)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {t.name: delta.latest_version(lh, t)
            for t in (INTERACTIONS, RECOMMENDATIONS)} == versions

    # `lakerec status` measures the stream's lag against the real broker: none now, then
    # the records sent since the last committed batch
    from pipelines.ops.status import Thresholds, alerts, collect

    (st,) = collect(lh, bootstrap=kafka.bootstrap).streams
    assert st.query == "feedback" and st.lag == 0 and st.committed == st.end > 0
    p = feedback.make_producer(kafka.bootstrap, one_record_per_batch=True)
    feedback.send(p, topic, feedback.purchases([demo_user], new_items[:3]))
    p.close()
    status = collect(lh, bootstrap=kafka.bootstrap)
    assert status.streams[0].lag == 3
    fired = {a.name for a in alerts(status, Thresholds(max_stream_lag=2)) if a.breached}
    assert "stream_lag:feedback" in fired
    down = collect(lh, bootstrap="127.0.0.1:1").streams[0]
    assert down.lag is None and "not reachable" in down.note
    # the report plots the stream's own batch log, and its poison by reason
    from pipelines.ops.report import build

    rep = build(lh, os.path.join(lh, "_report"))
    assert [f.name for f in rep.figures] == ["models", "lists", "fallbacks", "freshness",
                                             "quarantine"]
    _, hours = rep.figures[3].table
    assert {h[0] for h in hours} == {"feedback"} and sum(h[3] for h in hours) > 0
    head, _ = rep.figures[4].table
    assert {"malformed_json", "missing_field", "wrong_type"} <= set(head)

    # a lost checkpoint is refused, not replayed
    r = run_stream(lh, kafka, topic, "--checkpoint", os.path.join(lh, "_checkpoints", "new"))
    assert r.returncode == 2
    assert "empty or missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_sigterm_stops_after_the_batch_in_flight(lh, kafka):
    topic = topic_for(kafka, "sigterm")
    users, items = known(lh)
    p = producer(kafka)
    for key, value in feedback.random_events(users, items, 50, seed=2, prefix="sig"):
        p.send(topic, key=key, value=value)
    p.flush()
    p.close()
    metrics = os.path.join(lh, "_stream", "feedback", "batches.jsonl")
    proc = subprocess.Popen(stream_cmd(lh, kafka, topic), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=job_env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + 180
        while not os.path.exists(metrics) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert os.path.exists(metrics), "no batch ran"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped: " in out
    assert len(stream_rows(lh)) == 50


@pytest.mark.slow
def test_sigkill_ten_times_while_producing_loses_and_duplicates_nothing(spark, lh, kafka):
    topic = topic_for(kafka, "kills")
    users, items = known(lh)
    records = list(feedback.random_events(users, items, 2400, seed=3, prefix="kill",
                                          new_users=0.05))
    bad = [(b"u", b"{broken " + str(j).encode(), "malformed_json") for j in range(40)]
    stream = records[:]
    for j, b in enumerate(bad):
        stream.insert(j * 60, b[:2])
    done = threading.Event()

    def produce():
        p = producer(kafka)
        feedback.send(p, topic, stream, rate=25)  # spans the ten kills
        p.close()
        done.set()

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    rnd = random.Random(11)
    kills = 0
    env = job_env()
    while kills < 10:
        proc = subprocess.Popen(stream_cmd(lh, kafka, topic, "--max-offsets-per-trigger", "80"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=ROOT)
        # Spark needs ~8-12 s to start here: kill anywhere from start-up to mid-batch
        time.sleep(rnd.uniform(4.0, 16.0))
        if proc.poll() is not None:
            pytest.fail(f"stream exited early: {proc.stderr.read()[-3000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        kills += 1
    t.join(timeout=120)
    assert done.is_set()
    r = run_stream(lh, kafka, topic, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    want = {json.loads(v)["event_id"] for _, v in records}
    ids = stream_rows(lh)["event_id"].to_pylist()
    assert len(ids) == len(set(ids)), "an event was appended twice"
    assert set(ids) == want
    quar = delta.arrow_dataset(lh, QUARANTINE).to_table(filter=pc.field("origin") == "stream")
    assert sorted(quar["raw"].to_pylist()) == sorted(b[1].decode() for b in bad)
    touched = sorted(set(stream_rows(lh)["user_id"].to_pylist()))
    assert_recommendations_are_a_fresh_fold_in(spark, lh, touched)
    # the stream pushed every batch to the lakehouse's online store, ten kills or not
    assert_store_matches(lh, default_store_url(lh))


def test_the_stream_killed_between_its_commit_and_its_push_catches_the_store_up(lh, kafka):
    from pipelines.online.store import open_store

    topic = topic_for(kafka, "push-kill")
    users, items = known(lh)
    url = default_store_url(lh)
    lagged = 0
    for attempt in range(4):
        p = feedback.make_producer(kafka.bootstrap, one_record_per_batch=True)
        feedback.send(p, topic, feedback.random_events(users, items, 30, seed=40 + attempt,
                                                       prefix=f"pk{attempt}"))
        p.close()
        proc = subprocess.Popen(stream_cmd(lh, kafka, topic, "--log-level", "DEBUG"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=job_env(), cwd=ROOT)
        try:
            for line in proc.stderr:  # kill it the moment its lists are in Delta
                if "table recommendations: committed v" in line and "stream:" not in line:
                    proc.send_signal(signal.SIGSTOP)
                    break
            else:
                pytest.fail("the stream ended without committing lists")
            proc.kill()
        finally:
            proc.wait(30)
        st = open_store(url)
        if int(st.meta().get("watermark", -1)) < delta.latest_version(lh, RECOMMENDATIONS):
            lagged += 1
        st.close()
        if lagged:
            break
    assert lagged, "no kill landed between a commit and its push"
    r = run_stream(lh, kafka, topic)  # the restart catches the store up before its batches
    assert r.returncode == 0, r.stderr[-3000:]
    assert_store_matches(lh, url)


def test_a_broker_that_lost_its_data_is_refused_not_silently_skipped(lh, tmp_path):
    folder = str(tmp_path / "broker")
    st = broker.start(folder)
    try:
        topic = topic_for(st, "lost")
        users, items = known(lh)
        p = producer(st)
        for key, value in feedback.random_events(users, items, 40, seed=4, prefix="lost"):
            p.send(topic, key=key, value=value)
        p.flush()
        p.close()
        r = run_stream(lh, st, topic)
        assert r.returncode == 0, r.stderr[-3000:]
        # an in-memory broker restarts empty: the checkpoint's offsets no longer exist
        broker.stop(folder)
        st = broker.start(folder, port=st.port)
        topic_for(st, "lost")
        p = producer(st)
        for key, value in feedback.random_events(users, items, 5, seed=5, prefix="lost2"):
            p.send(topic, key=key, value=value)
        p.flush()
        p.close()
        r = run_stream(lh, st, topic, "--max-restarts", "0")
        assert r.returncode == 1
        assert "OffsetOutOfRangeError" in r.stderr and "went back" in r.stderr
        assert len(stream_rows(lh)) == 40
        r = run_stream(lh, st, topic, "--skip-lost-offsets", "--max-restarts", "0")
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        broker.stop(folder)


@pytest.fixture
def s3_store(monkeypatch):
    """A local S3 (moto) for a broker whose data survives its restart."""
    import logging
    import urllib.request

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/tansu", method="PUT"))
    for k, v in {"AWS_ACCESS_KEY_ID": "lakerec", "AWS_SECRET_ACCESS_KEY": "lakerec",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT": f"http://{host}:{port}",
                 "AWS_ALLOW_HTTP": "true"}.items():
        monkeypatch.setenv(k, v)
    yield "s3://tansu/"
    srv.stop()


@pytest.mark.slow
def test_broker_stopped_and_restarted_under_a_running_query(lh, tmp_path, s3_store):
    folder = str(tmp_path / "broker")
    st = broker.start(folder, storage=s3_store)
    proc = None
    try:
        topic = topic_for(st, "restart")
        users, items = known(lh)
        records = list(feedback.random_events(users, items, 240, seed=6, prefix="rs"))
        proc = subprocess.Popen(stream_cmd(lh, st, topic, "--max-restarts", "5"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=job_env(), cwd=ROOT)

        def send(part):
            p = producer(st)
            for key, value in part:  # acknowledged one by one: exact end offsets here
                p.send(topic, key=key, value=value).get(timeout=60)
                time.sleep(0.03)
            p.close()

        send(records[:120])
        deadline = time.monotonic() + 180
        while len(stream_rows(lh)) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(stream_rows(lh)) > 0, "the stream never committed"
        broker.stop(folder)  # under the running query
        time.sleep(8)
        st = broker.start(folder, port=st.port, storage=s3_store)
        send(records[120:])
        want = {json.loads(v)["event_id"] for _, v in records}
        # This broker's end offset can trail its last records (see
        # feedback.make_producer); later traffic moves it past them, so keep some flowing.
        fillers = feedback.random_events(users, items, 10_000, seed=7, prefix="fill")
        deadline = time.monotonic() + 240
        while not want <= set(stream_rows(lh)["event_id"].to_pylist()) and \
                time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            send([next(fillers) for _ in range(5)])
            time.sleep(1)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        ids = stream_rows(lh)["event_id"].to_pylist()
        assert len(ids) == len(set(ids)), "an event was appended twice"
        assert want <= set(ids), f"lost: {sorted(want - set(ids))[:10]}"
        assert all(i.startswith("fill-") for i in set(ids) - want)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        broker.stop(folder)


def test_broker_and_produce_commands(tmp_path):
    lh = str(tmp_path / "lh")

    def lakerec(*args):
        return subprocess.run([str(VENV_BIN / "lakerec"), *args, "--lakehouse", lh],
                              capture_output=True, text=True, env=job_env(), cwd=ROOT,
                              timeout=120)

    assert lakerec("broker", "status").returncode == 1
    r = lakerec("broker", "start", "--topic", "fb")
    assert r.returncode == 0 and "bootstrap 127.0.0.1:" in r.stdout, r.stderr
    try:
        again = lakerec("broker", "start")
        pid = r.stdout.split("pid ")[1].split(",")[0]
        assert again.returncode == 0 and f"pid {pid}," in again.stdout  # the same broker
        logs = tmp_path / "logs" / "dt=2024-01-01"
        logs.mkdir(parents=True)
        (logs / "a.jsonl").write_text('{"event_id": "x", "user_id": "u1"}\nnot json\n\n')
        r = lakerec("produce", "--topic", "fb", "--from-logs", str(tmp_path / "logs"))
        assert r.returncode == 0 and "sent 2 records" in r.stdout, r.stderr
        r = lakerec("produce", "--topic", "fb", "--users", "u1,u2", "--items", "i1",
                    "--rate", "50")
        assert r.returncode == 0 and "sent 2 records" in r.stdout, r.stderr
        bad = lakerec("produce", "--topic", "fb", "--users", "u1")
        assert bad.returncode == 2 and "--items or --new-cluster" in bad.stderr
        st = broker.status(os.path.join(lh, "_broker"))
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(bootstrap_servers=st.bootstrap, enable_auto_commit=False)
        ends = c.end_offsets([TopicPartition("fb", p) for p in (0, 1)])
        c.close()
        assert sum(ends.values()) == 4
    finally:
        r = lakerec("broker", "stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert lakerec("broker", "status").returncode == 1
    r = subprocess.run([str(VENV_BIN / "lakerec"), "stream", "--lakehouse", lh],
                       capture_output=True, text=True, env=job_env(), cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "no local broker running" in r.stderr


@pytest.mark.slow
def test_stream_through_spark_submit(spark, lh, kafka):
    topic = topic_for(kafka, "submit")
    users, items = known(lh)
    p = producer(kafka)
    for key, value in feedback.random_events(users, items, 30, seed=8, prefix="sub"):
        p.send(topic, key=key, value=value)
    p.flush()
    p.close()
    r = subprocess.run(
        [str(VENV_BIN / "spark-submit"), "--master", "local[2]",
         "--driver-java-options", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
         "--conf", "spark.ui.enabled=false", "jobs/stream.py", "--lakehouse", lh,
         "--bootstrap", kafka.bootstrap, "--topic", topic, "--k", str(K), "--available-now"],
        capture_output=True, text=True, env=job_env(), cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(stream_rows(lh)) == 30
    assert_recommendations_are_a_fresh_fold_in(spark, lh, sorted(set(stream_rows(lh)["user_id"]
                                                              .to_pylist())))


def test_without_a_champion_the_stream_serves_popular_items(spark, lh, kafka):
    tracking.client(lh).delete_registered_model_alias(tracking.ALS_MODEL, tracking.CHAMPION)
    topic = topic_for(kafka, "nochamp")
    users, items = known(lh)
    valid = list(feedback.random_events(users, items, 40, seed=3, prefix="nc"))
    p = producer(kafka)
    for key, value in valid:
        p.send(topic, key=key, value=value)
    p.flush()
    p.close()
    r = run_stream(lh, kafka, topic)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no champion" in r.stderr
    touched = sorted(set(stream_rows(lh)["user_id"].to_pylist()))
    assert touched
    listed = ", ".join(f"'{u}'" for u in touched)
    recs = delta.current_table(lh, RECOMMENDATIONS, where=f"user_id IN ({listed})")
    assert set(recs["source"].to_pylist()) == {"popular"}
    assert set(recs["user_id"].to_pylist()) == set(touched)
    seen = query(lh, f"SELECT user_id, item_id FROM interactions WHERE user_id IN ({listed})")[1]
    assert not set(seen) & set(zip(recs["user_id"].to_pylist(), recs["item_id"].to_pylist(),
                                   strict=True))


def test_the_stream_serves_a_promoted_or_rolled_back_champion_within_its_refresh(spark, lh):
    """`lakerec models promote` / `rollback` move the alias; a running stream's next model
    check (every ``model_refresh_s``) serves the new champion's factors."""
    import dataclasses

    from pipelines.streaming.microbatch import StreamContext

    train(spark, lh, dataclasses.replace(PARAMS, seed=11, promote_if="significant"))
    ctx = StreamContext(lh, "follow", k=K, model_refresh_s=0.0)
    first = ctx.serving_model(spark).version
    other = 2 if first == 1 else 1
    tracking.promote(lh, other, reason="a test", by="promote")
    assert ctx.serving_model(spark).version == other
    assert tracking.rollback(lh, reason="a test") == (other, first)
    assert ctx.serving_model(spark).version == first
    slow = StreamContext(lh, "slow", k=K, model_refresh_s=3600.0)
    assert slow.serving_model(spark).version == first
    tracking.promote(lh, other, reason="a test", by="promote")
    assert slow.serving_model(spark).version == first  # not before its refresh interval
