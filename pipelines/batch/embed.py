"""Item text -> embeddings in Spark, incrementally; similar items; cold items placed by text.

* :func:`item_texts` -- ``items`` -> ``item_id, text, text_sha256`` (the text is
  :func:`pipelines.model.encoder.item_text`, defined once).
* :func:`embed_texts` -- adds ``embedding`` with an iterator pandas UDF: each task loads the
  encoder once from its Python worker's session cache, then runs every Arrow batch through it.
  On executors granted a GPU (and with ``onnxruntime-gpu``) the CUDA provider runs on the
  task's GPU.
* :func:`pending` -- only items whose text (hash) or encoder version changed need embedding.
* :func:`similar_items` -- top-N cosine neighbours per item with the exact blockwise top-K
  kernel of :mod:`pipelines.model.topk` (the embedding matrix broadcast once, blocks of rows
  against tiles of columns; no all-pairs join).
* :func:`evaluate_champion` -- how much of the collaborative signal the text recovers (the
  cold-start evaluation; placing new items is its own step, :mod:`pipelines.batch.place`).

Example
-------
>>> texts = item_texts(delta.read(spark, "/lh", ITEMS))               # doctest: +SKIP
>>> embed_texts(texts, bundle=Bundle.from_folder("models/build/minilm")).show()  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd  # resolves the pandas UDFs' type hints (pyspark imports it anyway)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.batch import recommend
from pipelines.model import content, encoder
from pipelines.model.card import DEFAULTS
from pipelines.serving import policy
from pipelines.storage import delta
from schemas.tables import ITEM_EMBEDDINGS, ITEM_FACTORS, ITEMS, SIMILAR_ITEMS

log = logging.getLogger(__name__)


def task_gpus() -> list[str] | None:
    """GPU addresses Spark granted the running task (``None`` outside a task or without)."""
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return None
    ctx = TaskContext.get()
    if ctx is None:
        return None
    res = ctx.resources().get("gpu")
    return list(res.addresses) if res is not None and res.addresses else None


def task_cpus(default: int = 1) -> int:
    """``spark.task.cpus`` of the running task: the threads one session may use."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            return max(1, int(ctx.cpus()))
    except Exception:  # noqa: BLE001 - outside Spark, or an old TaskContext
        pass
    return default


def pandas_encoder(bundle, *, batch_size: int, threads: int | None, device: str) -> callable:
    """The body of the embed UDF: ``Iterator[pd.Series of str] -> Iterator[pd.Series]``.

    ``bundle`` is a :class:`~pipelines.model.encoder.Bundle` or a Spark broadcast of one.
    The encoder is loaded in the first batch of a task (so on the executor, with that task's
    CPUs and GPU) from the process cache, then reused for every batch.
    """
    def run(batches):
        import pandas as pd

        b = bundle if isinstance(bundle, encoder.Bundle) else bundle.value
        enc = encoder.Encoder.load(b, threads=threads or task_cpus(), device=device,
                                   gpu_addresses=task_gpus())
        for texts in batches:
            vecs = enc.encode(texts.fillna("").tolist(), batch_size=batch_size)
            yield pd.Series(list(vecs))
    return run


def item_texts(items: DataFrame) -> DataFrame:
    """``item_id, text, text_sha256`` for catalog rows (``item_id, title, category,
    description``)."""
    import pandas as pd

    @F.pandas_udf(T.StringType())
    def text(title: pd.Series, category: pd.Series, description: pd.Series) -> pd.Series:
        return pd.Series([encoder.item_text(t, c, d) for t, c, d in
                          zip(title, category, description, strict=True)])

    return (items.select("item_id", text("title", "category", "description").alias("text"))
            .withColumn("text_sha256", F.sha2(F.col("text"), 256)))


