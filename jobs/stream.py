"""lakerec stream: Kafka feedback -> interactions -> exact fold-in -> recommendations.

    lakerec stream [--bootstrap HOST:PORT] [--topic feedback] [--query-name feedback]
                   [--checkpoint PATH] [--starting-offsets earliest|latest|JSON]
                   [--max-offsets-per-trigger 20000] [--trigger-seconds 1]
                   [--available-now] [--timeout SECONDS] [--skip-lost-offsets] [--k 10]
                   [--new-item-slots 1] [--max-restarts 5] [--group-id-for-commits G]
                   [--store URL|none] [--exposures]
    spark-submit jobs/stream.py   (same arguments)

After each commit the touched users' lists are pushed to the online store (``--store``,
default the lakehouse's embedded one; ``none``: off), which ``lakerec serve`` reads.
``--exposures`` runs the other query instead: the API's exposure log (topic ``exposures``)
into the ``exposures`` table, exactly once (query name ``exposures``).

Runs until SIGTERM/SIGINT (it stops after the batch in flight), --timeout, or, with
--available-now, once everything up to now is processed. Exactly once whatever the crash:
offsets live in the checkpoint (default <lakehouse>/_checkpoints/<query-name>) and every
Delta commit records (lakerec.stream/<query-name>, batch id). Kafka security: --security-protocol
SSL|SASL_SSL|SASL_PLAINTEXT, --sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512, --ssl-cafile ...;
credentials only from LAKEREC_KAFKA_SASL_USERNAME / LAKEREC_KAFKA_SASL_PASSWORD /
LAKEREC_KAFKA_SSL_KEY_PASSWORD.
"""

from __future__ import annotations

import os
import sys

from pipelines.model.card import DEFAULTS
from pipelines.runtime import cli
from pipelines.runtime.config import (
    UsageError,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
)
from pipelines.streaming.supervisor import StreamConfig
from schemas import DEDUP_HORIZON_DAYS

_KAFKA_FLAGS = {  # flag -> source option
    "security_protocol": "kafka.security.protocol",
    "sasl_mechanism": "kafka.sasl.mechanism",
    "ssl_cafile": "kafka.ssl.cafile",
    "ssl_certfile": "kafka.ssl.certfile",
    "ssl_keyfile": "kafka.ssl.keyfile",
}


