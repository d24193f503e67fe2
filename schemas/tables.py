"""Every Delta table of the lakehouse: columns, partitioning, keys.

A :class:`TableSpec` is the single declaration from which the Spark schema (readers, writers,
validators) and the Arrow schema (the Delta log, DuckDB, Polars) are derived, so the two can
never drift apart.

Example
-------
>>> from schemas.tables import TABLES
>>> spec = TABLES["recommendations"]
>>> [c.name for c in spec.columns][:4]
['user_id', 'rank', 'item_id', 'score']
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Column types, in Spark SQL's spelling. Kept to the handful the tables use so that the
# Spark <-> Arrow <-> Delta mapping below stays exact.
_TYPES = ("string", "int", "long", "float", "double", "date", "timestamp", "binary",
          "array<float>")


@dataclass(frozen=True)
class Column:
    """One column: ``name``, Spark SQL ``type``, ``nullable`` and a one-line ``doc``."""

    name: str
    type: str
    nullable: bool = True
    doc: str = ""

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"column {self.name}: unsupported type {self.type!r}")


@dataclass(frozen=True)
class TableSpec:
    """A Delta table: its name (the folder under the lakehouse root), columns and layout."""

    name: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    doc: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    # Merge-on-read: writers append a key's new rows instead of rewriting the files that hold
    # its old ones; the current rows of each ``current_key`` are those with its greatest
    # ``current_by``. ``lakerec compact`` folds the superseded rows away.
    current_key: tuple[str, ...] = ()
    current_by: str | None = None

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        missing = [p for p in (*self.partition_by, *self.key, *self.current_key,
                               *([self.current_by] if self.current_by else []))
                   if p not in names]
        if missing:
            raise ValueError(f"table {self.name}: unknown partition/key columns {missing}")
        if bool(self.current_key) != bool(self.current_by):
            raise ValueError(f"table {self.name}: current_key and current_by go together")

    @property
    def merge_on_read(self) -> bool:
        """Whether the table may hold superseded rows (see :meth:`current_sql`)."""
        return bool(self.current_key)

    def current_sql(self, source: str | None = None) -> str:
        """The one query that reads the current rows of a merge-on-read table.

        Plain SQL that DuckDB, Spark SQL and Polars' ``SQLContext`` all run unchanged, with
        the table registered as ``source`` (default: its name)::

            >>> print(RECOMMENDATIONS.current_sql())  # doctest: +NORMALIZE_WHITESPACE
            SELECT user_id, rank, item_id, score, source, model_version, generated_at
            FROM (SELECT *, max(generated_at) OVER (PARTITION BY user_id) AS _latest
                  FROM recommendations) AS t
            WHERE generated_at = _latest
        """
        if not self.merge_on_read:
            raise ValueError(f"table {self.name} is not merge-on-read")
        return (f"SELECT {', '.join(self.column_names)}\n"
                f"FROM (SELECT *, max({self.current_by}) OVER (PARTITION BY "
                f"{', '.join(self.current_key)}) AS _latest\n"
                f"      FROM {source or self.name}) AS t\n"
                f"WHERE {self.current_by} = _latest")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def data_columns(self) -> list[Column]:
        """Columns stored inside the Parquet files (partition columns live in paths)."""
        return [c for c in self.columns if c.name not in self.partition_by]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def spark_schema(self):
        """The table's schema as a ``pyspark.sql.types.StructType``."""
        from pyspark.sql import types as T

        def to_spark(t: str):
            return {
                "string": T.StringType(), "int": T.IntegerType(), "long": T.LongType(),
                "float": T.FloatType(), "double": T.DoubleType(), "date": T.DateType(),
                "timestamp": T.TimestampType(), "binary": T.BinaryType(),
                "array<float>": T.ArrayType(T.FloatType(), containsNull=True),
            }[t]

        return T.StructType([T.StructField(c.name, to_spark(c.type), c.nullable)
                             for c in self.columns])

    def arrow_schema(self):
        """The table's schema as a ``pyarrow.Schema`` (what the Delta log records)."""
        import pyarrow as pa

        def to_arrow(t: str):
            return {
                "string": pa.string(), "int": pa.int32(), "long": pa.int64(),
                "float": pa.float32(), "double": pa.float64(), "date": pa.date32(),
                "timestamp": pa.timestamp("us", tz="UTC"), "binary": pa.binary(),
                "array<float>": pa.list_(pa.field("element", pa.float32(), nullable=True)),
            }[t]

        return pa.schema([pa.field(c.name, to_arrow(c.type), c.nullable)
                          for c in self.columns])


