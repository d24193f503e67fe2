"""The online store: each user's current list, the popular list and similar items, keyed for
millisecond reads by ``lakerec serve``, behind one interface with two implementations.

- :class:`SqliteStore` (``sqlite:///path/lists.db``, the default under the lakehouse):
  SQLite in WAL mode, so the API's readers never wait for the publisher's writes.
- :class:`RedisStore` (``redis://host:port/db``): a real Redis server, for several API hosts.

Writes are ordered, never blind. Every entry carries the Delta version of ``recommendations``
it was read at (``v``) and its list's ``generated_at`` (``g``, the table's own "which rows are
current" column). A write lands only if ``v >= stored v`` and, for an incremental push,
``g >= stored g``: a replay after a crash, or a slow publisher racing the stream, can never
move a user's list back in time. The store's watermark (the Delta version it fully reflects)
only grows. Both are compared inside the store (one SQLite transaction, one Lua script), so
several publishers may run at once.

Example
-------
>>> st = open_store("sqlite:///tmp/lh/_online/lists.db")             # doctest: +SKIP
>>> st.put_lists([Entry("u1", b'{"items": []}', g=1, v=7, digest="d")], full=False)
... # doctest: +SKIP
1
>>> st.get_list("u1")                                                 # doctest: +SKIP
b'{"items": []}'
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

from pipelines.errors import TransientError, UsageError

log = logging.getLogger(__name__)

# The default store of a lakehouse, relative to its root (``lakerec serve``/``publish``/stream).
DEFAULT_STORE_PATH = ("_online", "lists.db")


class StoreUnavailableError(TransientError):
    """The online store did not answer (Redis down, the SQLite file unreadable)."""


@dataclass(frozen=True)
class Entry:
    """One user's list as stored: the JSON ``payload`` the API returns the items of, its
    ``g`` (``generated_at`` in microseconds), ``v`` (the Delta version it was read at) and a
    ``digest`` of its content (items, scores, sources, model), which a full sync compares to
    leave unchanged lists unwritten."""

    user_id: str
    payload: bytes
    g: int
    v: int
    digest: str


def default_store_url(lakehouse: str) -> str:
    """The lakehouse's embedded store (``sqlite:///<lakehouse>/_online/lists.db``)."""
    return "sqlite://" + os.path.abspath(os.path.join(lakehouse, *DEFAULT_STORE_PATH))


def check_url(url: str) -> None:
    """Raise :class:`UsageError` unless ``url`` is a store URL :func:`open_store` takes."""
    u = urlparse(url)
    if u.scheme == "sqlite":
        if u.netloc not in ("", "localhost") or not os.path.isabs(u.path or "") \
                or not u.path.endswith(".db"):
            raise UsageError(f"store {url!r}: write sqlite:///ABSOLUTE/PATH.db")
    elif u.scheme in ("redis", "rediss"):
        if not u.hostname:
            raise UsageError(f"store {url!r}: write redis://HOST:PORT/DB")
    else:
        raise UsageError(f"store {url!r}: the scheme must be sqlite:// or redis://")


def open_store(url: str, *, readonly: bool = False) -> OnlineStore:
    """The store at ``url``: ``sqlite:///abs/path.db`` (``sqlite://`` then the absolute path) or ``redis://host:port[/db]``
    (``rediss://`` for TLS; ``?prefix=name`` namespaces the keys, default ``lakerec``)."""
    check_url(url)
    u = urlparse(url)
    if u.scheme == "sqlite":
        return SqliteStore(u.path, readonly=readonly)
    prefix = parse_qs(u.query).get("prefix", ["lakerec"])[0]
    return RedisStore(url.split("?")[0], prefix=prefix)


