"""lakerec status: the lakehouse at a glance, and its alerts.

    lakerec status [--format text|json] [--check] [--bootstrap HOST:PORT [--security-protocol ...]]

Each table's last commit and its age, the champion (when and why promoted), the last
training, each stream query's committed offsets against the broker's end offsets (the local
broker's when running, else ``--bootstrap``), the current lists' coverage and fallback
share, the last ingested day's quarantine rate; then the alerts, each against its threshold
(``[status]`` in ``lakerec.toml``, or ``LAKEREC_MAX_LIST_AGE_HOURS`` and so on). ``--check``
exits 1 when one is breached: the DAG's ``status`` task runs it, so a breach fails the run.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields

from pipelines.runtime import cli
from pipelines.runtime.config import nonneg_float, nonneg_int


@dataclass(frozen=True)
class StatusConfig:
    lakehouse: str
    fmt: str
    check: bool
    bootstrap: str | None
    kafka: dict  # kafka.* security options for the broker (TLS, SASL)
    thresholds: object  # pipelines.ops.status.Thresholds
    log_level: str | None


def parse(argv: list[str] | None) -> StatusConfig:
    from jobs.stream import add_kafka_options, security_options
    from pipelines.ops.status import Thresholds

    p = cli.parser("status", "The lakehouse at a glance, and its alerts.")
    p.add_argument("--format", default="text", choices=["text", "json"],
                   help="text (default) or json (one object)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when an alert is breached (for schedulers and monitors)")
    add_kafka_options(p, topic=False)  # the stream's lag: the topics come from its checkpoint
    d = Thresholds()
    for f in fields(Thresholds):
        p.add_argument(f"--{f.name.replace('_', '-')}",
                       help=f"alert when over: {f.metadata['help']} ({getattr(d, f.name):g})")
    args, s = cli.parse_args(p, argv, section="status")
    values = {f.name: s.get(f.name, flag=getattr(args, f.name), default=getattr(d, f.name),
                            cast=nonneg_int if f.type in (int, "int") else nonneg_float)
              for f in fields(Thresholds)}
    bootstrap = s.get("bootstrap", flag=args.bootstrap, default=None)
    s.existing_lakehouse()
    if bootstrap is None:
        from pipelines.dev import broker

        st = broker.status(os.path.join(s.lakehouse, "_broker"))
        bootstrap = st.bootstrap if st else None
    kafka = security_options(args, s, bootstrap) if bootstrap else {}
    return StatusConfig(s.lakehouse, args.format, args.check, bootstrap, kafka,
                        Thresholds(**values), args.log_level)


def _text(st) -> str:
    lines = [f"lakehouse {st.lakehouse} at {st.at}", "", "tables (last commit):"]
    width = max((len(t.table) for t in st.tables), default=5)
    for t in st.tables:
        lines.append(f"  {t.table:<{width}}  v{t.version:<6} {t.committed_at}  "
                     f"{t.age_hours:>8.1f} h ago  {t.writer[:70]}")
    c = st.champion
    lines += ["", "champion: " + (f"v{c['version']} ({c['trainer']}), promoted "
                                  f"{c['promoted_at'] or '?'} by {c['promoted_by'] or '?'}: "
                                  f"{(c['reason'] or '')[:90]}" if c else "none")]
    t = st.last_training
    if t:
        lines.append(f"last training: v{t['version']} at {t['created']}: "
                     f"{(t['decision'] or '')[:100]}")
    for s in st.streams:
        lines.append(f"stream {s.query}: committed {s.committed:,}"
                     + (f", broker end {s.end:,}, lag {s.lag:,}" if s.lag is not None
                        else f" ({s.note})")
                     + (f", last batch {s.last_batch_at}" if s.last_batch_at else ""))
    if st.lists:
        ls = st.lists
        cov = "?" if ls.get("coverage") is None else f"{ls['coverage']:.1%}"
        lines.append(f"lists: {ls['users']:,} users, {ls['items_listed']:,} items listed "
                     f"(coverage {cov}), fallback first for "
                     f"{ls['fallback_share'] or 0:.1%} (popular {ls['popular_share'] or 0:.1%}, "
                     f"content {ls['content_share'] or 0:.1%})")
    if st.quarantine:
        q = st.quarantine
        lines.append(f"quarantine: {q['quarantined']:,} of {q['rows']:,} rows of {q['day']}"
                     f" ({(q['rate'] or 0):.2%})")
    lines += ["", "alerts:"]
    lines += [f"  {'FIRING' if a.breached else 'ok    '} {a.name}: {a.message}"
              for a in st.alerts]
    return "\n".join(lines)


def body(_spark, cfg: StatusConfig) -> int:
    import json

    from pipelines.ops.status import alerts, collect

    st = collect(cfg.lakehouse, bootstrap=cfg.bootstrap, kafka=cfg.kafka)
    st.alerts = alerts(st, cfg.thresholds)
    print(json.dumps(st.as_dict(), default=str) if cfg.fmt == "json" else _text(st))
    breached = [a for a in st.alerts if a.breached]
    if cfg.check and breached:
        print(f"lakerec status: {len(breached)} alert(s) firing: "
              + "; ".join(a.message for a in breached), file=sys.stderr)
        return cli.EXIT_FAILED
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return cli.run("status", argv, parse, body, spark=False,
                   log_level=lambda c: c.log_level or "WARNING")


if __name__ == "__main__":
    sys.exit(main())
