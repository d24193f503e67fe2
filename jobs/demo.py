"""lakerec demo: the whole batch loop end to end on the embedded defaults.

    lakerec demo [--lakehouse ./lakehouse] [--users 20000] [--items 5000] [--events 1000000]
                 [--days 30] [--start YYYY-MM-DD] [--dirty-fraction 0.002] [--rank 32] [--k 10]

generate -> ingest every day (+ catalog) -> train (holdout evaluation, MLflow, champion)
-> embed (ONNX MiniLM item embeddings, similar items, cold-start evaluation) -> score (new
items placed by their text) -> a summary: table row counts, metrics next to the popularity baseline, and one
user's recent history beside their recommendations -> the local broker and the stream: that
user buys from a taste cluster they never touched, and their recommendations are shown again
after the stream's fold-in, by the HTTP API (``lakerec serve``) before and after, the stream
pushing the refreshed list to its online store; what the API served lands in ``exposures``.
Steps already done on the same inputs
are skipped, so a second run only trains a new model and compares it with the champion.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from dataclasses import dataclass, replace

from pipelines.dev.generate import SyntheticSpec
from pipelines.model.card import ModelCard
from pipelines.runtime import cli

DEMO_DIRTY_FRACTION = 0.002  # a few bad rows, so the demo shows the quarantine at work


@dataclass(frozen=True)
class DemoConfig:
    lakehouse: str
    spec: SyntheticSpec
    params: ModelCard
    stream: bool
    log_level: str | None


def parse(argv: list[str] | None) -> DemoConfig:
    from jobs.generate import add_spec_options, spec_from
    from jobs.train import add_train_options, params_from

    p = cli.parser("demo", "Generate, ingest, train, score and summarise, end to end.")
    add_spec_options(p, dirty_default=DEMO_DIRTY_FRACTION,
                     start_help="first day, YYYY-MM-DD (default: --days before today, so the "
                                "logs end today; a re-run keeps the first run's)")
    add_train_options(p, ("rank", "k", "max-iter"))
    p.add_argument("--no-stream", action="store_true",
                   help="skip the streaming part (broker, stream, live refresh)")
    args, s = cli.parse_args(p, argv, section="demo")
    spec = spec_from(args, s, dirty_default=DEMO_DIRTY_FRACTION)
    if s.get("start", flag=args.start, default=None) is None:
        spec = replace(spec, start=demo_start(s.lakehouse, spec.days))
    params = params_from(args, s, window_days=spec.days,
                         holdout_days=min(ModelCard().holdout_days, max(1, spec.days // 5)),
                         seed=spec.seed)
    s.check_writable(s.lakehouse, "--lakehouse")
    return DemoConfig(s.lakehouse, spec, params, not args.no_stream, args.log_level or "WARNING")


def body(spark, cfg: DemoConfig) -> int:
    import os

    from jobs.generate import GenerateConfig
    from jobs.generate import body as generate_body
    from jobs.ingest import print_reports
    from jobs.train import format_report
    from pipelines.batch.ingest import ingest_catalog, ingest_dates
    from pipelines.batch.score import score
    from pipelines.batch.train import train
    from pipelines.storage import landing

    t0 = time.perf_counter()
    lh = cfg.lakehouse
    out = os.path.join(lh, "landing")
    print(f"lakerec demo in {lh}")
    generate_body(spark, GenerateConfig(out=out, spec=cfg.spec, force=False, log_level=None))
    with cli.step("ingest catalog"):
        ingest_catalog(spark, lh, source=os.path.join(out, "items"))
    dates = landing.list_dates(os.path.join(out, "events"))
    with cli.step(f"ingest {len(dates)} days of logs"):
        print_reports(ingest_dates(spark, lh, dates, source=os.path.join(out, "events")))
    with cli.step("train ALS + evaluate against popularity"):
        report = train(spark, lh, cfg.params)
    print(format_report(report, cfg.params.k))
    embed_demo(spark, lh, cfg.params.k)
    place_demo(spark, lh)
    with cli.step(f"score top-{cfg.params.k} for every user"):
        s = score(spark, lh, k=cfg.params.k)
        if not s.skipped:
            print(f"    {s.users:,} users, {s.rows:,} rows {s.by_source}")
    with cli.step("publish the lists to the online store"):
        from pipelines.online.publish import Publisher
        from pipelines.online.store import default_store_url, open_store

        store = open_store(default_store_url(lh))
        print(f"    {Publisher(lh, store).sync().line()}")
        store.close()
    user = summary(lh, cfg.params.k)
    if cfg.stream:
        stream_demo(spark, lh, user, cfg.params.k)
    else:
        api = Api(lh, exposures=False)
        try:
            api.curl(user, cfg.params.k)
        finally:
            api.stop()
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s. Explore: "
          f"lakerec sql --lakehouse {lh} \"SELECT * FROM current_recommendations LIMIT 10\"")
    return 0


def embed_demo(spark, lakehouse: str, k: int) -> None:
    """The embed job on the demo lakehouse (the export built by `make models`)."""
    from jobs.embed import body as embed_body
    from jobs.embed import parse

    embed_body(spark, parse(["--lakehouse", lakehouse, "--k", str(k)]))


def place_demo(spark, lakehouse: str) -> None:
    """The place job: new items into the champion's factor space, from their text."""
    from jobs.place import body as place_body
    from jobs.place import parse

    place_body(spark, parse(["--lakehouse", lakehouse]))


