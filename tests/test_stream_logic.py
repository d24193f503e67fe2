"""Pure logic of the stream: offsets, options, record splitting, fold-in and refresh."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.model import topk
from pipelines.model.card import ModelCard
from pipelines.model.trainer import FoldInRule
from pipelines.serving.model import ServingModel
from pipelines.storage import delta
from pipelines.streaming.checkpoint import CheckpointError, check_checkpoint
from pipelines.streaming.kafka_source import (
    KafkaConfigError,
    SourceOptions,
    cap_offsets,
    client_config,
    parse_offsets,
    redacted,
)
from pipelines.streaming.microbatch import refresh, split_records
from schemas.events import default_weights
from schemas.tables import INTERACTIONS

A, B = ("t", 0), ("t", 1)


# --------------------------------------------------------------------------- offsets


def test_cap_takes_exactly_the_limit_shared_by_backlog():
    end = cap_offsets({A: 0, B: 100}, {A: 300, B: 200}, 100)
    # backlogs 300 and 100: shares 75 and 25
    assert end == {A: 75, B: 125}
    assert sum(end[tp] - s for tp, s in {A: 0, B: 100}.items()) == 100


def test_cap_gives_remainders_to_the_largest_backlogs_and_never_overshoots():
    start = {A: 0, B: 0, ("u", 0): 0}
    end = {A: 1, B: 1, ("u", 0): 1}
    got = cap_offsets(start, end, 2)
    assert sum(got.values()) == 2 and all(got[tp] <= end[tp] for tp in end)
    assert got == {A: 1, B: 1, ("u", 0): 0}  # ties by (topic, partition)


def test_cap_without_limit_or_under_it_is_the_end():
    assert cap_offsets({A: 5}, {A: 9}, None) == {A: 9}
    assert cap_offsets({A: 5}, {A: 9}, 10) == {A: 9}
    assert cap_offsets({}, {A: 9}, 3) == {A: 9}  # a partition with no start: nothing to cap


def test_offsets_json_is_validated():
    assert parse_offsets('{"t": {"0": 5, "1": 7}}') == {"t": {"0": 5, "1": 7}}
    for bad in ("[1]", '{"t": 3}', '{"t": {"x": 1}}', "nope"):
        with pytest.raises(KafkaConfigError):
            parse_offsets(bad)


def test_source_options():
    o = SourceOptions.parse({"kafka.bootstrap.servers": "h:1", "subscribe": "a, b",
                             "startingoffsets": "earliest", "maxoffsetspertrigger": "10"})
    assert o.topics == ("a", "b") and o.starting == "earliest" and o.max_per_trigger == 10
    assert o.fail_on_data_loss
    for bad in ({"subscribe": "a"}, {"kafka.bootstrap.servers": "h:1"},
                {"kafka.bootstrap.servers": "h:1", "subscribe": "a", "startingOffsets": "soon"},
                {"kafka.bootstrap.servers": "h:1", "subscribe": "a", "maxOffsetsPerTrigger": "0"},
                {"kafka.bootstrap.servers": "h:1", "subscribe": "a", "kafka.bogus": "1"}):
        with pytest.raises(KafkaConfigError):
            SourceOptions.parse(bad)


def test_sasl_needs_mechanism_and_credentials_from_the_environment_only():
    opts = {"kafka.bootstrap.servers": "h:9093", "kafka.security.protocol": "SASL_SSL",
            "kafka.sasl.mechanism": "SCRAM-SHA-512", "kafka.ssl.cafile": "/ca.pem"}
    with pytest.raises(KafkaConfigError, match="LAKEREC_KAFKA_SASL_USERNAME"):
        client_config(opts, env={})
    env = {"LAKEREC_KAFKA_SASL_USERNAME": "svc", "LAKEREC_KAFKA_SASL_PASSWORD": "s3cr3t!"}
    cfg = client_config(opts, env=env)
    assert cfg["security_protocol"] == "SASL_SSL" and cfg["sasl_mechanism"] == "SCRAM-SHA-512"
    assert cfg["sasl_plain_password"] == "s3cr3t!" and cfg["ssl_cafile"] == "/ca.pem"
    assert "s3cr3t!" not in repr(redacted(cfg))
    with pytest.raises(KafkaConfigError, match="mechanism") as e:
        client_config({**opts, "kafka.sasl.mechanism": "GSSAPI"}, env=env)
    assert "s3cr3t!" not in str(e.value)
    plain = client_config({"kafka.bootstrap.servers": "a:1,b:2"}, env=env)
    assert plain["bootstrap_servers"] == ["a:1", "b:2"] and "sasl_plain_password" not in plain
    ssl = client_config({"kafka.bootstrap.servers": "h:1", "kafka.security.protocol": "SSL",
                         "kafka.ssl.certfile": "/c.pem", "kafka.ssl.keyfile": "/k.pem"},
                        env={"LAKEREC_KAFKA_SSL_KEY_PASSWORD": "kp"})
    assert ssl["ssl_password"] == "kp" and ssl["ssl_certfile"] == "/c.pem"


# --------------------------------------------------------------------------- records


def _checked(rows):
    cols = ["event_id", "user_id", "item_id", "event_type", "value", "ts", "session_id",
            "source", "request_id", "reason", "raw_size", "ingest_source", "topic", "partition", "offset",
            "kafka_ts", "raw_text", "raw_exact"]
    data = {c: [r.get(c) for r in rows] for c in cols}
    return pa.table(data, schema=pa.schema([
        ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
        ("event_type", pa.string()), ("value", pa.float64()),
        ("ts", pa.timestamp("us", tz="UTC")), ("session_id", pa.string()),
        ("source", pa.string()), ("request_id", pa.string()), ("reason", pa.string()),
        ("raw_size", pa.int64()),
        ("ingest_source", pa.string()), ("topic", pa.string()), ("partition", pa.int32()),
        ("offset", pa.int64()), ("kafka_ts", pa.timestamp("us", tz="UTC")),
        ("raw_text", pa.string()), ("raw_exact", pa.binary())]))


def test_split_records_dedups_by_arrival_and_recognises_its_own_replay():
    ts = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)

    def ev(eid, off, part=0, reason=None, at=ts, kafka_ts=ts):
        return {"event_id": eid, "user_id": "u", "item_id": "i", "event_type": "view", "ts": at,
                "reason": reason, "raw_size": 10, "topic": "t", "partition": part,
                "offset": off, "ingest_source": f"kafka://t/{part}/{off}", "raw_text": "{}",
                "kafka_ts": kafka_ts}

    later = ts + dt.timedelta(days=30)  # beyond the future-skew bound of `now`
    rows = [ev("e2", 5), ev("e1", 1), ev("e1", 3), ev("old", 4), ev("mine", 6),
            ev(None, 2, reason="malformed_json"), ev("e3", 0, part=1),
            # no broker time: bounded by processing time here, not by validation
            ev("future", 7, at=later, kafka_ts=None), ev("now", 8, kafka_ts=None)]
    inter, quar = split_records(_checked(rows), ingest_id="stream:q:7",
                                known={"old": "ingest:2024-01-01:abc", "mine": "stream:q:7"},
                                now=ts, day=ts.date())
    assert sorted(inter["event_id"].to_pylist()) == ["e1", "e2", "e3", "mine", "now"]
    assert inter.filter(pa.compute.equal(inter["event_id"], "e1"))["ingest_source"] \
        .to_pylist() == ["kafka://t/0/1"]  # the first arrival wins
    got = dict(zip(quar["ingest_source"].to_pylist(), quar["reason"].to_pylist(), strict=True))
    assert got == {"kafka://t/0/3": "duplicate_event_id",
                   "kafka://t/0/4": "duplicate_already_ingested",
                   "kafka://t/0/2": "malformed_json", "kafka://t/0/7": "ts_out_of_range"}
    assert set(quar["origin"].to_pylist()) == {"stream"}
    assert set(inter["ingest_id"].to_pylist()) == {"stream:q:7"}


# --------------------------------------------------------------------------- fold-in


def _model(y, ids, *, alpha=3.0, reg=0.1, pop=None):
    pop_ids = sorted(pop) if pop else []
    card = ModelCard(alpha=alpha, reg=reg)
    return ServingModel.build(1, card, FoldInRule(alpha, reg), trained=(ids, y),
                              placed=([], np.zeros((0, y.shape[1]))),
                              popular=(pop_ids, np.array([pop[i] for i in pop_ids])))


def _reference_fold_in(y, items, r, alpha, reg):
    """Dense normal equations: (YᵀCY + λnI) x = YᵀCp over all items, p=1 on observed."""
    c = np.ones(len(y))
    p = np.zeros(len(y))
    c[items] += alpha * r
    p[items] = 1.0
    y = y.astype(np.float64)
    a = y.T @ (c[:, None] * y) + reg * len(items) * np.eye(y.shape[1])
    return np.linalg.solve(a, y.T @ (c * p))


def test_refresh_matches_a_dense_numpy_solve_and_the_brute_force_top_k():
    rng = np.random.default_rng(4)
    ids = [f"i{j:03d}" for j in range(60)]
    y = rng.normal(size=(60, 6)).astype(np.float32)
    model = _model(y, ids)
    types = ["view", "click", "add_to_cart", "purchase"]
    rows = [(f"u{u}", ids[rng.integers(60)], types[rng.integers(4)], None)
            for u in range(8) for _ in range(rng.integers(1, 9))]
    rows.append(("u3", "not-in-model", "purchase", None))  # seen, but has no factors
    rows.append(("u5", ids[7], "rating", 4.5))
    hist = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "value"])
    users = sorted(hist["user_id"].unique())
    vectors, recs = refresh(model, hist, users, k=5, new_item_slots=1)
    for u in users:
        h = hist[(hist.user_id == u) & hist.item_id.isin(ids)]
        w = h.event_type.map(default_weights()).where(h.event_type != "rating", h.value)
        r = w.groupby(h.item_id).sum()
        items = np.array([model.row[i] for i in r.index])
        ref = _reference_fold_in(y, items, r.to_numpy(), model.card.alpha, model.card.reg)
        np.testing.assert_allclose(vectors[u], ref, rtol=2e-4, atol=2e-5)
        seen = [model.row[i] for i in h.item_id]
        (best,) = topk.brute_force(vectors[u][None], y, [np.array(seen)], 5,
                                   key=topk.order_key(ids))
        got = [x for x in recs if x[0] == u]
        assert [g[2] for g in got] == [ids[j] for j, _ in best]
        assert [g[1] for g in got] == list(range(1, 6)) and {g[4] for g in got} == {"fold_in"}


def test_refresh_tops_up_with_popular_unseen_items_and_serves_users_without_factors():
    ids = ["a", "b", "c"]
    y = np.eye(3, dtype=np.float32)
    model = _model(y, ids, pop={"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5})
    hist = pd.DataFrame([("u1", "a", "purchase", None), ("u1", "b", "view", None),
                         ("new", "e", "view", None)],
                        columns=["user_id", "item_id", "event_type", "value"])
    vectors, recs = refresh(model, hist, ["u1", "new"], k=3, new_item_slots=1)
    assert set(vectors) == {"u1"}  # "new" touched only an item without factors
    u1 = [(r[2], r[4]) for r in recs if r[0] == "u1"]
    assert u1 == [("c", "fold_in"), ("d", "popular"), ("e", "popular")]
    new = [(r[1], r[2], r[4]) for r in recs if r[0] == "new"]
    assert new == [(1, "a", "popular"), (2, "b", "popular"), (3, "c", "popular")]


def test_a_user_who_buys_from_a_new_cluster_gets_that_clusters_items():
    # checkerboard: items 0-9 in cluster A, 10-19 in cluster B, orthogonal factors
    ids = [f"i{j:02d}" for j in range(20)]
    y = np.zeros((20, 2), np.float32)
    y[:10, 0] = 1.0
    y[10:, 1] = 1.0
    model = _model(y, ids, alpha=10.0, reg=0.01)
    before = pd.DataFrame([("u", ids[j], "purchase", None) for j in range(3)],
                          columns=["user_id", "item_id", "event_type", "value"])
    _, recs = refresh(model, before, ["u"], k=3, new_item_slots=1)
    assert all(int(r[2][1:]) < 10 for r in recs)
    after = pd.concat([before, pd.DataFrame([("u", ids[j], "purchase", None)
                                             for j in range(10, 16)], columns=before.columns)])
    _, recs = refresh(model, after, ["u"], k=3, new_item_slots=1)
    assert [r[2] for r in recs] == ["i16", "i17", "i18"]  # B's unseen items, ties by id


# --------------------------------------------------------------------------- checkpoint


def test_an_empty_or_older_checkpoint_is_refused_against_the_tables(tmp_path):
    lh, cp = str(tmp_path / "lh"), tmp_path / "cp"
    empty = pa.Table.from_pylist([], schema=INTERACTIONS.arrow_schema())
    assert check_checkpoint(lh, "q", str(cp)) is None  # new query, no tables yet
    delta.append_arrow(lh, INTERACTIONS, empty, txn=delta.Txn("lakerec.stream/q", 4))
    with pytest.raises(CheckpointError, match="empty or missing"):
        check_checkpoint(lh, "q", str(cp))
    (cp / "offsets").mkdir(parents=True)
    (cp / "offsets" / "2").write_text('v1\n{}\n{"t": {"0": 3}}\n')
    with pytest.raises(CheckpointError, match="older copy"):
        check_checkpoint(lh, "q", str(cp))
    (cp / "offsets" / "5").write_text('v1\n{}\n{"t": {"0": 9}}\n')
    assert check_checkpoint(lh, "q", str(cp)) == 4
    assert check_checkpoint(lh, "other", str(tmp_path / "none")) is None


class _Reader:
    """The reader's planning logic against fixed broker offsets (no broker needed)."""

    def __init__(self, earliest, latest, **opts):
        from pipelines.streaming.kafka_source import KafkaStreamReader

        self.r = KafkaStreamReader(SourceOptions.parse(
            {"kafka.bootstrap.servers": "h:1", "subscribe": "t", **opts}))
        self.bounds = {"earliest": earliest, "latest": latest}
        self.r._bounds = lambda which: dict(self.bounds[which])


