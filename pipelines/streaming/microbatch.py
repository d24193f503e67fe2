"""One micro-batch of the stream: Kafka records -> ``interactions`` -> refreshed lists.

:func:`process_batch` (called by ``foreachBatch``):

1. validates the records with the same rules as ``ingest`` (:func:`record_checker`, built on
   :func:`pipelines.batch.validate.event_checker`) and collects the small result as Arrow;
2. splits it (:func:`split_records`): bad records and duplicates go to ``quarantine`` with
   ``kafka://topic/partition/offset`` and the reason, valid new events to ``interactions``;
3. refreshes every touched user (:func:`refresh`): solves the user's fold-in rule from their
   *full* history against the champion's trained item factors, and makes their list with
   :func:`pipelines.serving.policy.recommend` -- the function ``score`` runs on the
   executors -- then *appends* their new rows to ``user_factors`` (``source =
   fold_in``) and ``recommendations``. Both tables are merge-on-read
   (:meth:`schemas.tables.TableSpec.current_sql`): the latest row set of a user is current,
   so a batch writes its users' rows and no file of anyone else's; ``lakerec compact``
   folds the superseded rows away. The history and the users' indexes come from the
   query's :class:`~pipelines.streaming.state.KeyedState`, caught up from the tables' logs
   each batch, and so do the event ids of the dedup horizon. A batch therefore reads and
   writes in proportion to itself: its records' ids, its users' keyed rows, the files
   committed since the last batch, and one new file per table.

**Exactly once.** Every commit carries the Delta transaction ``(lakerec.stream/<query>,
batch_id)`` as a sequence (:meth:`pipelines.storage.deltalog.Txn.batch`), and each table is
skipped when it already records that batch or a later one, so a batch replayed after a
crash writes only what it had not written. Deduplication against ``interactions`` ignores
this batch's own rows (``ingest_id = stream:<query>:<batch>``), so a replay classifies
events exactly as the first attempt did.

Example
-------
>>> vectors, lists = refresh(model, history, ["user-1"], k=10, new_item_slots=1)
... # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from pipelines.model import als
from pipelines.model.card import DEFAULTS
from pipelines.serving import policy
from pipelines.serving.model import ServingModel
from pipelines.storage import delta
from pipelines.streaming.checkpoint import app_id
from pipelines.streaming.state import KeyedState, aggregate_history
from schemas import DEDUP_HORIZON_DAYS, EVENT_RULES, dedup_window, events
from schemas.tables import (
    INTERACTIONS,
    ITEM_PLACEMENTS,
    LIST_LENGTH_KEY,
    QUARANTINE,
    RECOMMENDATIONS,
    USER_FACTORS,
    USER_INDEX,
)

log = logging.getLogger(__name__)

_EVENT_FIELDS = ("event_id", "user_id", "item_id", "event_type", "value", "ts", "session_id",
                 "source", "request_id")


def refresh(model: ServingModel, history, users: list[str], *, k: int, new_item_slots: int
            ) -> tuple[dict[str, np.ndarray], list[tuple]]:
    """Fold in ``users`` from their full ``history`` and make their lists.

    Each user's pairs ``r_ui`` are summed by the event rule of :mod:`schemas.events` with the
    model's weights (:func:`schemas.events.pair_r` of the per-type statistics), solved by the
    model's fold-in rule against its trained factors in one
    :func:`pipelines.model.als.fold_in_many` call (items placed from text are seen, never
    part of the solve), and ranked by :func:`pipelines.serving.policy.recommend`.

    Parameters
    ----------
    history : pandas.DataFrame
        These users' whole history: either their statistics ``user_id, item_id, event_type,
        n, total`` (:meth:`pipelines.streaming.state.KeyedState.history`) or their events
        ``user_id, item_id, event_type, value``, aggregated first by
        :func:`pipelines.streaming.state.aggregate_history`.

    Returns
    -------
    vectors : {user_id: (rank,) float32}, for users with at least one positively weighted
        item the model was trained on
    rows : [(user_id, rank, item_id, score, source)], never a seen item.

    Cost: ``O(history rows)`` pandas plus the fold-in and the policy for these users only.
    """
    import pandas as pd

    users = sorted(set(users))
    weights = model.card.weights if model.card else events.default_weights()
    h = history[history["user_id"].isin(users)]
    if "n" not in h.columns:
        h = aggregate_history(h)
    pairs = pd.DataFrame({"user_id": h["user_id"].to_numpy(), "item_id": h["item_id"].to_numpy(),
                          "r": events.pair_r(h["event_type"].to_numpy(), h["n"].to_numpy(),
                                             h["total"].to_numpy(), weights)}) \
        .groupby(["user_id", "item_id"], sort=True)["r"].sum().reset_index()
    code = pd.Categorical(pairs["user_id"], categories=users).codes.astype(np.int64)
    row = pairs["item_id"].map(model.row)
    known = row.notna().to_numpy()
    row = row.fillna(-1).to_numpy(np.int64)
    r = pairs["r"].to_numpy(np.float64)

    vectors = np.zeros((len(users), max(1, model.rank)), np.float32)
    has = np.zeros(len(users), bool)
    tpos = np.where(known, model.trained_pos[np.maximum(row, 0)], -1)
    sel = (tpos >= 0) & (r > 0)
    if sel.any() and model.rule is not None:
        got, x = als.fold_in_many(model.trained_y, model.yty, code[sel], tpos[sel],
                                  model.rule.c1(r[sel]), len(users), rule=model.rule)
        vectors[got], has[got] = x, True
    # seen: every item of the history the model can list, whatever its weight
    kc = code[known]
    indptr = np.zeros(len(users) + 1, np.int64)
    np.cumsum(np.bincount(kc, minlength=len(users)), out=indptr[1:])
    out = policy.recommend(model, vectors, has, (indptr, row[known]), k=k,
                           slots=new_item_slots, model_source="fold_in")
    rows = [(users[u], int(rk), model.items[it], float(sc), str(src))
            for u, rk, it, sc, src in zip(out.user, out.rank, out.row, out.score, out.source,
                                          strict=True)]
    return {users[j]: vectors[j] for j in np.flatnonzero(has)}, rows


def split_records(checked, *, ingest_id: str, known: Mapping[str, str], now: _dt.datetime,
                  day: _dt.date):
    """A micro-batch's checked records -> (``interactions`` rows, ``quarantine`` rows), Arrow.

    Parameters
    ----------
    checked : pyarrow.Table
        :func:`pipelines.batch.validate.check_events` output plus ``ingest_source``, ``raw_text``,
        ``raw_exact``, ``topic``, ``partition``, ``offset``.
    known : {event_id: ingest_id}
        Ids already in ``interactions`` with the write that added them. Ids added by
        ``ingest_id`` itself (a replayed batch) are not duplicates.
    now : datetime
        Processing time: the future-skew bound of records without a broker timestamp
        (validation bounds the others by their broker time).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    t = checked.sort_by([("topic", "ascending"), ("partition", "ascending"),
                         ("offset", "ascending")])
    reason = t["reason"].to_pylist()
    ids = t["event_id"].to_pylist()
    latest = pa.scalar(now + _dt.timedelta(hours=EVENT_RULES.max_future_skew_hours),
                       t.schema.field("ts").type)
    # records without a broker time, which validation could not bound: bounded by `now`
    too_late = pc.fill_null(pc.and_(pc.is_null(t["kafka_ts"]), pc.greater(t["ts"], latest)),
                            False).to_pylist()
    first_seen: set[str] = set()
    for j, (rsn, eid) in enumerate(zip(reason, ids, strict=True)):
        if rsn is not None:
            continue
        if too_late[j]:
            reason[j] = "ts_out_of_range"
            continue
        if eid in first_seen:  # first arrival wins
            reason[j] = "duplicate_event_id"
        elif eid in known and known[eid] != ingest_id:
            reason[j] = "duplicate_already_ingested"
        else:
            first_seen.add(eid)
    reasons = pa.array(reason, pa.string())
    good = pc.is_null(reasons)
    n = t.num_rows
    when = pa.array([now] * n, pa.timestamp("us", tz="UTC"))
    days = pa.array([day] * n, pa.date32())
    iid = pa.array([ingest_id] * n, pa.string())
    base = {c: t[c] for c in _EVENT_FIELDS}
    inter = pa.table({**base, "ingest_source": t["ingest_source"], "ingest_id": iid,
                      "ingested_at": when, "dt": days}).filter(good)
    quar = pa.table({
        "raw": t["raw_text"], "raw_bytes": t["raw_exact"],
        "raw_size": pc.fill_null(t["raw_size"], 0), "reason": reasons,
        "event_id": t["event_id"], "ingest_source": t["ingest_source"], "ingest_id": iid,
        "quarantined_at": when, "origin": pa.array(["stream"] * n, pa.string()), "dt": days,
    }).filter(pc.invert(good))
    return inter, quar


