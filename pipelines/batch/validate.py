"""Validation of raw events and catalog records against the contracts in ``schemas/``.

One implementation serves the batch ingest (lines of log files) and the stream (Kafka record
values): both arrive as a ``raw`` payload column. Each payload is parsed once into a Spark
VARIANT (``try_parse_json``) so that JSON *types* can be checked exactly -- a user id sent as
the number 5 is ``wrong_type:user_id``, not silently the string "5" -- and every rejected row
carries the first rule it broke as a machine-readable ``reason``.

Reasons: ``empty_payload``, ``oversized``, ``invalid_utf8``, ``malformed_json``,
``not_an_object``, ``missing_field:<f>``, ``wrong_type:<f>``, ``bad_length:<f>``,
``unknown_event_type``, ``value_out_of_range``, ``bad_timestamp``, ``ts_out_of_range``
(and, from :mod:`pipelines.batch.ingest`, ``duplicate_event_id`` / ``duplicate_already_ingested``).

Example
-------
>>> checked = check_events(lines, max_ts=F.lit(cutoff))          # doctest: +SKIP
>>> valid, rejected = split(checked.persist())                   # doctest: +SKIP
"""

from __future__ import annotations

from typing import NamedTuple

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from schemas import EVENT_RULES

_NUMERIC = ("TINYINT", "SMALLINT", "INT", "BIGINT", "FLOAT", "DOUBLE", "DECIMAL")
# ISO-8601 with a mandatory UTC offset: 'Z', '+02:00' (XXX) or '+0200' (XX); 0-9 fraction digits.
_ISO_FORMATS = ("yyyy-MM-dd'T'HH:mm:ss[.SSSSSSSSS]XXX", "yyyy-MM-dd'T'HH:mm:ss[.SSSSSSSSS]XX")
EVENT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "value", "ts", "session_id",
                 "source", "request_id")


class Field(NamedTuple):
    """One payload field: its VARIANT value and, computed once per row, its JSON type."""

    v: Column
    t: Column  # STRING, BIGINT, DECIMAL(3,1), OBJECT<...>, VOID (JSON null); NULL if absent


def _vtype(value: Column) -> Column:
    """The JSON type of a VARIANT value: STRING, BIGINT, DECIMAL(3,1), OBJECT<...>, VOID (null)."""
    return F.schema_of_variant(value)


def _is_null(field: Field) -> Column:
    # absent key -> SQL NULL; JSON null -> VARIANT null, whose type is VOID
    return field.v.isNull() | (field.t == "VOID")


def _is_string(field: Field) -> Column:
    return field.t == "STRING"


def _is_number(field: Field) -> Column:
    return field.t.isin(*_NUMERIC[:-1]) | field.t.startswith("DECIMAL")


def _as_string(field: Field) -> Column:
    return F.try_variant_get(field.v, "$", "string")


def _as_double(field: Field) -> Column:
    return F.try_variant_get(field.v, "$", "double")


def parse_ts(field: Field) -> Column:
    """Event time from an ISO-8601 string with offset, or a number of epoch milliseconds."""
    text = _as_string(field)
    iso = F.coalesce(*[F.try_to_timestamp(text, F.lit(fmt)) for fmt in _ISO_FORMATS])
    millis = _as_double(field)
    from_ms = F.when(F.abs(millis) < 1e16, F.timestamp_micros(F.round(millis * 1000).cast("long")))
    return F.when(_is_string(field), iso).when(_is_number(field), from_ms)


def _payload(raw: Column) -> tuple[Column, Column]:
    """(text, byte size) of a string or binary payload."""
    text = raw.cast("string")
    return text, F.octet_length(raw)


# A JSON ``\\uXXXX`` escape of a UTF-16 surrogate. Escaped backslashes are replaced first
# (left to right, as JSON reads them) by a character that is neither a backslash nor a hex
# digit -- deleting them would glue "\\ud800\\\\\\udc00" into a pair -- and well-formed
# pairs next; any surrogate escape left is a lone one, which the JSON parser would turn
# into '?', so that two distinct ids could collide.
_ESCAPED_BACKSLASH = r"\\\\"
_SURROGATE_PAIR = r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_SURROGATE = r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}"


def lone_surrogate(text: Column) -> Column:
    """True where a JSON text escapes an unpaired UTF-16 surrogate (``"u\\ud800x"``)."""
    rest = F.regexp_replace(F.regexp_replace(text, _ESCAPED_BACKSLASH, "#"), _SURROGATE_PAIR,
                            "")
    # the cheap test first: almost no payload escapes a surrogate at all
    return F.when(text.rlike(_SURROGATE), rest.rlike(_SURROGATE)).otherwise(F.lit(False))


