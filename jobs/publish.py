"""lakerec publish: push the lists that changed since the last publish to the online store.

    lakerec publish [--store URL] [--chunk 1000]

The store (default: SQLite at <lakehouse>/_online/lists.db; or redis://host:port/db) records
the ``recommendations`` version it reflects; this reads the commits after it and writes only
the lists they changed (a full comparison after a ``score`` or a restore, still writing only
the lists that differ), then the popular list and similar items when their tables changed.
Safe to re-run, to kill and to run beside the stream (README, "Serving online").
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import positive_int


@dataclass(frozen=True)
class PublishConfig:
    lakehouse: str
    store: str
    chunk: int
    log_level: str | None


def add_store_option(p) -> None:
    p.add_argument("--store", help="online store URL: sqlite:///PATH.db or redis://HOST:PORT/DB "
                                   "(default sqlite under <lakehouse>/_online; none = off)")


def store_url(args, s, *, allow_none: bool = False) -> str | None:
    """The store from --store > env > lakerec.toml > the lakehouse's embedded one, checked."""
    from pipelines.online.store import check_url, default_store_url
    from pipelines.runtime.config import UsageError

    url = str(s.get("store", flag=args.store, default=default_store_url(s.lakehouse)))
    if url == "none":
        if not allow_none:
            raise UsageError("--store none: this command needs a store")
        return None
    check_url(url)
    if url.startswith("sqlite"):
        from urllib.parse import urlparse

        s.check_writable(urlparse(url).path, "--store")
    return url


def parse(argv: list[str] | None) -> PublishConfig:
    p = cli.parser("publish", "Push changed lists to the online store (exactly once).")
    add_store_option(p)
    p.add_argument("--chunk", help="lists per store write (1000)")
    args, s = cli.parse_args(p, argv, section="publish")
    s.existing_lakehouse("recommendations")
    return PublishConfig(s.lakehouse, store_url(args, s),
                         s.get("chunk", flag=args.chunk, default=1000, cast=positive_int),
                         args.log_level)


def body(_spark, cfg: PublishConfig) -> int:
    from pipelines.online.publish import Publisher
    from pipelines.online.store import open_store

    store = open_store(cfg.store)
    try:
        rep = Publisher(cfg.lakehouse, store, chunk=cfg.chunk).sync()
    finally:
        store.close()
    print(f"    {rep.line()} -> {cfg.store}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("publish", argv, parse, body, spark=False)


if __name__ == "__main__":
    sys.exit(main())
