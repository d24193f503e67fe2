"""Publishing: bring the online store up to the latest ``recommendations`` version, exactly once.

The store remembers the Delta version it fully reflects (its watermark ``w``). A publish to
the latest version ``L`` reads what commits ``w+1 .. L`` changed, from their log entries:

- **incremental** when they only appended rows (the stream's refreshes): the added files are
  read and each touched user's newest list is pushed. Cost: the rows those commits added.
- **full** otherwise (the first publish, a ``score`` that replaced the snapshot, a restore, a
  log cleaned past ``w``): the current lists at ``L`` are read (the table's one
  ``current_sql``) and compared by digest with the store's, and only the lists that differ
  are written; users no longer in the table are deleted. Cost: a scan of the table and the
  store's digests (O(users)), writes O(changed users).

Then the watermark moves to ``L``. A crash before that leaves the watermark where it was, and
the next publish does the same writes again, which the store's ordering rule makes harmless
(:mod:`pipelines.online.store`).

The stream pushes each batch's lists from memory after its commit
(:meth:`Publisher.push_batch`): cost the batch's rows, never the table's. A range before it
that needs a full comparison (a ``score`` just replaced the lists) is left to ``lakerec
publish``, which ``score`` runs itself; the stream does a full :meth:`Publisher.sync` only
when it starts.

Example
-------
>>> from pipelines.online.store import open_store
>>> pub = Publisher("/lh", open_store("sqlite:///lh/_online/lists.db"))   # doctest: +SKIP
>>> pub.sync().mode                                                      # doctest: +SKIP
'full'
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field

from pipelines.online.store import Entry, OnlineStore
from pipelines.storage import delta
from schemas.tables import INTERACTIONS, ITEMS, RECOMMENDATIONS, SIMILAR_ITEMS

log = logging.getLogger(__name__)

# How many popular items the store keeps: the unknown users' list and the filler of a
# filtered list (a category filter can drop most of a user's own items).
POPULAR_DEPTH = 500


@dataclass
class PublishReport:
    mode: str  # none | incremental | full
    from_version: int | None
    to_version: int | None
    written: int = 0
    deleted: int = 0
    unchanged: int = 0
    popular: bool = False
    similar: int | None = None
    seconds: float = 0.0
    phases: dict = field(default_factory=dict)

    def line(self) -> str:
        if self.mode == "none":
            return (f"store already at recommendations v{self.to_version}"
                    if self.to_version is not None else "no recommendations to publish yet")
        side = (" + popular list" if self.popular else "") + (
            f" + {self.similar:,} similar-item lists" if self.similar is not None else "")
        return (f"published recommendations v{self.from_version} -> v{self.to_version} "
                f"({self.mode}): {self.written:,} lists written, {self.unchanged:,} unchanged, "
                f"{self.deleted:,} deleted{side} in {self.seconds:.2f} s")


def _micros(t: _dt.datetime) -> int:
    return int((t - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)) / _dt.timedelta(microseconds=1))


def payload(generated_at: _dt.datetime, model_version: int | None, items: list[list]
            ) -> tuple[bytes, str]:
    """A list's stored form (compact JSON) and its content digest.

    ``items`` are ``[item_id, score, source, category]`` in rank order. The digest covers
    everything, ``generated_at`` included (the store then equals the table exactly; a list
    rows kept by a rewrite or a restore is still left unwritten).
    """
    stamp = generated_at.isoformat().replace("+00:00", "Z")
    doc = json.dumps({"generated_at": stamp, "model_version": model_version, "items": items},
                     separators=(",", ":")).encode()
    return doc, hashlib.blake2b(doc, digest_size=12).hexdigest()


def current(rows):
    """The current lists among ``rows`` of ``recommendations``: the table's own
    :meth:`~schemas.tables.TableSpec.current_sql`, run by DuckDB on them."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register(RECOMMENDATIONS.name, rows)
        return con.sql(RECOMMENDATIONS.current_sql()).to_arrow_table()
    finally:
        con.close()


