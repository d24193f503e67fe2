"""lakerec restore: bring a table back to an earlier version (recovery from a bad write or a
damaged log; ``lakerec doctor`` names the version).

    lakerec restore TABLE --version N

A readable table gets a Delta restore commit (its history is kept). A table whose latest
commits cannot be read has them set aside in ``TABLE/_lakerec_damaged/`` and is version N
again. Stop the table's writers (the stream, scheduled jobs) first.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import nonneg_int


@dataclass(frozen=True)
class RestoreConfig:
    lakehouse: str
    table: str
    version: int
    log_level: str | None


def parse(argv: list[str] | None) -> RestoreConfig:
    from schemas.tables import TABLES

    p = cli.parser("restore", "Restore a table to an earlier version.")
    p.add_argument("table", choices=list(TABLES), metavar="TABLE",
                   help=f"one of: {', '.join(TABLES)}")
    p.add_argument("--version", required=True, type=nonneg_int, help="the version to restore")
    args, s = cli.parse_args(p, argv, section="restore")
    s.existing_lakehouse()  # reads one: a mistyped path is a usage error
    s.check_writable(s.lakehouse, "--lakehouse")
    return RestoreConfig(s.lakehouse, args.table, args.version, args.log_level)


def body(_spark, cfg: RestoreConfig) -> int:
    from pipelines.storage.repair import restore

    r = restore(cfg.lakehouse, cfg.table, cfg.version)
    if r.set_aside:
        print(f"{r.table}: set aside {len(r.set_aside)} damaged log files "
              f"({', '.join(r.set_aside)}); the table is v{r.version} again")
    elif r.version == r.restored_to:
        print(f"{r.table}: already at v{r.version}")
    else:
        print(f"{r.table}: restored to v{r.restored_to} (new version v{r.version})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("restore", argv, parse, body, spark=False)


if __name__ == "__main__":
    sys.exit(main())
