"""The stream's keyed state against the tables it is derived from (real Delta tables).

Reference: :func:`pipelines.streaming.microbatch.user_history`, a scan of ``interactions``,
aggregated by the same :func:`aggregate_history` -- after appends, a compaction, a delete, a
restore, a table replaced at the same path, and a sync killed half-way; and for the known
event ids, the dedup's read of the horizon's partitions.
"""

from __future__ import annotations

import datetime as dt
import os
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.storage import delta
from pipelines.streaming.microbatch import _known_ids, user_history
from pipelines.streaming.state import KeyedState, aggregate_history
from schemas import dedup_window, events
from schemas.tables import INTERACTIONS, USER_INDEX

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
TYPES = [t.name for t in events.event_types()]


def _events(rng: random.Random, n: int, tag: str, users: int = 40, items: int = 30):
    rows = []
    for j in range(n):
        et = rng.choice(TYPES)
        value = rng.choice([0.5, 1.0, 3.5, 5.0]) if et == "rating" else \
            rng.choice([None, 9.99, 20.0])
        day = T0 + dt.timedelta(days=rng.randrange(5))
        rows.append({"event_id": f"{tag}-{j}", "user_id": f"u{rng.randrange(users)}",
                     "item_id": f"i{rng.randrange(items)}", "event_type": et, "value": value,
                     "ts": day, "session_id": None, "source": "test",
                     "ingest_source": f"test://{tag}", "ingest_id": tag, "ingested_at": T0,
                     "dt": day.date()})
    return pa.Table.from_pylist(rows, schema=INTERACTIONS.arrow_schema())


def _assert_matches_the_table(state: KeyedState, lh: str, users: list[str]) -> None:
    want = aggregate_history(user_history(lh, users)).sort_values(
        ["user_id", "item_id", "event_type"]).reset_index(drop=True)
    got = state.history(users).reset_index(drop=True)
    assert list(got["user_id"]) == list(want["user_id"])
    assert list(got["item_id"]) == list(want["item_id"])
    assert list(got["event_type"]) == list(want["event_type"])
    assert list(got["n"]) == list(want["n"])
    np.testing.assert_allclose(got["total"], want["total"], rtol=1e-12)


def test_the_state_follows_appends_compaction_deletes_and_restores(lakehouse, tmp_path):
    rng = random.Random(3)
    users = [f"u{j}" for j in range(40)] + ["nobody"]
    state = KeyedState.open(str(tmp_path / "state"))
    assert state.sync(lakehouse) == {"interactions": "no table", "user_index": "no table"}
    for b in range(4):  # stream-like appends, one small file each
        delta.append_arrow(lakehouse, INTERACTIONS, _events(rng, 50, f"b{b}"))
    got = state.sync(lakehouse, [INTERACTIONS])
    assert got["interactions"].startswith("rebuilt (new state)")
    _assert_matches_the_table(state, lakehouse, users)

    delta.append_arrow(lakehouse, INTERACTIONS, _events(rng, 300, "day"))  # an ingest: 5 files
    got = state.sync(lakehouse, [INTERACTIONS])["interactions"]
    assert got.startswith("v4->v5: 5 files, 300 rows"), got  # only the new files were read
    _assert_matches_the_table(state, lakehouse, users)

    delta.open_table(lakehouse, INTERACTIONS).optimize.compact()  # dataChange = false
    got = state.sync(lakehouse, [INTERACTIONS])["interactions"]
    assert got.startswith("v5->v6: 0 files"), got
    _assert_matches_the_table(state, lakehouse, users)

    # a rewrite (copy-on-write of the files holding u1's events): u1's events move to u99
    u1 = delta.arrow_dataset(lakehouse, INTERACTIONS).to_table(
        filter=pa.compute.field("user_id") == "u1")
    moved = u1.set_column(u1.schema.get_field_index("user_id"), "user_id",
                          pa.array(["u99"] * u1.num_rows))
    delta.replace_rows_arrow(lakehouse, INTERACTIONS, moved, on=["event_id"])
    assert "rows removed" in state.sync(lakehouse, [INTERACTIONS])["interactions"]
    _assert_matches_the_table(state, lakehouse, [*users, "u99"])
    assert len(state.history(["u1"])) == 0 and len(state.history(["u99"])) > 0

    delta.open_table(lakehouse, INTERACTIONS).restore(5)
    assert "rows removed" in state.sync(lakehouse, [INTERACTIONS])["interactions"]
    _assert_matches_the_table(state, lakehouse, users)
    assert state.sync(lakehouse, [INTERACTIONS])["interactions"] == "current"

    # reopened from disk: the same state, nothing to do
    state.close()
    again = KeyedState.open(str(tmp_path / "state"))
    assert again.sync(lakehouse, [INTERACTIONS])["interactions"] == "current"
    _assert_matches_the_table(again, lakehouse, users)