def test_reader_caps_batches_and_adds_new_partitions_from_their_earliest_offset():
    f = _Reader({A: 0, B: 0}, {A: 50, B: 10}, maxOffsetsPerTrigger="20",
                startingOffsets="earliest")
    start = f.r.initialOffset()
    assert start == {"t": {"0": 0, "1": 0}}
    first = f.r.latestOffset()
    assert first == {"t": {"0": 17, "1": 3}}  # 20 shared 50:10, remainder to the larger
    parts = f.r.partitions(start, first)
    assert [(p.partition, p.start, p.end) for p in parts] == [(0, 0, 17), (1, 0, 3)]
    f.bounds["latest"][("t", 2)] = 4
    f.bounds["earliest"][("t", 2)] = 1
    # backlogs 33, 7 and 3 (the new partition from its earliest offset, 1): 20 shared
    assert f.r.latestOffset() == {"t": {"0": 33, "1": 6, "2": 2}}


def test_a_new_querys_first_batch_is_capped_in_the_order_spark_asks():
    # Spark asks a Python source for latestOffset() before initialOffset()
    f = _Reader({A: 5, B: 0}, {A: 50, B: 10}, maxOffsetsPerTrigger="20",
                startingOffsets="earliest", **{"lakerec.resumeOffsets": "starting"})
    first = f.r.latestOffset()
    assert first == {"t": {"0": 22, "1": 3}}  # backlogs 45 and 10 from the earliest offsets
    assert f.r.initialOffset() == {"t": {"0": 5, "1": 0}}
    assert f.r.latestOffset() == {"t": {"0": 38, "1": 7}}  # backlogs 28 and 7
    # not told where the first batch starts (a checkpoint may exist): not capped
    assert _Reader({A: 5, B: 0}, {A: 50, B: 10}, maxOffsetsPerTrigger="20",
                   startingOffsets="earliest").r.latestOffset() == {"t": {"0": 50, "1": 10}}