def _first_failure(rules: list[tuple[Column, str]]) -> Column:
    expr = None
    for cond, reason in rules:
        expr = F.when(cond, F.lit(reason)) if expr is None else expr.when(cond, F.lit(reason))
    return expr  # NULL when every rule passed


def _string_rules(fields: dict[str, Field], name: str, *, required: bool, max_len: int,
                  min_len: int = 1) -> list[tuple[Column, str]]:
    f = fields[name]
    present = ~_is_null(f)
    length = F.char_length(_as_string(f))
    rules = []
    if required:
        rules.append((_is_null(f), f"missing_field:{name}"))
    rules.append((present & ~_is_string(f), f"wrong_type:{name}"))
    rules.append((present & ((length < min_len) | (length > max_len)), f"bad_length:{name}"))
    return rules


class Checker(NamedTuple):
    """Validation expressions built once, applied to any number of DataFrames.

    Building the expressions costs hundreds of JVM calls, and adding them one ``withColumn``
    at a time re-analyses the plan each time; a stream validates every micro-batch, so it
    builds a checker once and applies it per batch (four projections and a select).
    """

    stages: tuple[dict[str, Column], ...]  # added in order, each with one withColumns
    out: tuple[Column, ...]  # selected after the input's own columns

    def __call__(self, lines: DataFrame) -> DataFrame:
        df = lines
        for stage in self.stages:
            df = df.withColumns(stage)
        return df.select(*lines.columns, *self.out)


def _parse(raw_col: str, names: tuple[str, ...]
           ) -> tuple[list[dict[str, Column]], dict[str, Field], list[tuple[Column, str]]]:
    """Parse each payload once into a VARIANT and pull out ``names``.

    Returns the projections that add ``_v``, ``raw_size`` and one ``_f_<name>`` / ``_t_<name>``
    column per field, the field columns, and the payload-level rules every record is checked
    against first.
    """
    raw = F.col(raw_col)
    text, size = _payload(raw)
    utf8 = F.is_valid_utf8(text)
    limit = EVENT_RULES.max_payload_bytes
    stages = [
        {"_v": F.when((size <= limit) & utf8, F.try_parse_json(text)),
         "raw_size": size.cast("long")},
        # one column each, so later rules reuse them instead of re-extracting
        {f"_f_{n}": F.variant_get(F.col("_v"), f"$.{n}", "variant") for n in names},
        # Types in a projection of their own: the rules test them dozens of times per row,
        # and Spark does not collapse a projection whose costly outputs are used more than
        # once.
        {"_vt": _vtype(F.col("_v")), **{f"_t_{n}": _vtype(F.col(f"_f_{n}")) for n in names}},
    ]
    rules = [
        (raw.isNull() | (size == 0), "empty_payload"),
        (size > limit, "oversized"),
        (~utf8 | lone_surrogate(text), "invalid_utf8"),
        (F.col("_v").isNull(), "malformed_json"),
        (~F.col("_vt").startswith("OBJECT"), "not_an_object"),
    ]
    return stages, {n: Field(F.col(f"_f_{n}"), F.col(f"_t_{n}")) for n in names}, rules


def event_checker(*, max_ts: Column, raw_col: str = "raw") -> Checker:
    """The event rules as a reusable :class:`Checker` (see :func:`check_events`)."""
    r = EVENT_RULES
    stages, fields, rules = _parse(raw_col, EVENT_COLUMNS)
    event_type = _as_string(fields["event_type"])
    value = _as_double(fields["value"])
    ts = parse_ts(fields["ts"])
    for n in ("event_id", "user_id", "item_id"):
        rules += _string_rules(fields, n, required=True, max_len=r.id_max_len[n])
    rules += _string_rules(fields, "event_type", required=True, max_len=64)
    rules.append((~event_type.isin(*r.event_types), "unknown_event_type"))
    rules.append((~_is_null(fields["value"]) & ~_is_number(fields["value"]), "wrong_type:value"))
    # 1e400 parses as an infinite double: no type's value may be stored as inf
    rules.append((~_is_null(fields["value"]) & (F.abs(value) == F.lit(float("inf"))),
                  "value_out_of_range"))
    for t in r.valued_types:  # types weighted by their value: required, in range
        is_t = event_type == t.name
        lo, hi = t.value_range
        rules.append((is_t & _is_null(fields["value"]), "missing_field:value"))
        rules.append((is_t & ((value < lo) | (value > hi)), "value_out_of_range"))
    rules.append((_is_null(fields["ts"]), "missing_field:ts"))
    rules.append((~_is_string(fields["ts"]) & ~_is_number(fields["ts"]), "wrong_type:ts"))
    rules.append((ts.isNull(), "bad_timestamp"))
    rules.append(((ts < F.lit(r.min_ts).cast("timestamp")) | (ts > max_ts), "ts_out_of_range"))
    for n in r.optional_strings:
        rules += _string_rules(fields, n, required=False, max_len=128, min_len=0)
    stages.append({"reason": _first_failure(rules)})
    return Checker(tuple(stages), (
        F.when(_is_string(fields["event_id"]), _as_string(fields["event_id"])).alias("event_id"),
        _as_string(fields["user_id"]).alias("user_id"),
        _as_string(fields["item_id"]).alias("item_id"),
        event_type.alias("event_type"),
        value.alias("value"),
        ts.alias("ts"),
        _as_string(fields["session_id"]).alias("session_id"),
        _as_string(fields["source"]).alias("source"),
        _as_string(fields["request_id"]).alias("request_id"),
        F.col("raw_size"),
        F.col("reason"),
    ))