def _c(name: str, type_: str, nullable: bool = True, doc: str = "") -> Column:
    return Column(name, type_, nullable, doc)


_INGEST_LINEAGE = (
    _c("ingest_source", "string", False,
       "where the row came from: the input file URI, or kafka://topic/partition/offset"),
    _c("ingest_id", "string", False,
       "the write that added it: ingest:<date>:<input fingerprint> or stream:<query>:<batch>"),
    _c("ingested_at", "timestamp", False, "when that write ran (UTC)"),
)

INTERACTIONS = TableSpec(
    name="interactions",
    doc="Validated, deduplicated behaviour events, one row per event_id.",
    columns=(
        _c("event_id", "string", False, "unique event id (the dedup key)"),
        _c("user_id", "string", False),
        _c("item_id", "string", False),
        _c("event_type", "string", False, "view | click | add_to_cart | purchase | rating"),
        _c("value", "double", True, "rating value (0.5-5) or an optional event value"),
        _c("ts", "timestamp", False, "event time, UTC"),
        _c("session_id", "string"),
        _c("source", "string", True, "the producer's own source field (app, web, ...)"),
        *_INGEST_LINEAGE,
        _c("dt", "date", False, "arrival date: the log partition (batch) or processing date"),
        # last, so that a table made before it gains it by appending a column
        _c("request_id", "string", True,
           "the served list (exposures.request_id) the event answers, when the app sent it"),
    ),
    partition_by=("dt",),
    key=("event_id",),
)

QUARANTINE = TableSpec(
    name="quarantine",
    doc="Rejected input rows with the reason; nothing bad is ever dropped silently.",
    columns=(
        _c("raw", "string", True, "the payload as text (invalid UTF-8 replaced), cut at 1 MiB"),
        _c("raw_bytes", "binary", True, "exact payload bytes when it was not valid UTF-8"),
        _c("raw_size", "long", False, "payload size in bytes"),
        _c("reason", "string", False, "machine-readable reason, e.g. missing_field:user_id"),
        _c("event_id", "string", True, "the event id when one could be read"),
        _c("ingest_source", "string", False, "file URI or kafka://topic/partition/offset"),
        _c("ingest_id", "string", False),
        _c("quarantined_at", "timestamp", False),
        _c("origin", "string", False, "events | catalog | stream | exposures"),
        _c("dt", "date", False, "the ingested date (batch) or processing date (stream)"),
    ),
    partition_by=("origin", "dt"),
)

ITEMS = TableSpec(
    name="items",
    doc="The item catalog, one row per item_id (upserted).",
    columns=(
        _c("item_id", "string", False),
        _c("title", "string", False),
        _c("description", "string"),
        _c("category", "string"),
        _c("created_at", "timestamp"),
        _c("ingest_source", "string", False),
        _c("ingest_id", "string", False),
    ),
    key=("item_id",),
)

USER_INDEX = TableSpec(
    name="user_index",
    doc="Append-only map user_id -> dense int id (ALS needs ints; ids never move).",
    columns=(
        _c("user_id", "string", False),
        _c("user_idx", "int", False),
        _c("assigned_at", "timestamp", False),
    ),
    key=("user_id",),
    properties={"delta.appendOnly": "true"},
)

ITEM_INDEX = TableSpec(
    name="item_index",
    doc="Append-only map item_id -> dense int id.",
    columns=(
        _c("item_id", "string", False),
        _c("item_idx", "int", False),
        _c("assigned_at", "timestamp", False),
    ),
    key=("item_id",),
    properties={"delta.appendOnly": "true"},
)

USER_FACTORS = TableSpec(
    name="user_factors",
    columns=(
        _c("user_id", "string", False),
        _c("user_idx", "int", False),
        _c("factors", "array<float>", False),
        _c("source", "string", False, "als (solved at training) | fold_in (streaming refresh)"),
        _c("updated_at", "timestamp", False),
        _c("model_version", "long", False),
    ),
    partition_by=("model_version",),
    key=("model_version", "user_id"),
    doc="User factor vectors per model version (merge-on-read: the latest updated_at wins).",
    current_key=("model_version", "user_id"),
    current_by="updated_at",
)

ITEM_FACTORS = TableSpec(
    name="item_factors",
    doc="Item factor vectors per model version.",
    columns=(
        _c("item_id", "string", False),
        _c("item_idx", "int", False),
        _c("factors", "array<float>", False),
        _c("source", "string", False, "als: trained (a model's item factors are never "
                                      "rewritten; text-placed items live in item_placements)"),
        _c("updated_at", "timestamp", False),
        _c("model_version", "long", False),
    ),
    partition_by=("model_version",),
    key=("model_version", "item_id"),
)