def summary(lakehouse: str, k: int) -> None:
    from pipelines.storage import delta
    from pipelines.storage.sql import format_rows, query

    # no champion yet (the first model lost to popularity): nothing was placed
    placed = delta.exists(lakehouse, "item_placements")
    placements = "UNION ALL SELECT 'item_placements', count(*) FROM item_placements\n" \
        if placed else ""
    print("\n== tables")
    counts = query(lakehouse, f"""
        SELECT 'interactions' AS "table", count(*) AS rows FROM interactions
        UNION ALL SELECT 'quarantine', count(*) FROM quarantine
        UNION ALL SELECT 'items', count(*) FROM items
        UNION ALL SELECT 'user_factors', count(*) FROM current_user_factors
        UNION ALL SELECT 'item_factors', count(*) FROM item_factors
        {placements}        UNION ALL SELECT 'item_embeddings', count(*) FROM item_embeddings
        UNION ALL SELECT 'similar_items', count(*) FROM similar_items
        UNION ALL SELECT 'recommendations', count(*) FROM current_recommendations""")
    print(format_rows(*counts))
    # an active user: most events on the last day, ties by id
    (user,), = query(lakehouse, """
        SELECT user_id FROM interactions WHERE dt = (SELECT max(dt) FROM interactions)
        GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1""")[1]
    print(f"\n== {user}: recent history")
    print(format_rows(*query(lakehouse, f"""
        SELECT i.ts, i.event_type, i.item_id, it.category, it.title
        FROM interactions i LEFT JOIN items it USING (item_id)
        WHERE i.user_id = '{user}' ORDER BY i.ts DESC LIMIT 8""")))
    print(f"\n== {user}: recommendations")
    print(format_rows(*recommendations_of(lakehouse, user, k)))
    if placed:
        content_summary(lakehouse)
    return user


