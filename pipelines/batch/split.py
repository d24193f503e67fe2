"""The time splits training is judged on, chosen from the data.

* :func:`auto_window_days` -- the training window when the card leaves it open: long enough
  to hold ``share`` of the recent users' history, not a fixed number of days;
* :func:`size_holdout` -- the promotion holdout: the fewest days (from the card's
  ``holdout_days``, up to ``max_holdout_days``) that hold ``min_eval_users`` evaluated users;
* :func:`relevant_pairs` -- the evaluated users' held-out items: items a returning user
  touched at or after a cutoff and not before it, in the window (what serving can list).

The same rule cuts the promotion holdout ``[cutoff, end)`` and the validation split
``[cutoff - h, cutoff)`` the tuner and the popularity baseline are chosen on, so tuning
never sees the promotion holdout.

Example
-------
>>> days = auto_window_days(spark, "/lh", version=7, as_of=date(2024, 6, 30))  # doctest: +SKIP
>>> h, users = size_holdout(events, card)                                     # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import logging
import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.model.card import ModelCard
from pipelines.storage import delta
from schemas.tables import INTERACTIONS

log = logging.getLogger(__name__)

# the longest window chosen from the data, and the shortest
MAX_WINDOW_DAYS = 730
MIN_WINDOW_DAYS = 14
# "recent users": those active in the last RECENT_DAYS days before the window's end
RECENT_DAYS = 7
WINDOW_SHARE = 0.9


def _day_end(as_of: _dt.date) -> _dt.datetime:
    return _dt.datetime.combine(as_of + _dt.timedelta(days=1), _dt.time(), _dt.UTC)


def auto_window_days(spark, lakehouse: str, *, version: int, as_of: _dt.date,
                     share: float = WINDOW_SHARE, cap: int = MAX_WINDOW_DAYS,
                     least: int = MIN_WINDOW_DAYS) -> int:
    """Days of history that hold ``share`` of the events of users active in the last
    :data:`RECENT_DAYS` days, rounded up to a week, within
    [``max(MIN_WINDOW_DAYS, least)``, ``cap``] and no longer than the data (but at least
    ``least``: room for the holdout and validation splits).

    Cost: one pass over at most ``cap`` days of ``interactions`` partitions (a semi-join on
    the recent users and an approximate percentile): bounded by the cap, not the table.
    """
    end = _day_end(as_of)
    first = end - _dt.timedelta(days=cap)
    days = [first.date() + _dt.timedelta(days=d) for d in range(cap + 1)]
    ev = delta.read(spark, lakehouse, INTERACTIONS, version=version, partitions={"dt": days}) \
        .where((F.col("ts") >= F.lit(first)) & (F.col("ts") < F.lit(end))) \
        .select("user_id", "ts")
    recent = ev.where(F.col("ts") >= F.lit(end - _dt.timedelta(days=RECENT_DAYS))) \
        .select("user_id").distinct()
    age = (F.lit(end).cast("double") - F.col("ts").cast("double")) / 86400.0
    row = ev.join(recent, "user_id", "left_semi").agg(
        F.percentile_approx(age, share, 1000).alias("q"), F.max(age).alias("span")).first()
    if row is None or row["q"] is None:  # nobody recent: the whole (capped) span
        span = ev.agg(F.max(age)).first()[0]
        q = span if span is not None else MIN_WINDOW_DAYS
        longest = q
    else:
        q, longest = row["q"], ev.agg(F.max(age)).first()[0]
    weeks = 7 * math.ceil(max(float(q), 1.0) / 7)
    data_days = math.ceil(float(longest or 1.0))
    chosen = int(max(least, min(cap, max(MIN_WINDOW_DAYS, min(weeks, 7 * math.ceil(data_days / 7))))))
    log.info("window: %d days (%.0f%% of the history of users active in the last %d days lies "
             "within %.1f days)", chosen, share * 100, RECENT_DAYS, float(q))
    return chosen


def user_spans(events: DataFrame) -> DataFrame:
    """``user_id, first, last_new``: each user's first event time and the first-touch time of
    their most recently first-touched item. A user is evaluated at a cutoff ``c`` exactly
    when ``first < c <= last_new`` (history before, a new item after).

    Cost: two aggregations of ``events`` (by pair, then by user).
    """
    pairs = events.groupBy("user_id", "item_id").agg(F.min("ts").alias("t"))
    return pairs.groupBy("user_id").agg(F.min("t").alias("first"), F.max("t").alias("last_new"))


def size_holdout(events: DataFrame, card: ModelCard, *, before: _dt.datetime | None = None
                 ) -> tuple[int, int]:
    """(holdout days, evaluated users): the fewest days from ``card.holdout_days`` to
    ``card.max_holdout_days`` (and at most a third of the window: the validation split
    is as long again) whose holdout ending at
    ``before`` (default: the window's end) holds ``card.min_eval_users`` evaluated users;
    if none does, the length with the most (the gate is then under-powered, and says so).

    Cost: :func:`user_spans` and a histogram of (first day, last-new day), at most
    ``window_days²`` rows, to the driver.
    """
    end = before or card.end
    hist = user_spans(events).select(
        F.floor((F.lit(end).cast("double") - F.col("first").cast("double")) / 86400.0)
        .alias("f"),
        F.floor((F.lit(end).cast("double") - F.col("last_new").cast("double")) / 86400.0)
        .alias("g")).groupBy("f", "g").count().collect()
    # the holdout of h days is [end - h days, end): a user counts when their first event
    # lies at least h days back (age f >= h) and their last new item less than h (g < h)
    longest = max(card.holdout_days, min(card.max_holdout_days, card.window_days // 3))
    best = (card.holdout_days, -1)
    for h in range(card.holdout_days, longest + 1):
        n = sum(r["count"] for r in hist if r["f"] >= h and r["g"] < h)
        if n >= card.min_eval_users:
            return h, n
        if n > best[1]:
            best = (h, n)
    log.warning("the holdout holds at most %d evaluated users (fewer than min_eval_users = "
                "%d) at %d days: the gate's interval will be wide", best[1],
                card.min_eval_users, best[0])
    return best[0], max(0, best[1])


def sample_users(df: DataFrame, limit: int, *, salt: str = "lakerec.eval") -> DataFrame:
    """At most about ``limit`` users of ``df`` (``user_id`` column): a fixed hash sample, so
    the same users are drawn for the model, its opponents and a re-run.

    Cost: one count of the distinct users, then a filter.
    """
    users = df.select("user_id").distinct()
    n = users.count()
    if n <= limit:
        return df
    keep = users.where(
        F.pmod(F.xxhash64(F.lit(salt), "user_id"), F.lit(1 << 30)) < F.lit(
            int((1 << 30) * limit / n)))
    return df.join(keep, "user_id", "left_semi")


def relevant_pairs(events: DataFrame, *, start: _dt.datetime, cutoff: _dt.datetime,
                   end: _dt.datetime, max_users: int) -> DataFrame:
    """``user_id, item_id``: items users with events in ``[start, cutoff)`` first touched in
    ``[cutoff, end)`` (the held-out items serving could list), at most ``max_users`` users.

    Cost: a semi- and an anti-join of the holdout's pairs with the training pairs.
    """
    train = events.where((F.col("ts") >= F.lit(start)) & (F.col("ts") < F.lit(cutoff))) \
        .select("user_id", "item_id").distinct()
    test = events.where((F.col("ts") >= F.lit(cutoff)) & (F.col("ts") < F.lit(end))) \
        .select("user_id", "item_id").distinct()
    rel = test.join(train.select("user_id").distinct(), "user_id", "left_semi") \
        .join(train, ["user_id", "item_id"], "left_anti")
    return sample_users(rel, max_users)
