"""lakerec generate: seeded synthetic behaviour logs and catalog, written to the landing zone.

    lakerec generate [--users N] [--items N] [--events N] [--days N] [--clusters N]
                     [--start YYYY-MM-DD] [--seed N] [--dirty-fraction F]
                     [--dynamics] [--drift F] [--item-lifetime-days D] [--churn F]
                     [--out PATH] [--force]
    spark-submit jobs/generate.py  (same arguments)

Time dynamics are off by default (a stationary world). ``--dynamics`` turns them all on with
the values of :meth:`SyntheticSpec.realistic` (180 days, drift 0.3, item lifetime 60 days,
churn 0.5); ``--days``, ``--drift``, ``--item-lifetime-days`` and ``--churn`` (or their env /
toml settings) override any of them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from pipelines.dev.generate import SyntheticSpec
from pipelines.runtime import cli
from pipelines.runtime.config import (
    boolean,
    date_value,
    fraction,
    integer,
    nonneg_float,
    positive_int,
)


@dataclass(frozen=True)
class GenerateConfig:
    out: str
    spec: SyntheticSpec
    force: bool
    log_level: str | None


SYNTHETIC_FLAGS = {"users": "distinct users (20000)", "items": "catalog size (5000)",
              "events": "about this many events (1000000)", "days": "days of logs (30)",
              "clusters": "taste clusters (20)", "seed": "random seed (42)",
              "start": "first day, YYYY-MM-DD (2024-06-01)",
              "dirty-fraction": "share of events corrupted into bad rows (0)",
              "drift": "share of users whose primary taste cluster changes mid-span (0)",
              "item-lifetime-days": "items arrive over the span and their popularity halves "
                                    "every this many days (0: all present, no fading)",
              "churn": "share of users who join late and/or leave early (0)"}


def add_spec_options(p, *, dirty_default: float = 0.0, start_help: str | None = None) -> None:
    for flag, help_ in SYNTHETIC_FLAGS.items():
        if flag == "dirty-fraction":  # the defaults a command may set for itself
            help_ = help_.replace("(0)", f"({dirty_default:g})")
        elif flag == "start" and start_help:
            help_ = start_help
        p.add_argument(f"--{flag}", help=help_)
    p.add_argument("--dynamics", action="store_true",
                   help="time dynamics on: 180 days, drift 0.3, item lifetime 60 days, churn "
                        "0.5 (the flags above override each)")




def spec_from(args, s, *, dirty_default: float = 0.0) -> SyntheticSpec:
    """The data set's shape from flags > env > lakerec.toml > defaults."""
    dynamics = s.get("dynamics", flag=True if getattr(args, "dynamics", False) else None,
                     default=False, cast=boolean)
    d = SyntheticSpec.realistic() if dynamics else SyntheticSpec()
    ints = {n: s.get(n, flag=getattr(args, n), default=getattr(d, n), cast=positive_int)
            for n in ("users", "items", "events", "days", "clusters")}
    try:
        return SyntheticSpec(
            **ints,
            start=s.get("start", flag=args.start, default=d.start,
                        cast=date_value),
            seed=s.get("seed", flag=args.seed, default=d.seed, cast=integer),
            dirty_fraction=s.get("dirty_fraction", flag=args.dirty_fraction,
                                 default=dirty_default, cast=fraction),
            drift=s.get("drift", flag=args.drift, default=d.drift, cast=fraction),
            item_lifetime_days=s.get("item_lifetime_days", flag=args.item_lifetime_days,
                                     default=d.item_lifetime_days, cast=nonneg_float),
            churn=s.get("churn", flag=args.churn, default=d.churn, cast=fraction),
        )
    except ValueError as e:
        raise cli.UsageError(str(e)) from None


def parse(argv: list[str] | None) -> GenerateConfig:
    p = cli.parser("generate", "Seeded synthetic logs (dt=YYYY-MM-DD/*.jsonl) and catalog.")
    add_spec_options(p)
    p.add_argument("--out", help="landing folder (default <lakehouse>/landing)")
    p.add_argument("--force", action="store_true", help="regenerate even if already present")
    args, s = cli.parse_args(p, argv, section="generate")
    spec = spec_from(args, s)
    out = s.check_writable(s.get("out", flag=args.out, default=s.path("landing")), "--out")
    return GenerateConfig(out=out, spec=spec, force=args.force, log_level=args.log_level)


def body(spark, cfg: GenerateConfig) -> int:
    from pipelines.dev import generate
    from pipelines.storage import landing

    manifest = {"generator": "lakerec.generate", "version": generate.GENERATOR_VERSION,
                **cfg.spec.as_dict()}
    if not cfg.force and landing.read_manifest(os.path.join(cfg.out, "events")) == manifest:
        print(f"already generated in {cfg.out} with these settings (use --force to redo)")
        return 0
    with cli.step(f"generate {cfg.spec.events:,} events, {cfg.spec.items:,} items"):
        counts = landing.write_landing(generate.event_lines(spark, cfg.spec),
                                       generate.catalog_lines(spark, cfg.spec), cfg.out,
                                       manifest)
    print(f"wrote {counts['event_files']} log files under {cfg.out}/events and the catalog "
          f"under {cfg.out}/items")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("generate", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
