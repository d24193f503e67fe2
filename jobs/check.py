"""lakerec check: the quality gate on recommendations (exit 1 if any invariant breaks).

    lakerec check [--k K]
    spark-submit jobs/check.py  (same arguments)

K is the one ``score`` (or the stream) wrote the lists with, as the table's commits record
it; ``--k`` overrides it. Checks: recommendations exist; no nulls; at most K rows per user, ranked 1..n; no item twice;
no seen item; every user with interactions is scored; K rows unless fewer than K items with
factors remain unseen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.model.card import DEFAULTS
from pipelines.runtime import cli
from pipelines.runtime.config import positive_int


@dataclass(frozen=True)
class CheckConfig:
    lakehouse: str
    k: int | None  # None: the K the lists were written with
    log_level: str | None


def parse(argv: list[str] | None) -> CheckConfig:
    p = cli.parser("check", "Quality gate: recommendations' invariants (exit 1 on failure).")
    p.add_argument("--k", help="list length to judge (default: the K `lakerec score` wrote the "
                               f"lists with, else {DEFAULTS.k})")
    args, s = cli.parse_args(p, argv, section="check")
    s.existing_lakehouse()  # reads one: a mistyped path is a usage error
    return CheckConfig(s.lakehouse, s.get("k", flag=args.k, default=None, cast=positive_int),
                       args.log_level)


def body(_spark, cfg: CheckConfig) -> int:
    from pipelines.batch.quality import check_recommendations, served_k

    k = cfg.k
    if k is None:
        k = served_k(cfg.lakehouse) or DEFAULTS.k
        print(f"  lists of K = {k} (as written)")
    checks = check_recommendations(cfg.lakehouse, k=k)
    for c in checks:
        print(f"  {'ok  ' if not c.violations else 'FAIL'} {c.name}"
              + (f" ({c.violations:,} violations)" if c.violations else ""))
    failed = [c for c in checks if c.violations]
    print(f"quality gate: {'FAILED' if failed else 'passed'} ({len(checks)} checks)")
    return cli.EXIT_FAILED if failed else cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return cli.run("check", argv, parse, body, spark=False,
                   log_level=lambda c: c.log_level or "WARNING")


if __name__ == "__main__":
    sys.exit(main())