def content_summary(lakehouse: str) -> None:
    """New items placed by their text, and one of them with its nearest neighbours."""
    from pipelines.storage.sql import format_rows, query

    (placed, rows, users), = query(lakehouse, """
        SELECT (SELECT count(*) FROM item_placements p
                WHERE p.model_version = (SELECT max(model_version)
                                         FROM current_recommendations)),
               count(*), count(DISTINCT user_id)
        FROM current_recommendations WHERE source = 'content'""")[1]
    print(f"\n== new items: {placed:,} placed from their text; {rows:,} recommendations of them "
          f"to {users:,} users (source = content)")
    top = query(lakehouse, """
        SELECT item_id FROM current_recommendations WHERE source = 'content'
        GROUP BY item_id ORDER BY count(*) DESC, item_id LIMIT 1""")[1]
    if top:
        item = top[0][0]
        print(f"\n== items most similar to {item} (cosine of MiniLM embeddings)")
        print(format_rows(*query(lakehouse, f"""
            SELECT s.rank, round(s.score, 3) AS cosine, s.similar_item_id, it.category, it.title
            FROM similar_items s JOIN items it ON it.item_id = s.similar_item_id
            WHERE s.item_id = '{item}'
              AND s.encoder_version = (SELECT max(encoder_version) FROM similar_items)
            UNION ALL SELECT 0, NULL, '{item}', category, title FROM items
            WHERE item_id = '{item}' ORDER BY 1 LIMIT 6""")))


def recommendations_of(lakehouse: str, user: str, k: int):
    from pipelines.storage.sql import query

    return query(lakehouse, f"""
        SELECT r.rank, r.item_id, round(r.score, 3) AS score, r.source, it.category, it.title
        FROM current_recommendations r LEFT JOIN items it USING (item_id)
        WHERE r.user_id = '{user}' ORDER BY r.rank LIMIT {k}""")


