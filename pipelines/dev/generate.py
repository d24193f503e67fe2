"""Seeded synthetic behaviour logs and catalog, built with Spark so they scale to 10^8 events.

Structure a recommender can learn:

* **taste clusters** -- item ``i`` belongs to cluster ``i mod C``; each user has a primary and
  a secondary cluster, and a session mostly stays within one cluster;
* **power-law popularity** -- within a cluster the item of rank ``r`` is drawn with probability
  proportional to ``r^-item_skew`` (inverse-CDF sampling of a continuous power law), and user
  activity is skewed the same way (user index ``floor(U * u^user_skew)``);
* **sessions and repeat visits** -- a session is a burst of events minutes apart, and about a
  third of its steps revisit the previous item, where clicks, carts and purchases concentrate;
* **rare conversions** -- views dominate, purchases are a few percent;
* **text with signal** -- titles and descriptions are drawn from the cluster's topic vocabulary.

Optional time dynamics (all off by default, when the world is stationary and the output is
what it always was; :meth:`SyntheticSpec.realistic` turns them all on for months-long spans):

* **taste drift** (``drift``) -- a share of users switch their primary cluster to another one
  at a per-user moment; their sessions (and ratings) after it follow the new primary;
* **item lifecycle** (``item_lifetime_days``) -- a share of each cluster's items is there from
  the start, the rest arrive one by one over the span; an item's weight halves every
  ``item_lifetime_days`` after its arrival, and an event never picks an item before it arrived
  (the catalog's ``created_at`` is the arrival time);
* **churn** (``churn``) -- a share of users join late and/or leave early: each user's sessions
  fall inside their own active interval.

:func:`user_profiles` gives the ground truth of these per user (clusters, interval, switch).

Every random choice is a hash of ``(seed, salt, ids)`` mapped to [0, 1), not a stateful RNG,
so the output is identical whatever the partitioning or the number of executors.

Example
-------
>>> spec = SyntheticSpec(users=1000, items=200, events=20_000, days=7, seed=1)
>>> lines = event_lines(spark, spec)        # doctest: +SKIP  (columns: raw, dt)
>>> items = catalog(spark, spec)            # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import asdict, dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.dev.vocab import FILLER_WORDS, STYLE_WORDS, TOPICS

# Bump when the generated data changes for the same settings (landing folders are then redone).
GENERATOR_VERSION = 2
# The time-dynamics fields: left out of as_dict() at their default (0), so data sets made
# without them keep their identity, and any other value makes a different data set.
DYNAMICS_FIELDS = ("drift", "item_lifetime_days", "churn")
# With item_lifetime_days: the share of each cluster's items present from the start.
START_ITEM_SHARE = 0.3
DIRTY_KINDS = ("malformed_json", "missing_user", "unknown_type", "bad_timestamp", "duplicate",
               "wrong_type", "rating_out_of_range")


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and shape of a synthetic data set.

    Parameters
    ----------
    users, items, events, days, clusters : int
        Distinct users, catalog size, about this many events, days of logs, taste clusters.
    start : datetime.date
        The first day of logs.
    seed : int
        Every random choice is a hash of the seed (and ids).
    dirty_fraction : float
        Share of events corrupted into bad rows by :func:`event_lines`, in [0, 0.5].
    session_mean : float
        Mean events per session.
    user_skew, item_skew : float
        Skew of user activity and of item popularity within a cluster.
    new_item_fraction : float
        Share of items created in the last 3 days that have no events yet (cold start); with
        ``item_lifetime_days`` they are each cluster's latest additions.
    drift : float
        Taste drift, in [0, 1]: the share of users whose primary cluster moves to another
        cluster at a per-user moment (uniform over the middle 60% of their active interval);
        their sessions and ratings after it follow the new primary. 0 (default): none.
    item_lifetime_days : float
        Item lifecycle, >= 0. When > 0, 30% of each cluster's items are present from the
        start and the rest (but the new items) arrive over the span, each at its own time,
        spread uniformly, in item-id order; an item's popularity weight halves every
        ``item_lifetime_days`` after its arrival, and an event only picks items that arrived
        before it. The catalog's ``created_at`` is the arrival time. 0 (default): a
        stationary catalog, all items present from the start.
    churn : float
        User churn, in [0, 1]: the share of users with an active interval shorter than the
        span -- a third join late, a third leave early, a third both; all their sessions fall
        inside it (at least 10% of the span). 0 (default): every user active all along.
    """

    users: int = 20_000
    items: int = 5_000
    events: int = 1_000_000
    days: int = 30
    clusters: int = 20
    start: _dt.date = _dt.date(2024, 6, 1)
    seed: int = 42
    dirty_fraction: float = 0.0
    session_mean: float = 6.0
    user_skew: float = 2.0
    item_skew: float = 1.1
    new_item_fraction: float = 0.02
    drift: float = 0.0
    item_lifetime_days: float = 0.0
    churn: float = 0.0

    def __post_init__(self) -> None:
        for name in ("users", "items", "events", "days", "clusters"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.dirty_fraction <= 0.5:
            raise ValueError("dirty_fraction must be within [0, 0.5]")
        if self.clusters > self.items:
            raise ValueError("clusters cannot exceed items")
        for name in ("drift", "churn"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1]")
        if not (self.item_lifetime_days >= 0 and math.isfinite(self.item_lifetime_days)):
            raise ValueError("item_lifetime_days must be a finite number >= 0")

    @classmethod
    def realistic(cls, **overrides) -> SyntheticSpec:
        """A months-long span with every time dynamic on: 180 days, ``drift=0.3``,
        ``item_lifetime_days=60``, ``churn=0.5``; ``overrides`` replace any field."""
        return cls(**{"days": 180, "drift": 0.3, "item_lifetime_days": 60.0, "churn": 0.5,
                      **overrides})

    @property
    def dynamic(self) -> bool:
        """Whether any time dynamic is on."""
        return any(getattr(self, k) for k in DYNAMICS_FIELDS)

    def as_dict(self) -> dict:
        """The settings, JSON-ready: the data set's identity (landing manifests). A dynamics
        field at its default 0 is left out, so a stationary set keeps its old identity."""
        return {k: (v.isoformat() if isinstance(v, _dt.date) else v)
                for k, v in asdict(self).items() if k not in DYNAMICS_FIELDS or v}


def _u(seed: int, salt: str, *cols: Column) -> Column:
    """A uniform number in [0, 1) determined by (seed, salt, cols)."""
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), *cols), F.lit(1 << 53)) / float(1 << 53)