def _known_ids(lakehouse: str, ids: list[str], day: _dt.date, horizon_days: int, *,
               state: KeyedState | None = None, today: _dt.date | None = None
               ) -> dict[str, str]:
    """``{event_id: ingest_id}`` of ``ids`` already in ``interactions`` within the dedup
    horizon of ``day`` (:func:`schemas.dedup_window`).

    Cost: with the keyed ``state``, its catch-up to the latest commit (the files other
    writers added since the last batch, usually none) and one index probe per id,
    ``O(ids * log(state))``; without it, or for a ``day`` older than the state's id
    window (a replay after a long stop), the ``event_id`` and ``ingest_id`` columns of the
    horizon's partitions (the filter on ``dt`` prunes the others from the log, unread):
    a few days of arrivals, whatever the table's length, but not the batch's size.
    """
    import pyarrow.compute as pc

    if not ids or not delta.exists(lakehouse, INTERACTIONS):
        return {}
    lo, hi = dedup_window([day], horizon_days)
    if state is not None:
        state.sync(lakehouse, [INTERACTIONS], today=today)
        got = state.known_ids(ids, lo, hi)
        if got is not None:
            return got
        log.info("dedup of a batch from %s: before the keyed state's id window; reading "
                 "the horizon's partitions", day)
    near = (pc.field("dt") >= lo) & (pc.field("dt") <= hi)
    tbl = delta.arrow_dataset(lakehouse, INTERACTIONS).to_table(
        columns=["event_id", "ingest_id"], filter=near & pc.field("event_id").isin(ids))
    return dict(zip(tbl["event_id"].to_pylist(), tbl["ingest_id"].to_pylist(), strict=True))


