"""lakerec models: the registered models and the champion alias that serving follows.

    lakerec models list [--format table|csv|json]
    lakerec models promote VERSION --reason "why"
    lakerec models rollback --reason "why"

``promote`` points the ``champion`` alias at a version (any trained version: its factors are
in the tables); ``rollback`` points it back at the champion the current one replaced. Each
change is recorded on the version (when, by what, why, the one it replaced) and shown by
``list``. ``score`` serves the new champion on its next run, a running stream within its
model refresh interval (30 s).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pipelines.runtime import cli
from pipelines.runtime.config import UsageError, positive_int

ACTIONS = ("list", "promote", "rollback")


@dataclass(frozen=True)
class ModelsConfig:
    lakehouse: str
    action: str
    version: int | None
    reason: str | None
    fmt: str
    log_level: str | None


def parse(argv: list[str] | None) -> ModelsConfig:
    p = cli.parser("models", "List the registered models; promote one to champion, or roll "
                             "the champion back.")
    p.add_argument("action", choices=ACTIONS,
                   help="list, promote VERSION, or rollback (to the previous champion)")
    p.add_argument("version", nargs="?", help="the version to promote (promote only)")
    p.add_argument("--reason", help="why (required by promote and rollback; recorded on "
                                    "the version)")
    cli.add_format_option(p, "list's output")
    args, s = cli.parse_args(p, argv, section="models")
    s.existing_lakehouse()  # reads one: a mistyped path is a usage error
    version = None
    if args.action == "promote":
        if args.version is None:
            raise UsageError("promote wants a VERSION (`lakerec models list` shows them)")
        try:
            version = positive_int(args.version)
        except ValueError:
            raise UsageError(f"VERSION must be a positive integer, got {args.version!r}") \
                from None
    elif args.version is not None:
        raise UsageError(f"{args.action} takes no VERSION (got {args.version!r})")
    reason = (args.reason or "").strip() or None
    if args.action != "list":
        if reason is None:
            raise UsageError(f"{args.action} wants --reason (it is recorded on the version)")
        s.check_writable(s.lakehouse, "--lakehouse")
        from pipelines.storage import tracking

        if tracking.find_experiment(s.lakehouse) is None:  # and no MLflow store made for it
            raise UsageError(f"no model trained in {s.lakehouse} yet: nothing to "
                             f"{args.action} (`lakerec train`)")
    return ModelsConfig(s.lakehouse, args.action, version, reason, args.format,
                        args.log_level)


def _metric(metrics: dict, prefix: str) -> float | None:
    for name, value in metrics.items():
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return value
    return None


def body(_spark, cfg: ModelsConfig) -> int:
    from pipelines.storage import tracking
    from pipelines.storage.sql import format_rows

    if cfg.action == "promote":
        before = tracking.promote(cfg.lakehouse, cfg.version, reason=cfg.reason, by="promote")
        if before == cfg.version:
            print(f"v{cfg.version} is already the champion")
        else:
            print(f"champion: v{before if before is not None else '-'} -> v{cfg.version} "
                  f"({cfg.reason}); score serves it on its next run, a running stream "
                  "within 30 s")
        return 0
    if cfg.action == "rollback":
        was, now = tracking.rollback(cfg.lakehouse, reason=cfg.reason)
        print(f"champion: v{was} -> v{now} (rolled back: {cfg.reason}); score serves it on "
              "its next run, a running stream within 30 s")
        return 0
    versions = tracking.list_versions(cfg.lakehouse)
    if not versions:
        print("no model trained yet (`lakerec train`)")
        return 0
    cols = ["version", "trainer", "created", "ndcg", "popularity_ndcg", "champion",
            "promoted_at", "promoted_by", "previous", "reason", "decision"]
    rows = [(v.version, v.trainer, v.created, _metric(v.metrics, "ndcg_at_"),
             _metric(v.metrics, "pop_ndcg_at_"), "*" if v.champion else "", v.promoted_at,
             v.promoted_by, v.previous, v.reason, v.decision) for v in versions]
    print(format_rows(cols, rows, cfg.fmt, max_width=60))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run("models", argv, parse, body, spark=False,
                   log_level=lambda c: c.log_level or "WARNING")


if __name__ == "__main__":
    sys.exit(main())
