"""The streaming half: Kafka feedback -> ``interactions`` -> exact fold-in -> ``recommendations``.

Each micro-batch (``foreachBatch``):

1. validates the records with the same rules as ``ingest`` (:func:`pipelines.validate.check_events`,
   in Spark) and collects the small result to the driver as Arrow;
2. splits it (:func:`split_records`): bad records and duplicates go to ``quarantine`` with
   ``kafka://topic/partition/offset`` and the reason, valid new events to ``interactions``;
3. refreshes every touched user (:func:`refresh`): solves the user's implicit-ALS normal
   equations from their *full* history in ``interactions`` against the champion's item
   factors (a cached ``YᵀY``), recomputes their top-K with the seen filter in the kernel
   (:func:`pipelines.topk.topk_block`), tops short lists up with popular items, and replaces
   their rows of ``user_factors`` (``source = fold_in``) and ``recommendations``
   (``source = fold_in`` / ``popular``).

**Exactly once.** Every commit carries the Delta transaction ``(lakerec.stream/<query>,
batch_id)``, and each table is skipped when it already records that batch or a later one, so a
batch replayed after a crash writes only what it had not written. Deduplication against
``interactions`` ignores this batch's own rows (``ingest_id = stream:<query>:<batch>``), so a
replay classifies events exactly as the first attempt did. Offsets live only in Spark's
checkpoint; :func:`check_checkpoint` refuses an empty or older checkpoint against tables that
already hold the query's commits.

Example
-------
>>> ctx = StreamContext(lakehouse="/lh", query="feedback", k=10)      # doctest: +SKIP
>>> q = start_query(spark, ctx, source_options={...}, checkpoint="/lh/_checkpoints/feedback")
... # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from pipelines import als, delta, topk, tracking
from schemas import EVENT_RULES
from schemas.tables import (
    INTERACTIONS,
    ITEM_FACTORS,
    QUARANTINE,
    RECOMMENDATIONS,
    USER_FACTORS,
    USER_INDEX,
)

log = logging.getLogger(__name__)

APP_PREFIX = "lakerec.stream/"
WRITTEN = (QUARANTINE, INTERACTIONS, USER_INDEX, USER_FACTORS, RECOMMENDATIONS)
_EVENT_FIELDS = ("event_id", "user_id", "item_id", "event_type", "value", "ts", "session_id",
                 "source")


class CheckpointError(RuntimeError):
    """The checkpoint does not match the tables (lost, replaced or older): refused."""


def app_id(query: str) -> str:
    return APP_PREFIX + query


# --------------------------------------------------------------------------- the model


@dataclass
class ServingModel:
    """What the refresh needs, loaded once per champion version."""

    version: int | None
    item_ids: list[str]
    y: np.ndarray  # (n_items, rank) float32
    yty: np.ndarray  # (rank, rank) float64
    row: dict[str, int]
    alpha: float
    reg: float
    weights: dict[str, float]
    pop_ids: list[str]
    pop: np.ndarray  # (n_pop, 1) float32: share of users in the window
    content: np.ndarray | None = None  # (n_items,) bool: factors mapped from text, not ALS
    index: object = None
    pop_index: object = None
    content_rows: np.ndarray | None = None  # rows of the placed items
    content_index: object = None

    def __post_init__(self):
        if self.content is None:
            self.content = np.zeros(len(self.item_ids), bool)
        self.content_rows = np.flatnonzero(self.content)
        if len(self.content_rows):
            self.content_index = topk.index_items(
                self.y[self.content_rows],
                topk.order_key([self.item_ids[r] for r in self.content_rows]))
        if len(self.item_ids):
            self.index = topk.index_items(self.y, topk.order_key(self.item_ids))
        if len(self.pop_ids):
            self.pop_index = topk.index_items(self.pop, topk.order_key(self.pop_ids))


def popularity(events, *, window_days: int) -> tuple[list[str], np.ndarray]:
    """Items by share of distinct users in the last ``window_days`` (as ``score`` does)."""
    if len(events) == 0:
        return [], np.zeros((0, 1), np.float32)
    since = events["ts"].max() - _dt.timedelta(days=window_days)
    ev = events[events["ts"] >= since]
    users = max(1, ev["user_id"].nunique())
    share = ev.groupby("item_id")["user_id"].nunique().sort_index() / users
    return list(share.index), share.to_numpy(np.float32).reshape(-1, 1)


def load_model(lakehouse: str) -> ServingModel:
    """The champion's item factors and settings, plus the popularity fallback.

    The fallback ranks items by their share of users in the champion's training window (in
    the last ``window_days`` of all interactions when there is no champion yet).
    """
    import pyarrow.compute as pc

    ref = tracking.get_alias(lakehouse)
    window = int(ref.params.get("window_days", 30)) if ref else 30
    inter = None
    if delta.exists(lakehouse, INTERACTIONS):
        flt = None
        if ref is not None and {"start", "end", "as_of"} <= set(ref.params):
            # the champion's own training window: a fixed fallback per model version, which
            # the stream's appends (later arrival dates) do not move
            flt = ((pc.field("ts") >= pc.scalar(_dt.datetime.fromisoformat(ref.params["start"])))
                   & (pc.field("ts") < pc.scalar(_dt.datetime.fromisoformat(ref.params["end"])))
                   & (pc.field("dt") <= pc.scalar(_dt.date.fromisoformat(ref.params["as_of"]))))
        inter = delta.arrow_dataset(lakehouse, INTERACTIONS).to_table(
            columns=["user_id", "item_id", "ts"], filter=flt).to_pandas()
    pop_ids, pop = popularity(inter, window_days=window) if inter is not None else \
        ([], np.zeros((0, 1), np.float32))
    if ref is None:
        log.warning("no champion model yet: refreshed users get popular items only")
        return ServingModel(None, [], np.zeros((0, 1), np.float32), np.zeros((1, 1)), {}, 1.0,
                            0.0, dict(als.DEFAULT_WEIGHTS), pop_ids, pop)
    tbl = delta.arrow_dataset(lakehouse, ITEM_FACTORS).to_table(
        columns=["item_idx", "item_id", "factors", "source"],
        filter=pc.field("model_version") == ref.version).sort_by("item_idx")
    y = np.asarray(tbl["factors"].to_pylist(), dtype=np.float32)
    ids = tbl["item_id"].to_pylist()
    content = np.asarray(tbl["source"].to_pylist(), dtype=object) == "content"
    weights = json.loads(ref.params["weights"]) if "weights" in ref.params \
        else dict(als.DEFAULT_WEIGHTS)
    log.info("serving model v%d: %d items (%d placed from text), rank %d", ref.version,
             len(ids), int(content.sum()), y.shape[1])
    # YᵀY over the ALS items only: text-placed items are ranked, never part of the fold-in's
    # normal equations, so a fold-in stays the model's exact solution
    return ServingModel(ref.version, ids, y, als.gram(y[~content]),
                        {i: r for r, i in enumerate(ids)},
                        float(ref.params.get("alpha", 5.0)), float(ref.params.get("reg", 0.05)),
                        {k: float(v) for k, v in weights.items()}, pop_ids, pop, content)


# --------------------------------------------------------------------------- pure steps


def weights_of(history, weights: Mapping[str, float]) -> np.ndarray:
    """``r`` of each event: its type's weight, or the value of a ``rating``."""
    w = history["event_type"].map(lambda t: float(weights.get(t, 0.0))).to_numpy(np.float64)
    rating = (history["event_type"] == "rating").to_numpy()
    w[rating] = history["value"].to_numpy(np.float64)[rating]
    return w


