"""lakerec serve: the HTTP recommendation API over the online store.

    lakerec serve [--host 127.0.0.1] [--port 8080] [--store URL] [--workers 1]
                  [--bootstrap HOST:PORT] [--exposures-topic exposures] [--no-exposures]
                  [--variant NAME] [--exposure-buffer 10000] [--exposure-flush-ms 50]

Routes: GET /v1/users/{user_id}/recommendations?k=&offset=&category=&exclude=,
/v1/items/{item_id}/similar?k=, /healthz, /readyz, /metrics, /docs (OpenAPI). Every list
served is an exposure message to Kafka (the local broker when one runs, or --bootstrap;
--no-exposures: none), landed by ``lakerec stream --exposures``. Several worker processes
(--workers N) share the port; each keeps its own metrics (README, "Serving online").
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import UsageError, positive_int


@dataclass(frozen=True)
class ServeJob:
    """``lakerec serve``'s arguments: what the app serves (``ServeConfig``) and how."""

    app: object  # pipelines.api.app.ServeConfig
    host: str
    port: int
    workers: int
    log_level: str | None


def parse(argv: list[str] | None) -> ServeJob:
    from jobs.publish import add_store_option, store_url
    from jobs.stream import add_kafka_options, security_options
    from pipelines.api.app import ServeConfig

    p = cli.parser("serve", "The HTTP recommendation API over the online store.")
    p.add_argument("--host", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", help="port (8080)")
    p.add_argument("--workers", help="worker processes (1)")
    add_store_option(p)
    add_kafka_options(p, topic=False)
    p.add_argument("--exposures-topic", help="topic of the exposure log (exposures)")
    p.add_argument("--no-exposures", action="store_true", help="log no exposures")
    p.add_argument("--exposure-buffer", help="exposures buffered at most before dropping "
                                             "(10000)")
    p.add_argument("--exposure-flush-ms",
                   help="exposures are sent to Kafka this often, batched (50)")
    p.add_argument("--variant", help="experiment arm recorded with every exposure")
    args, s = cli.parse_args(p, argv, section="serve")
    store = store_url(args, s)
    exposures = None
    if not args.no_exposures:
        from pipelines.dev import broker

        bootstrap = s.get("bootstrap", flag=args.bootstrap, default=None)
        local = bootstrap is None
        if bootstrap is None:
            st = broker.status(os.path.join(s.lakehouse, "_broker"))
            bootstrap = st.bootstrap if st is not None else None
        if bootstrap is None:
            raise UsageError("no --bootstrap given and no local broker running: exposures "
                             "need Kafka (or pass --no-exposures)")
        opts = {"kafka.bootstrap.servers": str(bootstrap),
                **security_options(args, s, str(bootstrap))}
        exposures = {"options": opts,
                     "topic": str(s.get("exposures_topic", flag=args.exposures_topic,
                                        default="exposures")),
                     "flush_ms": s.get("exposure_flush_ms", flag=args.exposure_flush_ms,
                                       default=50, cast=positive_int)}
        if local:  # the development broker: make the topic (a real cluster's is provisioned)
            broker.create_topic(str(bootstrap), exposures["topic"])
    cfg = ServeConfig(s.lakehouse, store, exposures,
                      s.get("exposure_buffer", flag=args.exposure_buffer, default=10_000,
                            cast=positive_int),
                      variant=s.get("variant", flag=args.variant, default=None))
    host = str(s.get("host", flag=args.host, default="127.0.0.1"))
    port = s.get("port", flag=args.port, default=8080, cast=positive_int)
    workers = s.get("workers", flag=args.workers, default=1, cast=positive_int)
    return ServeJob(cfg, host, port, workers, args.log_level)


def body(_spark, job: ServeJob) -> int:
    import uvicorn

    from pipelines.api.app import CONFIG_ENV

    cfg, host, port, workers, level = job.app, job.host, job.port, job.workers, job.log_level
    os.environ[CONFIG_ENV] = cfg.to_env()  # the workers build their app from it
    print(f"==> serving {cfg.store} on http://{host}:{port} ({workers} worker"
          f"{'s' if workers > 1 else ''}; exposures "
          f"{'-> ' + cfg.exposures['topic'] if cfg.exposures else 'off'}); docs at "
          f"http://{host}:{port}/docs", flush=True)
    uvicorn.run("pipelines.api.app:app_from_env", factory=True, host=host, port=port,
                workers=workers, access_log=False, log_level=(level or "warning").lower(),
                timeout_graceful_shutdown=10)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("serve", argv, parse, body, spark=False, log_level=lambda j: j.log_level)


if __name__ == "__main__":
    sys.exit(main())