class OnlineStore:
    """What the API reads and the publisher writes (see the module docstring).

    Reads cost one key lookup each. ``digests`` (a full sync only) reads every user's
    (digest, v): O(users) once per full sync.
    """

    url: str

    # -- reads (the API) --
    def get_list(self, user_id: str) -> bytes | None:
        raise NotImplementedError

    def get_similar(self, item_id: str) -> bytes | None:
        raise NotImplementedError

    def get_popular(self) -> bytes | None:
        raise NotImplementedError

    def meta(self) -> dict[str, str]:
        """What the store reflects: ``watermark`` (Delta version of recommendations),
        ``published_at``, ``similar_version``, ``popular_key``, ``stream_batch``."""
        raise NotImplementedError

    def ping(self) -> None:
        """Raise :class:`StoreUnavailableError` unless the store answers."""
        self.meta()

    # -- writes (the publisher) --
    def put_lists(self, entries: Sequence[Entry], *, full: bool) -> int:
        """Write the entries the ordering rule admits; returns how many were written."""
        raise NotImplementedError

    def delete_lists(self, users: Sequence[str], *, upto: int) -> int:
        """Delete the users' lists written at a version ``<= upto``."""
        raise NotImplementedError

    def digests(self) -> dict[str, tuple[str, int]]:
        raise NotImplementedError

    def put_side(self, *, popular: bytes | None = None,
                 similar: dict[str, bytes] | None = None) -> None:
        """Replace the popular list and/or every similar-items entry (whole: items that
        left the catalog go)."""
        raise NotImplementedError

    def advance(self, watermark: int | None = None, **meta: str) -> None:
        """Raise the watermark to ``watermark`` (never lower it) and set ``meta``."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _chunks(seq: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class SqliteStore(OnlineStore):
    """SQLite in WAL mode (readers never block on the writer). One connection per thread."""

    def __init__(self, path: str, *, readonly: bool = False):
        self.path, self.readonly = os.path.normpath(path), readonly
        self.url = "sqlite://" + self.path
        self._local = threading.local()
        if not readonly:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            con = self._con()
            con.executescript("""
                PRAGMA journal_mode = WAL;
                CREATE TABLE IF NOT EXISTS lists (user_id TEXT PRIMARY KEY, payload BLOB NOT NULL,
                    g INTEGER NOT NULL, v INTEGER NOT NULL, digest TEXT NOT NULL) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS similar (item_id TEXT PRIMARY KEY,
                    payload BLOB NOT NULL) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            """)

    def _con(self):
        import sqlite3

        con = getattr(self._local, "con", None)
        if con is None:
            if self.readonly:
                if not os.path.exists(self.path):
                    raise StoreUnavailableError(f"no store at {self.path} (run lakerec publish)")
                from urllib.parse import quote

                con = sqlite3.connect(f"file:{quote(self.path)}?mode=ro", uri=True, timeout=5,
                                      check_same_thread=False)
            else:
                con = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                      check_same_thread=False)
                con.execute("PRAGMA synchronous = NORMAL")  # durable at each WAL checkpoint
            self._local.con = con
        return con

    def _one(self, sql: str, arg) -> bytes | None:
        import sqlite3

        try:
            row = self._con().execute(sql, (arg,)).fetchone()
        except sqlite3.Error as e:
            self._local.con = None
            raise StoreUnavailableError(f"sqlite {self.path}: {e}") from None
        return None if row is None else row[0]

    def get_list(self, user_id):
        return self._one("SELECT payload FROM lists WHERE user_id = ?", user_id)

    def get_similar(self, item_id):
        return self._one("SELECT payload FROM similar WHERE item_id = ?", item_id)

    def get_popular(self):
        v = self._one("SELECT value FROM meta WHERE key = ?", "popular")
        return v.encode() if isinstance(v, str) else v

    def meta(self):
        import sqlite3

        try:
            rows = self._con().execute("SELECT key, value FROM meta WHERE key != 'popular'")
            return dict(rows.fetchall())
        except sqlite3.Error as e:
            self._local.con = None
            raise StoreUnavailableError(f"sqlite {self.path}: {e}") from None

    def put_lists(self, entries, *, full):
        con = self._con()
        # the ordering rule of the module docstring; a full sync also skips equal digests
        rule = ("excluded.v >= lists.v AND excluded.digest != lists.digest" if full else
                "excluded.v >= lists.v AND excluded.g >= lists.g")
        before = con.total_changes
        with _Tx(con):
            con.executemany(
                "INSERT INTO lists VALUES (?, ?, ?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET "
                "payload = excluded.payload, g = excluded.g, v = excluded.v, "
                f"digest = excluded.digest WHERE {rule}",
                [(e.user_id, e.payload, e.g, e.v, e.digest) for e in entries])
        return con.total_changes - before

    def delete_lists(self, users, *, upto):
        con = self._con()
        before = con.total_changes
        with _Tx(con):
            con.executemany("DELETE FROM lists WHERE user_id = ? AND v <= ?",
                            [(u, upto) for u in users])
        return con.total_changes - before

    def digests(self):
        import sqlite3

        try:
            return {u: (d, v) for u, d, v in
                    self._con().execute("SELECT user_id, digest, v FROM lists")}
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"sqlite {self.path}: {e}") from None

    def put_side(self, *, popular=None, similar=None):
        con = self._con()
        with _Tx(con):
            if popular is not None:
                con.execute("INSERT OR REPLACE INTO meta VALUES ('popular', ?)",
                            (popular.decode(),))
            if similar is not None:
                con.execute("DELETE FROM similar")
                con.executemany("INSERT INTO similar VALUES (?, ?)", similar.items())

    def advance(self, watermark=None, **meta):
        con = self._con()
        with _Tx(con):
            if watermark is not None:
                con.execute(
                    "INSERT INTO meta VALUES ('watermark', ?) ON CONFLICT(key) DO UPDATE SET "
                    "value = excluded.value WHERE CAST(excluded.value AS INTEGER) > "
                    "CAST(meta.value AS INTEGER)", (str(watermark),))
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            [(k, str(v)) for k, v in meta.items()])

    def close(self):
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


class _Tx:
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` (rollback on error) on an autocommit connection;
    SQLite's own errors (locked past the timeout, disk full) become
    :class:`StoreUnavailableError`, as Redis' do."""

    def __init__(self, con):
        self.con = con

    def __enter__(self):
        import sqlite3

        try:
            self.con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"sqlite: {e}") from None

    def __exit__(self, exc_type, exc, _tb):
        import sqlite3

        try:
            self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        except sqlite3.Error as e:
            raise StoreUnavailableError(f"sqlite: {e}") from None
        if exc_type is not None and issubclass(exc_type, sqlite3.Error):
            raise StoreUnavailableError(f"sqlite: {exc}") from None
        return False


