"""lakerec stream: Kafka feedback -> interactions -> exact fold-in -> recommendations.

    lakerec stream [--bootstrap HOST:PORT] [--topic feedback] [--query-name feedback]
                   [--checkpoint PATH] [--starting-offsets earliest|latest|JSON]
                   [--max-offsets-per-trigger 20000] [--trigger-seconds 1]
                   [--available-now] [--timeout SECONDS] [--skip-lost-offsets] [--k 10]
    spark-submit jobs/stream.py   (same arguments)

Runs until SIGTERM/SIGINT (it stops after the batch in flight), --timeout, or, with
--available-now, once everything up to now is processed. Exactly once whatever the crash:
offsets live in the checkpoint (default <lakehouse>/_checkpoints/<query-name>) and every
Delta commit records (lakerec.stream/<query-name>, batch id). Kafka security: --security-protocol
SSL|SASL_SSL|SASL_PLAINTEXT, --sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512, --ssl-cafile ...;
credentials only from LAKEREC_KAFKA_SASL_USERNAME / LAKEREC_KAFKA_SASL_PASSWORD /
LAKEREC_KAFKA_SSL_KEY_PASSWORD.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

from pipelines import cli
from pipelines.config import UsageError, positive_int

log = logging.getLogger("lakerec.stream")

_KAFKA_FLAGS = {  # flag -> source option
    "security_protocol": "kafka.security.protocol",
    "sasl_mechanism": "kafka.sasl.mechanism",
    "ssl_cafile": "kafka.ssl.cafile",
    "ssl_certfile": "kafka.ssl.certfile",
    "ssl_keyfile": "kafka.ssl.keyfile",
}


def add_kafka_options(p) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env LAKEREC_BOOTSTRAP; "
                                       "default: the broker of `lakerec broker start`)")
    p.add_argument("--topic", help="topic (default feedback)")
    p.add_argument("--security-protocol", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT",
                                                   "SASL_SSL"))
    p.add_argument("--sasl-mechanism", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    p.add_argument("--ssl-cafile")
    p.add_argument("--ssl-certfile")
    p.add_argument("--ssl-keyfile")


def kafka_settings(args, s) -> tuple[str, str, dict]:
    """(bootstrap, topic, kafka.* options) from flags > env > lakerec.toml > the local broker."""
    from pipelines import broker
    from pipelines.kafka_source import KafkaConfigError, client_config

    bootstrap = s.get("bootstrap", flag=args.bootstrap, default=None)
    if bootstrap is None:
        st = broker.status(os.path.join(s.lakehouse, "_broker"))
        if st is None:
            raise UsageError("no --bootstrap given and no local broker running "
                             "(start one with: lakerec broker start)")
        bootstrap = st.bootstrap
    topic = s.get("topic", flag=args.topic, default="feedback")
    opts = {o: s.get(name, flag=getattr(args, name), default=None)
            for name, o in _KAFKA_FLAGS.items()}
    opts = {k: str(v) for k, v in opts.items() if v is not None}
    try:
        client_config({"kafka.bootstrap.servers": bootstrap, **opts})
    except KafkaConfigError as e:
        raise UsageError(str(e)) from None
    return str(bootstrap), str(topic), opts


@dataclass(frozen=True)
class StreamConfig:
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
    k: int
    max_restarts: int
    log_level: str | None
    new_item_slots: int = 1

    def source_options(self) -> dict:
        opts = {"kafka.bootstrap.servers": self.bootstrap, "subscribe": self.topic,
                "startingOffsets": self.starting_offsets,
                "failOnDataLoss": "false" if self.skip_lost else "true", **self.kafka}
        if self.max_offsets:
            opts["maxOffsetsPerTrigger"] = str(self.max_offsets)
        if self.group_for_commits:
            opts["groupIdForCommits"] = self.group_for_commits
        return opts


def parse(argv: list[str] | None) -> StreamConfig:
    import re

    from pipelines.kafka_source import KafkaConfigError, SourceOptions
    from pipelines.stream import CheckpointError, check_checkpoint

    p = cli.parser("stream", "Kafka feedback -> interactions -> fold-in -> recommendations.")
    add_kafka_options(p)
    p.add_argument("--query-name", help="names the query, its checkpoint and its Delta "
                                        "transactions (default feedback)")
    p.add_argument("--checkpoint", help="checkpoint folder (default "
                                        "<lakehouse>/_checkpoints/<query-name>)")
    p.add_argument("--starting-offsets", help="earliest (default), latest, or offset JSON; "
                                              "only for a new checkpoint")
    p.add_argument("--max-offsets-per-trigger", type=positive_int,
                   help="cap on records per micro-batch (default 20000)")
    p.add_argument("--trigger-seconds", type=float, help="micro-batch interval (default 1)")
    p.add_argument("--available-now", action="store_true",
                   help="process everything up to now, then stop")
    p.add_argument("--timeout", type=float, help="stop (cleanly) after this many seconds")
    p.add_argument("--skip-lost-offsets", action="store_true",
                   help="skip ahead, with a warning, when the broker no longer holds the "
                        "checkpointed offsets (default: fail)")
    p.add_argument("--group-id-for-commits", help="also commit offsets to this consumer "
                                                  "group after each batch (lag dashboards)")
    p.add_argument("--k", type=positive_int, help="recommendations per user (default 10)")
    p.add_argument("--new-item-slots", type=int,
                   help="places per list reserved for items placed by their text (1; 0 = none)")
    p.add_argument("--max-restarts", type=int, default=None,
                   help="restarts after a transient failure such as a broker outage "
                        "(default 5)")
    args, s = cli.parse_args(p, argv, section="stream")
    bootstrap, topic, kafka = kafka_settings(args, s)
    query = s.get("query_name", flag=args.query_name, default="feedback")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", query):
        raise UsageError(f"--query-name must be 1-100 of A-Z a-z 0-9 _ . - : {query!r}")
    checkpoint = s.check_writable(
        s.get("checkpoint", flag=args.checkpoint, default=s.path("_checkpoints", query)),
        "--checkpoint")
    trigger = float(s.get("trigger_seconds", flag=args.trigger_seconds, default=1.0))
    if trigger < 0:
        raise UsageError("--trigger-seconds must be >= 0")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    cfg = StreamConfig(
        s.lakehouse, bootstrap, topic, kafka, query, checkpoint,
        str(s.get("starting_offsets", flag=args.starting_offsets, default="earliest")),
        s.get("max_offsets_per_trigger", flag=args.max_offsets_per_trigger, default=20000,
              cast=positive_int),
        trigger, args.available_now, args.timeout, args.skip_lost_offsets,
        args.group_id_for_commits,
        s.get("k", flag=args.k, default=10, cast=positive_int),
        int(s.get("max_restarts", flag=args.max_restarts, default=5)), args.log_level,
        int(s.get("new_item_slots", flag=args.new_item_slots, default=1)))
    if cfg.new_item_slots < 0:
        raise UsageError("--new-item-slots must be >= 0")
    try:
        SourceOptions.parse(cfg.source_options())
    except KafkaConfigError as e:
        raise UsageError(str(e)) from None
    try:  # before Spark starts: a lost checkpoint is a one-line refusal
        check_checkpoint(cfg.lakehouse, cfg.query, cfg.checkpoint)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    s.check_writable(s.lakehouse, "--lakehouse")
    return cfg


def _transient(exc: BaseException) -> bool:
    """Failures worth a restart from the checkpoint (broker outages), not data or config."""
    text = str(exc)
    fatal = ("OffsetOutOfRangeError", "KafkaConfigError", "CheckpointError",
             "UnsupportedTableError", "DeltaConflictError")
    if any(f in text for f in fatal):
        return False
    return any(t in text for t in ("TimeoutError", "KafkaTimeoutError", "NoBrokersAvailable",
                                   "KafkaConnectionError", "ConnectionRefused",
                                   "NodeNotReadyError", "KafkaError"))


def body(spark, cfg: StreamConfig) -> int:
    from pipelines.stream import (
        CheckpointError,
        StreamContext,
        caught_up,
        committed_offsets,
        end_offsets,
        start_query,
        stop_after_batch,
    )

    ctx = StreamContext(cfg.lakehouse, cfg.query, k=cfg.k, new_item_slots=cfg.new_item_slots,
                        metrics_file=os.path.join(cfg.lakehouse, "_stream", cfg.query,
                                                  "batches.jsonl"))
    signalled: list[int] = []

    def on_signal(signum, _frame):
        signalled.append(signum)
        log.info("signal %d: stopping after the batch in flight", signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    deadline = None if cfg.timeout_s is None else time.monotonic() + cfg.timeout_s
    target = None
    if cfg.available_now:  # everything up to the end offsets of now, in capped batches
        first, target = end_offsets(cfg.source_options())
        initial = committed_offsets(cfg.checkpoint)
        if cfg.starting_offsets == "latest" and committed_offsets(cfg.checkpoint) is None:
            target = {}
    restarts = 0
    print(f"==> stream {cfg.topic} on {cfg.bootstrap} as query {cfg.query!r} "
          f"(checkpoint {cfg.checkpoint})", flush=True)
    while True:
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
        if restarts < cfg.max_restarts and _transient(exc):
            restarts += 1
            wait = min(30.0, 2.0 * 2 ** (restarts - 1))
            log.warning("query failed (%s); restarting from the checkpoint in %.0f s "
                        "(%d/%d)", str(exc).splitlines()[0][:300], wait, restarts,
                        cfg.max_restarts)
            time.sleep(wait)
            continue
        raise RuntimeError(_root_cause(exc))
    n = sum(r.records for r in ctx.reports)
    print(f"    stopped: {len(ctx.reports)} batches, {n:,} records, "
          f"{sum(r.valid for r in ctx.reports):,} valid, "
          f"{sum(r.quarantined for r in ctx.reports):,} quarantined, "
          f"{sum(r.users for r in ctx.reports):,} user refreshes", flush=True)
    return 0


def _root_cause(exc: BaseException) -> str:
    """The innermost Python error of a query failure, on one line."""
    text = str(exc)
    for marker in ("OffsetOutOfRangeError: ", "KafkaConfigError: ", "TimeoutError: ",
                   "CheckpointError: "):
        if marker in text:
            return marker + text.split(marker, 1)[1].splitlines()[0]
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    return cli.run("stream", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