def test_another_table_at_the_same_path_rebuilds_the_state(lakehouse, tmp_path):
    import shutil

    rng = random.Random(4)
    state = KeyedState.open(str(tmp_path / "state"))
    delta.append_arrow(lakehouse, INTERACTIONS, _events(rng, 80, "a"))
    delta.append_arrow(lakehouse, INTERACTIONS, _events(rng, 80, "b"))
    state.sync(lakehouse, [INTERACTIONS])
    shutil.rmtree(delta.table_path(lakehouse, INTERACTIONS))
    for tag in ("c", "d", "e"):  # a new table, at a later version than the old one was
        delta.append_arrow(lakehouse, INTERACTIONS, _events(rng, 30, tag))
    assert "another table" in state.sync(lakehouse, [INTERACTIONS])["interactions"]
    _assert_matches_the_table(state, lakehouse, [f"u{j}" for j in range(40)])


def test_a_sync_killed_half_way_leaves_the_previous_state(lakehouse, tmp_path, monkeypatch):
    rng = random.Random(5)
    state = KeyedState.open(str(tmp_path / "state"))
    delta.append_arrow(lakehouse, INTERACTIONS, _events(rng, 60, "a"))
    state.sync(lakehouse, [INTERACTIONS])
    before = state.history([f"u{j}" for j in range(40)])
    version = state.version(INTERACTIONS)
    delta.append_arrow(lakehouse, INTERACTIONS, _events(rng, 200, "b"))  # several files
    real, calls = KeyedState._apply, []

    def dies_on_the_second_file(self, *a):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(self, *a)

    monkeypatch.setattr(KeyedState, "_apply", dies_on_the_second_file)
    with pytest.raises(KeyboardInterrupt):
        state.sync(lakehouse, [INTERACTIONS])
    monkeypatch.undo()
    assert state.version(INTERACTIONS) == version
    pd.testing.assert_frame_equal(state.history([f"u{j}" for j in range(40)]), before)
    state.sync(lakehouse, [INTERACTIONS])
    _assert_matches_the_table(state, lakehouse, [f"u{j}" for j in range(40)])


def test_user_indexes_follow_the_index_table(lakehouse, tmp_path):
    state = KeyedState.open(str(tmp_path / "state"))
    assert state.next_user_idx() == 0
    rows = pa.table({"user_id": ["a", "b", "c"], "user_idx": pa.array([0, 1, 2], pa.int32()),
                     "assigned_at": pa.array([T0] * 3, pa.timestamp("us", "UTC"))})
    delta.append_arrow(lakehouse, USER_INDEX, rows)
    state.sync(lakehouse, [USER_INDEX])
    assert state.user_indexes(["c", "a", "zz"]) == {"a": 0, "c": 2}
    assert state.next_user_idx() == 3


def test_a_newer_layout_starts_over(lakehouse, tmp_path):
    state = KeyedState.open(str(tmp_path / "state"))
    state.db.execute("UPDATE meta SET value = '0' WHERE key = 'layout'")
    state.db.execute("INSERT INTO pairs VALUES ('u', 'i', 'view', 1, 0)")
    state.close()
    again = KeyedState.open(str(tmp_path / "state"))
    assert len(again.history(["u"])) == 0
    assert os.path.exists(again.path)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TYPES), st.sampled_from([0.5, 2.0, 4.5, 5.0]),
                          st.integers(0, 3)), min_size=1, max_size=40),
       st.dictionaries(st.sampled_from([t for t in TYPES if t != "rating"]),
                       st.floats(0, 10, allow_nan=False), min_size=0, max_size=4))
