"""Every rule of the event contract, one payload each, with the reason it must produce."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.sql import functions as F

from pipelines.batch import validate

NOW = dt.datetime(2024, 5, 2, tzinfo=dt.UTC)


def ev(**overrides):
    base = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "view",
            "ts": "2024-05-01T10:00:00Z"}
    base.update(overrides)
    return json.dumps({k: v for k, v in base.items() if v is not _DROP})


_DROP = object()

CASES = [
    (ev(), None),
    (ev(event_type="rating", value=4.5), None),
    (ev(event_type="purchase", value=19), None),
    (ev(ts=1714557600000), None),
    (ev(ts="2024-05-01T12:00:00.123456+02:00"), None),
    (ev(ts="2024-05-01T12:00:00+0200"), None),
    (ev(session_id=None, source="app", extra={"ignored": True}), None),
    ("", "empty_payload"),
    ("x" * (1024 * 1024 + 1), "oversized"),
    ("not json", "malformed_json"),
    ('{"event_id": "e1", "event_id": "e2"}', "malformed_json"),
    ("[1, 2]", "not_an_object"),
    ("42", "not_an_object"),
    ('{"a":' + "[" * 5000 + "]" * 5000 + "}", "malformed_json"),
    (ev(event_id=_DROP), "missing_field:event_id"),
    (ev(user_id=None), "missing_field:user_id"),
    (ev(user_id=5), "wrong_type:user_id"),
    (ev(item_id={"a": 1}), "wrong_type:item_id"),
    (ev(user_id=""), "bad_length:user_id"),
    (ev(item_id="i" * 129), "bad_length:item_id"),
    (ev(event_type="hover"), "unknown_event_type"),
    (ev(event_type=3), "wrong_type:event_type"),
    (ev(value="4"), "wrong_type:value"),
    (ev(event_type="rating"), "missing_field:value"),
    (ev(event_type="rating", value=5.5), "value_out_of_range"),
    (ev(event_type="rating", value=0.25), "value_out_of_range"),
    (ev(ts=_DROP), "missing_field:ts"),
    (ev(ts=True), "wrong_type:ts"),
    (ev(ts="2024-05-01 10:00:00"), "bad_timestamp"),
    (ev(ts="2024-05-01T10:00:00"), "bad_timestamp"),
    (ev(ts="yesterday"), "bad_timestamp"),
    (ev(ts="2024-13-45T10:00:00Z"), "bad_timestamp"),
    (ev(ts="1989-12-31T23:59:59Z"), "ts_out_of_range"),
    (ev(ts=1714557600), "ts_out_of_range"),  # epoch seconds sent as millis: Jan 1970
    (ev(ts="2024-05-03T00:00:01Z"), "ts_out_of_range"),
    (ev(session_id=7), "wrong_type:session_id"),
    # data fidelity: stored as inf / as 'u?x' before
    (ev().replace('"view"', '"view", "value": 1e400'), "value_out_of_range"),
    (ev().replace('"view"', '"view", "value": -1e999'), "value_out_of_range"),
    (ev(user_id="PLACEHOLDER").replace("PLACEHOLDER", "u\\ud800x"), "invalid_utf8"),
    (ev(user_id="PLACEHOLDER").replace("PLACEHOLDER", "\\udc00"), "invalid_utf8"),
    (ev(user_id="PLACEHOLDER").replace("PLACEHOLDER", "a\\ud83d\\ude00\\udbff"),
     "invalid_utf8"),
    # a pair is one character; an escaped backslash before "ud800" is no escape at all
    (ev(user_id="PLACEHOLDER").replace("PLACEHOLDER", "u\\ud83d\\ude00x"), None),
    (ev(user_id="PLACEHOLDER").replace("PLACEHOLDER", "u\\\\ud800x"), None),
    (ev(user_id="PLACEHOLDER").replace("PLACEHOLDER", "u\\\\\\ud800x"), "invalid_utf8"),
    # two lone halves around an escaped backslash are no pair
    (ev(user_id="PLACEHOLDER").replace("PLACEHOLDER", "\\ud800\\\\\\udc00"), "invalid_utf8"),
]


@pytest.fixture(scope="module")
def checked(spark):
    rows = [(payload, f"case-{i}") for i, (payload, _) in enumerate(CASES)]
    lines = spark.createDataFrame(rows, "raw string, ingest_source string")
    out = validate.check_events(lines, max_ts=F.lit(NOW + dt.timedelta(hours=24)))
    return {r.ingest_source: r for r in out.collect()}


@pytest.mark.parametrize("i", range(len(CASES)))
def test_reason(checked, i):
    payload, reason = CASES[i]
    assert checked[f"case-{i}"].reason == reason, payload[:200]


def test_valid_rows_are_typed(checked):
    r = checked["case-4"]
    assert r.ts == dt.datetime(2024, 5, 1, 10, 0, 0, 123456)  # UTC, offset applied
    assert checked["case-3"].ts == dt.datetime(2024, 5, 1, 10, 0)  # epoch ms
    assert checked["case-1"].value == 4.5 and checked["case-2"].value == 19.0
    assert checked["case-6"].source == "app" and checked["case-6"].session_id is None


def test_binary_payloads_and_invalid_utf8(spark):
    rows = [(b"\xff\xfe{bad", "k1"), (ev().encode(), "k2"), (None, "k3")]
    lines = spark.createDataFrame(rows, "raw binary, ingest_source string")
    checked = validate.check_events(lines, max_ts=F.lit(NOW)).persist()
    reasons = {r.ingest_source: r.reason for r in checked.collect()}
    assert reasons == {"k1": "invalid_utf8", "k2": None, "k3": "empty_payload"}
    _, rejected = validate.split(checked)
    q = {r.reason: r for r in validate.quarantine_rows(rejected).collect()}
    assert q["invalid_utf8"].raw_bytes == bytearray(b"\xff\xfe{bad")
    assert q["invalid_utf8"].raw == "\ufffd\ufffd{bad"
    assert q["empty_payload"].raw_size == 0


def test_catalog_rules(spark):
    rows = [
        (json.dumps({"item_id": "i1", "title": "Blue kettle", "category": "home"}), "a"),
        (json.dumps({"item_id": "i2", "title": "", "category": "home"}), "b"),
        (json.dumps({"title": "No id"}), "c"),
        (json.dumps({"item_id": "i3", "title": "t", "created_at": "soon"}), "d"),
        (json.dumps({"item_id": "i4", "title": "t", "created_at": 1714557600000}), "e"),
    ]
    lines = spark.createDataFrame(rows, "raw string, ingest_source string")
    got = {r.ingest_source: r for r in validate.check_catalog(lines).collect()}
    assert [got[k].reason for k in "abcde"] == [
        None, "bad_length:title", "missing_field:item_id", "bad_timestamp", None]
    assert got["e"].created_at == dt.datetime(2024, 5, 1, 10, 0)
