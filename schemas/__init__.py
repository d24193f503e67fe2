"""The contracts of lakerec, declared once.

* :mod:`schemas.events` -- the event types (name, default weight, what ``value`` means),
  declared once; ``event.schema.json``'s enum and value rules are derived from it.
* ``event.schema.json`` -- what producers must send (log lines and Kafka values);
  :data:`EVENT_RULES` exposes its limits to the validators.
* ``catalog.schema.json`` -- one catalog item.
* :mod:`schemas.tables` -- every Delta table's columns, partitioning and keys, from which
  Spark and Arrow schemas are derived.

Example
-------
>>> from schemas import EVENT_RULES, TABLES
>>> EVENT_RULES.event_types
('view', 'click', 'add_to_cart', 'purchase', 'rating')
>>> TABLES["interactions"].partition_by
('dt',)
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from schemas import events
from schemas.tables import TABLES, Column, TableSpec

__all__ = [
    "DEDUP_HORIZON_DAYS",
    "EVENT_RULES",
    "TABLES",
    "Column",
    "EventRules",
    "TableSpec",
    "catalog_json_schema",
    "dedup_window",
    "event_json_schema",
    "field_kinds",
]


@cache
def event_json_schema() -> dict:
    """The event JSON Schema (draft 2020-12) as a dict."""
    return json.loads(resources.files("schemas").joinpath("event.schema.json").read_text())


@cache
def catalog_json_schema() -> dict:
    """The catalog item JSON Schema as a dict."""
    return json.loads(resources.files("schemas").joinpath("catalog.schema.json").read_text())


def field_kinds(json_schema: dict) -> dict[str, frozenset[str]]:
    """Each property's JSON kinds (``string``, ``number``, ``null``; ``date-time`` for a
    string of that format), from ``type`` or the alternatives of ``oneOf``/``anyOf``.

    >>> field_kinds(event_json_schema())["ts"] == {"date-time", "number"}
    True
    """
    out = {}
    for name, prop in json_schema["properties"].items():
        kinds: set[str] = set()
        for alt in prop.get("oneOf", prop.get("anyOf", [prop])):
            types = alt.get("type", [])
            for t in [types] if isinstance(types, str) else types:
                kinds.add("date-time" if t == "string" and alt.get("format") == "date-time"
                          else t)
        out[name] = frozenset(kinds)
    return out


@dataclass(frozen=True)
class EventRules:
    """The validation limits of the event contract, read from ``event.schema.json``."""

    required: tuple[str, ...]
    id_max_len: dict[str, int]
    max_payload_bytes: int
    min_ts: str
    max_future_skew_hours: int
    optional_strings: tuple[str, ...]

    @property
    def event_types(self) -> tuple[str, ...]:
        """The valid ``event_type`` values, from :data:`schemas.events.EVENT_TYPES`."""
        return events.names()

    @property
    def valued_types(self) -> tuple[events.EventType, ...]:
        """Types whose ``value`` is required, with its range (``rating``)."""
        return events.valued_types()

    def fingerprint(self) -> str:
        """Changes whenever a rule changes: part of ``ingest``'s input fingerprint."""
        import hashlib

        body = json.dumps([self.required, self.id_max_len, self.max_payload_bytes, self.min_ts,
                           self.max_future_skew_hours, self.optional_strings], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:12] + "-" + events.rules_fingerprint()


def _load_rules() -> EventRules:
    s = event_json_schema()
    props = s["properties"]
    ext = s["x-lakerec"]
    return EventRules(
        required=tuple(s["required"]),
        id_max_len={k: props[k]["maxLength"] for k in ("event_id", "user_id", "item_id")},
        max_payload_bytes=int(ext["max_payload_bytes"]),
        min_ts=ext["min_ts"],
        max_future_skew_hours=int(ext["max_future_skew_hours"]),
        optional_strings=("session_id", "source", "request_id"),
    )


EVENT_RULES = _load_rules()


# Duplicates are looked up this many days of arrival either side (``dedup_horizon_days``).
DEDUP_HORIZON_DAYS = 7


def dedup_window(arrivals: Iterable[_dt.date], horizon_days: int) -> tuple[_dt.date, _dt.date]:
    """The arrival dates (``dt`` partitions of ``interactions``) whose event ids records
    arriving on ``arrivals`` are checked against: ``horizon_days`` either side of them.

    The one rule of both ``ingest`` (a log date, perhaps a backfill: both sides) and the
    stream (today: in effect the days before). A copy that arrives more than the horizon
    after the first is kept as a new event; in exchange a day's deduplication reads a fixed
    number of days, the same on day 10 as on day 1,000. Copies within one input (one ingest
    pass, one micro-batch) are always caught.

    >>> dedup_window([_dt.date(2024, 6, 10)], 7)
    (datetime.date(2024, 6, 3), datetime.date(2024, 6, 17))
    """
    days = list(arrivals)
    if horizon_days < 0:
        raise ValueError("horizon_days must be >= 0")
    span = _dt.timedelta(days=horizon_days)
    return min(days) - span, max(days) + span