def test_pair_r_of_the_statistics_is_the_sum_of_event_r(evts, weights):
    """Batch training and the stream weigh events by ``event_r``; the state keeps only
    ``n`` and ``total`` per (user, item, type): both give the same ``r_ui``."""
    frame = pd.DataFrame({"user_id": "u", "item_id": [f"i{j}" for _, _, j in evts],
                          "event_type": [t for t, _, _ in evts],
                          "value": [v for _, v, _ in evts]})
    raw = frame.assign(r=events.event_r(frame["event_type"], frame["value"], weights)) \
        .groupby("item_id")["r"].sum()
    agg = aggregate_history(frame)
    via = agg.assign(r=events.pair_r(agg["event_type"], agg["n"], agg["total"], weights)) \
        .groupby("item_id")["r"].sum()
    pd.testing.assert_series_equal(via, raw, rtol=1e-12)


def test_known_ids_are_the_horizon_read_inside_the_id_window(lakehouse, tmp_path):
    """The state's id lookup answers exactly what the read of the horizon's partitions
    does, for every day its window covers, and ``None`` (read the table) before it; as the
    window slides forward (pruned), back (read in) and through a rewrite (rebuilt)."""
    rng = random.Random(6)
    ids = [f"b{b}-{j}" for b in range(5) for j in range(0, 80, 3)] + ["never-seen"]
    horizon = 1

    def check(state, today):
        state.sync(lakehouse, [INTERACTIONS], today=today)
        floor = today - dt.timedelta(days=state.id_days)
        answered = 0
        for day in [T0.date() + dt.timedelta(days=d) for d in range(-1, 8)]:
            want = _known_ids(lakehouse, ids, day, horizon)  # the table's partitions
            lo, hi = dedup_window([day], horizon)
            got = state.known_ids(ids, lo, hi)
            if lo < floor:
                assert got is None, day
            else:
                assert got == want, day
                # the stream's path: the same answer, from the state
                assert _known_ids(lakehouse, ids, day, horizon, state=state,
                                  today=today) == want
                answered += bool(want)
        assert answered, "no lookup inside the window found a known id"
        kept = state.db.execute("SELECT min(dt) FROM ids").fetchone()[0]
        assert kept is None or kept >= floor.isoformat()

    state = KeyedState.open(str(tmp_path / "state"), id_days=3)
    state.sync(lakehouse, [INTERACTIONS], today=dt.date(2024, 5, 6))  # no table yet
    for b in range(3):
        delta.append_arrow(lakehouse, INTERACTIONS, _events(rng, 80, f"b{b}"))
    check(state, dt.date(2024, 5, 6))           # window from 05-03: a first window
    delta.append_arrow(lakehouse, INTERACTIONS, _events(rng, 80, "b3"))
    check(state, dt.date(2024, 5, 7))           # caught up, and slid forward (05-03 pruned)
    state.close()
    wider = KeyedState.open(str(tmp_path / "state"), id_days=5)
    check(wider, dt.date(2024, 5, 7))           # slid back to 05-02: read in from the files

    # a rewrite (rows removed) rebuilds the state, ids included
    b0 = delta.arrow_dataset(lakehouse, INTERACTIONS).to_table(
        filter=pa.compute.field("ingest_id") == "b0")
    delta.replace_rows_arrow(lakehouse, INTERACTIONS, b0.set_column(
        b0.schema.get_field_index("ingest_id"), "ingest_id",
        pa.array(["b0-rewritten"] * b0.num_rows)), on=["event_id"])
    assert "rows removed" in wider.sync(lakehouse, [INTERACTIONS])["interactions"]
    check(wider, dt.date(2024, 5, 7))
    delta.append_arrow(lakehouse, INTERACTIONS, _events(rng, 80, "b4"))
    check(wider, dt.date(2024, 5, 7))