def test_reader_refuses_offsets_the_broker_no_longer_has_unless_told_to_skip():
    from pipelines.streaming.kafka_source import OffsetOutOfRangeError

    f = _Reader({A: 30, B: 0}, {A: 60, B: 5})
    with pytest.raises(OffsetOutOfRangeError, match="t/0 offsets 10..29"):
        f.r.partitions({"t": {"0": 10, "1": 0}}, {"t": {"0": 60, "1": 5}})
    f = _Reader({A: 30, B: 0}, {A: 60, B: 5}, failOnDataLoss="false")
    parts = f.r.partitions({"t": {"0": 10, "1": 0}}, {"t": {"0": 60, "1": 5}})
    assert [(p.partition, p.start, p.end) for p in parts] == [(0, 30, 60), (1, 0, 5)]
    # end offsets that went back (a broker that lost its data) are refused too
    f = _Reader({A: 0, B: 0}, {A: 3, B: 5}, **{"lakerec.resumeOffsets": '{"t": {"0": 9, "1": 5}}'})
    with pytest.raises(OffsetOutOfRangeError, match="went back"):
        f.r.latestOffset()


# --------------------------------------------------------------------------- supervisor


def test_failures_are_sorted_by_type_not_by_their_text():
    from kafka.errors import KafkaTimeoutError

    from pipelines.storage.deltalog import DeltaConflictError
    from pipelines.streaming.kafka_source import OffsetOutOfRangeError
    from pipelines.streaming.supervisor import classify, failure_of, remote_error

    assert classify(KafkaTimeoutError()) == "transient"
    assert classify(ConnectionRefusedError()) == "transient"
    assert classify(OffsetOutOfRangeError("gone")) == "fatal"
    assert classify(DeltaConflictError("v7")) == "fatal"
    assert classify(KafkaConfigError("bad")) == "fatal"
    assert classify(ValueError("TimeoutError in the text")) == "fatal"  # the text is not read
    from kafka.errors import SaslAuthenticationFailedError

    assert classify(SaslAuthenticationFailedError()) == "fatal"  # kafka, but not retriable
    # a failure from a Spark Python worker arrives as text: the class on its traceback's
    # last Python line is resolved to the class itself
    worker = RuntimeError(
        "org.apache.spark.SparkException: Job aborted due to stage failure\n"
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in read\n"
        "pipelines.streaming.kafka_source.OffsetOutOfRangeError: offsets 5..9 are gone\n"
        "\tat org.apache.spark.api.python.BasePythonRunner...")
    cls, line = remote_error(worker)
    assert cls is OffsetOutOfRangeError and line.endswith("offsets 5..9 are gone")

    class Ctx:
        failure = None

    assert failure_of(worker, Ctx()) == ("fatal", line)
    outage = RuntimeError("Traceback (most recent call last):\n"
                          "kafka.errors.KafkaTimeoutError: KafkaTimeoutError: metadata")
    assert failure_of(outage, Ctx())[0] == "transient"
    # a chain prints its cause first: the innermost error decides; a bare class line counts
    chained = RuntimeError("Traceback (most recent call last):\nTimeoutError\n\nThe above "
                           "exception was the direct cause of the following exception:\n\n"
                           "Traceback (most recent call last):\nRuntimeError: read failed")
    assert failure_of(chained, Ctx()) == ("transient", "TimeoutError")
    ctx = Ctx()
    ctx.failure = OffsetOutOfRangeError("raised in this process")
    assert failure_of(RuntimeError("wrapped by Py4J"), ctx) == \
        ("fatal", "OffsetOutOfRangeError: raised in this process")


