"""lakerec produce: send events to a Kafka topic at a given rate.

    lakerec produce --from-logs PATH [--rate 1000] [--limit N]     replay log lines as they are
    lakerec produce --users u1,u2 --items i1,i2 [--event-type purchase]
    lakerec produce --users u1 --new-cluster [--count 5]           purchases from a category
                                                                   the user touched least
Common: --bootstrap HOST:PORT (default: the local broker of `lakerec broker start`),
--topic feedback, and the Kafka security options of `lakerec stream`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import UsageError, positive_float, positive_int
from schemas.events import EVENT_TYPES


@dataclass(frozen=True)
class ProduceConfig:
    lakehouse: str
    bootstrap: str
    topic: str
    kafka: dict
    from_logs: str | None
    users: tuple[str, ...]
    items: tuple[str, ...]
    new_cluster: bool
    count: int
    event_type: str
    rate: float | None
    limit: int | None
    one_record_per_batch: bool
    log_level: str | None


def parse(argv: list[str] | None) -> ProduceConfig:
    import os

    from jobs.stream import add_kafka_options, kafka_settings

    p = cli.parser("produce", "Send events (replayed logs or synthetic feedback) to Kafka.")
    add_kafka_options(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-logs", help="a JSON Lines log folder to replay line by line")
    src.add_argument("--users", help="comma-separated user ids for synthetic feedback")
    p.add_argument("--items", help="comma-separated item ids each user buys")
    p.add_argument("--new-cluster", action="store_true",
                   help="buy the top items of the category the user touched least")
    p.add_argument("--count", type=positive_int, default=5, help="items per user (--new-cluster)")
    p.add_argument("--event-type", default="purchase",
                   choices=[t.name for t in EVENT_TYPES],
                   help="event type of the synthetic events (purchase)")
    p.add_argument("--rate", type=positive_float, help="records per second (default: as fast as possible)")
    p.add_argument("--limit", type=positive_int, help="stop after this many records")
    p.add_argument("--batching", action="store_true",
                   help="let the producer batch records (fine for Apache Kafka; the bundled "
                        "local broker needs one record per batch, the default)")
    args, s = cli.parse_args(p, argv, section="produce")
    bootstrap, topic, kafka = kafka_settings(args, s)
    if args.from_logs and not os.path.isdir(args.from_logs):
        raise UsageError(f"no log folder {args.from_logs}")
    if args.users and not (args.items or args.new_cluster):
        raise UsageError("--users needs --items or --new-cluster")
    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be positive")
    def split(text):
        return tuple(x.strip() for x in (text or "").split(",") if x.strip())

    return ProduceConfig(s.lakehouse, bootstrap, topic, kafka, args.from_logs, split(args.users),
                         split(args.items), args.new_cluster, args.count, args.event_type,
                         args.rate, args.limit, not args.batching, args.log_level)


def body(_spark, cfg: ProduceConfig) -> int:
    from pipelines.dev import feedback

    if cfg.from_logs:
        records = feedback.log_lines(cfg.from_logs)
    elif cfg.new_cluster:
        records = iter(())
        for u in cfg.users:
            category, items = feedback.untouched_cluster_items(cfg.lakehouse, u, n=cfg.count)
            print(f"    {u}: {len(items)} {cfg.event_type}s from {category!r}: {', '.join(items)}")
            records = _chain(records, feedback.purchases([u], items, event_type=cfg.event_type))
    else:
        records = feedback.purchases(list(cfg.users), list(cfg.items), event_type=cfg.event_type)
    producer = feedback.make_producer(cfg.bootstrap, options=cfg.kafka,
                                      one_record_per_batch=cfg.one_record_per_batch)
    try:
        n = feedback.send(producer, cfg.topic, records, rate=cfg.rate, limit=cfg.limit)
    finally:
        producer.close()
    print(f"sent {n:,} records to {cfg.topic} on {cfg.bootstrap}")
    return 0


def _chain(a, b):
    yield from a
    yield from b


def main(argv: list[str] | None = None) -> int:
    return cli.run("produce", argv, parse, body, spark=False)


if __name__ == "__main__":
    sys.exit(main())