def user_history(lakehouse: str, users: list[str]):
    """Every interaction of ``users`` (pandas: user_id, item_id, event_type, value).

    Cost: a scan of ``interactions`` (its ``user_id`` column, then the matching rows): the
    reference the tests hold :class:`~pipelines.streaming.state.KeyedState` to, not a path
    of the stream.
    """
    import pyarrow.compute as pc

    return delta.arrow_dataset(lakehouse, INTERACTIONS).to_table(
        columns=["user_id", "item_id", "event_type", "value"],
        filter=pc.field("user_id").isin(users)).to_pandas()


def _user_indexes(lakehouse: str, state: KeyedState, users: list[str], txn: delta.Txn,
                  now: _dt.datetime, attempts: int = 5) -> dict[str, int]:
    """Indexes of ``users``, appending the missing ones (append-only, ids never move).

    The lookup is the keyed state's, caught up with ``user_index`` to the snapshot the
    append is based on, so a concurrent assignment of the same ids fails the commit (scope
    ``table``) and is retried on the newer snapshot. A replayed batch whose index commit
    already landed may still meet users it lacks (a new champion folds in other users):
    those are appended without the batch's transaction, which is recorded already. Either
    way the append is idempotent: only missing ids are added.

    Cost: ``O(users log n)`` lookups plus the ``user_index`` commits since the last batch.
    """
    import pyarrow as pa

    for attempt in range(1, attempts + 1):
        dt = delta.ensure_table(lakehouse, USER_INDEX)
        state.sync(lakehouse, [USER_INDEX], {USER_INDEX.name: dt})
        have = state.user_indexes(users)
        new = sorted(set(users) - set(have))
        if not new:
            return have
        start = state.next_user_idx()
        rows = pa.table({"user_id": new, "user_idx": pa.array(range(start, start + len(new)),
                                                                pa.int32()),
                         "assigned_at": pa.array([now] * len(new), pa.timestamp("us", "UTC"))})
        try:
            delta.commit(delta.stage_arrow(rows, lakehouse, USER_INDEX), snapshot=dt,
                         txn=None if txn.done_in(dt) else txn, conflict_scope="table",
                         retries=0,
                         metadata={"lakerec.new_ids": len(new)})
        except delta.DeltaConflictError:
            if attempt == attempts:
                raise
            continue
        have.update(zip(new, range(start, start + len(new)), strict=True))
        return have
    raise AssertionError("unreachable")


@dataclass
class BatchReport:
    batch_id: int
    records: int = 0
    valid: int = 0
    quarantined: int = 0
    users: int = 0
    seconds: float = 0.0
    event_lag_s: dict = field(default_factory=dict)
    kafka_lag_s: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    model_version: int | None = None
    phases: dict = field(default_factory=dict)
    io: dict = field(default_factory=dict)  # phase -> [bytes read, bytes written] by the driver