def entries(table, categories: dict[str, str | None], version: int) -> list[Entry]:
    """Store entries of *current* list rows (one list per user: :func:`current`), ranks in
    order. Cost: a sort of the rows, then one pass in Python (about 7 us a row)."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    t = table.select(RECOMMENDATIONS.column_names)
    t = t.take(pc.sort_indices(t, [("user_id", "ascending"), ("rank", "ascending")]))
    cols = {c: t[c].to_pylist() for c in RECOMMENDATIONS.column_names}
    out, i, n = [], 0, t.num_rows
    users = cols["user_id"]
    while i < n:
        u, j, items = users[i], i, []
        while j < n and users[j] == u:
            item = cols["item_id"][j]
            items.append([item, round(float(cols["score"][j]), 6), cols["source"][j],
                          categories.get(item)])
            j += 1
        g = cols["generated_at"][i]
        body, digest = payload(g, cols["model_version"][i], items)
        out.append(Entry(u, body, _micros(g), version, digest))
        i = j
    return out


def popularity_counts(lakehouse: str, window, *, version: int | None = None
                      ) -> tuple[list[str], list[int], int]:
    """(item ids, distinct users per item, distinct users) of ``interactions`` in
    ``window``: the DuckDB twin of :func:`pipelines.batch.score.popularity_counts` (Spark),
    which ``tests/test_serve.py`` holds to the same answer. Cost: a scan of the window's
    partitions' ``ts``, ``dt``, ``user_id`` and ``item_id``."""
    import duckdb

    where, args = [], []
    for cond, v in (("ts >= ?", window.start), ("ts < ?", window.end),
                    ("dt <= ?", window.max_dt)):
        if v is not None:
            where.append(cond)
            args.append(v)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    con = duckdb.connect()
    try:
        con.register("interactions", delta.arrow_dataset(lakehouse, INTERACTIONS, version))
        per_item = con.execute(f"SELECT item_id, count(DISTINCT user_id) FROM interactions "
                               f"{cond} GROUP BY item_id", args).fetchall()
        total = con.execute(f"SELECT count(DISTINCT user_id) FROM interactions {cond}",
                            args).fetchone()[0]
    finally:
        con.close()
    return [r[0] for r in per_item], [r[1] for r in per_item], int(total)


