"""The streaming query: the Kafka source, ``foreachBatch`` and a clean stop between batches.

Example
-------
>>> ctx = StreamContext(lakehouse="/lh", query="feedback", k=10)      # doctest: +SKIP
>>> q = start_query(spark, ctx, source_options={...}, checkpoint="/lh/_checkpoints/feedback")
... # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import numpy as np

from pipelines.model import topk
from pipelines.streaming.checkpoint import check_checkpoint, latest_checkpoint_offsets
from pipelines.streaming.microbatch import (
    StreamContext,
    log_batch,
    process_batch,
    record_checker,
)


def start_query(spark, ctx: StreamContext, *, source_options: Mapping[str, str],
                checkpoint: str, trigger_s: float = 1.0):
    """Start the streaming query (after :func:`check_checkpoint`); returns the ``StreamingQuery``."""
    from pipelines.streaming.kafka_source import KafkaSource

    check_checkpoint(ctx.lakehouse, ctx.query, checkpoint)
    ctx.checkpoint = checkpoint
    if ctx.kind == "exposures":
        from pipelines.streaming.exposures import land as batch_fn
    else:
        batch_fn = process_batch
        # before the first batch, so that it is not slower than the rest: the serving
        # model, the compiled kernel, the validation expressions, the keyed state
        model = ctx.serving_model(spark)
        if model.index is not None:
            topk.topk_block(np.zeros((1, model.index.factors.shape[1]), np.float32),
                            model.index, [np.zeros(0, np.int64)], 1)
        ctx.checker = record_checker()
        ctx.keyed_state()  # a new or stale state is rebuilt from the tables here, once
        # a push a crash interrupted (committed in Delta, not yet in the store) lands now
        ctx.publish()
    _driver_workers_find_the_code(spark)
    spark.dataSource.register(KafkaSource)
    _, resume = latest_checkpoint_offsets(checkpoint)
    reader = spark.readStream.format(KafkaSource.name())
    for k, v in source_options.items():
        reader = reader.option(k, str(v))
    # where the last batch ended (the rate limit's starting point after a restart), or that
    # this is a new query, whose first batch starts at startingOffsets
    reader = reader.option("lakerec.resumeOffsets", resume or "starting")

    def on_batch(df, batch_id):
        with ctx.busy:
            if ctx.stop_requested.is_set():
                raise InterruptedError("stop requested; this batch will run on the next start")
            try:
                rep = batch_fn(ctx, df, batch_id)
            except BaseException as e:
                ctx.failure = e  # the supervisor classifies the original, by type
                raise
            ctx.reports.append(rep)
            if ctx.metrics_file:
                log_batch(ctx.metrics_file, ctx.query, rep)

    writer = (reader.load().writeStream.queryName(ctx.query).foreachBatch(on_batch)
              .option("checkpointLocation", checkpoint))
    # Python sources cannot honour Trigger.AvailableNow (Spark falls back to one uncapped
    # batch); `lakerec stream --available-now` stops at the end offsets itself instead.
    return writer.trigger(processingTime=f"{max(0.0, trigger_s)} seconds").start()


def _driver_workers_find_the_code(spark) -> None:
    """Let the Python workers Spark starts *on the driver* import ``pipelines``.

    The Kafka source plans each batch's offsets in such a worker. With ``spark-submit
    --py-files`` its path lists the files for the executors only, so add the folder or zip
    this driver imports ``pipelines`` from to the workers' ``PYTHONPATH`` (on an executor
    the extra entry is a path that may not exist: ignored).
    """
    import pipelines

    root = os.path.dirname(os.path.dirname(os.path.abspath(pipelines.__file__)))
    env = spark.sparkContext.environment
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, root])


def stop_after_batch(ctx: StreamContext, query, timeout_s: float = 600.0) -> None:
    """Stop ``query`` between batches: let the running batch finish, then stop.

    A batch that starts after the request fails at once without writing and runs again on
    the next start (it is not committed to the checkpoint).
    """
    ctx.stop_requested.set()
    if ctx.busy.acquire(timeout=timeout_s):  # waits for the batch in flight, if any
        ctx.busy.release()
    if ctx.reports and ctx.checkpoint:
        # foreachBatch has returned; Spark still records the batch in the commit log
        last = ctx.reports[-1].batch_id
        done = os.path.join(ctx.checkpoint, "commits", str(last))

        def recorded() -> bool:
            # the commit file appears before Spark has finished with it (the checksum file
            # is renamed after it); the batch's progress is reported only once the commit
            # is complete, so stopping earlier interrupts the commit write
            progress = query.lastProgress
            return os.path.exists(done) and progress is not None and \
                int(progress.get("batchId", -1)) >= last

        deadline = time.monotonic() + 30
        while not recorded() and query.isActive and time.monotonic() < deadline:
            time.sleep(0.05)
    query.stop()
