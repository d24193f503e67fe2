"""The state of a lakehouse at a glance, and the alerts an operator pages on.

:func:`collect` reads, without writing anything: each table's latest commit (time, writer),
the champion and when and why it was promoted, the last training run, each stream query's
committed offsets against the broker's end offsets, the served lists' coverage and fallback
share, and the last ingested day's quarantine rate. :func:`alerts` holds those against
:class:`Thresholds` (declared once here; ``lakerec.toml`` ``[status]`` overrides each).

Example
-------
>>> st = collect("/lh", bootstrap=None)                          # doctest: +SKIP
>>> [a.message for a in alerts(st, Thresholds()) if a.breached]  # doctest: +SKIP
['score last wrote the lists 52.0 h ago (limit 36 h)']
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import asdict, dataclass, field, fields

from pipelines.storage import delta, tracking
from schemas.tables import INTERACTIONS, QUARANTINE, RECOMMENDATIONS, TABLES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thresholds:
    """When :func:`alerts` fires; each is a ``[status]`` key of ``lakerec.toml``."""

    max_list_age_hours: float = field(default=36.0, metadata={
        "help": "hours since score last wrote the lists (score stalled)"})
    max_quarantine_rate: float = field(default=0.05, metadata={
        "help": "share of the last ingested day's rows quarantined"})
    max_fallback_share: float = field(default=0.5, metadata={
        "help": "share of users whose list opens with a fallback (popular, content)"})
    max_coverage_drop: float = field(default=0.5, metadata={
        "help": "relative drop of catalog coverage since the previous score"})
    max_stream_lag: int = field(default=100_000, metadata={
        "help": "records a stream query is behind the broker's end offsets"})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class TableStatus:
    table: str
    version: int
    committed_at: str
    age_hours: float
    writer: str  # what the commit records (job inputs, model version, ingest ids)


@dataclass(frozen=True)
class StreamStatus:
    query: str
    committed: int  # records the last committed batch reached, summed over partitions
    end: int | None  # the broker's end offsets, summed (None: broker not reachable)
    lag: int | None
    last_batch_at: str | None
    note: str = ""


@dataclass(frozen=True)
class Alert:
    name: str
    value: float | None
    limit: float
    breached: bool
    message: str


@dataclass
class Status:
    at: str
    lakehouse: str
    tables: list[TableStatus] = field(default_factory=list)
    champion: dict | None = None
    last_training: dict | None = None
    streams: list[StreamStatus] = field(default_factory=list)
    lists: dict = field(default_factory=dict)
    quarantine: dict = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _age(at: _dt.datetime, now: _dt.datetime) -> float:
    return round((now - at).total_seconds() / 3600, 2)


def _writer(meta: dict) -> str:
    keep = {k.removeprefix("lakerec."): v for k, v in meta.items()
            if k not in ("lakerec.table", "lakerec.write_id")}
    return " ".join(f"{k}={v}" for k, v in sorted(keep.items()))


def _tables(lakehouse: str, now: _dt.datetime) -> list[TableStatus]:
    out = []
    for name in TABLES:
        if not delta.exists(lakehouse, name):
            continue
        (c,) = delta.history(lakehouse, name, 1)
        out.append(TableStatus(name, c.version, c.at.isoformat(timespec="seconds"),
                               _age(c.at, now), _writer(dict(c.metadata))))
    return out


def _champion(lakehouse: str) -> tuple[dict | None, dict | None]:
    versions = tracking.list_versions(lakehouse)
    champ = next((v for v in versions if v.champion), None)
    last = versions[0] if versions else None
    as_dict = (lambda v: None if v is None else {  # noqa: E731
        "version": v.version, "trainer": v.trainer, "created": v.created,
        "promoted_at": v.promoted_at, "promoted_by": v.promoted_by, "reason": v.reason,
        "previous": v.previous, "decision": v.decision})
    return as_dict(champ), as_dict(last)


def _streams(lakehouse: str, bootstrap: str | None, kafka: dict) -> list[StreamStatus]:
    """Each query under ``<lakehouse>/_checkpoints``: committed vs end offsets.

    Cost: the checkpoint's last offsets file, and one metadata + offsets request to the
    broker (bounded by the client's timeouts: an unreachable broker is a note, not a hang).
    """
    from pipelines.streaming.checkpoint import committed_offsets, end_offsets

    root = os.path.join(lakehouse, "_checkpoints")
    if not os.path.isdir(root):
        return []
    out = []
    for query in sorted(os.listdir(root)):
        cp = os.path.join(root, query)
        done = committed_offsets(cp)
        if done is None:
            continue
        commits = os.path.join(cp, "commits")
        last = max((os.path.getmtime(os.path.join(commits, n)) for n in os.listdir(commits)
                    if n.isdigit()), default=None)
        last_at = None if last is None else _dt.datetime.fromtimestamp(
            last, _dt.UTC).isoformat(timespec="seconds")
        committed = sum(done.values())
        end = lag = None
        note = ""
        if bootstrap is None:
            note = "no broker given (--bootstrap) and none running locally: lag unknown"
        else:
            topics = sorted({t for t, _ in done})
            try:
                _, ends = end_offsets({**kafka, "kafka.bootstrap.servers": bootstrap,
                                       "subscribe": ",".join(topics)})
                end = sum(ends.values())
                lag = sum(max(0, o - done.get(tp, 0)) for tp, o in ends.items())
            except Exception as e:  # noqa: BLE001 - the status says the broker is down
                note = f"broker {bootstrap} not reachable: {type(e).__name__}"
        out.append(StreamStatus(query, committed, end, lag, last_at, note))
    return out


SCORE_SCAN = 20_000  # commits of recommendations searched for score writes, newest first


def score_commits(lakehouse: str, n: int, *, scan: int = SCORE_SCAN) -> list:
    """The newest ``n`` commits of ``recommendations`` that ``score`` wrote (each a full set
    of lists; the stream's refreshes, compactions and the writes a restore undid skipped),
    newest first.

    Cost: the table's commit records newest first, in pages that grow fourfold, until ``n``
    are found or ``scan`` were read: a stream committing every second writes 86,400 a day,
    so on a stalled ``score`` this reads ``scan`` small JSON files and stops.
    """
    from schemas.tables import MODEL_VERSION_KEY

    limit = 64
    while True:
        commits = delta.history(lakehouse, RECOMMENDATIONS, limit, counts=False)
        found = [c for c in delta.undone_skipped(commits) if MODEL_VERSION_KEY in c.metadata]
        if len(found) >= n or len(commits) < limit or limit >= scan:
            return found[:n]
        limit = min(scan, limit * 4)


def _lists(lakehouse: str) -> dict:
    """Users, catalog coverage and fallback shares of the current lists, and the coverage of
    the previous ``score`` snapshot. Cost: two scans of ``recommendations`` (the current
    rows and one earlier version) in DuckDB; on demand only, never in a hot path."""
    from pipelines.storage.sql import query

    if not delta.exists(lakehouse, RECOMMENDATIONS):
        return {}
    items = "(SELECT count(*) FROM items)" if delta.exists(lakehouse, "items") else "NULL"
    (users, distinct, catalog, popular, content), = query(lakehouse, f"""
        SELECT count(DISTINCT user_id), count(DISTINCT item_id), {items},
               count(DISTINCT user_id) FILTER (WHERE rank = 1 AND source = 'popular'),
               count(DISTINCT user_id) FILTER (WHERE rank = 1 AND source = 'content')
        FROM current_recommendations""")[1]
    out = {"users": users, "items_listed": distinct,
           "coverage": distinct / catalog if catalog else None,
           "fallback_share": (popular + content) / users if users else None,
           "popular_share": popular / users if users else None,
           "content_share": content / users if users else None}
    scores = score_commits(lakehouse, 2)
    if scores:
        out["last_score_at"] = scores[0].at.isoformat(timespec="seconds")
    # the snapshot the last score replaced (unless maintain has vacuumed its files)
    if len(scores) >= 2 and catalog:
        try:
            (prev,), = query(lakehouse, "SELECT count(DISTINCT item_id) FROM recommendations "
                                        f"VERSION AS OF {scores[1].version}")[1]
            out["previous_coverage"] = prev / catalog
        except delta.BrokenTableError:
            log.info("recommendations v%d was vacuumed: no coverage to compare with",
                     scores[1].version)
    return out


def _quarantine(lakehouse: str) -> dict:
    """The last ingested day's quarantine rate. Cost: a scan of ``interactions``' ``dt`` and
    ``ingest_id`` columns, then that day's partitions."""
    from pipelines.storage.sql import query

    if not (delta.exists(lakehouse, INTERACTIONS) and delta.exists(lakehouse, QUARANTINE)):
        return {}
    # the batch's days (the stream files its rows under its processing date)
    batch = "ingest_id LIKE 'ingest:%'"
    (day,), = query(lakehouse, f"SELECT max(dt) FROM interactions WHERE {batch}")[1]
    if day is None:
        return {}
    (valid, bad), = query(lakehouse, f"""
        SELECT (SELECT count(*) FROM interactions WHERE dt = DATE '{day}' AND {batch}),
               (SELECT count(*) FROM quarantine WHERE dt = DATE '{day}'
                AND origin = 'events')""")[1]
    total = valid + bad
    return {"day": str(day), "rows": total, "quarantined": bad,
            "rate": bad / total if total else None}


def collect(lakehouse: str, *, bootstrap: str | None, kafka: dict | None = None,
            now: _dt.datetime | None = None) -> Status:
    """Everything :mod:`this module <pipelines.ops.status>` reports; writes nothing.
    ``kafka``: the ``kafka.*`` security options for the broker (TLS, SASL)."""
    now = now or _dt.datetime.now(_dt.UTC)
    st = Status(now.isoformat(timespec="seconds"), lakehouse)
    st.tables = _tables(lakehouse, now)
    st.champion, st.last_training = _champion(lakehouse)
    st.streams = _streams(lakehouse, bootstrap, kafka or {})
    st.lists = _lists(lakehouse)
    st.quarantine = _quarantine(lakehouse)
    return st


def alerts(st: Status, th: Thresholds) -> list[Alert]:
    """Each threshold held against the status; a value that cannot be known never fires."""
    out = []

    def check(name, value, limit, message, breached=None):
        hit = value is not None and (value > limit if breached is None else breached)
        out.append(Alert(name, value, limit, hit, message))

    # the age of the last full set of lists: the stream's refreshes and compactions commit
    # too, and would hide a stalled score
    last = st.lists.get("last_score_at")
    age = _age(_dt.datetime.fromisoformat(last), _dt.datetime.fromisoformat(st.at)) \
        if last else None
    check("list_age_hours", age, th.max_list_age_hours,
          f"score last wrote the lists {age:g} h ago (limit {th.max_list_age_hours:g} h)"
          if age is not None else "no lists written by score yet")
    q = st.quarantine.get("rate")
    check("quarantine_rate", q, th.max_quarantine_rate,
          f"{q:.1%} of {st.quarantine.get('day')}'s rows quarantined (limit "
          f"{th.max_quarantine_rate:.1%})" if q is not None else "no ingested day")
    f = st.lists.get("fallback_share")
    check("fallback_share", f, th.max_fallback_share,
          f"{f:.1%} of users get a fallback first (popular or content; limit "
          f"{th.max_fallback_share:.1%})" if f is not None else "no lists")
    cov, prev = st.lists.get("coverage"), st.lists.get("previous_coverage")
    drop = None if cov is None or not prev else (prev - cov) / prev
    check("coverage_drop", drop, th.max_coverage_drop,
          f"catalog coverage {cov:.1%}, was {prev:.1%} at the previous score (a drop of "
          f"{drop:.0%}; limit {th.max_coverage_drop:.0%})" if drop is not None else
          "no earlier score to compare with")
    for s in st.streams:
        check(f"stream_lag:{s.query}", s.lag, th.max_stream_lag,
              f"stream {s.query}: {s.lag:,} records behind the broker (limit "
              f"{th.max_stream_lag:,})" if s.lag is not None else f"stream {s.query}: {s.note}")
    return out