def _pick(arr: Column, u: Column) -> Column:
    return F.element_at(arr, (F.floor(u * F.size(arr)) + 1).cast("int"))


def _topic_names(clusters: int) -> list[str]:
    names = list(TOPICS)
    return [names[c % len(names)] + ("" if c < len(names) else f"-{c // len(names)}")
            for c in range(clusters)]


def _vocab(clusters: int) -> Column:
    words = list(TOPICS.values())
    return F.array(*[F.array(*[F.lit(w) for w in words[c % len(words)]])
                     for c in range(clusters)])


def _item_id(idx: Column) -> Column:
    return F.format_string("item-%06d", idx)


def _user_id(idx: Column) -> Column:
    return F.format_string("user-%06d", idx)


def _is_new_item(spec: SyntheticSpec, idx: Column) -> Column:
    # New items are the catalog's latest additions: no interactions yet (cold start).
    return _u(spec.seed, "new", idx) < spec.new_item_fraction


def _partitions(spark, n: int, per: int) -> int:
    return max(spark.sparkContext.defaultParallelism, -(-n // per))


def _power_rank(u: Column, n: Column, a: float) -> Column:
    """Rank in [1, n] drawn by inverse CDF of p(r) ~ r^-a on [1, n + 1)."""
    r = F.floor(F.pow(1 + u * (F.pow(n + 1, 1 - a) - 1), 1 / (1 - a)))
    return F.least(F.greatest(r, F.lit(1)), n).cast("long")


def _span_seconds(spec: SyntheticSpec, p: Column) -> Column:
    """Seconds after the start of the point at fraction ``p`` in [0, 1) of the span, laid out
    as the stationary sessions are: day ``floor(p * days)``, time of day within 86,000 s."""
    d = F.floor(p * spec.days)
    return (d * 86400 + (p * spec.days - d) * 86000).cast("long")


def _user_dynamics(spec: SyntheticSpec, user_idx: Column) -> dict[str, Column]:
    """Per-user columns: ``primary``, ``secondary``, and with churn / drift the active interval
    ``join``/``leave`` (fractions of the span), ``drifted``, ``switch`` (fraction) and
    ``new_primary``."""
    s, C = spec.seed, spec.clusters
    primary = F.pmod(F.xxhash64(F.lit(s), F.lit("c1"), user_idx), F.lit(C))
    cols = {"primary": primary,
            "secondary": F.pmod(F.xxhash64(F.lit(s), F.lit("c2"), user_idx), F.lit(C))}
    join, leave = F.lit(0.0), F.lit(1.0)
    if spec.churn > 0:
        churned = _u(s, "churn", user_idx) < spec.churn
        kind = _u(s, "chkind", user_idx)  # a third join late, a third leave early, a third both
        late = churned & ((kind < 1 / 3) | (kind >= 2 / 3))
        early = churned & (kind >= 1 / 3)
        uj, ul = _u(s, "join", user_idx), _u(s, "leave", user_idx)
        join = F.when(late, F.when(early, 0.1 + 0.35 * uj).otherwise(0.1 + 0.5 * uj)) \
            .otherwise(0.0)
        leave = F.when(early, F.when(late, 0.9 - 0.35 * ul).otherwise(0.9 - 0.5 * ul)) \
            .otherwise(1.0)
    cols["join"], cols["leave"] = join, leave
    if spec.drift > 0:
        cols["drifted"] = _u(s, "drift", user_idx) < spec.drift
        cols["switch"] = join + (0.2 + 0.6 * _u(s, "switch", user_idx)) * (leave - join)
        # any other cluster (none other when there is a single cluster)
        cols["new_primary"] = F.pmod(
            primary + 1 + F.floor(_u(s, "np", user_idx) * (C - 1)), F.lit(C))
    return cols


def user_profiles(spark, spec: SyntheticSpec) -> DataFrame:
    """The ground truth of every user's tastes and dynamics (for analysis and tests):
    ``user_id, primary, secondary, active_from, active_until, drifted, drift_at, new_primary``
    (``drift_at`` and ``new_primary`` are null for a user whose taste does not drift). A
    user's sessions start within ``[active_from, active_until]`` (the last may run a few
    minutes past it); those from ``drift_at`` on follow ``new_primary``."""
    start = F.lit(_dt.datetime.combine(spec.start, _dt.time(), _dt.UTC)).cast("timestamp")
    idx = F.col("id")
    u = _user_dynamics(spec, idx)
    end = F.timestamp_add("SECOND", F.lit(spec.days * 86400), start)
    drifted = u.get("drifted", F.lit(False))
    switch = u.get("switch", F.lit(None).cast("double"))
    new_primary = u.get("new_primary", F.lit(None).cast("long"))
    users = spark.range(0, spec.users, numPartitions=_partitions(spark, spec.users, 500_000))
    return users.select(
        _user_id(idx).alias("user_id"),
        u["primary"].alias("primary"),
        u["secondary"].alias("secondary"),
        F.timestamp_add("SECOND", _span_seconds(spec, u["join"]), start).alias("active_from"),
        F.when(u["leave"] >= 1, end)
        .otherwise(F.timestamp_add("SECOND", _span_seconds(spec, u["leave"]), start))
        .alias("active_until"),
        drifted.alias("drifted"),
        F.when(drifted, F.timestamp_add("SECOND", _span_seconds(spec, switch), start))
        .alias("drift_at"),
        F.when(drifted, new_primary).alias("new_primary"),
    )


def _cluster_sizes(spec: SyntheticSpec, cluster: Column) -> tuple[Column, Column]:
    """With the item lifecycle, a cluster's items ``k`` in [0, m) are: ``k < m0`` present
    from the start, then ``arrivals`` arriving over the span, then (about
    ``new_item_fraction``) new ones, the latest additions, with no events (cold start).
    Returns ``(m0, arrivals)``."""
    m = F.floor((spec.items - 1 - cluster) / spec.clusters) + 1
    m0 = F.greatest(F.lit(1), F.floor(m * START_ITEM_SHARE + 0.5))
    new = F.least(F.floor(m * spec.new_item_fraction + 0.5), m - m0)
    return m0.cast("long"), (m - m0 - new).cast("long")


def _arrival_seconds(spec: SyntheticSpec, idx: Column, slot: Column, arrivals: Column) -> Column:
    """When the cluster's arriving item number ``slot`` (item ``idx``) arrives, in seconds
    after the start: slot ``j`` of ``n`` at ``(j + u) / n`` of the span, ``u`` uniform."""
    span = float(spec.days * 86400)
    return F.floor((slot + _u(spec.seed, "arr", idx.cast("long")))
                   / F.greatest(arrivals, F.lit(1)) * span).cast("long")


def catalog(spark, spec: SyntheticSpec) -> DataFrame:
    """The item catalog: ``item_id, title, description, category, created_at, cluster``."""
    s, C = spec.seed, spec.clusters
    idx = F.col("id")
    cluster = (idx % C).cast("int")
    vocab = F.element_at(_vocab(C), cluster + 1)
    topics = F.array(*[F.lit(t) for t in _topic_names(C)])
    style = F.array(*[F.lit(w) for w in STYLE_WORDS])
    filler = F.array(*[F.lit(w) for w in FILLER_WORDS])
    # three distinct topic words: the vocabulary sorted by a per-item hash of each word
    shuffled = F.transform(
        F.array_sort(F.transform(vocab, lambda w: F.struct(
            F.xxhash64(F.lit(s), F.lit("tw"), idx, w).alias("h"), w.alias("w")))),
        lambda x: x["w"])
    title = F.concat_ws(" ", F.initcap(_pick(style, _u(s, "t0", idx))),
                        F.initcap(F.array_join(F.slice(shuffled, 1, 3), " ")))
    words = F.transform(
        F.sequence(F.lit(1), F.lit(14)),
        lambda j: F.when(_u(s, "dw", idx, j) < 0.7, _pick(vocab, _u(s, "dv", idx, j)))
        .otherwise(_pick(filler, _u(s, "df", idx, j))),
    )
    start = F.lit(_dt.datetime.combine(spec.start, _dt.time(), _dt.UTC)).cast("timestamp")
    # old items: created up to a year before the window; new items: in its last 3 days
    created = F.when(
        _is_new_item(spec, idx),
        F.timestamp_add("SECOND", (F.lit(spec.days - 3) * 86400
                                   + _u(s, "cn", idx) * 3 * 86400).cast("long"), start),
    ).otherwise(F.timestamp_add("SECOND", (-_u(s, "co", idx) * 365 * 86400).cast("long"), start))
    if spec.item_lifetime_days > 0:
        # the cluster's item k arrives as slot k - m0 (the first m0 are there from the start,
        # the slots after the arrivals are the new items)
        m0, arrivals = _cluster_sizes(spec, cluster.cast("long"))
        slot = F.floor(idx / C).cast("long") - m0
        arrived = F.timestamp_add("SECOND", _arrival_seconds(spec, idx, slot, arrivals), start)
        created = F.when(slot >= arrivals, F.timestamp_add(
            "SECOND", (F.lit(spec.days - 3) * 86400 + _u(s, "cn", idx) * 3 * 86400)
            .cast("long"), start)) \
            .when(slot < 0, F.timestamp_add("SECOND", (-_u(s, "co", idx) * 365 * 86400)
                                            .cast("long"), start)) \
            .otherwise(arrived)
    n = spark.range(0, spec.items, numPartitions=_partitions(spark, spec.items, 200_000))
    return n.withColumn("_w", words).select(
        _item_id(idx).alias("item_id"),
        title.alias("title"),
        F.concat(F.upper(F.substring(F.array_join("_w", " "), 1, 1)),
                 F.expr("substring(array_join(_w, ' '), 2)"), F.lit(".")).alias("description"),
        F.element_at(topics, cluster + 1).alias("category"),
        created.alias("created_at"),
        cluster.alias("cluster"),
    )


def events(spark, spec: SyntheticSpec) -> DataFrame:
    """Clean synthetic events, typed: the event contract's fields plus ``dt`` (arrival date)."""
    s, C, n_items = spec.seed, spec.clusters, spec.items
    # session length is 1 + floor(Exp(mean - 1)); E[floor(X)] = 1 / (e^(1/theta) - 1)
    mean_len = 1 + (1 / math.expm1(1 / (spec.session_mean - 1)) if spec.session_mean > 1 else 0)
    n_sessions = max(1, round(spec.events / mean_len))
    sess = spark.range(0, n_sessions, numPartitions=_partitions(spark, spec.events, 250_000))
    sid = F.col("id")
    user_idx = F.floor(spec.users * F.pow(_u(s, "user", sid), spec.user_skew)).cast("long")
    if spec.dynamic:  # the user's own columns, computed once per session
        cols = _user_dynamics(spec, F.col("_user"))
        sess = sess.withColumn("_user", user_idx) \
            .select("id", "_user", *[c.alias(f"_{k}") for k, c in cols.items()])
        user_idx, usr = F.col("_user"), {k: F.col(f"_{k}") for k in cols}
    else:
        usr = _user_dynamics(spec, user_idx)
    primary, secondary = usr["primary"], usr["secondary"]
    if spec.churn > 0:  # sessions fall in the user's active interval
        t0s = _span_seconds(spec, usr["join"]
                            + _u(s, "day", sid) * (usr["leave"] - usr["join"]))
    else:
        day = F.floor(_u(s, "day", sid) * spec.days).cast("int")
        t0s = (day * 86400 + _u(s, "tod", sid) * 86000).cast("long")
    if spec.drift > 0:  # after the switch the new primary rules the sessions (and ratings)
        sess = sess.withColumn("_t0s", t0s)
        t0s = F.col("_t0s")
        primary = F.when(usr["drifted"] & (t0s >= _span_seconds(spec, usr["switch"])),
                         usr["new_primary"]).otherwise(primary)
    uc = _u(s, "scl", sid)
    session_cluster = (F.when(uc < 0.7, primary).when(uc < 0.9, secondary)
                       .otherwise(F.floor(_u(s, "rc", sid) * C))).cast("long")
    # geometric session length with the asked mean
    length = (1 + F.floor(-F.log(1 - _u(s, "len", sid)) * (spec.session_mean - 1))).cast("int")
    start = F.lit(_dt.datetime.combine(spec.start, _dt.time(), _dt.UTC)).cast("timestamp")
    t0 = F.timestamp_add("SECOND", t0s, start)
    df = sess.select(
        sid.alias("sid"), user_idx.alias("user_idx"), primary.alias("primary"),
        session_cluster.alias("scluster"), t0.alias("t0"),
        *([t0s.alias("t0s")] if spec.item_lifetime_days > 0 else []),
        F.explode(F.sequence(F.lit(0), length - 1)).alias("step"),
    )
    # Each derived value is its own column, stage by stage, so Spark computes every hash once
    # instead of inlining the expressions into each use.
    step, sid = F.col("step"), F.col("sid")
    repeat = (step > 0) & (_u(s, "rep", sid, step) < 0.33)  # revisit the previous item
    df = df.withColumn("repeat", repeat) \
        .withColumn("slot", F.when(F.col("repeat"), step - 1).otherwise(step))
    slot = F.col("slot")
    df = df.withColumn("cluster", F.when(_u(s, "stay", sid, slot) < 0.9, F.col("scluster"))
                       .otherwise(F.floor(_u(s, "xc", sid, slot) * C)).cast("long"))
    cluster = F.col("cluster")
    a = spec.item_skew
    if spec.item_lifetime_days > 0:
        df = _pick_alive_item(spec, df)
    else:
        m = F.floor((n_items - 1 - cluster) / C) + 1  # items in this cluster
        rank = _power_rank(_u(s, "rank", sid, slot), m, a)
        df = df.withColumn("item_idx", cluster + C * (rank - 1))
    df = df.withColumn("ut", _u(s, "type", sid, step))
    ut = F.col("ut")
    etype = F.when(F.col("repeat"), F.when(ut < 0.40, "view").when(ut < 0.65, "click")
                   .when(ut < 0.83, "add_to_cart").when(ut < 0.95, "purchase")
                   .otherwise("rating")) \
        .otherwise(F.when(ut < 0.74, "view").when(ut < 0.90, "click")
                   .when(ut < 0.96, "add_to_cart").when(ut < 0.985, "purchase")
                   .otherwise("rating"))
    df = df.withColumn("event_type", etype)
    liked = cluster == F.col("primary")
    stars = F.when(liked, 3.5 + F.floor(_u(s, "st", sid, step) * 4) * 0.5) \
        .otherwise(1.0 + F.floor(_u(s, "st", sid, step) * 5) * 0.5)
    price = F.round(5 + _u(s, "price", F.col("item_idx")) * 195, 2)
    value = F.when(F.col("event_type") == "rating", stars) \
        .when(F.col("event_type") == "purchase", price)
    ts = F.timestamp_add("MILLISECOND",
                         (step * 45_000 + _u(s, "gap", sid, step) * 40_000).cast("long"),
                         F.col("t0"))
    late = _u(s, "late", sid, step) < 0.02  # arrives in the next day's log
    sources = F.array(F.lit("web"), F.lit("app"), F.lit("email"))
    out = df.select(
        F.substring(F.sha2(F.format_string("%d:%d:%d", F.lit(s), sid, step), 256), 1, 32)
        .alias("event_id"),
        _user_id(F.col("user_idx")).alias("user_id"),
        _item_id(F.col("item_idx")).alias("item_id"),
        "event_type",
        value.cast("double").alias("value"),
        ts.alias("ts"),
        F.format_string("s%d", sid).alias("session_id"),
        _pick(sources, _u(s, "src", F.col("user_idx"))).alias("source"),
        F.col("item_idx").alias("_item_idx"),
        late.alias("_late"),
    )
    if spec.item_lifetime_days <= 0:  # (the lifecycle never picks a new item)
        out = out.where(~_is_new_item(spec, F.col("_item_idx")))
    dt = F.to_date(F.col("ts"))
    return out.withColumn("dt", F.when(F.col("_late"), F.date_add(dt, 1)).otherwise(dt)) \
        .drop("_item_idx", "_late")


def _pick_alive_item(spec: SyntheticSpec, df: DataFrame) -> DataFrame:
    """``item_idx`` for each (session, slot) with the item lifecycle: a power-law rank among
    the cluster's items alive at the session start ``t0s``, weighted by their age.

    An item's weight is ``2^(-age / half-life)`` (at its cohort's level) times its power-law
    share among its arrival cohort, a run of about a half-life's worth of consecutive
    arrivals. Sampled in closed form: pick the start items (age ``t0s``, ``m0`` of them) or
    the arrivals, each with its share of the total weight; for an arrival, draw the age
    from the exponential truncated to [0, t0s], take the cohort of the item that arrived
    then, and a power-law rank among that cohort's items that have arrived by ``t0s``.
    Never a new item (cold start), so every event is kept: the count is exact. Vectorised:
    no join, no filter.
    """
    s, C, a = spec.seed, spec.clusters, spec.item_skew
    span = float(spec.days * 86400)
    h = math.log(2) / (spec.item_lifetime_days * 86400)  # decay rate, per second
    sid, slot, cluster = F.col("sid"), F.col("slot"), F.col("cluster")
    m0, arrivals = _cluster_sizes(spec, cluster)
    cohort = F.greatest(F.lit(1), F.round(arrivals * (spec.item_lifetime_days / spec.days)))
    df = df.withColumn("_m0", m0).withColumn("_na", arrivals) \
        .withColumn("_k", cohort.cast("long")) \
        .withColumn("_grown", -F.expm1(-h * F.col("t0s")))  # 1 - 2^(-t0s / half-life)
    m0, arrivals, cohort, grown, t = (F.col(c) for c in ("_m0", "_na", "_k", "_grown", "t0s"))
    w_start = m0 * (1 - grown)
    w_arrivals = arrivals / span * grown / h
    age = -F.log1p(-_u(s, "age", sid, slot) * grown) / h
    # the cohort's first slot (t - age >= 0 but for rounding)
    lo = F.greatest(F.lit(0), F.floor((t - age) * arrivals / span / cohort) * cohort)
    # the last slot arrived by t: the one due now, if its own jitter has let it in yet
    due = F.floor(t * arrivals / span).cast("long")
    df = df.withColumn("_lo", lo.cast("long")).withColumn("_due", due)
    due = F.col("_due")
    last = F.when(_arrival_seconds(spec, cluster + C * (m0 + due), due, arrivals) <= t, due) \
        .otherwise(due - 1)
    alive = F.least(F.col("_lo") + cohort - 1, last, arrivals - 1) - F.col("_lo") + 1
    df = df.withColumn("_alive", alive)
    use_arrival = (_u(s, "grp", sid, slot) * (w_start + w_arrivals) >= w_start) \
        & (F.col("_alive") >= 1)
    df = df.withColumn("_arr", use_arrival)
    n = F.when(F.col("_arr"), F.col("_alive")).otherwise(m0)
    first = F.when(F.col("_arr"), m0 + F.col("_lo")).otherwise(F.lit(0))
    rank = _power_rank(_u(s, "rank", sid, slot), n, a)
    # Emitted by a generator (a one-element explode): the optimizer pushes no filter on the
    # item (or on anything built from it) below it, where inlining this whole expression
    # tree into the predicate would outgrow the code generator.
    item = F.explode(F.array((cluster + C * (first + rank - 1)).cast("long")))
    keep = [c for c in df.columns if not c.startswith("_")]
    return df.select(*keep, item.alias("item_idx"))


def _ts_json(ts: Column, u: Column) -> Column:
    """Event time in the forms producers send: ISO UTC, ISO with an offset, or epoch millis."""
    iso_z = F.date_format(ts, "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'")
    plus2 = F.date_format(F.timestamp_add("HOUR", F.lit(2), ts), "yyyy-MM-dd'T'HH:mm:ss.SSS")
    minus5 = F.date_format(F.timestamp_add("HOUR", F.lit(-5), ts), "yyyy-MM-dd'T'HH:mm:ss")
    millis = F.unix_millis(ts).cast("string")
    return (F.when(u < 0.6, F.concat(F.lit('"'), iso_z, F.lit('"')))
            .when(u < 0.75, F.concat(F.lit('"'), plus2, F.lit('+02:00"')))
            .when(u < 0.85, F.concat(F.lit('"'), minus5, F.lit('-0500"')))
            .otherwise(millis))


def event_lines(spark, spec: SyntheticSpec) -> DataFrame:
    """JSON Lines of the events, dirty rows injected: columns ``raw`` (one line) and ``dt``.

    With ``dirty_fraction = f`` each event is corrupted with probability ``f`` in one of
    :data:`DIRTY_KINDS`; a ``duplicate`` keeps the event and emits it twice.
    """
    s = spec.seed
    ev = events(spark, spec)
    eid = F.col("event_id")
    body = F.to_json(F.struct("event_id", "user_id", "item_id", "event_type", "value",
                              "session_id", "source"))
    line = F.concat(F.expr("substring(_body, 1, length(_body) - 1)"), F.lit(',"ts":'),
                    _ts_json(F.col("ts"), _u(s, "tsfmt", eid)), F.lit("}"))
    df = ev.select(eid, "dt", "ts", body.alias("_body")).select(eid, "dt", line.alias("raw"))
    if spec.dirty_fraction <= 0:
        return df.select("raw", "dt")
    dirty = _u(s, "dirty", eid) < spec.dirty_fraction
    kind = F.element_at(F.array(*[F.lit(k) for k in DIRTY_KINDS]),
                        (F.floor(_u(s, "kind", eid) * len(DIRTY_KINDS)) + 1).cast("int"))
    raw = F.col("raw")
    corrupted = (
        F.when(kind == "malformed_json", F.expr("substring(raw, 1, length(raw) div 2)"))
        .when(kind == "missing_user", F.regexp_replace(raw, r'"user_id":"[^"]*",', ""))
        .when(kind == "unknown_type",
              F.regexp_replace(raw, r'"event_type":"[a-z_]*"', '"event_type":"hover"'))
        .when(kind == "bad_timestamp",
              F.regexp_replace(raw, r'"ts":.*\}$', '"ts":"2024-13-45T25:61:00Z"}'))
        .when(kind == "wrong_type", F.regexp_replace(raw, r'"user_id":"user-0*([0-9]+)"',
                                                     '"user_id":$1'))
        .when(kind == "rating_out_of_range",
              F.regexp_replace(F.regexp_replace(raw, r'"event_type":"[a-z_]*"',
                                                '"event_type":"rating"'),
                               r'("value":[-0-9.eE]+,|"value":null,)?"session_id"',
                               '"value":9.5,"session_id"'))
        .otherwise(raw)
    )
    copies = F.when(dirty & (kind == "duplicate"), F.array(raw, raw)).otherwise(
        F.array(F.when(dirty, corrupted).otherwise(raw)))
    return df.select(F.explode(copies).alias("raw"), "dt")


def catalog_lines(spark, spec: SyntheticSpec) -> DataFrame:
    """The catalog as JSON Lines (column ``raw``), in the catalog contract's format."""
    items = catalog(spark, spec)
    created = F.date_format("created_at", "yyyy-MM-dd'T'HH:mm:ss'Z'")
    return items.select(F.to_json(F.struct("item_id", "title", "description", "category",
                                           created.alias("created_at"))).alias("raw"))
