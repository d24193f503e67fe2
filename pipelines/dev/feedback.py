"""Producing feedback to Kafka: replayed log lines, or synthetic purchases for chosen users.

Used by ``lakerec produce``, the demo, the tests and the latency benchmark. Values are the
event JSON of ``schemas/event.schema.json``; the key is the ``user_id``, so
one user's events stay in order on one partition.

Example
-------
>>> p = make_producer("127.0.0.1:9092")                                    # doctest: +SKIP
>>> send(p, "feedback", purchases(["u000042"], ["i000007", "i000027"]), rate=100)
... # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping

log = logging.getLogger(__name__)


def make_producer(bootstrap: str, *, options: Mapping[str, str] | None = None,
                  one_record_per_batch: bool = False):
    """A ``KafkaProducer`` (acks=all, idempotent) with the stream's security options.

    ``one_record_per_batch`` sends every record as its own batch: the bundled local broker
    counts a multi-record batch as one offset in its end offsets, which would leave records
    unread behind the end offset. Apache Kafka does not need it.
    """
    from kafka import KafkaProducer

    from pipelines.streaming.kafka_source import client_config

    cfg = client_config({"kafka.bootstrap.servers": bootstrap, **(options or {})})
    extra = {"batch_size": 1, "linger_ms": 0, "acks": 1, "enable_idempotence": False} \
        if one_record_per_batch else {"linger_ms": 5}
    return KafkaProducer(**cfg, **extra)


def event(user: str, item: str, event_type: str = "purchase", *, ts: _dt.datetime | None = None,
          value: float | None = None, event_id: str | None = None) -> dict:
    """One event as the contract wants it (ISO-8601 time with offset)."""
    ts = ts or _dt.datetime.now(_dt.UTC)
    e = {"event_id": event_id or f"fb-{uuid.uuid4().hex}", "user_id": user, "item_id": item,
         "event_type": event_type, "ts": ts.isoformat(timespec="milliseconds"),
         "source": "lakerec-produce"}
    if value is not None:
        e["value"] = value
    return e


def purchases(users: list[str], items: list[str], *, event_type: str = "purchase",
              ts: _dt.datetime | None = None) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` records: every user buys every item, in order, at ``ts`` (default
    now)."""
    for u in users:
        for i in items:
            yield u.encode(), json.dumps(event(u, i, event_type, ts=ts)).encode()


def untouched_cluster_items(lakehouse: str, user: str, *, n: int = 5, skip: int = 0,
                            category: str | None = None) -> tuple[str, list[str]]:
    """The most popular items of the category ``user`` touched least (one they never touched
    when there is one; the busiest such), or of ``category``.

    ``skip`` leaves out that many best sellers first (the demo buys the 6th-10th, so the
    best sellers are what the fold-in can then recommend). Returns ``(category, item ids)``:
    the demo's "taste from a new cluster". Cost: two aggregations over ``interactions``.
    """
    from pipelines.storage.sql import query

    if category is None:
        rows = query(lakehouse, f"""
            WITH pop AS (SELECT it.category, count(*) AS n
                         FROM interactions i JOIN items it USING (item_id)
                         WHERE it.category IS NOT NULL GROUP BY 1),
                 mine AS (SELECT it.category, count(*) AS m
                          FROM interactions i JOIN items it USING (item_id)
                          WHERE i.user_id = '{_sql(user)}' AND it.category IS NOT NULL
                          GROUP BY 1)
            SELECT pop.category FROM pop LEFT JOIN mine USING (category)
            ORDER BY coalesce(mine.m, 0), pop.n DESC, 1 LIMIT 1""")[1]
        if not rows:
            raise ValueError("no item of the catalog has a category")
        category = rows[0][0]
    items = [r[0] for r in query(lakehouse, f"""
        SELECT i.item_id FROM interactions i JOIN items it USING (item_id)
        WHERE it.category = '{_sql(category)}'
        GROUP BY 1 ORDER BY count(DISTINCT i.user_id) DESC, 1
        LIMIT {int(n)} OFFSET {int(skip)}""")[1]]
    return category, items


def _sql(text: str) -> str:
    return text.replace("'", "''")


def log_lines(folder: str) -> Iterator[tuple[bytes | None, bytes]]:
    """Raw lines of a JSON Lines log folder (``dt=*/`` inside or not), as they are.

    Bad lines are sent too: the stream must quarantine them. The key is the line's
    ``user_id`` when it can be read, else none.
    """
    files = []
    for dirpath, _dirs, names in os.walk(folder):
        files += [os.path.join(dirpath, n) for n in names
                  if n.endswith((".jsonl", ".json")) and not n.startswith((".", "_"))]
    for path in sorted(files):
        with open(path, "rb") as f:
            for line in f:
                line = line.rstrip(b"\r\n")
                if not line:
                    continue
                try:
                    key = str(json.loads(line)["user_id"]).encode()
                except (ValueError, KeyError, TypeError):
                    key = None
                yield key, line


def send(producer, topic: str, records: Iterable[tuple[bytes | None, bytes]], *,
         rate: float | None = None, limit: int | None = None,
         on_sent=None) -> int:
    """Send ``records`` at ``rate`` records/s (``None``: as fast as possible); returns the count.

    ``on_sent(i, send_time)`` is called as each record is handed to the producer (the latency
    benchmark stamps produce times with it).
    """
    t0 = time.perf_counter()
    n = 0
    for key, value in records:
        if limit is not None and n >= limit:
            break
        if rate:
            ahead = t0 + n / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        producer.send(topic, key=key, value=value)
        if on_sent is not None:
            on_sent(n, time.time())
        n += 1
    producer.flush()
    return n


def random_events(users: list[str], items: list[str], n: int, *, seed: int = 0,
                  prefix: str = "ev", new_users: float = 0.0,
                  types: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
                  ) -> Iterator[tuple[bytes, bytes]]:
    """``n`` valid events of random known users (a ``new_users`` share of unseen ones) on
    random ``items``, with unique ids ``<prefix>-<seed>-<i>``."""
    import random

    rnd = random.Random(seed)
    for i in range(n):
        u = f"new-{prefix}-{rnd.randrange(10**6):06d}" if rnd.random() < new_users \
            else rnd.choice(users)
        e = event(u, rnd.choice(items), rnd.choice(types), event_id=f"{prefix}-{seed}-{i}")
        yield u.encode(), json.dumps(e).encode()
