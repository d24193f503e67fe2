"""The contracts of lakerec, declared once.

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

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from schemas.tables import TABLES, Column, TableSpec

__all__ = [
    "EVENT_RULES",
    "TABLES",
    "Column",
    "EventRules",
    "TableSpec",
    "catalog_json_schema",
    "event_json_schema",
]


@cache
def event_json_schema() -> dict:
    """The event JSON Schema (draft 2020-12) as a dict."""
    return json.loads(resources.files("schemas").joinpath("event.schema.json").read_text())


@cache
def catalog_json_schema() -> dict:
    """The catalog item JSON Schema as a dict."""
    return json.loads(resources.files("schemas").joinpath("catalog.schema.json").read_text())


@dataclass(frozen=True)
class EventRules:
    """The validation limits of the event contract, read from ``event.schema.json``."""

    required: tuple[str, ...]
    event_types: tuple[str, ...]
    id_max_len: dict[str, int]
    rating_min: float
    rating_max: float
    max_payload_bytes: int
    min_ts: str
    max_future_skew_hours: int
    optional_strings: tuple[str, ...]


def _load_rules() -> EventRules:
    s = event_json_schema()
    props = s["properties"]
    rating = s["allOf"][0]["then"]["properties"]["value"]
    ext = s["x-lakerec"]
    return EventRules(
        required=tuple(s["required"]),
        event_types=tuple(props["event_type"]["enum"]),
        id_max_len={k: props[k]["maxLength"] for k in ("event_id", "user_id", "item_id")},
        rating_min=float(rating["minimum"]),
        rating_max=float(rating["maximum"]),
        max_payload_bytes=int(ext["max_payload_bytes"]),
        min_ts=ext["min_ts"],
        max_future_skew_hours=int(ext["max_future_skew_hours"]),
        optional_strings=("session_id", "source"),
    )


EVENT_RULES = _load_rules()
