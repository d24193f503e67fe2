"""The event types, declared once: name, default confidence weight, what ``value`` means.

Everything else derives from :data:`EVENT_TYPES`: the ``event_type`` enum and the value rules
of ``event.schema.json`` (checked by a test, rewritten by ``python -m schemas.events``), the
validators of ``ingest`` and the stream, the default training weights, the confidence ``r``
of an event in batch training (Spark) and in the stream's fold-in (numpy), and the input
fingerprint that makes ``ingest`` re-validate a day when the rules change. Adding an event
type is one line here.

An event's contribution to the confidence of its user-item pair is

    r_e = value_e            for a type whose value is the weight (``rating``)
    r_e = weights[type_e]    otherwise (0 for a type missing from ``weights``)

and a pair's ``r_ui`` is the sum over its events (:func:`event_r`). Being linear in each
type's events, it is also a function of per-type sufficient statistics -- the number of
events ``n`` and the sum of their values ``total`` -- which is how the stream keeps a user's
history (:func:`pair_r`): ``r = total`` for a valued type, ``n * weights[type]`` otherwise.

Example
-------
>>> [t.name for t in EVENT_TYPES]
['view', 'click', 'add_to_cart', 'purchase', 'rating']
>>> default_weights()
{'view': 1.0, 'click': 2.0, 'add_to_cart': 4.0, 'purchase': 8.0}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EventType:
    """One event type of the contract.

    Attributes
    ----------
    name : the ``event_type`` string producers send
    weight : default confidence weight per event; ``None`` when the event's ``value`` is
        its weight (then ``value_range`` is required and enforced by validation)
    value : what ``value`` means for this type (documentation)
    value_range : ``(min, max)`` of a required value, inclusive
    """

    name: str
    weight: float | None
    value: str = "optional, not used by training"
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if (self.weight is None) != (self.value_range is not None):
            raise ValueError(f"event type {self.name}: a type without a weight weighs by its "
                             "value and needs a value_range (and only such a type has one)")

    @property
    def value_is_weight(self) -> bool:
        return self.weight is None


EVENT_TYPES: tuple[EventType, ...] = (
    EventType("view", 1.0),
    EventType("click", 2.0),
    EventType("add_to_cart", 4.0),
    EventType("purchase", 8.0, "optional: the price paid, not used by training"),
    EventType("rating", None, "required: the rating, 0.5 to 5, used as the weight", (0.5, 5.0)),
)
"""The one table of event types (module-level so that tests can extend it)."""


def event_types() -> tuple[EventType, ...]:
    """The current table (read at call time, never captured at import)."""
    return EVENT_TYPES


def names() -> tuple[str, ...]:
    return tuple(t.name for t in event_types())


def valued_types() -> tuple[EventType, ...]:
    """Types whose ``value`` is required and is the event's weight."""
    return tuple(t for t in event_types() if t.value_is_weight)


def default_weights() -> dict[str, float]:
    """``{type: weight}`` for every type that has a weight: training's default ``--weights``."""
    return {t.name: float(t.weight) for t in event_types() if t.weight is not None}


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Validate user weights: known, weighted types only; finite and non-negative."""
    import math

    known = {t.name for t in event_types() if not t.value_is_weight}
    out = {}
    for name, w in weights.items():
        if name not in known:
            raise ValueError(f"unknown or value-weighted event type {name!r} in weights "
                             f"(weighted types: {', '.join(sorted(known))})")
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight of {name} must be a finite number >= 0, not {w}")
        out[name] = w
    return out


def event_r(event_type, value, weights: Mapping[str, float]):
    """``r_e`` of each event (see the module docstring), as a float64 numpy array.

    The pure twin of :func:`pipelines.batch.trainers.confidence` (Spark); a test holds the
    two to the same numbers.
    """
    import numpy as np

    et = np.asarray(event_type, dtype=object)
    r = np.zeros(len(et), np.float64)
    for name, w in weights.items():
        r[et == name] = float(w)
    vals = np.asarray(value, dtype=np.float64) if len(et) else np.zeros(0)
    for t in valued_types():
        m = et == t.name
        r[m] = vals[m]
    return r


def pair_r(event_type, n, total, weights: Mapping[str, float]):
    """``r`` of (user, item, type) groups from their event count ``n`` and value sum ``total``.

    Equal to the sum of :func:`event_r` over the group's events (a test holds the two to the
    same numbers): the stream's history keeps these two numbers per group instead of every
    event.
    """
    import numpy as np

    et = np.asarray(event_type, dtype=object)
    cnt = np.asarray(n, dtype=np.float64) if len(et) else np.zeros(0)
    r = np.zeros(len(et), np.float64)
    for name, w in weights.items():
        m = et == name
        r[m] = float(w) * cnt[m]
    tot = np.asarray(total, dtype=np.float64) if len(et) else np.zeros(0)
    for t in valued_types():
        m = et == t.name
        r[m] = tot[m]
    return r


def rules_fingerprint() -> str:
    """A short hash of the table: part of ``ingest``'s input fingerprint."""
    import hashlib

    # what validation depends on: the names and the value rules (not the weights)
    body = json.dumps([[t.name, t.value_range] for t in event_types()])
    return hashlib.sha256(body.encode()).hexdigest()[:12]


def render_schema(schema: dict) -> dict:
    """``schema`` (event.schema.json) with its enum and value rules derived from the table."""
    out = json.loads(json.dumps(schema))
    out["properties"]["event_type"]["enum"] = list(names())
    out["allOf"] = [
        {"if": {"properties": {"event_type": {"const": t.name}}},
         "then": {"required": ["value"],
                  "properties": {"value": {"type": "number", "minimum": t.value_range[0],
                                           "maximum": t.value_range[1]}}}}
        for t in valued_types()]
    return out


def _write_schema() -> str:  # pragma: no cover - a maintainer's command
    from importlib import resources

    path = resources.files("schemas").joinpath("event.schema.json")
    current = json.loads(path.read_text())
    text = json.dumps(render_schema(current), indent=2) + "\n"
    with open(str(path), "w") as f:
        f.write(text)
    return str(path)


if __name__ == "__main__":  # pragma: no cover
    print("wrote", _write_schema())
