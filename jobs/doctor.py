"""lakerec doctor: check every table (log readable, every data file present) and say how to
recover the damaged ones.

    lakerec doctor [--format text|json]

Exit 0 when every table is sound, 1 when one is damaged (each with its recovery command,
e.g. ``lakerec restore recommendations --version 4``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.runtime import cli


@dataclass(frozen=True)
class DoctorConfig:
    lakehouse: str
    fmt: str
    log_level: str | None


def parse(argv: list[str] | None) -> DoctorConfig:

    p = cli.parser("doctor", "Check every table's log and files; print how to recover.")
    p.add_argument("--format", default="text", choices=["text", "json"],
                   help="text (default) or json (one object per table)")
    args, s = cli.parse_args(p, argv, section="doctor")
    return DoctorConfig(s.existing_lakehouse(), args.format, args.log_level)


def body(_spark, cfg: DoctorConfig) -> int:
    import dataclasses
    import json

    from pipelines.storage.repair import diagnose

    health = diagnose(cfg.lakehouse)
    for h in health:
        print(json.dumps({**dataclasses.asdict(h), "command": h.command}) if cfg.fmt == "json"
              else h.line())
    broken = [h for h in health if not h.ok]
    if cfg.fmt == "text":
        print(f"{len(health)} tables, {len(broken)} damaged" if health else
              f"no tables under {cfg.lakehouse}")
    return cli.EXIT_FAILED if broken else cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return cli.run("doctor", argv, parse, body, spark=False,
                   log_level=lambda c: c.log_level or "WARNING")


if __name__ == "__main__":
    sys.exit(main())