class Api:
    """``lakerec serve`` on a free loopback port, for the demo's curls."""

    def __init__(self, lakehouse: str, *, exposures: bool):
        import os
        import socket
        import subprocess

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        exe = os.path.join(os.path.dirname(sys.executable), "lakerec")
        self.proc = subprocess.Popen(
            [exe, "serve", "--lakehouse", lakehouse, "--port", str(self.port),
             *([] if exposures else ["--no-exposures"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while self.get("/readyz") is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lakerec serve did not start: {self.stop()[-2000:]}")
            time.sleep(0.2)

    def get(self, path: str) -> dict | None:
        import json
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def curl(self, user: str, k: int) -> dict:
        import json

        path = f"/v1/users/{user}/recommendations?k={k}"
        print(f"$ curl -s 'http://127.0.0.1:{self.port}{path}'")
        doc = self.get(path)
        print(json.dumps(doc, separators=(",", ":")))
        return doc

    def stop(self) -> str:
        import subprocess

        self.proc.terminate()
        try:
            return self.proc.communicate(timeout=30)[1] or ""
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()[1] or ""


def stream_demo(spark, lakehouse: str, user: str, k: int, timeout_s: float = 180.0) -> None:
    """Broker + stream in this session; a burst of purchases from a new taste cluster."""
    import json
    import os

    from pipelines.dev import broker, feedback
    from pipelines.storage.sql import format_rows
    from pipelines.streaming.checkpoint import end_offsets
    from pipelines.streaming.kafka_source import nested_offsets
    from pipelines.streaming.microbatch import StreamContext, batch_log_path
    from pipelines.streaming.query import start_query, stop_after_batch

    folder = os.path.join(lakehouse, "_broker")
    with cli.step("start the local broker and the stream"):
        st = broker.start(folder)
        broker.create_topic(st.bootstrap, "feedback", partitions=2)
        # one query per demo run: the in-memory broker starts empty each time
        name = "demo-" + _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
        from pipelines.online.store import default_store_url

        ctx = StreamContext(lakehouse, name, k=k, metrics_file=batch_log_path(lakehouse, name),
                            store_url=default_store_url(lakehouse))
        opts = {"kafka.bootstrap.servers": st.bootstrap, "subscribe": "feedback"}
        _, now = end_offsets(opts)  # from here on: nothing sent before this demo
        opts["startingOffsets"] = json.dumps(nested_offsets(now))
        q = start_query(spark, ctx, checkpoint=os.path.join(lakehouse, "_checkpoints", name),
                        source_options=opts, trigger_s=0.5)
        ctx.serving_model(spark)  # load the champion before the burst, as a running stream has
        # the API (its exposure log to the local broker) and the query landing that log
        api = Api(lakehouse, exposures=True)
        ename = name.replace("demo-", "demo-exposures-")
        ectx = StreamContext(lakehouse, ename, kind="exposures")
        eopts = {"kafka.bootstrap.servers": st.bootstrap, "subscribe": "exposures"}
        eopts["startingOffsets"] = json.dumps(nested_offsets(end_offsets(eopts)[1]))
        eq = start_query(spark, ectx, checkpoint=os.path.join(lakehouse, "_checkpoints", ename),
                         source_options=eopts, trigger_s=0.5)
    try:
        print(f"\n== {user}: the API's answer before (lakerec serve, from the online store)")
        before = api.curl(user, k)
        # the category's 6th-10th best sellers: the top five stay unseen, so the refreshed
        # list can show them (bought, they would be filtered out as seen)
        category, items = feedback.untouched_cluster_items(lakehouse, user, n=5, skip=5)
        print(f"\n== {user} buys {len(items)} items from {category!r} (its 6th-10th best "
              f"sellers), the category they had touched least: {', '.join(items)}")
        p = feedback.make_producer(st.bootstrap, one_record_per_batch=True)
        t0 = time.perf_counter()
        feedback.send(p, "feedback", feedback.purchases([user], items))
        p.close()
        deadline = time.monotonic() + timeout_s
        while q.isActive and time.monotonic() < deadline and \
                sum(r.valid for r in ctx.reports) < len(items):
            time.sleep(0.1)
        seen = time.perf_counter() - t0
        if q.exception() is not None:
            raise RuntimeError(f"stream failed: {q.exception()}")
        print(f"    refreshed in Delta {seen:.1f} s after sending "
              f"({len(ctx.reports)} micro-batches)")
        print(f"\n== {user}: recommendations after the stream's fold-in")
        print(format_rows(*recommendations_of(lakehouse, user, k)))
        path = f"/v1/users/{user}/recommendations?k={k}"
        while time.monotonic() < deadline and (api.get(path) or {}).get(
                "generated_at") == before["generated_at"]:
            time.sleep(0.05)
        print(f"\n== {user}: the API's answer after, served {time.perf_counter() - t0:.1f} s "
              "after sending")
        after = api.curl(user, k)
        want = len(before["items"]) + len(after["items"])
        while time.monotonic() < deadline and sum(r.users for r in ectx.reports) < want:
            time.sleep(0.1)
        landed = sum(r.users for r in ectx.reports)
        print(f"\n== exposures: {landed} list positions the API served landed in the "
              f"exposures table (lakerec sql \"SELECT * FROM exposures\")")
    finally:
        api.stop()
        stop_after_batch(ectx, eq)
        stop_after_batch(ctx, q)
        broker.stop(folder)


def demo_start(lakehouse: str, days: int) -> _dt.date:
    """The demo's first day: the one its lakehouse was generated with, else ``days`` days
    before today: events span ``days`` days from it and arrive up to a day later, so the
    last log partition (arrival date) is today.

    The stream stamps its events with the wall clock and files them under today's ``dt``;
    logs that ended in 2024 would leave every later job's "today" years past the data (a
    holdout with no training days before it). A re-run keeps the data it made first, so its
    steps find their work done.
    """
    import os

    from pipelines.storage import landing

    made = landing.read_manifest(os.path.join(lakehouse, "landing", "events"))
    if made and made.get("generator") == "lakerec.generate" and "start" in made:
        return _dt.date.fromisoformat(made["start"])
    return _dt.datetime.now(_dt.UTC).date() - _dt.timedelta(days=days)


def main(argv: list[str] | None = None) -> int:
    return cli.run("demo", argv, parse, body)


if __name__ == "__main__":
    sys.exit(main())
