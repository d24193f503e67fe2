"""The stream's checkpoint against the tables: offsets, lost-checkpoint refusal, progress.

Offsets live only in Spark's checkpoint. Every Delta commit of a micro-batch records the
transaction ``(lakerec.stream/<query>, batch_id)``, so the tables remember how far each query
got; :func:`check_checkpoint` refuses an empty or older checkpoint against tables that
already hold later batches (it would re-read or skip records silently).

Example
-------
>>> app_id("feedback")
'lakerec.stream/feedback'
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipelines.errors import FatalStreamError
from pipelines.storage import delta
from schemas.tables import (
    EXPOSURES,
    INTERACTIONS,
    QUARANTINE,
    RECOMMENDATIONS,
    USER_FACTORS,
    USER_INDEX,
)

APP_PREFIX = "lakerec.stream/"
WRITTEN = (QUARANTINE, INTERACTIONS, USER_INDEX, USER_FACTORS, RECOMMENDATIONS, EXPOSURES)


class CheckpointError(FatalStreamError):
    """The checkpoint does not match the tables (lost, replaced or older): refused."""


def app_id(query: str) -> str:
    return APP_PREFIX + query


def latest_checkpoint_offsets(checkpoint: str) -> tuple[int | None, str | None]:
    """(highest batch id in the checkpoint's offset log, its source offsets JSON)."""
    folder = os.path.join(checkpoint, "offsets")
    try:
        ids = sorted(int(n) for n in os.listdir(folder) if n.isdigit())
    except FileNotFoundError:
        return None, None
    if not ids:
        return None, None
    with open(os.path.join(folder, str(ids[-1]))) as f:
        lines = f.read().splitlines()
    # "v1", the batch metadata, then one line per source
    return ids[-1], (lines[2] if len(lines) > 2 and lines[2].startswith("{") else None)


def check_checkpoint(lakehouse: str, query: str, checkpoint: str) -> int | None:
    """Refuse a checkpoint that is empty or older than the tables' record of this query.

    Returns the last batch the tables record (``None`` for a new query).
    """
    app = app_id(query)
    committed = [v for spec in WRITTEN if delta.exists(lakehouse, spec)
                 for v in [delta.txn_version(delta.open_table(lakehouse, spec), app)]
                 if v is not None]
    last = max(committed) if committed else None
    if last is None:
        return None
    batch, _ = latest_checkpoint_offsets(checkpoint)
    if batch is None:
        raise CheckpointError(
            f"the tables already hold batches up to {last} of stream query {query!r}, but the "
            f"checkpoint {checkpoint} is empty or missing: it was lost or is the wrong folder. "
            "Restore it (it holds the Kafka offsets), or start a new query with another "
            "--query-name")
    if batch < last:
        raise CheckpointError(
            f"the checkpoint {checkpoint} ends at batch {batch} but the tables already hold "
            f"batch {last} of stream query {query!r}: it is an older copy. Restore the latest "
            "checkpoint, or start a new query with another --query-name")
    return last


def committed_offsets(checkpoint: str) -> dict[tuple[str, int], int] | None:
    """Source offsets up to which the checkpoint's last *committed* batch processed."""
    from pipelines.streaming.kafka_source import flat_offsets, parse_offsets

    try:
        done = sorted(int(n) for n in os.listdir(os.path.join(checkpoint, "commits"))
                      if n.isdigit())
    except FileNotFoundError:
        return None
    if not done:
        return None
    with open(os.path.join(checkpoint, "offsets", str(done[-1]))) as f:
        lines = f.read().splitlines()
    return flat_offsets(parse_offsets(lines[2])) if len(lines) > 2 else None


def end_offsets(source_options: Mapping[str, str]) -> tuple[dict, dict]:
    """(earliest, end) offsets of the subscribed partitions right now."""
    from kafka import KafkaConsumer, TopicPartition

    from pipelines.streaming.kafka_source import SourceOptions, client_config

    opts = SourceOptions.parse(source_options)
    c = KafkaConsumer(**client_config(opts.raw), enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(t, p) for t in opts.topics
               for p in sorted(c.partitions_for_topic(t) or ())]
        first = {(tp.topic, tp.partition): o for tp, o in c.beginning_offsets(tps).items()}
        end = {(tp.topic, tp.partition): o for tp, o in c.end_offsets(tps).items()}
        return first, end
    finally:
        c.close()


def caught_up(checkpoint: str, first: Mapping, target: Mapping,
              initial: Mapping | None = None) -> bool:
    """True once committed batches reach ``target`` on every partition.

    ``initial`` is what the checkpoint held when the run began. Offsets there *past* the
    target mean the broker went back (lost data): until a batch has run, that is not caught
    up, so the query meets the loss and fails (or, told to, skips ahead) instead of stopping
    silently.
    """
    done = committed_offsets(checkpoint) or {}
    if initial and done == dict(initial) and any(initial.get(tp, 0) > o
                                                 for tp, o in target.items()):
        return False
    return all(done.get(tp, first.get(tp, 0)) >= o for tp, o in target.items())