def refresh(model: ServingModel, history, users: list[str], *, k: int, new_item_slots: int = 1
            ) -> tuple[dict[str, np.ndarray], list[tuple]]:
    """Fold in ``users`` from their full ``history`` and compute their top-``k``.

    For each user the implicit-ALS normal equations of :func:`pipelines.als.fold_in`,

        (YᵀY + Σ_i α r_ui y_i y_iᵀ + λ n_u I) x_u = Σ_i (1 + α r_ui) y_i,

    are assembled for all users at once (``YᵀY`` cached per model) and solved as one batched
    ``numpy.linalg.solve``; then one kernel call ranks the unseen items of every user. Items
    placed by their text are ranked but never enter the solve, and the last
    ``new_item_slots`` places go to the user's best placed items, as ``score`` does
    (:func:`pipelines.score.with_new_item_slots`).

    Parameters
    ----------
    history : pandas.DataFrame
        ``user_id, item_id, event_type, value``: every interaction of these users.

    Returns
    -------
    vectors : {user_id: (rank,) float32}, for users with at least one positively weighted
        item the model knows
    rows : [(user_id, rank, item_id, score, source)], ``fold_in`` rows first, then
        ``popular`` ones for lists shorter than ``k``; never a seen item.
    """
    import pandas as pd

    users = sorted(set(users))
    h = history[history["user_id"].isin(users)]
    pairs = pd.DataFrame({"user_id": h["user_id"].to_numpy(), "item_id": h["item_id"].to_numpy(),
                          "r": weights_of(h, model.weights)}) \
        .groupby(["user_id", "item_id"], sort=True)["r"].sum().reset_index()
    code = pd.Categorical(pairs["user_id"], categories=users).codes.astype(np.int64)
    row = pairs["item_id"].map(model.row)
    known = row.notna().to_numpy()
    row = row.fillna(-1).to_numpy(np.int64)
    r = pairs["r"].to_numpy(np.float64)

    vectors: dict[str, np.ndarray] = {}
    # text-placed items are seen (filtered below) but not part of the solve
    sel = known & (r > 0) & ~model.content[np.maximum(row, 0)]
    if sel.any():
        has, x = als.fold_in_many(model.y, model.yty, code[sel], row[sel],
                                  model.alpha * r[sel], len(users), reg=model.reg)
        vectors = {users[u]: x[j] for j, u in enumerate(has)}

    out: list[tuple] = []
    picked: dict[str, list[str]] = {u: [] for u in users}
    with_vec = [u for u in users if u in vectors]
    if with_vec:
        # seen filter: every known item of the user, whatever its weight
        slot = np.full(len(users), -1, np.int64)  # user code -> position in with_vec
        slot[[j for j, u in enumerate(users) if u in vectors]] = np.arange(len(with_vec))
        keep = known & (slot[code] >= 0)
        kc = slot[code[keep]]
        indptr = np.zeros(len(with_vec) + 1, np.int64)
        np.cumsum(np.bincount(kc, minlength=len(with_vec)), out=indptr[1:])
        u_mat = np.stack([vectors[u] for u in with_vec])
        idx, score, count = topk.topk_block(u_mat, model.index, (indptr, row[keep]), k)
        lists = [[(int(idx[j, q]), float(score[j, q])) for q in range(int(count[j]))]
                 for j in range(len(with_vec))]
        slots = min(new_item_slots, k)
        if slots and model.content_index is not None:
            pos = np.full(len(model.item_ids), -1, np.int64)
            pos[model.content_rows] = np.arange(len(model.content_rows))
            cp = pos[row[keep]]
            c_ptr = np.zeros(len(with_vec) + 1, np.int64)
            np.cumsum(np.bincount(kc[cp >= 0], minlength=len(with_vec)), out=c_ptr[1:])
            c_idx, c_score, c_count = topk.topk_block(u_mat, model.content_index,
                                                      (c_ptr, cp[cp >= 0]), slots)
            for j, lst in enumerate(lists):
                new = [(int(model.content_rows[c_idx[j, q]]), float(c_score[j, q]))
                       for q in range(int(c_count[j]))]
                head = lst[:k - slots]
                taken = {i for i, _ in head}
                head += [p for p in new if p[0] not in taken]
                taken = {i for i, _ in head}
                lists[j] = (head + [p for p in lst[k - slots:] if p[0] not in taken])[:k]
        for j, u in enumerate(with_vec):
            for q, (i, sc) in enumerate(lists[j]):
                item = model.item_ids[i]
                picked[u].append(item)
                out.append((u, q + 1, item, sc, "content" if model.content[i] else "fold_in"))
    short = [u for u in users if len(picked[u]) < k]
    if short and model.pop_ids:
        prow = {i: q for q, i in enumerate(model.pop_ids)}
        seen = pairs.groupby("user_id")["item_id"].agg(list).to_dict()
        excl = [np.array([prow[i] for i in (*seen.get(u, []), *picked[u]) if i in prow],
                         np.int64) for u in short]
        idx, score, count = topk.topk_block(np.ones((len(short), 1), np.float32),
                                            model.pop_index, excl, k)
        for j, u in enumerate(short):
            have = len(picked[u])
            for q in range(min(int(count[j]), k - have)):
                out.append((u, have + q + 1, model.pop_ids[idx[j, q]], float(score[j, q]),
                            "popular"))
    return vectors, out