class Publisher:
    """Pushes ``recommendations`` (and the popular and similar-item lists) of one lakehouse
    to one store; keeps the catalog's categories between calls (re-read when ``items``
    changes)."""

    def __init__(self, lakehouse: str, store: OnlineStore, *, chunk: int = 1000):
        self.lakehouse, self.store, self.chunk = lakehouse, store, max(1, int(chunk))
        self._categories: tuple[int | None, dict] = (-1, {})

    def categories(self) -> dict[str, str | None]:
        """item_id -> category of the catalog (O(items), once per ``items`` version)."""
        v = delta.latest_version(self.lakehouse, ITEMS)
        if v != self._categories[0]:
            cats = {}
            if v is not None:
                t = delta.arrow_dataset(self.lakehouse, ITEMS, v).to_table(
                    columns=["item_id", "category"])
                cats = dict(zip(t["item_id"].to_pylist(), t["category"].to_pylist(),
                                strict=True))
            self._categories = (v, cats)
        return self._categories[1]

    def sync(self, *, side: bool = True) -> PublishReport:
        """Publish up to the latest version (see the module docstring); ``side`` also
        refreshes the popular and similar-item lists when their inputs changed."""
        t0 = time.perf_counter()
        meta = self.store.meta()
        w = int(meta["watermark"]) if "watermark" in meta else None
        latest = delta.latest_version(self.lakehouse, RECOMMENDATIONS)
        rep = PublishReport("none", w, latest)
        if latest is not None and (w is None or w < latest) and \
                not self._catch_up(w, latest, rep):
            self._full(latest, rep)
        if side:
            self._side(meta, rep)
        if rep.mode != "none" or rep.popular or rep.similar is not None:
            self.store.advance(latest if rep.mode != "none" else None,
                               published_at=_dt.datetime.now(_dt.UTC).isoformat())
        rep.seconds = time.perf_counter() - t0
        if rep.mode != "none" or rep.popular or rep.similar is not None:
            log.info("%s", rep.line())
        return rep

    def _catch_up(self, w: int | None, upto: int, rep: PublishReport) -> bool:
        """Bring the store from ``w`` to ``upto`` without a full read, if the commits
        between only appended rows (their files are pushed) or only moved them (a
        compaction: nothing to push); ``False`` when a full comparison is needed."""
        changes = None if w is None else \
            delta.data_changes(self.lakehouse, RECOMMENDATIONS, w, upto)
        if changes is None or changes.removed_data or changes.schema_changed:
            return False
        if changes.added:
            self._incremental(changes, upto, rep)
        else:
            self.store.advance(upto)
        return True

    def push_batch(self, rows, version: int, *, stream_batch: str) -> PublishReport:
        """The stream's push of the lists it committed as ``version`` (``rows``, in memory).

        The rows go in by the incremental rule whatever the watermark. The watermark moves
        to ``version`` when the store reflected every commit before it, caught up here if
        those commits only appended; a range that needs a full comparison is left to
        ``lakerec publish``. Cost: the batch's rows (plus, after a missed push, the files of
        the commits in between), never a scan of the table.
        """
        t0 = time.perf_counter()
        meta = self.store.meta()
        w = int(meta["watermark"]) if "watermark" in meta else None
        rep = PublishReport("incremental", w, version)
        behind = w is None or w < version - 1
        if behind and self._catch_up(w, version - 1, rep):
            behind = False
        rep.mode = "incremental"
        es = entries(current(rows), self.categories(), version)
        n = self._push(es, full=False)
        rep.written += n
        rep.unchanged += len(es) - n
        if behind:
            log.info("online store behind recommendations v%d (a replace or restore since "
                     "v%s): this batch's lists are pushed, the rest waits for lakerec publish",
                     version - 1, w)
        self.store.advance(None if behind else version,
                           published_at=_dt.datetime.now(_dt.UTC).isoformat(),
                           stream_batch=stream_batch)
        rep.seconds = time.perf_counter() - t0
        return rep

    def _push(self, entries_: list[Entry], *, full: bool) -> int:
        n = 0
        for i in range(0, len(entries_), self.chunk):
            n += self.store.put_lists(entries_[i:i + self.chunk], full=full)
            log.debug("store: wrote chunk %d of %d", i // self.chunk + 1,
                      -(-len(entries_) // self.chunk))
        return n

    def _incremental(self, changes, latest: int, rep: PublishReport) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rep.mode = "incremental"
        root = delta.table_path(self.lakehouse, RECOMMENDATIONS)
        schema = RECOMMENDATIONS.arrow_schema()
        rows = pa.concat_tables([pq.read_table(os.path.join(root, p)).select(
            RECOMMENDATIONS.column_names).cast(schema) for p in changes.added])
        es = entries(current(rows), self.categories(), latest)
        n = self._push(es, full=False)
        rep.written += n
        rep.unchanged += len(es) - n

    def _full(self, latest: int, rep: PublishReport) -> None:
        rep.mode = "full"
        t = time.perf_counter()
        current = delta.current_table(self.lakehouse, RECOMMENDATIONS, latest)
        es = entries(current, self.categories(), latest)
        rep.phases["read"] = round(time.perf_counter() - t, 3)
        have = self.store.digests()
        todo = [e for e in es if have.get(e.user_id, (None,))[0] != e.digest]
        rep.unchanged = len(es) - len(todo)
        rep.written = self._push(todo, full=True)
        gone = sorted(set(have) - {e.user_id for e in es})
        if gone:
            rep.deleted = self.store.delete_lists(gone, upto=latest)

    def _side(self, meta: dict, rep: PublishReport) -> None:
        """The popular list (when the champion or ``interactions`` changed) and similar items
        (when ``similar_items`` changed). Cost: a DuckDB scan of the popularity window;
        the similar-items rows of the newest encoder version."""
        inter = delta.latest_version(self.lakehouse, INTERACTIONS)
        ref = None
        if inter is not None and os.path.exists(os.path.join(self.lakehouse, "mlflow.db")):
            from pipelines.storage import tracking

            ref = tracking.get_alias(self.lakehouse)
        key = f"{ref.version if ref else None}:{inter}"
        if inter is not None and meta.get("popular_key") != key:
            self.store.put_side(popular=self._popular(ref, inter))
            self.store.advance(popular_key=key)
            rep.popular = True
        sim = delta.latest_version(self.lakehouse, SIMILAR_ITEMS)
        if sim is not None and meta.get("similar_version") != str(sim):
            lists = self._similar(sim)
            self.store.put_side(similar=lists)
            self.store.advance(similar_version=str(sim))
            rep.similar = len(lists)

    def _popular(self, ref, inter_version: int) -> bytes:
        import duckdb

        from pipelines.model.card import ModelCard
        from pipelines.serving import policy

        card = ModelCard.from_params(ref.params) if ref is not None else None
        latest = None
        if card is None or card.end is None:
            con = duckdb.connect()
            try:
                con.register("interactions", delta.arrow_dataset(
                    self.lakehouse, INTERACTIONS, inter_version))
                latest = con.execute("SELECT max(ts) FROM interactions").fetchone()[0]
            finally:
                con.close()
        window = policy.popularity_window(card, latest=latest)
        ids, share = policy.popularity(*popularity_counts(self.lakehouse, window,
                                                          version=inter_version))
        cats = self.categories()
        order = sorted(range(len(ids)), key=lambda j: (-float(share[j]), ids[j]))
        items = [[ids[j], round(float(share[j]), 6), "popular", cats.get(ids[j])]
                 for j in order[:POPULAR_DEPTH]]
        body, _ = payload(_dt.datetime.now(_dt.UTC), ref.version if ref else None, items)
        return body

    def _similar(self, version: int) -> dict[str, bytes]:
        ds = delta.arrow_dataset(self.lakehouse, SIMILAR_ITEMS, version)
        enc = delta.partition_values(self.lakehouse, SIMILAR_ITEMS, "encoder_version", version)
        if not enc:
            return {}
        import pyarrow.compute as pc
        import pyarrow.dataset as pds

        t = ds.to_table(filter=pds.field("encoder_version") == max(int(e) for e in enc),
                        columns=["item_id", "rank", "similar_item_id", "score", "generated_at"])
        t = t.take(pc.sort_indices(t, [("item_id", "ascending"), ("rank", "ascending")]))
        cats = self.categories()
        out: dict[str, list] = {}
        for item, sim, score in zip(t["item_id"].to_pylist(), t["similar_item_id"].to_pylist(),
                                    t["score"].to_pylist(), strict=True):
            out.setdefault(item, []).append([sim, round(float(score), 6), "content",
                                             cats.get(sim)])
        now = _dt.datetime.now(_dt.UTC)
        return {item: payload(now, None, items)[0] for item, items in out.items()}
