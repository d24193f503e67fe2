"""One self-contained HTML report of how the recommender is doing, with its plots as PNGs.

:func:`build` reads the lakehouse (never writes to its tables) and writes ``report.html``
(every plot embedded, no script, no network) and one PNG per plot into a folder, swapped in
whole, so a reader never sees half a report:

* **models**: each model version's NDCG on its holdout beside the popularity list's on the
  same users, by training time; the champion marked (MLflow runs of the lakehouse);
* **served lists**: catalog coverage and popularity concentration (share of the list slots
  the top 1% of items take, and the Gini coefficient of slots per catalog item) for the last
  ``snapshots`` lists ``score`` wrote and the current ones (with the stream's refreshes);
* **fallbacks**: the share of users whose list opens with a fallback (``popular``,
  ``content``) rather than the model, for the same snapshots;
* **stream freshness**: event -> commit lag p50/p95 per hour, from each query's batch log
  (``_stream/<query>/batches.jsonl``);
* **quarantine**: the rate of rejected rows per day, by reason, over the last ``days`` days;
* **A/B tests**: lakerec records no online experiment yet; the page says so.

Cost: one registry query per model version, two DuckDB aggregations per snapshot
(``snapshots + 1`` scans of ``recommendations``, each a version's files), one scan of
``quarantine`` and one of ``interactions``' ``dt``/``ingest_id`` columns pruned to the last
``days`` partitions, and a read of each batch log. What is brought to the driver is bounded
by the catalog (slots per item) and the days, never by users or events.

Example
-------
>>> r = build("/lh", "/lh/_report")             # doctest: +SKIP
>>> r.html, [f.name for f in r.figures]          # doctest: +SKIP
('/lh/_report/report.html', ['models', 'lists', 'fallbacks', 'freshness', 'quarantine'])
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from pipelines.errors import UsageError
from pipelines.ops.status import score_commits
from pipelines.storage import delta, tracking
from schemas.tables import INTERACTIONS, ITEMS, QUARANTINE, RECOMMENDATIONS, TABLES

log = logging.getLogger(__name__)

TOP_SHARE = 0.01  # "the top 1% of items" of the concentration plot
FALLBACKS = ("popular", "content")  # list sources that are not the model's own scores
REPORT_FILE = "report.html"


# -- pure measures (numpy; tested against brute force) ----------------------------------------

def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative ``counts`` (0: every item the same share of slots; ->1:
    one item takes them all). With ``x`` sorted ascending over ``n`` items,
    ``G = 2 * sum_i(i * x_i) / (n * sum(x)) - (n + 1) / n`` (``i`` from 1)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(2 * (i * x).sum() / (n * total) - (n + 1) / n)


def top_share(counts: np.ndarray, share: float = TOP_SHARE) -> float:
    """The fraction of all slots taken by the ``ceil(share * n)`` most-listed of ``n`` items."""
    x = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    top = max(1, math.ceil(share * len(x)))
    return float(x[:top].sum() / x.sum())


def weighted_quantile(values, weights, q: float) -> float:
    """The ``q`` quantile of ``values`` each counted ``weights`` times (lower value at a tie)."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    order = np.argsort(v)
    v, cum = v[order], np.cumsum(w[order])
    return float(v[np.searchsorted(cum, q * cum[-1])])


# -- what the report reads ----------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """One set of served lists: a ``score`` write (``version``) or the current lists."""

    label: str
    at: str
    users: int
    items_listed: int
    catalog: int
    coverage: float
    top_share: float
    gini: float
    first_source: dict  # source -> share of users whose rank-1 item came from it


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    caption: str
    png: bytes
    table: tuple[tuple[str, ...], tuple[tuple, ...]] = ((), ())  # the numbers plotted


@dataclass
class Report:
    folder: str
    html: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def model_history(lakehouse: str) -> list[dict]:
    """Each registered version, oldest first: time, NDCG, the popularity list's NDCG on the
    same holdout, the champion flag."""
    rows = []
    for v in reversed(tracking.list_versions(lakehouse)):
        ks = [re.fullmatch(r"ndcg_at_(\d+)", m) for m in v.metrics]
        k = next((int(m.group(1)) for m in ks if m), None)
        if k is None:
            continue
        rows.append({"version": v.version, "created": v.created, "trainer": v.trainer,
                     "ndcg": v.metrics[f"ndcg_at_{k}"], "k": k,
                     "popularity": v.metrics.get(f"pop_ndcg_at_{k}"),
                     "champion": v.champion})
    return rows