def embed_texts(texts: DataFrame, *, bundle: encoder.Bundle, batch_size: int = 64,
                threads: int | None = None, device: str = "auto",
                partitions: int | None = None) -> DataFrame:
    """``texts`` plus ``embedding array<float>`` (unit length), from column ``text``.

    Parameters
    ----------
    bundle : the encoder (:class:`pipelines.model.encoder.Bundle`), broadcast to the executors
    batch_size : texts per ONNX Runtime call; texts are sorted by length inside each
        Arrow batch so a call pads little
    threads : intra-op threads per session; default ``spark.task.cpus`` of the task
    device : ``auto`` (CUDA when the task holds a GPU and onnxruntime-gpu is installed),
        ``cpu`` or ``cuda`` (fail without a GPU)
    partitions : tasks to spread the texts over (default: the default parallelism)
    """
    spark = texts.sparkSession
    run = pandas_encoder(spark.sparkContext.broadcast(bundle), batch_size=batch_size,
                                 threads=threads, device=device)

    @F.pandas_udf(T.ArrayType(T.FloatType()))
    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        yield from run(batches)

    n = partitions or spark.sparkContext.defaultParallelism
    # round-robin: equal shares of texts per task (the work is per text, not per key)
    return texts.repartition(n).withColumn("embedding", embed("text"))


def pending(texts: DataFrame, existing: DataFrame | None) -> DataFrame:
    """Rows of ``texts`` with no embedding of the same text in ``existing`` (one encoder
    version's ``item_embeddings`` rows)."""
    if existing is None:
        return texts
    return texts.join(existing.select("item_id", "text_sha256"), ["item_id", "text_sha256"],
                      "left_anti")


@dataclass(frozen=True)
class EmbedReport:
    encoder_version: int
    items: int
    embedded: int
    version: int | None = None
    skipped: bool = False


def embed_items(spark, lakehouse: str, *, bundle: encoder.Bundle, encoder_version: int,
                batch_size: int = 64, threads: int | None = None,
                device: str = "auto", now: _dt.datetime | None = None) -> EmbedReport:
    """Embed the catalog items whose text changed (or all, for a new encoder version).

    One atomic commit upserts the new rows into partition ``encoder_version``; a re-run with
    nothing changed commits nothing.
    """
    now = now or _dt.datetime.now(_dt.UTC)
    texts = item_texts(delta.read(spark, lakehouse, ITEMS))
    existing = None
    if delta.exists(lakehouse, ITEM_EMBEDDINGS):
        existing = delta.read(spark, lakehouse, ITEM_EMBEDDINGS,
                              partitions={"encoder_version": [encoder_version]})
    todo = pending(texts, existing).persist()
    try:
        n_items = texts.count()
        n_todo = todo.count()
        if n_todo == 0:
            log.info("item_embeddings v%d: all %d items up to date", encoder_version, n_items)
            return EmbedReport(encoder_version, n_items, 0, skipped=True)
        rows = embed_texts(todo, bundle=bundle, batch_size=batch_size,
                           threads=threads, device=device).select(
            "item_id", "embedding", "text_sha256",
            F.lit(now).cast("timestamp").alias("embedded_at"),
            F.lit(encoder_version).cast("long").alias("encoder_version"))
        res = delta.replace_rows(spark, rows, lakehouse, ITEM_EMBEDDINGS,
                                 on=["encoder_version", "item_id"],
                                 metadata={"lakerec.encoder_version": encoder_version})
        log.info("item_embeddings v%s: %d of %d items embedded (encoder v%d)", res.version,
                 n_todo, n_items, encoder_version)
        return EmbedReport(encoder_version, n_items, n_todo, version=res.version)
    finally:
        todo.unpersist()


def similar_items(spark, embeddings: DataFrame, *, n: int = 10) -> DataFrame:
    """``item_id, rank, similar_item_id, score``: each item's ``n`` nearest by cosine.

    ``embeddings`` holds ``item_id, embedding`` (unit vectors: cosine = dot product). The
    item itself is excluded; ties break by item id.
    """
    rows = sorted(embeddings.select("item_id", "embedding").collect(), key=lambda r: r.item_id)
    if not rows:
        return spark.createDataFrame([], "item_id string, rank int, similar_item_id string, "
                                         "score float")
    ids = [r.item_id for r in rows]
    mat = encoder.unit_rows(np.array([r.embedding for r in rows], np.float32))
    me = embeddings.select(F.col("item_id").alias("user_id"), F.col("embedding").alias("factors"))
    self_row = recommend.seen_rows(me.select("user_id", F.col("user_id").alias("item_id")), ids, spark)
    return (recommend.recommend(spark, me.join(self_row, "user_id", "left"), ids, mat, k=n)
            .select(F.col("user_id").alias("item_id"), "rank",
                    F.col("item_id").alias("similar_item_id"), "score"))