# KEYS: none (keys are built from the prefix); ARGV: prefix, full (0/1), then per entry
# user, payload, g (17 digits), v (12 digits), digest. The order record is "v|g|digest", fixed
# width, so the rule compares strings.
_PUT_LUA = """
local p, full, n = ARGV[1], ARGV[2] == '1', 0
for i = 3, #ARGV, 5 do
  local u, payload, g, v, d = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  local old = redis.call('HGET', p .. ':ord', u)
  local ok = true
  if old then
    local ov, og, od = string.sub(old, 1, 12), string.sub(old, 14, 30), string.sub(old, 32)
    if full then ok = v >= ov and d ~= od else ok = v >= ov and g >= og end
  end
  if ok then
    redis.call('SET', p .. ':list:' .. u, payload)
    redis.call('HSET', p .. ':ord', u, v .. '|' .. g .. '|' .. d)
    n = n + 1
  end
end
return n
"""
_DELETE_LUA = """
local p, upto, n = ARGV[1], ARGV[2], 0
for i = 3, #ARGV do
  local old = redis.call('HGET', p .. ':ord', ARGV[i])
  if old and string.sub(old, 1, 12) <= upto then
    redis.call('DEL', p .. ':list:' .. ARGV[i])
    redis.call('HDEL', p .. ':ord', ARGV[i])
    n = n + 1
  end
end
return n
"""
_ADVANCE_LUA = """
local key, w = ARGV[1], ARGV[2]
local old = redis.call('HGET', key, 'watermark')
if w ~= '' and (not old or tonumber(w) > tonumber(old)) then
  redis.call('HSET', key, 'watermark', w)
end
for i = 3, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i+1]) end
return 1
"""
_REPLACE_SIMILAR_LUA = """
local p, gen = ARGV[1], ARGV[2]
local old = redis.call('GET', p .. ':similar_gen')
redis.call('SET', p .. ':similar_gen', gen)
return old
"""