def test_a_replayed_batch_indexes_users_its_first_attempt_did_not(lakehouse):
    """A replay after a champion change folds in other users than the first attempt did:
    the index commit of the batch is done, yet the missing users still get ids."""
    from pipelines.storage import delta
    from pipelines.streaming.microbatch import _user_indexes
    from pipelines.streaming.state import KeyedState
    from schemas.tables import USER_INDEX

    state = KeyedState.open(os.path.join(lakehouse, "_state_test"))
    now = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    txn = delta.Txn.batch("lakerec.stream/q", 4)
    first = _user_indexes(lakehouse, state, ["a", "b"], txn, now)
    assert first == {"a": 0, "b": 1}
    version = delta.latest_version(lakehouse, USER_INDEX)
    again = _user_indexes(lakehouse, state, ["b", "c"], txn, now)  # the replay
    assert again == {"b": 1, "c": 2}
    assert delta.latest_version(lakehouse, USER_INDEX) == version + 1
    # nothing new: no commit; a state rebuilt from the table agrees
    fresh = KeyedState.open(os.path.join(lakehouse, "_state_fresh"))
    for st in (state, fresh):
        assert _user_indexes(lakehouse, st, ["a", "c"], txn, now) == {"a": 0, "c": 2}
    assert delta.latest_version(lakehouse, USER_INDEX) == version + 1
    assert delta.txn_version(delta.open_table(lakehouse, USER_INDEX), txn.app_id) == 4