def write_similar_items(spark, lakehouse: str, *, encoder_version: int, n: int = 10,
                        now: _dt.datetime | None = None) -> delta.CommitResult:
    """Replace partition ``encoder_version`` of ``similar_items`` (skipped when the
    embeddings and ``n`` are unchanged since the last write)."""
    now = now or _dt.datetime.now(_dt.UTC)
    src = delta.latest_version(lakehouse, ITEM_EMBEDDINGS)
    txn = delta.Txn.of_content("lakerec.similar_items", encoder_version, src, n)
    emb = delta.read(spark, lakehouse, ITEM_EMBEDDINGS, version=src,
                     partitions={"encoder_version": [encoder_version]})
    out = similar_items(spark, emb, n=n).select(
        "item_id", "rank", "similar_item_id", "score",
        F.lit(now).cast("timestamp").alias("generated_at"),
        F.lit(encoder_version).cast("long").alias("encoder_version"))
    return delta.write(spark, out, lakehouse, SIMILAR_ITEMS, mode="overwrite",
                       partition={"encoder_version": encoder_version}, txn=txn,
                       metadata={"lakerec.input.item_embeddings": src})


# Users the cold-start evaluation samples at most: its figures are means over users, and
# their standard error at this size is far below the differences it reports
COLD_START_USERS = 20_000

def evaluate_champion(lakehouse: str, *, model_version: int, encoder_version: int,
                      k: int = DEFAULTS.k, holdout: float = 0.1,
                      reg: float = DEFAULTS.content_reg, seed: int = 0,
                      max_users: int = COLD_START_USERS) -> content.ColdStartEval:
    """:func:`pipelines.model.content.evaluate_cold_start` on the tables of a model version.

    Warm items: the model's ``als`` items with an embedding of ``encoder_version``; users: a
    sample of at most ``max_users`` of the model's ``als`` users (the least ``md5(user_id)``:
    uniform, and the same on every run); positives: their interactions with those items.

    Cost: DuckDB streams ``user_factors`` (a top-``max_users`` heap) and the ``user_id,
    item_id`` columns of ``interactions`` (a semi-join on the sample); the driver holds the
    item-sized factors and embeddings and the sample's users and pairs, never every user's.
    """
    import duckdb
    import pyarrow.compute as pc

    from schemas.tables import INTERACTIONS, USER_FACTORS

    def table(spec, columns, flt):
        return delta.arrow_dataset(lakehouse, spec).to_table(columns=columns, filter=flt)

    src_als = pc.field("source").isin(list(policy.TRAINED_SOURCES))
    items = table(ITEM_FACTORS, ["item_id", "factors"],
                  (pc.field("model_version") == model_version) & src_als).to_pandas()
    emb = table(ITEM_EMBEDDINGS, ["item_id", "embedding"],
                pc.field("encoder_version") == encoder_version).to_pandas()
    items = items.merge(emb, on="item_id").sort_values("item_id", ignore_index=True)
    con = duckdb.connect()
    try:
        con.register("user_factors", delta.arrow_dataset(lakehouse, USER_FACTORS))
        con.register("interactions", delta.arrow_dataset(lakehouse, INTERACTIONS))
        trained = ", ".join(f"'{s}'" for s in policy.TRAINED_SOURCES)
        con.execute(f"""CREATE TEMP TABLE sample AS SELECT user_id, factors FROM user_factors
                       WHERE model_version = ? AND source IN ({trained})
                       ORDER BY md5(user_id), updated_at DESC LIMIT ?""",
                    [model_version, max_users])
        users = con.sql("SELECT DISTINCT ON (user_id) * FROM sample ORDER BY user_id").df()
        pairs = con.sql("SELECT DISTINCT i.user_id, i.item_id FROM interactions i "
                        "SEMI JOIN sample s USING (user_id)").df()
    finally:
        con.close()
    u_row = pairs["user_id"].map(dict(zip(users["user_id"], range(len(users)), strict=True)))
    i_row = pairs["item_id"].map(dict(zip(items["item_id"], range(len(items)), strict=True)))
    ok = (u_row.notna() & i_row.notna()).to_numpy()
    return content.evaluate_cold_start(
        np.stack(users["factors"].to_numpy()).astype(np.float32),
        np.stack(items["factors"].to_numpy()).astype(np.float32),
        np.stack(items["embedding"].to_numpy()).astype(np.float32),
        (u_row[ok].to_numpy(np.int64), i_row[ok].to_numpy(np.int64)),
        k=k, holdout=holdout, reg=reg, seed=seed)
