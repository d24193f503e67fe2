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
DIRTY_KINDS = ("malformed_json", "missing_user", "unknown_type", "bad_timestamp", "duplicate",
               "wrong_type", "rating_out_of_range")


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and shape of a synthetic data set."""

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

    def __post_init__(self) -> None:
        for name in ("users", "items", "events", "days", "clusters"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.dirty_fraction <= 0.5:
            raise ValueError("dirty_fraction must be within [0, 0.5]")
        if self.clusters > self.items:
            raise ValueError("clusters cannot exceed items")

    def as_dict(self) -> dict:
        return {k: (v.isoformat() if isinstance(v, _dt.date) else v)
                for k, v in asdict(self).items()}


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
    primary = F.pmod(F.xxhash64(F.lit(s), F.lit("c1"), user_idx), F.lit(C))
    secondary = F.pmod(F.xxhash64(F.lit(s), F.lit("c2"), user_idx), F.lit(C))
    uc = _u(s, "scl", sid)
    session_cluster = (F.when(uc < 0.7, primary).when(uc < 0.9, secondary)
                       .otherwise(F.floor(_u(s, "rc", sid) * C))).cast("long")
    # geometric session length with the asked mean
    length = (1 + F.floor(-F.log(1 - _u(s, "len", sid)) * (spec.session_mean - 1))).cast("int")
    day = F.floor(_u(s, "day", sid) * spec.days).cast("int")
    start = F.lit(_dt.datetime.combine(spec.start, _dt.time(), _dt.UTC)).cast("timestamp")
    t0 = F.timestamp_add("SECOND", (day * 86400 + _u(s, "tod", sid) * 86000).cast("long"), start)
    df = sess.select(
        sid.alias("sid"), user_idx.alias("user_idx"), primary.alias("primary"),
        session_cluster.alias("scluster"), t0.alias("t0"),
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
    m = F.floor((n_items - 1 - cluster) / C) + 1  # items in this cluster
    a = spec.item_skew
    # inverse CDF of p(r) ~ r^-a on [1, m + 1)
    r = F.floor(F.pow(1 + _u(s, "rank", sid, slot) * (F.pow(m + 1, 1 - a) - 1), 1 / (1 - a)))
    rank = F.least(F.greatest(r, F.lit(1)), m).cast("long")
    df = df.withColumn("item_idx", cluster + C * (rank - 1)) \
        .withColumn("ut", _u(s, "type", sid, step))
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
    out = out.where(~_is_new_item(spec, F.col("_item_idx")))
    dt = F.to_date(F.col("ts"))
    return out.withColumn("dt", F.when(F.col("_late"), F.date_add(dt, 1)).otherwise(dt)) \
        .drop("_item_idx", "_late")


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