ITEM_PLACEMENTS = TableSpec(
    name="item_placements",
    doc="New items placed in a model version's factor space from their text (lakerec place).",
    columns=(
        _c("item_id", "string", False),
        _c("factors", "array<float>", False, "ridge map of the item's text embedding"),
        _c("encoder_version", "long", False, "the lakerec-text-encoder version of the text"),
        _c("placed_at", "timestamp", False),
        _c("model_version", "long", False),
    ),
    partition_by=("model_version",),
    key=("model_version", "item_id"),
)

# The commit metadata key every write of ``recommendations`` records its list length K under:
# ``lakerec check`` judges the lists by the K they were made with.
LIST_LENGTH_KEY = "lakerec.k"
# ... and ``score`` the model version it served under this one: a commit carrying it holds a
# full set of lists (the stream's commits refresh some users'; compaction folds them in)
MODEL_VERSION_KEY = "lakerec.model_version"

RECOMMENDATIONS = TableSpec(
    name="recommendations",
    doc="Top-K lists, merge-on-read: each user's current list is their rows with the latest "
        "generated_at (exactly K unless the unseen catalog is smaller).",
    columns=(
        _c("user_id", "string", False),
        _c("rank", "int", False, "1 = best"),
        _c("item_id", "string", False),
        _c("score", "float", False, "model score (ALS dot product, or popularity share)"),
        _c("source", "string", False, "als | ease | fold_in | popular | content"),
        _c("model_version", "long", True, "the model the run served; null if none existed"),
        _c("generated_at", "timestamp", False, "when the list was made; the latest is current"),
    ),
    key=("user_id", "rank"),
    current_key=("user_id",),
    current_by="generated_at",
)

ITEM_EMBEDDINGS = TableSpec(
    name="item_embeddings",
    doc="Text embedding per item and encoder version (unit length: cosine = dot product).",
    columns=(
        _c("item_id", "string", False),
        _c("embedding", "array<float>", False, "L2-normalised sentence embedding"),
        _c("text_sha256", "string", False,
           "SHA-256 of the embedded text: an item is embedded again only when it changes"),
        _c("embedded_at", "timestamp", False),
        _c("encoder_version", "long", False, "lakerec-text-encoder registry version"),
    ),
    partition_by=("encoder_version",),
    key=("encoder_version", "item_id"),
)

SIMILAR_ITEMS = TableSpec(
    name="similar_items",
    doc="Top-N most similar items per item by embedding cosine, per encoder version.",
    columns=(
        _c("item_id", "string", False),
        _c("rank", "int", False, "1 = most similar"),
        _c("similar_item_id", "string", False),
        _c("score", "float", False, "cosine similarity of the two embeddings"),
        _c("generated_at", "timestamp", False),
        _c("encoder_version", "long", False),
    ),
    partition_by=("encoder_version",),
    key=("encoder_version", "item_id", "rank"),
)

EXPOSURES = TableSpec(
    name="exposures",
    doc="What the API served: one row per list position of each response (lakerec serve "
        "-> Kafka -> lakerec stream --exposures), landed exactly once.",
    columns=(
        _c("request_id", "string", False, "the response's id; feedback events may carry it"),
        _c("user_id", "string", False),
        _c("position", "int", False, "1 = first shown (offset included)"),
        _c("item_id", "string", False),
        _c("source", "string", False, "als | ease | fold_in | popular | content"),
        _c("model_version", "long", True, "the model behind the list; null for popularity"),
        _c("variant", "string", True, "the experiment arm, when one is set"),
        _c("route", "string", False, "recommendations | similar"),
        _c("served_at", "timestamp", False, "when the API answered (UTC)"),
        _c("ingest_source", "string", False, "kafka://topic/partition/offset"),
        _c("ingest_id", "string", False, "stream:<query>:<batch>"),
        _c("dt", "date", False, "the date of served_at"),
    ),
    partition_by=("dt",),
    key=("request_id", "position"),
)

TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (INTERACTIONS, QUARANTINE, ITEMS, USER_INDEX, ITEM_INDEX, USER_FACTORS,
              ITEM_FACTORS, ITEM_PLACEMENTS, RECOMMENDATIONS, ITEM_EMBEDDINGS,
              SIMILAR_ITEMS, EXPOSURES)
}