def split_records(checked, *, ingest_id: str, known: Mapping[str, str], now: _dt.datetime,
                  day: _dt.date):
    """A micro-batch's checked records -> (``interactions`` rows, ``quarantine`` rows), Arrow.

    Parameters
    ----------
    checked : pyarrow.Table
        :func:`pipelines.validate.check_events` output plus ``ingest_source``, ``raw_text``,
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


# --------------------------------------------------------------------------- I/O helpers


def _known_ids(lakehouse: str, ids: list[str]) -> dict[str, str]:
    import pyarrow.compute as pc

    if not ids or not delta.exists(lakehouse, INTERACTIONS):
        return {}
    tbl = delta.arrow_dataset(lakehouse, INTERACTIONS).to_table(
        columns=["event_id", "ingest_id"], filter=pc.field("event_id").isin(ids))
    return dict(zip(tbl["event_id"].to_pylist(), tbl["ingest_id"].to_pylist(), strict=True))


def user_history(lakehouse: str, users: list[str]):
    """Every interaction of ``users`` (pandas: user_id, item_id, event_type, value)."""
    import pyarrow.compute as pc

    return delta.arrow_dataset(lakehouse, INTERACTIONS).to_table(
        columns=["user_id", "item_id", "event_type", "value"],
        filter=pc.field("user_id").isin(users)).to_pandas()


def _done(dt, txn: delta.Txn) -> bool:
    v = delta.committed_through(dt, txn.app_id)
    return v is not None and v >= txn.version


def _user_indexes(lakehouse: str, users: list[str], txn: delta.Txn, now: _dt.datetime,
                  attempts: int = 5) -> dict[str, int]:
    """Indexes of ``users``, appending the missing ones (append-only, ids never move)."""
    import pyarrow as pa

    for attempt in range(1, attempts + 1):
        dt = delta.ensure_table(lakehouse, USER_INDEX)
        tbl = delta.arrow_dataset(lakehouse, USER_INDEX, dt.version()).to_table(
            columns=["user_id", "user_idx"])
        have = dict(zip(tbl["user_id"].to_pylist(), tbl["user_idx"].to_pylist(), strict=True))
        new = sorted(set(users) - set(have))
        if not new or _done(dt, txn):
            return have
        start = (max(have.values()) + 1) if have else 0
        rows = pa.table({"user_id": new, "user_idx": pa.array(range(start, start + len(new)),
                                                                pa.int32()),
                         "assigned_at": pa.array([now] * len(new), pa.timestamp("us", "UTC"))})
        try:
            delta.commit(delta.stage_arrow(rows, lakehouse, USER_INDEX), snapshot=dt,
                         txn=txn, conflict_scope="table", retries=0,
                         metadata={"lakerec.new_ids": len(new)})
        except delta.DeltaConflictError:
            if attempt == attempts:
                raise
            continue
        have.update(zip(new, range(start, start + len(new)), strict=True))
        return have
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- the batch


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


@dataclass
class StreamContext:
    """Driver-side state of one streaming query."""

    lakehouse: str
    query: str
    k: int = 10
    new_item_slots: int = 1
    model_refresh_s: float = 30.0
    metrics_file: str | None = None
    checkpoint: str | None = None
    model: ServingModel | None = None
    model_checked: float = 0.0
    model_stamp: tuple | None = None  # (champion version, item_factors version) of ``model``
    checker: object = None  # record_checker(), built by start_query (or the first batch)
    reports: list = field(default_factory=list)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    busy: threading.Lock = field(default_factory=threading.Lock)

    def serving_model(self) -> ServingModel:
        now = time.monotonic()
        if self.model is None or now - self.model_checked > self.model_refresh_s:
            ref = tracking.get_alias(self.lakehouse)
            # a new champion, or new items placed by their text into the same model version
            # (score upserts them into item_factors): either way, load again
            stamp = (ref.version if ref else None,
                     delta.latest_version(self.lakehouse, ITEM_FACTORS))
            if self.model is None or stamp != self.model_stamp:
                self.model = load_model(self.lakehouse)
                self.model_stamp = stamp
            self.model_checked = now
        return self.model


def record_checker():
    """Spark: a function validating a micro-batch of Kafka records (same rules as ``ingest``).

    The expressions are built once per query and applied to every batch: building them
    costs hundreds of JVM calls (0.5-1 s a batch when rebuilt each time).
    """
    from pyspark.sql import functions as F

    from pipelines import validate

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
    txn = delta.Txn(app_id(ctx.query), int(batch_id))
    ingest_id = f"stream:{ctx.query}:{batch_id}"
    now = _dt.datetime.now(_dt.UTC)
    rep = BatchReport(int(batch_id))
    mark = [t0]

    def lap(name):
        now_ = time.perf_counter()
        rep.phases[name] = round(now_ - mark[0], 3)
        mark[0] = now_

    if ctx.checker is None:
        ctx.checker = record_checker()
    checked = ctx.checker(df).toArrow()
    lap("read+validate")
    rep.records = checked.num_rows
    if rep.records == 0:
        return rep
    ids = [i for i in pc.unique(checked["event_id"]).to_pylist() if i is not None]
    inter, quar = split_records(checked, ingest_id=ingest_id, known=_known_ids(lh, ids),
                                now=now, day=now.date())
    rep.valid, rep.quarantined = inter.num_rows, quar.num_rows
    lap("dedup")
    meta = {"lakerec.ingest_id": ingest_id}

    def write(spec, fn):
        if spec is QUARANTINE and quar.num_rows == 0:
            return None  # nothing to record; a replay finds nothing either
        dt = delta.ensure_table(lh, spec)
        if _done(dt, txn):
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
        model = ctx.serving_model()
        rep.model_version = model.version
        history = user_history(lh, users)
        lap("history")
        vectors, rows = refresh(model, history, users, k=ctx.k,
                                new_item_slots=ctx.new_item_slots)
        lap("fold-in+top-k")
        if vectors:
            idx = _user_indexes(lh, list(vectors), txn, now)
            uf = _user_factor_rows(vectors, idx, model.version, now)
            write(USER_FACTORS, lambda dt: delta.replace_rows_arrow(
                lh, USER_FACTORS, uf, on=["model_version", "user_id"], txn=txn,
                metadata=meta, snapshot=dt))
            lap("user_factors")
        recs = _recommendation_rows(rows, model.version, now)
        write(RECOMMENDATIONS, lambda dt: delta.replace_rows_arrow(
            lh, RECOMMENDATIONS, recs, on=["user_id"], txn=txn, metadata=meta, snapshot=dt))
        lap("recommendations")
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


# --------------------------------------------------------------------------- the query


def latest_checkpoint_offsets(checkpoint: str) -> tuple[int | None, str | None]:
    """(highest batch id in the checkpoint's offset log, its source offsets JSON)."""
    folder = os.path.join(checkpoint, "offsets")
    try:
        ids = sorted(int(n) for n in os.listdir(folder) if n.isdigit())
    except FileNotFoundError:
        return None, None
    if not ids:
        return None, None
    with open(os.path.join(folder, str(ids[-1]))) as f:
        lines = f.read().splitlines()
    # "v1", the batch metadata, then one line per source
    return ids[-1], (lines[2] if len(lines) > 2 and lines[2].startswith("{") else None)


def check_checkpoint(lakehouse: str, query: str, checkpoint: str) -> int | None:
    """Refuse a checkpoint that is empty or older than the tables' record of this query.

    Returns the last batch the tables record (``None`` for a new query).
    """
    app = app_id(query)
    committed = [v for spec in WRITTEN if delta.exists(lakehouse, spec)
                 for v in [delta.committed_through(delta.open_table(lakehouse, spec), app)]
                 if v is not None]
    last = max(committed) if committed else None
    if last is None:
        return None
    batch, _ = latest_checkpoint_offsets(checkpoint)
    if batch is None:
        raise CheckpointError(
            f"the tables already hold batches up to {last} of stream query {query!r}, but the "
            f"checkpoint {checkpoint} is empty or missing: it was lost or is the wrong folder. "
            "Restore it (it holds the Kafka offsets), or start a new query with another "
            "--query-name")
    if batch < last:
        raise CheckpointError(
            f"the checkpoint {checkpoint} ends at batch {batch} but the tables already hold "
            f"batch {last} of stream query {query!r}: it is an older copy. Restore the latest "
            "checkpoint, or start a new query with another --query-name")
    return last


def start_query(spark, ctx: StreamContext, *, source_options: Mapping[str, str],
                checkpoint: str, trigger_s: float = 1.0):
    """Start the streaming query (after :func:`check_checkpoint`); returns the ``StreamingQuery``."""
    from pipelines.kafka_source import KafkaSource

    check_checkpoint(ctx.lakehouse, ctx.query, checkpoint)
    ctx.checkpoint = checkpoint
    # before the first batch, so that it is not slower than the rest: the serving model,
    # the compiled kernel, the validation expressions
    model = ctx.serving_model()
    if model.index is not None:
        topk.topk_block(model.y[:1], model.index, [np.zeros(0, np.int64)], 1)
    ctx.checker = record_checker()
    spark.dataSource.register(KafkaSource)
    _, resume = latest_checkpoint_offsets(checkpoint)
    reader = spark.readStream.format(KafkaSource.name())
    for k, v in source_options.items():
        reader = reader.option(k, str(v))
    # where the last batch ended (the rate limit's starting point after a restart), or that
    # this is a new query, whose first batch starts at startingOffsets
    reader = reader.option("lakerec.resumeOffsets", resume or "starting")

    def on_batch(df, batch_id):
        with ctx.busy:
            if ctx.stop_requested.is_set():
                raise InterruptedError("stop requested; this batch will run on the next start")
            rep = process_batch(ctx, df, batch_id)
            ctx.reports.append(rep)
            if ctx.metrics_file:
                os.makedirs(os.path.dirname(ctx.metrics_file), exist_ok=True)
                with open(ctx.metrics_file, "a") as f:
                    f.write(json.dumps({"query": ctx.query, "at": time.time(),
                                        **rep.__dict__}) + "\n")

    writer = (reader.load().writeStream.queryName(ctx.query).foreachBatch(on_batch)
              .option("checkpointLocation", checkpoint))
    # Python sources cannot honour Trigger.AvailableNow (Spark falls back to one uncapped
    # batch); `lakerec stream --available-now` stops at the end offsets itself instead.
    return writer.trigger(processingTime=f"{max(0.0, trigger_s)} seconds").start()


def stop_after_batch(ctx: StreamContext, query, timeout_s: float = 600.0) -> None:
    """Stop ``query`` between batches: let the running batch finish, then stop.

    A batch that starts after the request fails at once without writing and runs again on
    the next start (it is not committed to the checkpoint).
    """
    ctx.stop_requested.set()
    if ctx.busy.acquire(timeout=timeout_s):  # waits for the batch in flight, if any
        ctx.busy.release()
    if ctx.reports and ctx.checkpoint:
        # foreachBatch has returned; Spark still records the batch in the commit log
        last = ctx.reports[-1].batch_id
        done = os.path.join(ctx.checkpoint, "commits", str(last))

        def recorded() -> bool:
            # the commit file appears before Spark has finished with it (the checksum file
            # is renamed after it); the batch's progress is reported only once the commit
            # is complete, so stopping earlier interrupts the commit write
            progress = query.lastProgress
            return os.path.exists(done) and progress is not None and \
                int(progress.get("batchId", -1)) >= last

        deadline = time.monotonic() + 30
        while not recorded() and query.isActive and time.monotonic() < deadline:
            time.sleep(0.05)
    query.stop()


def committed_offsets(checkpoint: str) -> dict[tuple[str, int], int] | None:
    """Source offsets up to which the checkpoint's last *committed* batch processed."""
    from pipelines.kafka_source import flat_offsets, parse_offsets

    try:
        done = sorted(int(n) for n in os.listdir(os.path.join(checkpoint, "commits"))
                      if n.isdigit())
    except FileNotFoundError:
        return None
    if not done:
        return None
    with open(os.path.join(checkpoint, "offsets", str(done[-1]))) as f:
        lines = f.read().splitlines()
    return flat_offsets(parse_offsets(lines[2])) if len(lines) > 2 else None


def end_offsets(source_options: Mapping[str, str]) -> tuple[dict, dict]:
    """(earliest, end) offsets of the subscribed partitions right now."""
    from kafka import KafkaConsumer, TopicPartition

    from pipelines.kafka_source import SourceOptions, client_config

    opts = SourceOptions.parse(source_options)
    c = KafkaConsumer(**client_config(opts.raw), enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(t, p) for t in opts.topics
               for p in sorted(c.partitions_for_topic(t) or ())]
        first = {(tp.topic, tp.partition): o for tp, o in c.beginning_offsets(tps).items()}
        end = {(tp.topic, tp.partition): o for tp, o in c.end_offsets(tps).items()}
        return first, end
    finally:
        c.close()


def caught_up(checkpoint: str, first: Mapping, target: Mapping,
              initial: Mapping | None = None) -> bool:
    """True once committed batches reach ``target`` on every partition.

    ``initial`` is what the checkpoint held when the run began. Offsets there *past* the
    target mean the broker went back (lost data): until a batch has run, that is not caught
    up, so the query meets the loss and fails (or, told to, skips ahead) instead of stopping
    silently.
    """
    done = committed_offsets(checkpoint) or {}
    if initial and done == dict(initial) and any(initial.get(tp, 0) > o
                                                 for tp, o in target.items()):
        return False
    return all(done.get(tp, first.get(tp, 0)) >= o for tp, o in target.items())