def add_kafka_options(p, *, topic: bool = True) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env LAKEREC_BOOTSTRAP; "
                                       "default: the broker of `lakerec broker start`)")
    if topic:
        p.add_argument("--topic", help="topic (default feedback)")
    p.add_argument("--security-protocol", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT",
                                                   "SASL_SSL"),
                   help="how to reach the brokers (default PLAINTEXT)")
    p.add_argument("--sasl-mechanism", choices=("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
                   help="SASL mechanism (user and password from env LAKEREC_KAFKA_SASL_USERNAME "
                        "and LAKEREC_KAFKA_SASL_PASSWORD)")
    p.add_argument("--ssl-cafile", help="CA bundle (PEM) that signed the brokers' certificates")
    p.add_argument("--ssl-certfile", help="client certificate (PEM), for mutual TLS")
    p.add_argument("--ssl-keyfile", help="the client certificate's private key (PEM; its password from env "
                        "LAKEREC_KAFKA_SSL_KEY_PASSWORD)")


def kafka_settings(args, s) -> tuple[str, str, dict]:
    """(bootstrap, topic, kafka.* options) from flags > env > lakerec.toml > the local broker."""
    from pipelines.dev import broker

    bootstrap = s.get("bootstrap", flag=args.bootstrap, default=None)
    if bootstrap is None:
        st = broker.status(os.path.join(s.lakehouse, "_broker"))
        if st is None:
            raise UsageError("no --bootstrap given and no local broker running "
                             "(start one with: lakerec broker start)")
        bootstrap = st.bootstrap
    topic = s.get("topic", flag=args.topic, default="feedback")
    return str(bootstrap), str(topic), security_options(args, s, bootstrap)


def security_options(args, s, bootstrap: str) -> dict:
    """The ``kafka.*`` security options (TLS, SASL) from flags > env > lakerec.toml, checked."""
    from pipelines.streaming.kafka_source import KafkaConfigError, client_config

    opts = {o: s.get(name, flag=getattr(args, name), default=None)
            for name, o in _KAFKA_FLAGS.items()}
    opts = {k: str(v) for k, v in opts.items() if v is not None}
    try:
        client_config({"kafka.bootstrap.servers": bootstrap, **opts})
    except KafkaConfigError as e:
        raise UsageError(str(e)) from None
    return opts


def parse(argv: list[str] | None) -> StreamConfig:
    import re

    from pipelines.streaming.checkpoint import CheckpointError, check_checkpoint
    from pipelines.streaming.kafka_source import KafkaConfigError, SourceOptions

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
    p.add_argument("--trigger-seconds", help="micro-batch interval (default 1)")
    p.add_argument("--available-now", action="store_true",
                   help="process everything up to now, then stop")
    p.add_argument("--timeout", type=positive_float, help="stop (cleanly) after this many seconds")
    p.add_argument("--skip-lost-offsets", action="store_true",
                   help="skip ahead, with a warning, when the broker no longer holds the "
                        "checkpointed offsets (default: fail)")
    p.add_argument("--group-id-for-commits", help="also commit offsets to this consumer "
                                                  "group after each batch (lag dashboards)")
    p.add_argument("--k", type=positive_int, help="recommendations per user (default 10)")
    p.add_argument("--new-item-slots",
                   help="places per list reserved for items placed by their text (1; 0 = none)")
    p.add_argument("--dedup-horizon-days",
                   help="look duplicate event ids up this many days back (7)")
    p.add_argument("--state-dir",
                   help="folder of the keyed state (users' histories and indexes, rebuilt "
                        "from the tables when missing); a local disk of the driver "
                        "(default <lakehouse>/_stream/<query>/state)")
    p.add_argument("--exposures", action="store_true",
                   help="land the API's exposure log (topic exposures) in the exposures "
                        "table instead of processing feedback")
    from jobs.publish import add_store_option, store_url

    add_store_option(p)
    p.add_argument("--max-restarts", default=None,
                   help="restarts after a transient failure such as a broker outage "
                        "(default 5)")
    args, s = cli.parse_args(p, argv, section="stream")
    kind = "exposures" if args.exposures else "feedback"
    if args.exposures and args.topic is None:
        args.topic = "exposures"
    bootstrap, topic, kafka = kafka_settings(args, s)
    query = args.query_name if args.exposures and args.query_name else \
        ("exposures" if args.exposures else
         s.get("query_name", flag=args.query_name, default="feedback"))
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", query):
        raise UsageError(f"--query-name must be 1-100 of A-Z a-z 0-9 _ . - : {query!r}")
    checkpoint = s.check_writable(
        s.get("checkpoint", flag=args.checkpoint, default=s.path("_checkpoints", query)),
        "--checkpoint")
    state_dir = s.check_writable(
        s.get("state_dir", flag=args.state_dir, default=s.path("_stream", query, "state")),
        "--state-dir")
    trigger = s.get("trigger_seconds", flag=args.trigger_seconds, default=1.0,
                    cast=nonneg_float)
    cfg = StreamConfig(
        s.lakehouse, bootstrap, topic, kafka, query, checkpoint,
        str(s.get("starting_offsets", flag=args.starting_offsets, default="earliest")),
        s.get("max_offsets_per_trigger", flag=args.max_offsets_per_trigger, default=20000,
              cast=positive_int),
        trigger, args.available_now, args.timeout, args.skip_lost_offsets,
        args.group_id_for_commits,
        s.get("k", flag=args.k, default=DEFAULTS.k, cast=positive_int),
        s.get("max_restarts", flag=args.max_restarts, default=5, cast=nonneg_int),
        args.log_level,
        s.get("new_item_slots", flag=args.new_item_slots, default=DEFAULTS.new_item_slots,
              cast=nonneg_int),
        s.get("dedup_horizon_days", flag=args.dedup_horizon_days,
              default=DEDUP_HORIZON_DAYS, cast=nonneg_int),
        state_dir, None if args.exposures else store_url(args, s, allow_none=True), kind)
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


def body(spark, cfg: StreamConfig) -> int:
    from pipelines.streaming.supervisor import run

    return run(spark, cfg)


def main(argv: list[str] | None = None) -> int:
    return cli.run("stream", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