BATCH_LOG_BYTES = 32 << 20  # the batch log rolls over to ``<log>.1`` at this size


def batch_log_path(lakehouse: str, query: str) -> str:
    """Where a query's batch log lives: ``<lakehouse>/_stream/<query>/batches.jsonl``."""
    return os.path.join(lakehouse, "_stream", query, "batches.jsonl")


def log_batch(path: str, query: str, rep: BatchReport, at: float | None = None) -> None:
    """Append one line for ``rep`` to the query's batch log (``_stream/<query>/batches.jsonl``:
    what ``lakerec report`` plots the stream's freshness from). ``at``: when the batch
    committed, in epoch seconds (default: now).

    Bounded: past :data:`BATCH_LOG_BYTES` the log becomes ``<log>.1`` (replacing the one
    before), so it holds the last 32-64 MiB of batches (about a week at one batch a second).
    """
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        if os.path.getsize(path) > BATCH_LOG_BYTES:
            os.replace(path, path + ".1")
    except FileNotFoundError:
        pass
    with open(path, "a") as f:
        f.write(json.dumps({"query": query, "at": time.time() if at is None else at,
                            **rep.__dict__}) + "\n")


def _io_bytes() -> tuple[int, int]:
    """Bytes this process has read and written through system calls so far (Linux), page
    cache hits included: what a phase's reads cost whether or not the disk served them."""
    try:
        with open("/proc/self/io") as f:
            got = dict(line.split(": ") for line in f.read().splitlines())
        return int(got["rchar"]), int(got["wchar"])
    except (OSError, KeyError, ValueError):
        return 0, 0


@dataclass
class StreamContext:
    """Driver-side state of one streaming query."""

    lakehouse: str
    query: str
    k: int = DEFAULTS.k
    new_item_slots: int = DEFAULTS.new_item_slots
    dedup_horizon_days: int = DEDUP_HORIZON_DAYS
    model_refresh_s: float = 30.0
    state_dir: str | None = None  # the keyed state's folder; None: <lakehouse>/_stream/<query>/state
    metrics_file: str | None = None
    checkpoint: str | None = None
    failure: BaseException | None = None  # what the last failed batch raised, as raised
    model: ServingModel | None = None
    model_checked: float = 0.0
    model_stamp: tuple | None = None  # (champion version, item_placements version) of ``model``
    checker: object = None  # record_checker(), built by start_query (or the first batch)
    state: KeyedState | None = None  # opened and caught up by keyed_state()
    reports: list = field(default_factory=list)
    # the online store the batches' lists are pushed to after each commit (None: none)
    store_url: str | None = None
    publisher: object = None
    # "feedback" (process_batch) or "exposures" (pipelines.streaming.exposures.land)
    kind: str = "feedback"
    stop_requested: threading.Event = field(default_factory=threading.Event)
    busy: threading.Lock = field(default_factory=threading.Lock)

    def serving_model(self, spark) -> ServingModel:
        """The champion's serving model, checked every ``model_refresh_s``: reloaded (with
        :func:`pipelines.batch.score.load_serving_model`, as ``score`` builds it) when the
        champion changes or ``lakerec place`` placed new items."""
        from pipelines.batch.score import load_serving_model
        from pipelines.storage import tracking

        now = time.monotonic()
        if self.model is None or now - self.model_checked > self.model_refresh_s:
            ref = tracking.get_alias(self.lakehouse)
            stamp = (ref.version if ref else None,
                     delta.latest_version(self.lakehouse, ITEM_PLACEMENTS))
            if self.model is None or stamp != self.model_stamp:
                if ref is None:
                    log.warning("no champion model yet: refreshed users get popular items")
                self.model = load_serving_model(spark, self.lakehouse, ref)
                self.model_stamp = stamp
            self.model_checked = now
        return self.model


    def publish(self, batch: tuple | None = None) -> None:
        """Push to the online store (:class:`pipelines.online.publish.Publisher`).

        ``batch`` = (batch id, its ``recommendations`` rows, the version they committed as):
        those rows, from memory (cost: the batch). ``None``, when the query starts: a full
        publish, so that lists a crash left committed but unpushed land (cost: the table,
        once per start). A store that fails is logged and caught up later; it never fails
        the batch, whose lists are safe in Delta.
        """
        if not self.store_url:
            return
        from pipelines.online.publish import Publisher
        from pipelines.online.store import StoreUnavailableError, open_store

        try:
            if self.publisher is None:
                self.publisher = Publisher(self.lakehouse, open_store(self.store_url))
            if batch is None:
                self.publisher.sync()
            else:
                batch_id, rows, version = batch
                self.publisher.push_batch(rows, version,
                                          stream_batch=f"{self.query}:{batch_id}")
        except StoreUnavailableError as e:
            log.warning("online store: push failed (%s); the next push catches up",
                        str(e).splitlines()[0][:200])
            if self.publisher is not None:
                self.publisher.store.close()
            self.publisher = None

    def keyed_state(self) -> KeyedState:
        """The query's :class:`~pipelines.streaming.state.KeyedState`, opened once (and
        rebuilt from the tables if it is new or stale)."""
        if self.state is None:
            import os

            folder = self.state_dir or os.path.join(self.lakehouse, "_stream", self.query,
                                                    "state")
            # the ids of the dedup horizon before today, and one day more: a batch of
            # yesterday's records (its horizon starts a day earlier) is still looked up
            self.state = KeyedState.open(folder, id_days=self.dedup_horizon_days + 1)
            done = self.state.sync(self.lakehouse)
            log.info("keyed state %s: %s", self.state.path, done)
        return self.state