def check_events(lines: DataFrame, *, max_ts: Column, raw_col: str = "raw") -> DataFrame:
    """Parse and check every payload; add ``reason`` (NULL = valid) and the typed event columns.

    Parameters
    ----------
    lines : DataFrame
        A ``raw`` column (string or binary) plus any lineage columns, which are kept.
    max_ts : Column
        Latest acceptable event time (events further in the future are ``ts_out_of_range``).

    Returns
    -------
    DataFrame
        ``lines``' columns, the :data:`EVENT_COLUMNS` (NULL where unreadable), ``raw_size``
        and ``reason``.
    """
    return event_checker(max_ts=max_ts, raw_col=raw_col)(lines)


def check_catalog(lines: DataFrame, *, raw_col: str = "raw") -> DataFrame:
    """Parse and check catalog records; add ``reason`` and the typed item columns."""
    from schemas import catalog_json_schema

    props = catalog_json_schema()["properties"]
    stages, fields, rules = _parse(raw_col, ("item_id", "title", "description", "category",
                                             "created_at"))
    created = parse_ts(fields["created_at"])
    rules += _string_rules(fields, "item_id", required=True, max_len=props["item_id"]["maxLength"])
    rules += _string_rules(fields, "title", required=True, max_len=props["title"]["maxLength"])
    for n in ("description", "category"):
        rules += _string_rules(fields, n, required=False, max_len=props[n]["maxLength"],
                               min_len=0)
    rules.append((~_is_null(fields["created_at"]) & created.isNull(), "bad_timestamp"))
    stages.append({"reason": _first_failure(rules)})
    return Checker(tuple(stages), (
        *[_as_string(fields[n]).alias(n) for n in ("item_id", "title", "description",
                                                   "category")],
        created.alias("created_at"),
        F.col("raw_size"),
        F.col("reason"),
    ))(lines)


def payload_columns(raw_col: str = "raw") -> tuple[Column, Column]:
    """(text, exact bytes) of a payload as the ``quarantine`` table keeps it.

    ``text`` has invalid UTF-8 replaced and is cut at 1,048,576 characters; the exact bytes
    are kept only when the payload was not valid UTF-8 (else NULL).
    """
    raw = F.col(raw_col)
    text = raw.cast("string")
    valid = F.coalesce(F.is_valid_utf8(text), F.lit(True))
    limit = EVENT_RULES.max_payload_bytes
    return (F.substring(F.make_valid_utf8(text), 1, limit),
            F.when(~valid, F.substring(raw.cast("binary"), 1, limit)))


def quarantine_rows(rejected: DataFrame, *, raw_col: str = "raw") -> DataFrame:
    """Shape rejected rows for the ``quarantine`` table's payload columns.

    ``raw`` is kept as text (invalid UTF-8 replaced, cut at 1,048,576 characters);
    ``raw_bytes`` keeps the exact bytes only when the payload was not valid UTF-8.
    """
    text, exact = payload_columns(raw_col)
    return rejected.select(
        text.alias("raw"),
        exact.alias("raw_bytes"),
        F.coalesce(F.col("raw_size"), F.lit(0)).cast("long").alias("raw_size"),
        "reason",
        F.col("event_id") if "event_id" in rejected.columns else F.lit(None).cast("string"),
        *[c for c in rejected.columns if c not in (raw_col, "raw_size", "reason", "event_id",
                                                   *EVENT_COLUMNS, "title", "description",
                                                   "category", "created_at")],
    )


def split(checked: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(valid rows, rejected rows) of a checked DataFrame. Persist ``checked`` first."""
    return checked.where(F.col("reason").isNull()), checked.where(F.col("reason").isNotNull())
