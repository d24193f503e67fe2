"""Running the stream as a job: signals, restarts after transient failures, a clean stop.

:func:`run` starts the query (:mod:`pipelines.streaming.query`) and watches it until
SIGTERM/SIGINT, ``timeout_s``, or (``available_now``) the end offsets seen at start. A
failed query is restarted from its checkpoint when the failure is transient (a broker
outage), up to ``max_restarts`` times with backoff; anything else ends the job.

Failures are sorted by type (:mod:`pipelines.errors`), never by searching their text: the
exception a batch raised in this process is kept as raised (``StreamContext.failure``);
one raised in a Spark Python worker reaches the driver as text, and :func:`remote_error`
resolves the class named on its traceback's last line back to the class itself.

Example
-------
>>> classify(TimeoutError("broker"))
'transient'
>>> from pipelines.streaming.checkpoint import CheckpointError
>>> classify(CheckpointError("lost"))
'fatal'
"""

from __future__ import annotations

import builtins
import importlib
import logging
import re
import signal
import sys
import time
from dataclasses import dataclass

from pipelines.errors import LakerecError, TransientError, UsageError
from pipelines.model.card import DEFAULTS
from schemas import DEDUP_HORIZON_DAYS

log = logging.getLogger("lakerec.stream")

# a traceback's exception line: "module.Class: message", or the bare class of one raised
# without a message
_EXC_LINE = re.compile(r"(?m)^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?::[ \t]|[ \t]*$)")


@dataclass(frozen=True)
class StreamConfig:
    """Everything ``lakerec stream`` was asked to do, validated (see ``jobs/stream.py``)."""

    lakehouse: str
    bootstrap: str
    topic: str
    kafka: dict
    query: str
    checkpoint: str
    starting_offsets: str
    max_offsets: int | None
    trigger_s: float
    available_now: bool
    timeout_s: float | None
    skip_lost: bool
    group_for_commits: str | None
    k: int = DEFAULTS.k
    max_restarts: int = 5
    log_level: str | None = None
    new_item_slots: int = DEFAULTS.new_item_slots
    dedup_horizon_days: int = DEDUP_HORIZON_DAYS
    state_dir: str | None = None  # None: <lakehouse>/_stream/<query>/state
    store_url: str | None = None  # the online store each batch's lists are pushed to
    kind: str = "feedback"  # or "exposures": land the API's exposure log instead

    def source_options(self) -> dict:
        opts = {"kafka.bootstrap.servers": self.bootstrap, "subscribe": self.topic,
                "startingOffsets": self.starting_offsets,
                "failOnDataLoss": "false" if self.skip_lost else "true", **self.kafka}
        if self.max_offsets:
            opts["maxOffsetsPerTrigger"] = str(self.max_offsets)
        if self.group_for_commits:
            opts["groupIdForCommits"] = self.group_for_commits
        return opts


def _resolve(name: str) -> type | None:
    """The exception class a traceback line names (``kafka.errors.KafkaTimeoutError``).

    Only modules already imported are looked in (nothing is imported on a traceback's say):
    builtins, kafka-python's errors and lakerec's own modules, which the query imports.
    """
    mod, _, cls = name.rpartition(".")
    where = sys.modules.get(mod) if mod else builtins
    obj = getattr(where, cls, None) if where is not None else None
    return obj if isinstance(obj, type) and issubclass(obj, BaseException) else None


def remote_error(exc: BaseException) -> tuple[type, str] | None:
    """The innermost Python exception named in ``exc``'s text (a failure that crossed the
    JVM from a Python worker): its class and its message line.

    Python prints a chain's cause first ("The above exception was the direct cause of the
    following exception"), so the first exception line that names a Python exception class
    is the innermost; Java class names do not resolve and are passed over.
    """
    importlib.import_module("kafka.errors")  # the classes a broker outage names
    text = str(exc)
    for m in _EXC_LINE.finditer(text):
        cls = _resolve(m.group(1))
        if cls is not None:
            return cls, text[m.start():].splitlines()[0]
    return None


