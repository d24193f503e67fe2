"""The exposure message: what ``lakerec serve`` sends to Kafka for every list it serves, and
what ``lakerec stream --exposures`` lands in the ``exposures`` table. Declared once here.

One exposure (one served list) is a JSON object::

    {"request_id": "3f2a...", "user_id": "u1", "route": "recommendations",
     "served_at": "2026-12-07T10:00:00.123456Z", "model_version": 4, "variant": null,
     "items": [{"item_id": "i9", "position": 1, "source": "als"}, ...]}

and a Kafka record carries a batch of them: ``{"exposures": [exposure, ...]}``
(:func:`envelope`), so that the API sends a few records a second, not one per request.

Example
-------
>>> m = message("r1", "u1", "recommendations", 1.5, 3, None, [("i9", 1, "als")])
>>> m["items"][0]
{'item_id': 'i9', 'position': 1, 'source': 'als'}
"""

from __future__ import annotations

import datetime as _dt

# (field, Spark SQL type of the landing's from_json schema)
FIELDS = (("request_id", "string"), ("user_id", "string"), ("route", "string"),
          ("served_at", "string"), ("model_version", "bigint"), ("variant", "string"),
          ("items", "array<struct<item_id:string,position:int,source:string>>"))
ROUTES = ("recommendations", "similar")


def ddl() -> str:
    """One exposure as a Spark DDL struct (for ``from_json``)."""
    return "struct<" + ", ".join(f"{n}: {t}" for n, t in FIELDS) + ">"


def envelope_ddl() -> str:
    """A Kafka record's value as a Spark DDL schema (for ``from_json``)."""
    return f"exposures array<{ddl()}>"


def envelope(exposures: list[dict]) -> dict:
    """A Kafka record's value: a batch of :func:`message` objects."""
    return {"exposures": exposures}


def message(request_id: str, user_id: str, route: str, served_at: float,
            model_version: int | None, variant: str | None,
            items: list[tuple[str, int, str]]) -> dict:
    """The message for one served list; ``served_at`` in epoch seconds."""
    t = _dt.datetime.fromtimestamp(served_at, _dt.UTC)
    return {"request_id": request_id, "user_id": user_id, "route": route,
            "served_at": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "model_version": model_version,
            "variant": variant,
            "items": [{"item_id": i, "position": p, "source": s} for i, p, s in items]}
