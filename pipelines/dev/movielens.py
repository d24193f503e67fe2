"""MovieLens files -> lakerec's log and catalog formats.

Supported layouts (a file or a folder holding one of them):

=====================  ==========================================  =========================
ratings                line format                                 movies
=====================  ==========================================  =========================
``ratings.csv``        ``userId,movieId,rating,timestamp`` header  ``movies.csv``
``u.data``             ``user<TAB>item<TAB>rating<TAB>ts``         ``u.item`` (pipe, Latin-1)
``ratings.dat`` etc.   ``user::item::rating::ts``                  ``movies.dat`` (Latin-1)
=====================  ==========================================  =========================

The last row also covers pyspark's bundled ``sample_movielens_ratings.txt``. Timestamps are
epoch seconds; each rating becomes a ``rating`` event with ``value`` = stars. Without a movies
file the catalog gets placeholder titles (``Movie 42``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.errors import UsageError

_U_ITEM_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                  "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
                  "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


@dataclass(frozen=True)
class MovieLensFiles:
    layout: str  # "csv" | "100k" | "colons"
    ratings: str
    movies: str | None


def locate(path: str) -> MovieLensFiles:
    """Find the ratings (and movies) file of a MovieLens download; UsageError if none."""
    if os.path.isfile(path):
        folder, name = os.path.dirname(path) or ".", os.path.basename(path)
        candidates = [name]
    elif os.path.isdir(path):
        folder = path
        candidates = sorted(os.listdir(path))
    else:
        raise UsageError(f"no such file or folder: {path}")

    def sibling(name: str) -> str | None:
        p = os.path.join(folder, name)
        return p if os.path.isfile(p) else None

    for name in candidates:
        p = os.path.join(folder, name)
        if name == "ratings.csv":
            return MovieLensFiles("csv", p, sibling("movies.csv"))
        if name == "u.data":
            return MovieLensFiles("100k", p, sibling("u.item"))
    for name in candidates:
        p = os.path.join(folder, name)
        if name.endswith((".dat", ".txt")) and "rating" in name and _has_colons(p):
            return MovieLensFiles("colons", p, sibling("movies.dat"))
    raise UsageError(f"no MovieLens ratings file (ratings.csv, u.data, ratings.dat) in {path}")


def _has_colons(path: str) -> bool:
    with open(path, encoding="latin-1") as f:
        return "::" in f.readline()


def ratings(spark, files: MovieLensFiles) -> DataFrame:
    """Ratings as ``user, item, rating, ts_s`` (strings, double, long)."""
    if files.layout == "csv":
        df = spark.read.option("header", True).schema(
            "userId string, movieId string, rating double, timestamp long").csv(files.ratings)
        return df.select(F.col("userId").alias("user"), F.col("movieId").alias("item"),
                         F.col("rating"), F.col("timestamp").alias("ts_s"))
    sep = "\t" if files.layout == "100k" else "::"
    parts = F.split(F.col("value"), sep if sep == "\t" else "::")
    return spark.read.text(files.ratings).where(F.trim("value") != "").select(
        F.trim(parts[0]).alias("user"), F.trim(parts[1]).alias("item"),
        parts[2].cast("double").alias("rating"), parts[3].cast("long").alias("ts_s"))


def movies(spark, files: MovieLensFiles, item_ids: DataFrame) -> DataFrame:
    """Catalog rows ``item_id, title, category, created_at`` for every rated item."""
    if files.movies is None:
        return item_ids.select(F.col("item").alias("item_id"),
                               F.concat(F.lit("Movie "), F.col("item")).alias("title"),
                               F.lit(None).cast("string").alias("category"),
                               F.lit(None).cast("timestamp").alias("created_at"))
    if files.layout == "csv":
        df = spark.read.option("header", True).option("quote", '"').option("escape", '"') \
            .schema("movieId string, title string, genres string").csv(files.movies)
        df = df.select(F.col("movieId").alias("item_id"), "title",
                       F.col("genres").alias("category"),
                       F.lit(None).cast("timestamp").alias("created_at"))
    elif files.layout == "100k":
        text = spark.read.option("encoding", "ISO-8859-1").option("quote", "\u0000") \
            .csv(files.movies, sep="|")
        flags = [F.when(F.col(f"_c{5 + i}") == "1", F.lit(g)) for i, g in
                 enumerate(_U_ITEM_GENRES)]
        df = text.select(
            F.col("_c0").alias("item_id"), F.col("_c1").alias("title"),
            F.concat_ws("|", *flags).alias("category"),
            F.to_timestamp(F.col("_c2"), "dd-MMM-yyyy").alias("created_at"))
    else:
        # no reader splits on "::"; read whole lines (no quoting) and split them
        raw = spark.read.option("encoding", "ISO-8859-1").option("quote", "\u0000") \
            .csv(files.movies, sep="\u0001")
        parts = F.split(F.col("_c0"), "::")
        df = raw.select(parts[0].alias("item_id"), parts[1].alias("title"),
                        parts[2].alias("category"),
                        F.lit(None).cast("timestamp").alias("created_at"))
    return df.where(F.col("item_id").isNotNull())


def to_event_lines(r: DataFrame) -> DataFrame:
    """Ratings -> JSON Lines events: columns ``raw`` and ``dt``."""
    ts_ms = F.col("ts_s") * 1000
    ev = r.select(
        F.concat(F.lit("ml-"), F.col("user"), F.lit("-"), F.col("item")).alias("event_id"),
        F.col("user").alias("user_id"), F.col("item").alias("item_id"),
        F.lit("rating").alias("event_type"), F.col("rating").alias("value"),
        ts_ms.alias("ts"), F.lit("movielens").alias("source"),
        F.to_date(F.timestamp_millis(ts_ms)).alias("dt"),
    )
    return ev.select(F.to_json(F.struct("event_id", "user_id", "item_id", "event_type", "value",
                                        "ts", "source")).alias("raw"), "dt")


def to_catalog_lines(items: DataFrame) -> DataFrame:
    """Catalog rows -> JSON Lines (column ``raw``)."""
    created = F.date_format("created_at", "yyyy-MM-dd'T'HH:mm:ss'Z'")
    return items.select(F.to_json(F.struct(
        "item_id", "title", F.col("category"), created.alias("created_at"))).alias("raw"))
