"""The online store, publishing and the HTTP API: real SQLite, a real redis-server, a real
uvicorn server over loopback, and for exposures the real broker and ``lakerec stream``.

The lakehouses here are written with Arrow (no Spark): publishing and serving need none.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.online.publish import Publisher
from pipelines.online.store import Entry, default_store_url, open_store
from pipelines.storage import delta
from schemas.tables import INTERACTIONS, ITEMS, RECOMMENDATIONS, SIMILAR_ITEMS
from tests.conftest import (
    VENV_BIN,
    assert_store_matches,
    free_port,
    job_env,
    overwrite,
    store_lists,
)

T0 = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
CATS = ("books", "games", "music")


# --------------------------------------------------------------------------- lakehouses


def recs(users, items, at, *, source="als", model=1) -> pa.Table:
    rows = [(u, r + 1, it, 1.0 / (r + 1)) for u in users for r, it in enumerate(items(u))]
    n = len(rows)
    return pa.table({
        "user_id": [r[0] for r in rows], "rank": pa.array([r[1] for r in rows], pa.int32()),
        "item_id": [r[2] for r in rows], "score": pa.array([r[3] for r in rows], pa.float32()),
        "source": [source] * n, "model_version": pa.array([model] * n, pa.int64()),
        "generated_at": pa.array([at] * n, pa.timestamp("us", "UTC"))})


def item_of(n):
    return lambda u: [f"i{(int(u[1:]) * 7 + j) % 60}" for j in range(n)]


def catalog(lh, n=60):
    delta.ensure_table(lh, ITEMS)
    delta.append_arrow(lh, ITEMS, pa.table({
        "item_id": [f"i{j}" for j in range(n)], "title": [f"t{j}" for j in range(n)],
        "description": [None] * n, "category": [CATS[j % 3] for j in range(n)],
        "created_at": pa.array([T0] * n, pa.timestamp("us", "UTC")),
        "ingest_source": ["test"] * n, "ingest_id": ["test"] * n}).cast(ITEMS.arrow_schema()))


def interactions(lh, n_users=40):
    # item i<j> touched by j users (i0 the most popular): a known popularity order
    rows = [(f"u{u}", f"i{j}") for j in range(20) for u in range(max(1, 20 - j))]
    n = len(rows)
    t = pa.table({
        "event_id": [f"e{k}" for k in range(n)], "user_id": [r[0] for r in rows],
        "item_id": [r[1] for r in rows], "event_type": ["click"] * n,
        "value": pa.nulls(n, pa.float64()),
        "ts": pa.array([T0] * n, pa.timestamp("us", "UTC")), "session_id": [None] * n,
        "source": [None] * n, "ingest_source": ["t"] * n, "ingest_id": ["t"] * n,
        "ingested_at": pa.array([T0] * n, pa.timestamp("us", "UTC")),
        "dt": pa.array([T0.date()] * n, pa.date32()), "request_id": [None] * n})
    delta.ensure_table(lh, INTERACTIONS)
    delta.append_arrow(lh, INTERACTIONS, t.cast(INTERACTIONS.arrow_schema()))


def similar(lh):
    rows = [(f"i{j}", r + 1, f"i{(j + r + 1) % 60}", 0.9 - 0.1 * r) for j in range(60)
            for r in range(3)]
    n = len(rows)
    delta.ensure_table(lh, SIMILAR_ITEMS)
    delta.append_arrow(lh, SIMILAR_ITEMS, pa.table({
        "item_id": [r[0] for r in rows], "rank": pa.array([r[1] for r in rows], pa.int32()),
        "similar_item_id": [r[2] for r in rows],
        "score": pa.array([r[3] for r in rows], pa.float32()),
        "generated_at": pa.array([T0] * n, pa.timestamp("us", "UTC")),
        "encoder_version": pa.array([1] * n, pa.int64())}).cast(SIMILAR_ITEMS.arrow_schema()))


def base_lakehouse(lh, users=200, k=5):
    catalog(lh)
    interactions(lh)
    similar(lh)
    delta.ensure_table(lh, RECOMMENDATIONS)
    delta.append_arrow(lh, RECOMMENDATIONS, recs([f"u{i}" for i in range(users)], item_of(k),
                                                 T0))
    return lh


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite://" + str(tmp_path / "lakehouse" / "_online" / "test.db")
    redis = request.getfixturevalue("redis_url")
    return f"{redis['url']}?prefix=t{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- the store


def _model(ops):
    """Brute force of the ordering rule: per user the last admitted (g, v, digest)."""
    state = {}
    for user, g, v, d, full in ops:
        old = state.get(user)
        ok = old is None or (v >= old[1] and (d != old[2] if full else g >= old[0]))
        if ok:
            state[user] = (g, v, d)
    return state


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 4),
                              st.integers(0, 4), st.sampled_from(["x", "y"]), st.booleans()),
                    max_size=25))
def test_the_ordering_rule_of_both_stores_matches_brute_force(ops, store_url):
    url = store_url if store_url.startswith("sqlite") else \
        f"{store_url.split('?')[0]}?prefix=h{uuid.uuid4().hex[:10]}"
    if url.startswith("sqlite"):
        url = url.replace("test.db", f"{uuid.uuid4().hex[:8]}.db")
    s = open_store(url)
    try:
        for user, g, v, d, full in ops:
            s.put_lists([Entry(user, f"{g}/{v}/{d}".encode(), g, v, d)], full=full)
        got = {u: (int(p.split(b"/")[0]), int(p.split(b"/")[1]), p.split(b"/")[2].decode())
               for u in ("a", "b", "c") for p in [s.get_list(u)] if p is not None}
        assert got == _model(ops)
        assert set(s.digests()) == set(got)
    finally:
        s.close()


def test_watermark_only_grows_and_deletes_honour_the_version(store_url):
    s = open_store(store_url)
    s.advance(5, published_at="x")
    s.advance(3)
    assert s.meta()["watermark"] == "5"
    s.put_lists([Entry("a", b"1", 1, 4, "d"), Entry("b", b"2", 1, 9, "d")], full=False)
    assert s.delete_lists(["a", "b", "zz"], upto=5) == 1  # b was written after version 5
    assert s.get_list("a") is None and s.get_list("b") == b"2"
    s.put_side(similar={"i1": b"s1", "i2": b"s2"})
    s.put_side(similar={"i2": b"s2b"})  # replaced whole: i1 left the catalog
    assert s.get_similar("i1") is None and s.get_similar("i2") == b"s2b"
    s.close()


# --------------------------------------------------------------------------- publishing


def test_publish_follows_appends_replacements_and_restores(lakehouse, store_url):
    lh = base_lakehouse(lakehouse)
    s = open_store(store_url)
    pub = Publisher(lh, s)
    r = pub.sync()
    assert (r.mode, r.written, r.popular, r.similar) == ("full", 200, True, 60)
    assert_store_matches(lh, store_url)
    assert pub.sync().mode == "none"

    # the stream: two refreshed users -> only their lists are read and written
    delta.append_arrow(lh, RECOMMENDATIONS, recs(["u1", "u2"], item_of(3),
                                                 T0 + dt.timedelta(minutes=1), source="fold_in"))
    r = pub.sync()
    assert (r.mode, r.written, r.popular, r.similar) == ("incremental", 2, False, None)
    assert_store_matches(lh, store_url)

    # score replaces the snapshot with fewer users: full comparison, deletes the rest
    v_before = delta.latest_version(lh, RECOMMENDATIONS)
    overwrite(lh, RECOMMENDATIONS, recs([f"u{i}" for i in range(150)], item_of(5),
                                        T0 + dt.timedelta(hours=1), model=2))
    r = pub.sync()
    assert (r.mode, r.written, r.deleted) == ("full", 150, 50)
    assert_store_matches(lh, store_url)

    # a restore takes the table back: the store follows (its watermark still grows)
    from deltalake import DeltaTable

    DeltaTable(delta.table_path(lh, RECOMMENDATIONS)).restore(v_before)
    r = pub.sync()
    assert r.mode == "full" and r.written == 200 and r.deleted == 0
    assert_store_matches(lh, store_url)
    assert int(s.meta()["watermark"]) == delta.latest_version(lh, RECOMMENDATIONS)

    # a publisher that read an old watermark replays old commits: nothing goes back
    stale = Publisher(lh, s)
    stale._incremental(delta.data_changes(lh, RECOMMENDATIONS, 0, 1), 1,
                       type(r)("incremental", 0, 1))
    assert_store_matches(lh, store_url)
    s.close()


def test_the_stream_push_costs_its_batch_and_leaves_a_replace_to_publish(lakehouse):
    lh = base_lakehouse(lakehouse)
    url = default_store_url(lh)
    s = open_store(url)
    pub = Publisher(lh, s)
    pub.sync()

    def stream_batch(users, minutes):
        rows = recs(users, item_of(3), T0 + dt.timedelta(minutes=minutes), source="fold_in")
        return rows, delta.append_arrow(lh, RECOMMENDATIONS, rows).version

    # steady state: the store was at the version before, the batch's rows go in from memory
    rows, v = stream_batch(["u1", "u2"], 1)
    r = pub.push_batch(rows, v, stream_batch="q:1")
    assert r.written == 2 and int(s.meta()["watermark"]) == v
    assert s.meta()["stream_batch"] == "q:1"
    assert_store_matches(lh, url)

    # a missed push (append only) before the batch: caught up from its files
    missed, _ = stream_batch(["u3"], 2)
    rows, v = stream_batch(["u4"], 3)
    r = pub.push_batch(rows, v, stream_batch="q:3")
    assert r.written == 2 and int(s.meta()["watermark"]) == v
    assert_store_matches(lh, url)

    # score replaced the lists since: the batch's own lists go in, the full comparison is
    # publish's (score runs it); the watermark waits for it
    w = int(s.meta()["watermark"])
    overwrite(lh, RECOMMENDATIONS, recs([f"u{i}" for i in range(100)], item_of(5),
                                        T0 + dt.timedelta(hours=1), model=2))
    rows, v = stream_batch(["u7", "u150"], 90)
    r = pub.push_batch(rows, v, stream_batch="q:4")
    assert r.written == 2 and int(s.meta()["watermark"]) == w
    got = store_lists(url)
    assert got["u150"][1] == [(i, "fold_in") for i in item_of(3)("u150")]
    assert got["u50"][0] == "2026-06-01T12:00:00Z"  # not yet the replaced list
    r = pub.sync()
    # u0..u99 but u7 (its stream list is newer than the replace) rewritten; u100..u199 but
    # u150 left with the replace
    assert (r.mode, r.written, r.deleted) == ("full", 99, 99)
    assert_store_matches(lh, url)
    s.close()


def test_the_popularity_counts_of_publish_and_score_agree(spark, lakehouse):
    """DuckDB (publish) and Spark (score) count the same window of a long, sparse history."""
    import numpy as np

    from pipelines.batch.score import popularity_counts as spark_counts
    from pipelines.online.publish import popularity_counts
    from pipelines.serving.policy import PopularityWindow

    rng = np.random.default_rng(4)
    n = 6000  # 3,000 users over 400 days, most with one or two events
    ts = [T0 - dt.timedelta(days=float(d)) for d in rng.uniform(0, 400, n)]
    t = pa.table({
        "event_id": [f"e{k}" for k in range(n)],
        "user_id": [f"u{k}" for k in rng.zipf(2.0, n) % 3000],
        "item_id": [f"i{k}" for k in rng.zipf(1.5, n) % 500], "event_type": ["click"] * n,
        "value": pa.nulls(n, pa.float64()), "ts": pa.array(ts, pa.timestamp("us", "UTC")),
        "session_id": pa.nulls(n, pa.string()), "source": pa.nulls(n, pa.string()),
        "ingest_source": ["t"] * n, "ingest_id": ["t"] * n,
        "ingested_at": pa.array([T0] * n, pa.timestamp("us", "UTC")),
        "dt": pa.array([x.date() for x in ts], pa.date32())})
    delta.ensure_table(lakehouse, INTERACTIONS)
    delta.append_arrow(lakehouse, INTERACTIONS, t)
    for window in (PopularityWindow(T0 - dt.timedelta(days=30), None, None),
                   PopularityWindow(T0 - dt.timedelta(days=200), T0 - dt.timedelta(days=20),
                                    (T0 - dt.timedelta(days=25)).date()),
                   PopularityWindow(None, None, None)):
        a_ids, a_n, a_total = popularity_counts(lakehouse, window)
        b_ids, b_n, b_total = spark_counts(spark, lakehouse, window)
        assert dict(zip(a_ids, a_n, strict=True)) == dict(zip(b_ids, b_n, strict=True))
        assert a_total == b_total > 0


def test_the_popular_list_follows_the_one_popularity_rule(lakehouse, store_url):
    lh = base_lakehouse(lakehouse)
    s = open_store(store_url)
    Publisher(lh, s).sync()
    pop = json.loads(s.get_popular())
    ids = [i[0] for i in pop["items"]]
    assert ids[:3] == ["i0", "i1", "i2"]  # i0 touched by the most users
    assert pop["items"][0][1] == pytest.approx(20 / 20)  # share of the window's users
    assert {i[3] for i in pop["items"]} == set(CATS)
    s.close()


def publish_cmd(lh, url, *extra):
    return [str(VENV_BIN / "lakerec"), "publish", "--lakehouse", lh, "--store", url, *extra]


def kill_mid_push(cmd) -> None:
    """Start ``cmd`` (publish at DEBUG), freeze it at its second chunk, then SIGKILL it."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=job_env())
    try:
        for line in p.stderr:
            if "store: wrote chunk 2 of" in line:
                p.send_signal(signal.SIGSTOP)
                break
        else:
            pytest.fail(f"publish ended before its second chunk (rc {p.wait()})")
        p.kill()
    finally:
        p.wait(30)