def record_checker():
    """Spark: a function validating a micro-batch of Kafka records (same rules as ``ingest``).

    The expressions are built once per query and applied to every batch: building them
    costs hundreds of JVM calls (0.5-1 s a batch when rebuilt each time).
    """
    from pyspark.sql import functions as F

    from pipelines.batch import validate

    lines = [
        F.col("value").alias("raw"), F.col("topic"), F.col("partition"), F.col("offset"),
        F.col("timestamp").alias("kafka_ts"),
        F.concat(F.lit("kafka://"), "topic", F.lit("/"), F.col("partition").cast("string"),
                 F.lit("/"), F.col("offset").cast("string")).alias("ingest_source")]
    # The future-skew bound uses the record's broker time, so a replay decides the same way.
    # Records without one (pre-0.10 message format) are bounded by split_records: a
    # current_timestamp() here would be a new literal in the generated code every batch,
    # and recompiling it costs a third of a second per batch.
    max_ts = F.timestamp_add("HOUR", F.lit(EVENT_RULES.max_future_skew_hours),
                             F.col("kafka_ts"))
    check = validate.event_checker(max_ts=max_ts)
    text, exact = validate.payload_columns("raw")
    out = [*(F.col(c) for c in (*_EVENT_FIELDS, "reason", "raw_size", "ingest_source", "topic",
                                "partition", "offset", "kafka_ts")),
           text.alias("raw_text"), exact.alias("raw_exact")]
    return lambda df: check(df.select(*lines)).select(*out)


def _quantiles(values) -> dict:
    if len(values) == 0:
        return {}
    q = np.percentile(np.asarray(values, dtype=np.float64), [50, 95, 100])
    return {"p50": round(float(q[0]), 3), "p95": round(float(q[1]), 3),
            "max": round(float(q[2]), 3)}