def _snapshot(lakehouse: str, label: str, at: str, source: str, catalog: int) -> Snapshot:
    from pipelines.storage.sql import query

    _, per_item = query(lakehouse, f"SELECT count(*) FROM {source} GROUP BY item_id")
    counts = np.array([c for (c,) in per_item], dtype=np.float64)
    # items never listed take no slot: they count as zeros of the catalog's distribution
    full = np.concatenate([counts, np.zeros(max(0, catalog - len(counts)))])
    _, firsts = query(lakehouse, f"SELECT source, count(*) FROM {source} WHERE rank = 1 "
                                 "GROUP BY source")
    users = sum(n for _, n in firsts)
    return Snapshot(label, at, users, len(counts), catalog,
                    len(counts) / catalog if catalog else float("nan"),
                    top_share(full), gini(full),
                    {s: n / users for s, n in firsts} if users else {})


def served_snapshots(lakehouse: str, snapshots: int) -> list[Snapshot]:
    """The last ``snapshots`` lists ``score`` wrote (the versions whose commit records a model
    version), oldest first, then the current lists (``current_recommendations``)."""
    from pipelines.storage.sql import query

    if not delta.exists(lakehouse, RECOMMENDATIONS):
        return []
    catalog = 0
    if delta.exists(lakehouse, ITEMS):
        (catalog,), = query(lakehouse, "SELECT count(*) FROM items")[1]
    out = []
    for c in sorted(score_commits(lakehouse, snapshots), key=lambda c: c.version):
        try:
            out.append(_snapshot(lakehouse, f"v{c.version}", c.at.isoformat(timespec="minutes"),
                                 f"(SELECT * FROM recommendations VERSION AS OF {c.version})",
                                 catalog))
        except delta.BrokenTableError:  # older than the vacuum retention: its files are gone
            log.info("recommendations v%d was vacuumed: left out of the report", c.version)
    (latest,) = delta.history(lakehouse, RECOMMENDATIONS, 1, counts=False)
    out.append(_snapshot(lakehouse, "now", latest.at.isoformat(timespec="minutes"),
                         "current_recommendations", catalog))
    return out


def _hourly_lags(path: str, query: str, since: _dt.datetime, hours: dict) -> None:
    """Add each batch of the log at ``path`` since ``since`` to ``hours[(query, hour)]``."""
    with open(path) as f:
        for line in f:
            try:
                b = json.loads(line)
                at = _dt.datetime.fromtimestamp(float(b["at"]), _dt.UTC)
                lag, n = b.get("event_lag_s") or {}, int(b.get("valid") or 0)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a crash mid-write
            if at < since or not lag or n <= 0:
                continue
            hour = at.replace(minute=0, second=0, microsecond=0).isoformat(timespec="minutes")
            hours.setdefault((query, hour), []).append((lag["p50"], lag["p95"], n))