def test_publish_killed_mid_push_then_rerun_equals_the_table(lakehouse, store_url):
    lh = base_lakehouse(lakehouse, users=3000)
    # a full push killed: the watermark did not move, part of the lists are there
    kill_mid_push(publish_cmd(lh, store_url, "--chunk", "50", "--log-level", "DEBUG"))
    s = open_store(store_url)
    assert "watermark" not in s.meta()
    assert 0 < len(s.digests()) < 3000
    r = subprocess.run(publish_cmd(lh, store_url), capture_output=True, text=True,
                       env=job_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_store_matches(lh, store_url)

    # an incremental push killed the same way (2,000 refreshed users)
    delta.append_arrow(lh, RECOMMENDATIONS, recs([f"u{i}" for i in range(2000)], item_of(4),
                                                 T0 + dt.timedelta(minutes=5)))
    kill_mid_push(publish_cmd(lh, store_url, "--chunk", "50", "--log-level", "DEBUG"))
    assert 0 < sum(1 for _, (g, _items) in store_lists(store_url).items()
                   if g.startswith("2026-06-01T12:05")) < 2000
    r = subprocess.run(publish_cmd(lh, store_url), capture_output=True, text=True,
                       env=job_env(), timeout=120)
    assert r.returncode == 0 and "(incremental)" in r.stdout, r.stdout + r.stderr[-2000:]
    assert_store_matches(lh, store_url)
    s.close()


def test_publish_usage_errors(lakehouse, tmp_path):
    base_lakehouse(lakehouse, users=5)
    for bad in ("mysql://x", "sqlite://relative.db", "redis://", "none"):
        r = subprocess.run(publish_cmd(lakehouse, bad), capture_output=True, text=True,
                           env=job_env(), timeout=60)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
    r = subprocess.run(publish_cmd(str(tmp_path / "nowhere"), default_store_url(lakehouse)),
                       capture_output=True, text=True, env=job_env(), timeout=60)
    assert r.returncode == 2


# --------------------------------------------------------------------------- the API


class Server:
    def __init__(self, lh, url, *extra, port=None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "lakerec"), "serve", "--lakehouse", lh, "--store", url, "--port",
             str(self.port), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=job_env())
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise AssertionError(f"serve did not start: {self.output}") from None
                time.sleep(0.1)

    def get(self, path) -> tuple[int, dict | str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                body, code, ctype = r.read().decode(), r.status, r.headers["content-type"]
        except urllib.error.HTTPError as e:
            body, code, ctype = e.read().decode(), e.code, e.headers["content-type"]
        return code, json.loads(body) if ctype.startswith("application/json") else body

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.output = self.proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output = self.proc.communicate()[0]


def test_the_api_on_both_stores(lakehouse, store_url):
    lh = base_lakehouse(lakehouse)
    srv = Server(lh, store_url, "--no-exposures")
    try:
        code, body = srv.get("/readyz")
        assert code == 503 and "publish" in body["error"]
        code, body = srv.get("/v1/users/u1/recommendations")
        assert code in (503, 200)  # before any publish: unavailable or popular-only, never 500
        r = subprocess.run(publish_cmd(lh, store_url), capture_output=True, text=True,
                           env=job_env(), timeout=120)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 10  # the API retries the store after its 1 s pause
        while srv.get("/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        code, body = srv.get("/readyz")
        assert body["recommendations_version"] == delta.latest_version(lh, RECOMMENDATIONS)

        code, body = srv.get("/v1/users/u3/recommendations?k=3")
        assert code == 200 and body["source"] == "personal" and body["model_version"] == 1
        assert [e["item_id"] for e in body["items"]] == item_of(5)("u3")[:3]
        assert [e["rank"] for e in body["items"]] == [1, 2, 3]
        assert body["generated_at"] == "2026-06-01T12:00:00Z" and body["age_seconds"] > 0
        assert len(body["request_id"]) == 32

        # paging: pages join into the list; a known user's list is never topped up with
        # popular items (the store holds no history to keep seen items out)
        pages = [srv.get(f"/v1/users/u3/recommendations?k=2&offset={o}")[1]["items"]
                 for o in (0, 2, 4, 6)]
        flat = [e["item_id"] for p in pages for e in p]
        assert flat == item_of(5)("u3") and [len(p) for p in pages] == [2, 2, 1, 0]
        assert [e["rank"] for p in pages for e in p] == [1, 2, 3, 4, 5]

        # filters
        cat = srv.get("/v1/users/u3/recommendations?k=6&category=games")[1]["items"]
        games = {f"i{j}" for j in range(60) if CATS[j % 3] == "games"}
        want_games = [i for i in item_of(5)("u3") if i in games]
        assert [e["item_id"] for e in cat] == want_games and want_games
        pop_games = srv.get("/v1/users/stranger/recommendations?k=4&category=games")[1]
        assert [e["item_id"] for e in pop_games["items"]] == ["i1", "i4", "i7", "i10"]
        first = item_of(5)("u3")
        ex = srv.get(f"/v1/users/u3/recommendations?k=5&exclude={first[0]},{first[1]}"
                     f"&exclude={first[2]}")[1]["items"]
        assert not {e["item_id"] for e in ex} & set(first[:3])
        assert [e["item_id"] for e in ex][:2] == first[3:5]

        # unknown users get the popular list, not an error
        code, body = srv.get("/v1/users/nobody-at-all/recommendations?k=3")
        assert code == 200 and body["source"] == "popular"
        assert [e["item_id"] for e in body["items"]] == ["i0", "i1", "i2"]

        code, body = srv.get("/v1/items/i5/similar?k=2")
        assert code == 200 and [e["item_id"] for e in body["items"]] == ["i6", "i7"]
        assert srv.get("/v1/items/unknown/similar")[0] == 404

        # bad input: 4xx with a JSON error, never a 500
        long_id = "x" * 129
        for path, want in [
            (f"/v1/users/{long_id}/recommendations", 422), (f"/v1/items/{long_id}/similar", 422),
            ("/v1/users/u1/recommendations?k=0", 422), ("/v1/users/u1/recommendations?k=101", 422),
            ("/v1/users/u1/recommendations?k=abc", 422),
            ("/v1/users/u1/recommendations?offset=-1", 422),
            ("/v1/users/u1/recommendations?offset=1001", 422),
            (f"/v1/users/u1/recommendations?category={long_id}", 422),
            (f"/v1/users/u1/recommendations?exclude={long_id}", 422),
            ("/v1/users/u1/recommendations?kk=3", 400), ("/v1/items/i1/similar?offset=1", 400),
            ("/v1/users/u1/nothing", 404), ("/v1/users//recommendations", 404),
            ("/wp-login.php", 404), ("/x/y", 404)]:
            code, body = srv.get(path)
            assert code == want and isinstance(body, dict) and body["error"], (path, code, body)

        code, text = srv.get("/metrics")
        assert code == 200
        assert 'lakerec_http_requests_total{route="recommendations",status="200"}' in text
        assert 'lakerec_http_requests_total{route="recommendations",status="422"}' in text
        assert "lakerec_http_request_seconds_bucket" in text
        assert "lakerec_served_list_age_seconds_count" in text
        assert "lakerec_store_errors_total" in text
        assert 'route="other",status="404"' in text and "wp-login" not in text
        code, spec = srv.get("/openapi.json")
        assert "/v1/users/{user_id}/recommendations" in spec["paths"]
        code, page = srv.get("/docs")
        assert code == 200 and "/_docs/swagger-ui-bundle.js" in page
        assert srv.get("/_docs/swagger-ui-bundle.js")[0] == 200  # served here, not a CDN
    finally:
        srv.stop()
    assert "Traceback" not in srv.output, srv.output[-3000:]


def test_a_redis_outage_is_503_and_not_ready_then_recovers(lakehouse, tmp_path):
    lh = base_lakehouse(lakehouse, users=20)
    port = free_port()

    def redis_up():
        p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                             stdout=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=port).ping()
                return p
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)

    url = f"redis://127.0.0.1:{port}/0"
    proc = redis_up()
    srv = None
    try:
        assert subprocess.run(publish_cmd(lh, url), env=job_env(), capture_output=True,
                              timeout=120).returncode == 0
        srv = Server(lh, url, "--no-exposures")
        assert srv.get("/v1/users/u1/recommendations")[0] == 200
        proc.terminate()
        proc.wait(10)
        t = time.monotonic()
        code, body = srv.get("/v1/users/u1/recommendations")
        assert code == 503 and "unavailable" in body["error"]
        assert time.monotonic() - t < 2  # a fast error, not a stall
        assert srv.get("/readyz")[0] == 503
        assert srv.get("/healthz")[0] == 200  # the process itself is fine
        proc = redis_up()  # empty: the data is gone too; publish again
        assert subprocess.run(publish_cmd(lh, url), env=job_env(), capture_output=True,
                              timeout=120).returncode == 0
        deadline = time.monotonic() + 10
        while srv.get("/v1/users/u1/recommendations")[0] != 200:
            assert time.monotonic() < deadline, "the API did not recover"
            time.sleep(0.2)
        assert srv.get("/readyz")[0] == 200
        code, text = srv.get("/metrics")
        errors = [ln for ln in text.splitlines() if ln.startswith("lakerec_store_errors_total")]
        assert errors and float(errors[0].split()[-1]) >= 1
    finally:
        if srv is not None:
            srv.stop()
        proc.terminate()
        proc.wait(10)


