"""Placement: new catalog items mapped into a model version's factor space from their text.

Items the model never saw (new catalog entries) have no trained factors, so collaborative
scoring cannot rank them. Their text can (:mod:`pipelines.model.content`): a ridge map from
text embeddings to factors is fitted on the model's trained items that have an embedding,
and every catalog item without trained factors gets ``y = [e 1] W``.

The placed vectors go to ``item_placements`` (partition ``model_version``), never into the
model's ``item_factors``: a model version's trained factors stay what training wrote, so the
champion's re-evaluation compares like with like, and ``score`` and the stream read the two
tables side by side (:func:`pipelines.batch.score.load_serving_model`).

Example
-------
>>> place(spark, "/lh")                # the champion, with the encoder's champion  # doctest: +SKIP
PlaceReport(model_version=3, encoder_version=1, placed=250, warm=4750, version=2, skipped=False)
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass

import numpy as np
from pyspark.sql import functions as F

from pipelines.model import content
from pipelines.model.card import DEFAULTS
from pipelines.serving import policy
from pipelines.storage import delta, tracking
from schemas.tables import ITEM_EMBEDDINGS, ITEM_FACTORS, ITEM_PLACEMENTS, ITEMS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlaceReport:
    model_version: int | None
    encoder_version: int | None
    placed: int = 0
    warm: int = 0
    version: int | None = None
    skipped: bool = False
    reason: str = ""


def _matrix(rows, col: str) -> np.ndarray:
    return np.array([r[col] for r in rows], np.float32)


def place(spark, lakehouse: str, *, model_version: int | None = None,
          encoder_version: int | None = None, reg: float = DEFAULTS.content_reg,
          now: _dt.datetime | None = None) -> PlaceReport:
    """Replace partition ``model_version`` of ``item_placements`` (the champion's by default).

    Skipped (nothing committed) when model, encoder, ``reg``, embeddings and catalog are
    unchanged since the last placement; a model or encoder that does not exist yet is not an
    error: there is nothing to place. Cost: the warm and cold items' embeddings and factors
    (item-sized) come to the driver; one small Spark write.
    """
    now = now or _dt.datetime.now(_dt.UTC)
    ref = tracking.get_version(lakehouse, model_version) if model_version is not None \
        else tracking.get_alias(lakehouse)
    if ref is None:
        return PlaceReport(None, encoder_version, skipped=True, reason="no champion model")
    enc = encoder_version
    if enc is None:
        e = tracking.get_alias(lakehouse, name=tracking.ENCODER_MODEL)
        enc = e.version if e else None
    if enc is None or not delta.exists(lakehouse, ITEM_EMBEDDINGS):
        return PlaceReport(ref.version, enc, skipped=True, reason="no item embeddings")
    inputs = (ref.version, enc, reg, delta.latest_version(lakehouse, ITEM_EMBEDDINGS),
              delta.latest_version(lakehouse, ITEMS),
              delta.latest_version(lakehouse, ITEM_FACTORS))
    txn = delta.Txn.of_content(f"lakerec.place/v{ref.version}", *inputs)
    if delta.exists(lakehouse, ITEM_PLACEMENTS) and \
            delta.done(delta.open_table(lakehouse, ITEM_PLACEMENTS), txn):
        return PlaceReport(ref.version, enc, skipped=True, reason="inputs unchanged")
    trained = delta.read(spark, lakehouse, ITEM_FACTORS, version=inputs[5],
                         partitions={"model_version": [ref.version]}) \
        .where(F.col("source").isin(*policy.TRAINED_SOURCES)).select("item_id", "factors")
    emb = delta.read(spark, lakehouse, ITEM_EMBEDDINGS, version=inputs[3],
                     partitions={"encoder_version": [enc]}).select("item_id", "embedding")
    catalog = delta.read(spark, lakehouse, ITEMS, version=inputs[4]).select("item_id")
    fit_rows = trained.join(emb, "item_id").orderBy("item_id").collect()
    cold = emb.join(catalog, "item_id", "left_semi").join(trained, "item_id", "left_anti") \
        .orderBy("item_id").collect()
    if len(fit_rows) < 2:
        why = (f"only {len(fit_rows)} trained items of model v{ref.version} have an embedding "
               f"of encoder v{enc} (run `lakerec embed`)")
        log.warning("content placement: %s; nothing placed", why)
        return PlaceReport(ref.version, enc, skipped=True, reason=why)
    w = content.fit_ridge(_matrix(fit_rows, "embedding"), _matrix(fit_rows, "factors"), reg=reg)
    mapped = content.map_factors(_matrix(cold, "embedding"), w) if cold else \
        np.zeros((0, w.shape[1]), np.float32)
    import pandas as pd

    pdf = pd.DataFrame({"item_id": [r.item_id for r in cold],
                        "factors": [v.tolist() for v in mapped]})
    rows = spark.createDataFrame(pdf, "item_id string, factors array<float>").select(
        "item_id", "factors", F.lit(enc).cast("long").alias("encoder_version"),
        F.lit(now).cast("timestamp").alias("placed_at"),
        F.lit(ref.version).cast("long").alias("model_version"))
    res = delta.write(spark, rows, lakehouse, ITEM_PLACEMENTS, mode="overwrite",
                      partition={"model_version": ref.version}, txn=txn,
                      metadata={"lakerec.encoder_version": enc,
                                "lakerec.input.item_factors": inputs[5]})
    log.info("item_placements v%s: %d new items placed from %d trained items (model v%d, "
             "encoder v%d)", res.version, len(cold), len(fit_rows), ref.version, enc)
    return PlaceReport(ref.version, enc, len(cold), len(fit_rows), res.version)