def stream_freshness(lakehouse: str, since: _dt.datetime) -> list[dict]:
    """Event -> commit lag per query and hour since ``since``: p50 and p95 over the hour's
    batches, each batch's own quantile counted once per valid record it committed."""
    from pipelines.streaming.microbatch import batch_log_path

    root = os.path.join(lakehouse, "_stream")
    hours: dict[tuple[str, str], list] = {}
    for q in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = batch_log_path(lakehouse, q)
        for part in (path + ".1", path):  # the rolled-over log first, then the live one
            if os.path.isfile(part):
                _hourly_lags(part, q, since, hours)
    out = []
    for (q, hour), got in sorted(hours.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        p50, p95, n = (np.array(c, dtype=np.float64) for c in zip(*got, strict=True))
        out.append({"query": q, "hour": hour, "batches": len(got), "records": int(n.sum()),
                    "p50_s": weighted_quantile(p50, n, 0.5),
                    "p95_s": weighted_quantile(p95, n, 0.95)})
    return out


def quarantine_by_day(lakehouse: str, since: _dt.date) -> tuple[list[str], dict, list[int]]:
    """(days, {reason: rate per day}, rows per day) since ``since``: the day's quarantined rows
    by reason (its kind: ``missing_field:user_id`` counts as ``missing_field``) over all the
    day's rows, valid and rejected, batch and stream."""
    from pipelines.storage.sql import query

    if not delta.exists(lakehouse, QUARANTINE) and not delta.exists(lakehouse, INTERACTIONS):
        return [], {}, []
    valid = {}
    if delta.exists(lakehouse, INTERACTIONS):
        valid = dict(query(lakehouse, "SELECT dt, count(*) FROM interactions "
                                      f"WHERE dt >= DATE '{since}' GROUP BY dt")[1])
    bad: dict[tuple, int] = {}
    if delta.exists(lakehouse, QUARANTINE):
        for day, reason, n in query(lakehouse, f"""
                SELECT dt, split_part(reason, ':', 1), count(*) FROM quarantine
                WHERE dt >= DATE '{since}' AND origin IN ('events', 'stream')
                GROUP BY ALL""")[1]:
            bad[(day, reason)] = n
    days = sorted(set(valid) | {d for d, _ in bad})
    total = {d: valid.get(d, 0) + sum(n for (dd, _), n in bad.items() if dd == d) for d in days}
    reasons = sorted({r for _, r in bad}, key=lambda r: -sum(n for (_, rr), n in bad.items()
                                                             if rr == r))
    rates = {r: [bad.get((d, r), 0) / total[d] if total[d] else 0.0 for d in days]
             for r in reasons}
    return [str(d) for d in days], rates, [total[d] for d in days]


# -- plots ----------------------------------------------------------------------------------

def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display where jobs run
    import matplotlib.pyplot as plt

    return plt


def _time_axis(ax, xs: list[_dt.datetime]) -> None:
    """Concise date ticks; a span under a day (one training, one hour of stream) padded to a
    day, so that one point is not drawn in the middle of a decade."""
    import matplotlib.dates as mdates

    loc = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    lo, hi = min(xs), max(xs)
    if hi - lo < _dt.timedelta(days=1):
        mid = lo + (hi - lo) / 2
        ax.set_xlim(mid - _dt.timedelta(hours=12), mid + _dt.timedelta(hours=12))


def _models_figure(rows: list[dict]) -> Figure:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    x = [_dt.datetime.fromisoformat(r["created"]) for r in rows]
    ax.plot(x, [r["ndcg"] for r in rows], "o-", label="model")
    ax.plot(x, [r["popularity"] if r["popularity"] is not None else np.nan for r in rows],
            "s--", color="grey", label="popularity (same users)")
    for r, t in zip(rows, x, strict=True):
        ax.annotate(f"v{r['version']}" + (" ★" if r["champion"] else ""), (t, r["ndcg"]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    k = rows[-1]["k"]
    ax.set(ylabel=f"NDCG@{k} on the holdout", xlabel="trained at (UTC)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=8)
    _time_axis(ax, x)
    table = (("version", "trained at", "trainer", f"NDCG@{k}", "popularity", "champion"),
             tuple((r["version"], r["created"], r["trainer"], f"{r['ndcg']:.4f}",
                    "" if r["popularity"] is None else f"{r['popularity']:.4f}",
                    "yes" if r["champion"] else "") for r in rows))
    return Figure("models", "Model versions against the popularity baseline",
                  "Each version's NDCG on its holdout and the popularity list's on the same "
                  "users; ★ marks the champion.", _png(fig), table)


def _lists_figure(snaps: list[Snapshot]) -> Figure:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    labels = [s.label for s in snaps]
    a.plot(labels, [s.coverage for s in snaps], "o-")
    a.set(title="catalog coverage", ylim=(0, 1.05), xlabel="recommendations version")
    b.plot(labels, [s.top_share for s in snaps], "o-", label="slots of the top 1% of items")
    b.plot(labels, [s.gini for s in snaps], "s-", label="Gini of slots per item")
    b.set(title="popularity concentration", ylim=(0, 1.05), xlabel="recommendations version")
    b.legend(fontsize=8)
    table = (("lists", "written at", "users", "items listed", "catalog", "coverage",
              "top 1% share", "Gini"),
             tuple((s.label, s.at, s.users, s.items_listed, s.catalog, f"{s.coverage:.1%}",
                    f"{s.top_share:.1%}", f"{s.gini:.3f}") for s in snaps))
    return Figure("lists", "Served lists: coverage and concentration",
                  "The last lists score wrote and the current ones (with the stream's "
                  "refreshes): the share of the catalog listed at all, and how much of the "
                  "list slots the most listed items take.", _png(fig), table)


def _fallbacks_figure(snaps: list[Snapshot]) -> Figure:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    labels = [s.label for s in snaps]
    sources = sorted({k for s in snaps for k in s.first_source},
                     key=lambda k: (k in FALLBACKS, k))
    bottom = np.zeros(len(snaps))
    for src in sources:
        share = np.array([s.first_source.get(src, 0.0) for s in snaps])
        ax.bar(labels, share, bottom=bottom, label=src,
               hatch="//" if src in FALLBACKS else None)
        bottom += share
    ax.set(ylabel="share of users", ylim=(0, 1.05), xlabel="recommendations version",
           title="what each user's list opens with")
    ax.legend(fontsize=8, loc="lower left")
    table = (("lists", "users", *sources, "on a fallback"),
             tuple((s.label, s.users, *(f"{s.first_source.get(k, 0):.1%}" for k in sources),
                    f"{sum(s.first_source.get(k, 0) for k in FALLBACKS):.1%}")
                   for s in snaps))
    return Figure("fallbacks", "Users on fallbacks",
                  "The source of each user's first item: the model (als, ease, fold_in) or "
                  "a fallback (popular: no vector or a short list; content: a new item "
                  "placed from its text).", _png(fig), table)


def _freshness_figure(rows: list[dict]) -> Figure:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for q in sorted({r["query"] for r in rows}):
        mine = [r for r in rows if r["query"] == q]
        x = [_dt.datetime.fromisoformat(r["hour"]) for r in mine]
        ax.plot(x, [r["p50_s"] for r in mine], "o-", label=f"{q} p50")
        ax.plot(x, [r["p95_s"] for r in mine], "s--", label=f"{q} p95")
    ax.set(ylabel="event → commit (s)", xlabel="hour (UTC)", title="stream freshness")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    _time_axis(ax, [_dt.datetime.fromisoformat(r["hour"]) for r in rows])
    table = (("query", "hour", "batches", "records", "p50 (s)", "p95 (s)"),
             tuple((r["query"], r["hour"], r["batches"], r["records"], f"{r['p50_s']:.2f}",
                    f"{r['p95_s']:.2f}") for r in rows))
    return Figure("freshness", "Stream freshness",
                  "Seconds from an event's time to the commit of the lists it refreshed, per "
                  "hour: p50 and p95 over the hour's batches, each batch weighted by its "
                  "records.", _png(fig), table)


def _quarantine_figure(days: list[str], rates: dict, totals: list[int]) -> Figure:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    bottom = np.zeros(len(days))
    for reason, r in rates.items():
        ax.bar(days, r, bottom=bottom, label=reason)
        bottom += np.array(r)
    ax.set(ylabel="share of the day's rows", xlabel="day", title="quarantined rows by reason")
    if rates:
        ax.legend(fontsize=7, ncol=2)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    table = (("day", "rows", "quarantined", *rates),
             tuple((d, totals[i], f"{sum(r[i] for r in rates.values()):.2%}",
                    *(f"{r[i]:.2%}" for r in rates.values())) for i, d in enumerate(days)))
    return Figure("quarantine", "Quarantine rate",
                  "Rows rejected at ingest and in the stream, by the kind of reason, as a "
                  "share of each day's rows.", _png(fig), table)


# -- the page ---------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
img{max-width:100%;display:block} p.note{color:#666}
table{border-collapse:collapse;font-size:.8em;margin:.6em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
"""


def _table_html(table) -> str:
    head, rows = table
    if not head:
        return ""
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def render(lakehouse: str, at: str, figures: list[Figure], notes: list[str],
           header: list[str]) -> str:
    """The page: every figure as an embedded PNG (``data:`` URI) with its numbers below it."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>lakerec report: {html.escape(lakehouse)}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>lakerec report</h1><p>{html.escape(lakehouse)}, {html.escape(at)}</p>",
             "<ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in header) + "</ul>"]
    for f in figures:
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(f"<section id='{f.name}'><h2>{html.escape(f.title)}</h2>"
                     f"<p>{html.escape(f.caption)}</p>"
                     f"<img class='plot' src='data:image/png;base64,{data}' "
                     f"alt='{html.escape(f.title)}'>{_table_html(f.table)}</section>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    parts.append("</body></html>")
    return "".join(parts)


def check_out(lakehouse: str, out: str) -> str:
    """``out`` as an absolute path, refused (a usage error) where replacing it whole could
    take anything but an earlier report: the lakehouse or a folder holding it, a table, the
    landing zone, MLflow's or a job's own folder, a file, a folder that is not a report."""
    lh, o = os.path.abspath(lakehouse), os.path.abspath(out)
    if lh == o or lh.startswith(o.rstrip(os.sep) + os.sep):
        raise UsageError(f"--out {o} holds the lakehouse: the report folder is replaced whole")
    if o.startswith(lh + os.sep):
        top = os.path.relpath(o, lh).split(os.sep)[0]
        if top in TABLES or top in ("landing", "mlartifacts", "mlflow.db") or \
                (top.startswith(("_", ".")) and top != "_report"):
            raise UsageError(f"--out {o} is inside the lakehouse's {top}: choose another "
                             "folder (default: <lakehouse>/_report)")
    if os.path.exists(o) and not os.path.isdir(o):
        raise UsageError(f"--out {o} is a file")
    if os.path.isdir(o) and os.listdir(o) and not os.path.exists(os.path.join(o, REPORT_FILE)):
        raise UsageError(f"--out {o} is a folder with other files in it, not an earlier "
                         "report: the report folder is replaced whole")
    return o


def build(lakehouse: str, out: str, *, days: int = 30, snapshots: int = 10,
          now: _dt.datetime | None = None) -> Report:
    """Write the report into ``out`` (replaced whole); see the module docstring."""
    from pipelines.storage.landing import new_staging, publish

    out = check_out(lakehouse, out)
    now = now or _dt.datetime.now(_dt.UTC)
    figures, notes = [], []
    models = model_history(lakehouse)
    champ = next((m for m in models if m["champion"]), None)
    header = [f"{len(models)} model version(s); champion: "
              + (f"v{champ['version']} ({champ['trainer']})" if champ else "none")]
    if models:
        figures.append(_models_figure(models))
    else:
        notes.append("Models: no trained model yet (`lakerec train`).")
    snaps = served_snapshots(lakehouse, snapshots)
    if snaps:
        header.append(f"current lists: {snaps[-1].users:,} users, coverage "
                      f"{snaps[-1].coverage:.1%}")
        figures += [_lists_figure(snaps), _fallbacks_figure(snaps)]
    else:
        notes.append("Served lists: no recommendations yet (`lakerec score`).")
    fresh = stream_freshness(lakehouse, now - _dt.timedelta(days=days))
    if fresh:
        figures.append(_freshness_figure(fresh))
    else:
        notes.append(f"Stream freshness: no stream batch in the last {days} days.")
    q_days, rates, totals = quarantine_by_day(lakehouse, (now - _dt.timedelta(days=days)).date())
    if q_days:
        figures.append(_quarantine_figure(q_days, rates, totals))
    else:
        notes.append(f"Quarantine: no ingested day in the last {days} days.")
    notes.append("A/B tests: none recorded in this lakehouse.")
    at = now.isoformat(timespec="seconds")
    page = render(lakehouse, at, figures, notes, header)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staged = new_staging(parent)
    for f in figures:
        with open(os.path.join(staged, f"{f.name}.png"), "wb") as fh:
            fh.write(f.png)
    with open(os.path.join(staged, REPORT_FILE), "w", encoding="utf-8") as fh:
        fh.write(page)
    publish(staged, out)
    log.info("report: %d plots in %s", len(figures), out)
    return Report(out, os.path.join(out, REPORT_FILE), figures, notes)