def test_the_exposure_log_never_blocks_and_counts_what_it_drops():
    from pipelines.api.exposures import ExposureLog

    port = free_port()  # nothing listens: the broker is down
    log = ExposureLog({"kafka.bootstrap.servers": f"127.0.0.1:{port}"}, "exposures",
                      capacity=50)
    t = time.perf_counter()
    accepted = sum(log.offer({"user_id": "u", "request_id": str(i)}) for i in range(1000))
    per_call = (time.perf_counter() - t) / 1000
    assert accepted <= 50 + 1 and log.dropped >= 949
    assert per_call < 0.001  # a deque append, not I/O
    log.close(timeout_s=1)


# --------------------------------------------------------------------------- exposures


def test_served_lists_land_in_exposures_exactly_once(lakehouse, kafka):
    from pipelines.dev import broker, feedback
    from schemas.tables import EXPOSURES, QUARANTINE

    lh = base_lakehouse(lakehouse, users=30)
    topic = f"exposures-{uuid.uuid4().hex[:6]}"
    broker.create_topic(kafka.bootstrap, topic)
    url = default_store_url(lh)
    assert subprocess.run(publish_cmd(lh, url), env=job_env(), timeout=120).returncode == 0
    srv = Server(lh, url, "--bootstrap", kafka.bootstrap, "--exposures-topic", topic,
                 "--variant", "B")
    try:
        shown = {}
        for path in ("/v1/users/u1/recommendations?k=3", "/v1/users/u2/recommendations?k=2&"
                     "offset=2", "/v1/users/stranger/recommendations?k=2",
                     "/v1/items/i3/similar?k=2"):
            body = srv.get(path)[1]
            shown[body["request_id"]] = [(e["rank"], e["item_id"], e["source"])
                                        for e in body["items"]]
        deadline = time.monotonic() + 30
        while "lakerec_exposures{outcome=\"sent\"} 4.0" not in srv.get("/metrics")[1]:
            assert time.monotonic() < deadline, srv.get("/metrics")[1][-2000:]
            time.sleep(0.2)
    finally:
        srv.stop()
    p = feedback.make_producer(kafka.bootstrap, one_record_per_batch=True)
    p.send(topic, b"{not json")
    p.send(topic, json.dumps({"exposures": [
        {"request_id": "r", "user_id": "u", "route": "elsewhere",
         "served_at": "2026-01-01T00:00:00Z", "items": [{"item_id": "i", "position": 1,
                                                          "source": "als"}]},
        {"request_id": "r2", "user_id": "u", "route": "similar", "served_at": "soon",
         "items": [{"item_id": "i", "position": 1, "source": "als"}]}]}).encode())
    p.send(topic, b'{"something": "else"}')
    p.flush()
    p.close()

    cmd = [str(VENV_BIN / "lakerec"), "stream", "--exposures", "--lakehouse", lh,
           "--bootstrap", kafka.bootstrap, "--topic", topic, "--available-now"]
    for _ in range(2):  # the second run finds nothing new: nothing lands twice
        r = subprocess.run(cmd, capture_output=True, text=True, env=job_env(), timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    t = delta.arrow_dataset(lh, EXPOSURES).to_table().to_pylist()
    got = {}
    for row in t:
        got.setdefault(row["request_id"], []).append((row["position"], row["item_id"],
                                                      row["source"]))
    assert {k: sorted(v) for k, v in got.items()} == shown
    assert {row["variant"] for row in t} == {"B"}
    assert {row["route"] for row in t} == {"recommendations", "similar"}
    assert {row["user_id"] for row in t} == {"u1", "u2", "stranger", "i3"}
    q = delta.arrow_dataset(lh, QUARANTINE).to_table().to_pylist()
    assert sorted(row["reason"] for row in q if row["origin"] == "exposures") == \
        ["bad_field:exposures", "bad_field:route", "bad_field:served_at", "not_json"]