class RedisStore(OnlineStore):
    """Redis: ``<prefix>:list:<user>`` (payload), ``<prefix>:ord`` (hash user -> "v|g|digest"),
    ``<prefix>:similar:<gen>:<item>``, ``<prefix>:popular``, ``<prefix>:meta`` (hash).

    Timeouts are short (250 ms) so that a Redis outage costs the API a fast 503, not a
    stall; the client reconnects by itself on the next call.
    """

    def __init__(self, url: str, *, prefix: str = "lakerec", timeout_s: float = 0.25):
        import redis

        self.url, self.prefix = url, prefix
        self._r = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                       socket_connect_timeout=timeout_s, retry_on_timeout=False)
        self._scripts = {}
        self._similar_gen: tuple[float, str | None] = (0.0, None)

    def _call(self, fn, *args):
        import redis

        try:
            return fn(*args)
        except redis.RedisError as e:
            raise StoreUnavailableError(f"redis {self.url}: {e}") from None

    def _script(self, name: str, src: str):
        if name not in self._scripts:
            self._scripts[name] = self._r.register_script(src)
        return self._scripts[name]

    def get_list(self, user_id):
        return self._call(self._r.get, f"{self.prefix}:list:{user_id}")

    def _gen(self) -> str | None:
        import time

        # the similar-items generation, re-read at most every second (one extra round trip
        # per second, not per request)
        at, gen = self._similar_gen
        if time.monotonic() - at > 1.0:
            gen = self._call(self._r.get, f"{self.prefix}:similar_gen")
            gen = gen.decode() if gen else None
            self._similar_gen = (time.monotonic(), gen)
        return gen

    def get_similar(self, item_id):
        gen = self._gen()
        return None if gen is None else \
            self._call(self._r.get, f"{self.prefix}:similar:{gen}:{item_id}")

    def get_popular(self):
        return self._call(self._r.get, f"{self.prefix}:popular")

    def meta(self):
        raw = self._call(self._r.hgetall, f"{self.prefix}:meta")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def ping(self):
        self._call(self._r.ping)

    def put_lists(self, entries, *, full):
        n = 0
        for part in _chunks(list(entries), 500):
            argv = [self.prefix, "1" if full else "0"]
            for e in part:
                argv += [e.user_id, e.payload, f"{e.g:017d}", f"{e.v:012d}", e.digest]
            n += int(self._call(self._script("put", _PUT_LUA), [], argv))
        return n

    def delete_lists(self, users, *, upto):
        n = 0
        for part in _chunks(list(users), 1000):
            n += int(self._call(self._script("del", _DELETE_LUA), [],
                                [self.prefix, f"{upto:012d}", *part]))
        return n

    def digests(self):
        out = {}
        for u, rec in self._call(self._r.hscan_iter, f"{self.prefix}:ord", None, 2000):
            rec = rec.decode()
            out[u.decode()] = (rec[31:], int(rec[:12]))
        return out

    def put_side(self, *, popular=None, similar=None):
        import uuid

        if popular is not None:
            self._call(self._r.set, f"{self.prefix}:popular", popular)
        if similar is not None:
            # a new generation written whole, then switched to in one step; the old one is
            # deleted after: readers see the old or the new set, never a mix
            gen = uuid.uuid4().hex[:12]
            pipe = self._r.pipeline(transaction=False)
            for i, (item, payload) in enumerate(similar.items()):
                pipe.set(f"{self.prefix}:similar:{gen}:{item}", payload)
                if i % 2000 == 1999:
                    self._call(pipe.execute)
            self._call(pipe.execute)
            old = self._call(self._script("gen", _REPLACE_SIMILAR_LUA), [], [self.prefix, gen])
            if old:
                keys = list(self._call(self._r.scan_iter,
                                       f"{self.prefix}:similar:{old.decode()}:*", 2000))
                for part in _chunks(keys, 1000):
                    self._call(self._r.delete, *part)
            self._similar_gen = (0.0, None)

    def advance(self, watermark=None, **meta):
        argv = [f"{self.prefix}:meta", "" if watermark is None else str(watermark)]
        for k, v in meta.items():
            argv += [k, str(v)]
        self._call(self._script("advance", _ADVANCE_LUA), [], argv)

    def close(self):
        self._r.close()