def classify(exc: BaseException, cls: type | None = None) -> str:
    """``transient`` (restart from the checkpoint) or ``fatal``.

    Transient: :class:`~pipelines.errors.TransientError`, timeouts and refused connections,
    and the kafka-python errors it marks ``retriable`` (timeouts, lost connections, nodes not
    ready: how a broker outage surfaces). Fatal: every other lakerec error (lost offsets, a
    refused checkpoint, a bad config, a commit conflict) and Kafka's non-retriable errors
    (authentication, authorisation, configuration).
    """
    cls = cls or type(exc)
    if issubclass(cls, TransientError | TimeoutError | ConnectionError):
        return "transient"
    if issubclass(cls, LakerecError):
        return "fatal"
    try:
        from kafka.errors import KafkaError
    except ImportError:  # pragma: no cover - kafka-python is a dependency
        return "fatal"
    return "transient" if issubclass(cls, KafkaError) and getattr(cls, "retriable", False) \
        else "fatal"


def failure_of(exc: BaseException, ctx) -> tuple[str, str]:
    """(``transient``/``fatal``, one line) for a query failure ``exc``."""
    original = getattr(ctx, "failure", None)
    if original is not None:
        remote = remote_error(original) if not isinstance(original, LakerecError) else None
        if remote is not None:
            return classify(original, remote[0]), remote[1]
        first = str(original).splitlines()[0] if str(original) else ""
        return classify(original), f"{type(original).__name__}: {first}"
    remote = remote_error(exc)
    if remote is not None:
        return classify(exc, remote[0]), remote[1]
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return classify(exc), text


def run(spark, cfg: StreamConfig) -> int:
    """Run the query until stopped (see the module docstring); returns the exit code."""
    from pipelines.streaming.checkpoint import (
        CheckpointError,
        caught_up,
        committed_offsets,
        end_offsets,
    )
    from pipelines.streaming.microbatch import StreamContext, batch_log_path
    from pipelines.streaming.query import start_query, stop_after_batch

    ctx = StreamContext(cfg.lakehouse, cfg.query, k=cfg.k, new_item_slots=cfg.new_item_slots,
                        dedup_horizon_days=cfg.dedup_horizon_days, state_dir=cfg.state_dir,
                        metrics_file=batch_log_path(cfg.lakehouse, cfg.query),
                        store_url=cfg.store_url if cfg.kind == "feedback" else None,
                        kind=cfg.kind)
    signalled: list[int] = []

    def on_signal(signum, _frame):
        signalled.append(signum)
        log.info("signal %d: stopping after the batch in flight", signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    deadline = None if cfg.timeout_s is None else time.monotonic() + cfg.timeout_s
    target = first = initial = None
    if cfg.available_now:  # everything up to the end offsets of now, in capped batches
        first, target = end_offsets(cfg.source_options())
        initial = committed_offsets(cfg.checkpoint)
        if cfg.starting_offsets == "latest" and initial is None:
            target = {}
    restarts = 0
    print(f"==> stream {cfg.topic} on {cfg.bootstrap} as query {cfg.query!r} "
          f"(checkpoint {cfg.checkpoint})", flush=True)
    while True:
        ctx.failure = None
        try:
            query = start_query(spark, ctx, source_options=cfg.source_options(),
                                checkpoint=cfg.checkpoint,
                                trigger_s=0.0 if cfg.available_now else cfg.trigger_s)
        except CheckpointError as e:
            raise UsageError(str(e)) from None
        try:
            while query.isActive:
                if signalled or (deadline is not None and time.monotonic() > deadline) or (
                        target is not None and caught_up(cfg.checkpoint, first, target, initial)):
                    stop_after_batch(ctx, query)
                    break
                query.awaitTermination(0.25)
            exc = query.exception()
        except Exception as e:  # noqa: BLE001 - awaitTermination re-raises the query's error
            exc = e
        if exc is None or ctx.stop_requested.is_set():
            break
        kind, line = failure_of(exc, ctx)
        if kind == "transient" and restarts < cfg.max_restarts:
            restarts += 1
            wait = min(30.0, 2.0 * 2 ** (restarts - 1))
            log.warning("query failed (%s); restarting from the checkpoint in %.0f s "
                        "(%d/%d)", line[:300], wait, restarts, cfg.max_restarts)
            time.sleep(wait)
            continue
        raise StreamFailedError(line)
    n = sum(r.records for r in ctx.reports)
    print(f"    stopped: {len(ctx.reports)} batches, {n:,} records, "
          f"{sum(r.valid for r in ctx.reports):,} valid, "
          f"{sum(r.quarantined for r in ctx.reports):,} quarantined, "
          f"{sum(r.users for r in ctx.reports):,} user refreshes", flush=True)
    return 0


class StreamFailedError(LakerecError, RuntimeError):
    """The query failed for good; the message is the root cause, on one line."""