def process_batch(ctx: StreamContext, df, batch_id: int) -> BatchReport:
    """Everything one micro-batch does (see the module docstring)."""
    import pyarrow.compute as pc

    t0 = time.perf_counter()
    lh = ctx.lakehouse
    txn = delta.Txn.batch(app_id(ctx.query), int(batch_id))
    ingest_id = f"stream:{ctx.query}:{batch_id}"
    now = _dt.datetime.now(_dt.UTC)
    rep = BatchReport(int(batch_id))
    mark = [t0, *_io_bytes()]

    def lap(name):
        now_, (r, w) = time.perf_counter(), _io_bytes()
        rep.phases[name] = round(now_ - mark[0], 3)
        rep.io[name] = [r - mark[1], w - mark[2]]
        mark[:] = [now_, r, w]

    if ctx.checker is None:
        ctx.checker = record_checker()
    checked = ctx.checker(df).toArrow()
    lap("read+validate")
    rep.records = checked.num_rows
    if rep.records == 0:
        return rep
    ids = [i for i in pc.unique(checked["event_id"]).to_pylist() if i is not None]
    # the horizon is centred on the records' broker time, so that a replay (perhaps on
    # another day) looks up exactly the partitions the first attempt did
    latest = pc.max(checked["kafka_ts"]).as_py()
    known = _known_ids(lh, ids, (latest or now).date(), ctx.dedup_horizon_days,
                       state=ctx.keyed_state(), today=now.date())
    inter, quar = split_records(checked, ingest_id=ingest_id, known=known, now=now,
                                day=now.date())
    rep.valid, rep.quarantined = inter.num_rows, quar.num_rows
    lap("dedup")
    meta = {"lakerec.ingest_id": ingest_id}

    def write(spec, fn):
        if spec is QUARANTINE and quar.num_rows == 0:
            return None  # nothing to record; a replay finds nothing either
        dt = delta.ensure_table(lh, spec)
        if txn.done_in(dt):
            rep.skipped.append(spec.name)
            return None
        return fn(dt)

    # quarantine first, interactions second: a crash in between leaves the batch to replay
    write(QUARANTINE, lambda dt: delta.append_arrow(lh, QUARANTINE, quar, txn=txn,
                                                    metadata=meta, snapshot=dt))
    write(INTERACTIONS, lambda dt: delta.append_arrow(lh, INTERACTIONS, inter, txn=txn,
                                                      metadata=meta, snapshot=dt))
    lap("append")
    users = sorted(set(inter["user_id"].to_pylist()))
    rep.users = len(users)
    if users:
        model = ctx.serving_model(df.sparkSession)
        rep.model_version = model.version
        state = ctx.keyed_state()
        # this batch's rows and any other writer's since; the batch's one clock
        state.sync(lh, [INTERACTIONS], today=now.date())
        history = state.history(users)
        lap("history")
        vectors, rows = refresh(model, history, users, k=ctx.k,
                                new_item_slots=ctx.new_item_slots)
        lap("fold-in+top-k")
        if vectors:
            idx = _user_indexes(lh, state, list(vectors), txn, now)
            uf = _user_factor_rows(vectors, idx, model.version, now)
            write(USER_FACTORS, lambda dt: delta.append_arrow(
                lh, USER_FACTORS, uf, txn=txn, metadata=meta, snapshot=dt))
            lap("user_factors")
        recs = _recommendation_rows(rows, model.version, now)
        res = write(RECOMMENDATIONS, lambda dt: delta.append_arrow(
            lh, RECOMMENDATIONS, recs, txn=txn, metadata={**meta, LIST_LENGTH_KEY: ctx.k}, snapshot=dt))
        lap("recommendations")
        if res is not None and not res.skipped:  # a replayed commit was pushed at the start
            ctx.publish((batch_id, recs, res.version))
            lap("publish")
    done = _dt.datetime.now(_dt.UTC)
    good = inter["ts"].to_pylist()
    rep.event_lag_s = _quantiles([(done - t).total_seconds() for t in good if t is not None])
    kts = checked["kafka_ts"].to_pylist()
    rep.kafka_lag_s = _quantiles([(done - t).total_seconds() for t in kts if t is not None])
    rep.seconds = round(time.perf_counter() - t0, 3)
    log.info("batch %d: %d records, %d valid, %d quarantined, %d users refreshed in %.2f s; "
             "event->commit %s; broker->commit %s%s", batch_id, rep.records, rep.valid,
             rep.quarantined, rep.users, rep.seconds, rep.event_lag_s, rep.kafka_lag_s,
             f"; already committed: {rep.skipped}" if rep.skipped else "")
    log.debug("batch %d phases: %s", batch_id, rep.phases)
    return rep


def _user_factor_rows(vectors, idx, version, now):
    import pyarrow as pa

    users = sorted(vectors)
    n = len(users)
    return pa.table({
        "user_id": users, "user_idx": pa.array([idx[u] for u in users], pa.int32()),
        "factors": pa.array([vectors[u].tolist() for u in users], pa.list_(pa.float32())),
        "source": ["fold_in"] * n, "updated_at": pa.array([now] * n, pa.timestamp("us", "UTC")),
        "model_version": pa.array([version] * n, pa.int64())})


def _recommendation_rows(rows, version, now):
    import pyarrow as pa

    n = len(rows)
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], [], []]
    return pa.table({
        "user_id": pa.array(cols[0], pa.string()), "rank": pa.array(cols[1], pa.int32()),
        "item_id": pa.array(cols[2], pa.string()), "score": pa.array(cols[3], pa.float32()),
        "source": pa.array(cols[4], pa.string()),
        "model_version": pa.array([version] * n, pa.int64()),
        "generated_at": pa.array([now] * n, pa.timestamp("us", "UTC"))})
