"""The HTTP recommendation API (``lakerec serve``): FastAPI over the online store.

Routes: ``GET /v1/users/{user_id}/recommendations``, ``GET /v1/items/{item_id}/similar``,
``/healthz``, ``/readyz``, ``/metrics`` (Prometheus), ``/docs`` (the OpenAPI page, its
assets served from the ``swagger-ui-bundle`` package: nothing fetched) and ``/openapi.json``.

A request costs one store lookup (two when the list needs the popular filler) and a JSON
decode of one list. The handlers run on the event loop itself: a store lookup (tens of
microseconds on SQLite, one loopback round trip on Redis) costs less than the hop to a worker
thread would, and Redis' 250 ms timeout bounds a stall. The exposure it causes is queued for
another thread
(:mod:`pipelines.api.exposures`). When the store fails the API answers 503 at once and stops
asking it for a second (``retry_s``), so an outage costs fast errors, not piled-up requests;
``/readyz`` says not ready until the store answers again.

Example
-------
>>> app = create_app(ServeConfig("/lh", "sqlite:///lh/_online/lists.db"))  # doctest: +SKIP
"""

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Annotated

from pipelines.online.store import OnlineStore, StoreUnavailableError, open_store

log = logging.getLogger(__name__)

# Limits of the request parameters, declared once (the OpenAPI page shows them).
MAX_ID = 128
MAX_K = 100
MAX_OFFSET = 1000
MAX_EXCLUDE = 200
_PARAMS = {"recommendations": {"k", "offset", "category", "exclude"}, "similar": {"k"}}
CONFIG_ENV = "LAKEREC_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    """What one API process serves (``lakerec serve`` passes it to its workers as JSON)."""

    lakehouse: str
    store: str
    # {"options": {kafka.* ...}, "topic": "exposures", "flush_ms": 50}
    exposures: dict | None = None
    exposure_buffer: int = 10_000
    default_k: int = 10
    retry_s: float = 1.0
    variant: str | None = None
    extra: dict = field(default_factory=dict)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "ServeConfig":
        return cls(**json.loads(os.environ[CONFIG_ENV]))


class GuardedStore:
    """The store, or a fast :class:`StoreUnavailableError` for ``retry_s`` after a failure."""

    def __init__(self, url: str, retry_s: float, errors):
        self.url, self.retry_s, self.errors = url, retry_s, errors
        self._store: OnlineStore | None = None
        self._down_until = 0.0
        self.last_error = ""

    def call(self, name: str, *args):
        if time.monotonic() < self._down_until:
            raise StoreUnavailableError(self.last_error or "store unavailable")
        try:
            if self._store is None:
                self._store = open_store(self.url, readonly=True)
            return getattr(self._store, name)(*args)
        except StoreUnavailableError as e:
            self.errors.inc()
            self.last_error = str(e)
            self._down_until = time.monotonic() + self.retry_s
            if self._store is not None and self.url.startswith("sqlite"):
                self._store.close()
                self._store = None
            raise


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    reg = CollectorRegistry()
    buckets = (.0005, .001, .002, .003, .005, .0075, .01, .025, .05, .1, .25, .5, 1, 2.5)
    return reg, {
        "requests": Counter("lakerec_http_requests", "HTTP requests by route and status",
                            ["route", "status"], registry=reg),
        "latency": Histogram("lakerec_http_request_seconds", "request latency by route",
                             ["route"], buckets=buckets, registry=reg),
        "store_errors": Counter("lakerec_store_errors", "failed online-store calls",
                                registry=reg),
        "list_age": Histogram("lakerec_served_list_age_seconds",
                              "age (now - generated_at) of the lists served",
                              buckets=(1, 5, 30, 60, 300, 900, 3600, 6 * 3600, 86400,
                                       7 * 86400), registry=reg),
        "fallback": Counter("lakerec_popular_fallback",
                            "lists served from the popular list (users with no list)",
                            registry=reg),
        "exposures": Gauge("lakerec_exposures", "exposure messages by outcome", ["outcome"],
                           registry=reg),
    }


_FIXED_ROUTES = frozenset({"healthz", "readyz", "metrics", "docs", "openapi.json"})


def _route(path: str) -> str:
    """The metrics label of a path: one per route, and ``other`` for anything else (a
    label per unknown path would let any scanner grow the metrics without bound)."""
    if path.startswith("/v1/users/"):
        return "recommendations"
    if path.startswith("/v1/items/"):
        return "similar"
    name = path.strip("/")
    return name if name in _FIXED_ROUTES else "other"


class _Timing:
    """Pure ASGI middleware: request count and latency per route (no per-request task)."""

    def __init__(self, app, m):
        self.app, self.m = app, m

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_(msg):
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_)
        finally:
            route = _route(scope.get("path", ""))
            self.m["latency"].labels(route).observe(time.perf_counter() - t0)
            self.m["requests"].labels(route, str(status[0])).inc()


def _age_s(generated_at: str, now: float) -> float:
    from datetime import datetime

    return max(0.0, now - datetime.fromisoformat(generated_at.replace("Z", "+00:00"))
               .timestamp())


def create_app(cfg: ServeConfig):
    """The FastAPI application for ``cfg`` (one store connection, one exposure thread)."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    registry, m = _metrics()
    store = GuardedStore(cfg.store, cfg.retry_s, m["store_errors"])
    exposures = None
    if cfg.exposures:
        from pipelines.api.exposures import ExposureLog

        exposures = ExposureLog(cfg.exposures["options"], cfg.exposures["topic"],
                                capacity=cfg.exposure_buffer,
                                flush_ms=int(cfg.exposures.get("flush_ms", 50)))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if exposures is not None:
            exposures.close()

    app = FastAPI(title="lakerec", version="1", docs_url=None, redoc_url=None,
                  lifespan=lifespan,
                  description="Recommendations served from the online store that "
                              "`lakerec publish` and `lakerec stream` keep in step with the "
                              "`recommendations` Delta table.")
    import swagger_ui_bundle

    app.mount("/_docs", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs")

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "path"))
        return error(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def _http(_req, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(StoreUnavailableError)
    async def _down(_req, exc):
        return error(503, f"online store unavailable: {str(exc)[:200]}")

    @app.exception_handler(Exception)
    async def _bug(_req, exc):  # pragma: no cover - a bug: still JSON, and logged
        log.exception("unhandled error")
        return error(500, "internal error")

    def unknown_params(request: Request, route: str) -> JSONResponse | None:
        extra = set(request.query_params) - _PARAMS[route]
        if extra:
            return error(400, f"unknown parameters: {', '.join(sorted(extra))} "
                              f"(allowed: {', '.join(sorted(_PARAMS[route]))})")
        return None

    def offer(request_id, user_id, route, now, version, shown):
        if exposures is None or not shown:
            return
        # the message is built on the exposure thread, off the request
        exposures.offer((request_id, user_id, route, now, version, cfg.variant,
                         [(e["item_id"], e["rank"], e["source"]) for e in shown]))

    def respond(doc: dict) -> Response:
        return Response(json.dumps(doc, separators=(",", ":")), media_type="application/json")

    @app.get("/v1/users/{user_id}/recommendations", summary="A user's list")
    async def recommendations(
        request: Request,
        user_id: str = ...,
        k: int = Query(cfg.default_k, ge=1, le=MAX_K, description="entries to return"),
        offset: int = Query(0, ge=0, le=MAX_OFFSET, description="entries to skip (paging)"),
        category: str | None = Query(None, max_length=MAX_ID,
                                     description="only items of this catalog category"),
        exclude: Annotated[list[str] | None, Query(
            description="item ids to leave out (repeat, or comma-separated)")] = None,
    ):
        """The user's current list, paged and filtered, no item twice. A user with no list
        (unknown, or new since the last publish) gets the popular items (``source =
        popular``). A known user's list is never topped up with popular items here: the
        store does not hold their history, and the list policy never shows a seen item
        (``score`` already filled short lists with unseen popular ones)."""
        bad = unknown_params(request, "recommendations")
        if bad is not None:
            return bad
        if len(user_id) > MAX_ID:
            return error(422, f"user_id: at most {MAX_ID} characters")
        ex = {x for e in exclude or () for x in e.split(",") if x}
        if len(ex) > MAX_EXCLUDE or any(len(x) > MAX_ID for x in ex):
            return error(422, f"exclude: at most {MAX_EXCLUDE} ids of at most {MAX_ID} "
                              "characters")
        now = time.time()
        raw = store.call("get_list", user_id)
        doc = json.loads(raw) if raw is not None else None
        want = offset + k
        picked, seen = [], set()

        def take(items):
            for item, score, source, cat in items:
                if len(picked) >= want:
                    return
                if item in seen or item in ex or (category is not None and cat != category):
                    continue
                seen.add(item)
                picked.append((item, score, source))

        if doc is None:
            pop_raw = store.call("get_popular")
            doc = json.loads(pop_raw) if pop_raw is not None else {
                "items": [], "model_version": None, "generated_at": None}
            m["fallback"].inc()
            personal = False
        else:
            personal = True
        take(doc["items"])
        base = doc
        shown = [{"rank": offset + i + 1, "item_id": it, "score": sc, "source": src}
                 for i, (it, sc, src) in enumerate(picked[offset:want])]
        age = _age_s(base["generated_at"], now) if base.get("generated_at") else None
        if age is not None:
            m["list_age"].observe(age)
        request_id = uuid.uuid4().hex
        offer(request_id, user_id, "recommendations", now, base.get("model_version"), shown)
        return respond({"request_id": request_id, "user_id": user_id,
                        "source": "personal" if personal else "popular",
                        "model_version": base.get("model_version"),
                        "generated_at": base.get("generated_at"),
                        "age_seconds": None if age is None else round(age, 3),
                        "k": k, "offset": offset, "items": shown})

    @app.get("/v1/items/{item_id}/similar", summary="Items like this one")
    async def similar(request: Request, item_id: str = ...,
                k: int = Query(cfg.default_k, ge=1, le=MAX_K)):
        """The most similar catalog items by text embedding (``lakerec embed``); 404 for an
        item the store holds no neighbours of."""
        bad = unknown_params(request, "similar")
        if bad is not None:
            return bad
        if len(item_id) > MAX_ID:
            return error(422, f"item_id: at most {MAX_ID} characters")
        raw = store.call("get_similar", item_id)
        if raw is None:
            return error(404, f"no similar items for item {item_id!r}")
        doc = json.loads(raw)
        shown = [{"rank": i + 1, "item_id": it, "score": sc, "source": src}
                 for i, (it, sc, src, _cat) in enumerate(doc["items"][:k])]
        request_id = uuid.uuid4().hex
        offer(request_id, item_id, "similar", time.time(), None, shown)
        return respond({"request_id": request_id, "item_id": item_id,
                        "generated_at": doc.get("generated_at"), "items": shown})

    @app.get("/healthz", summary="The process is up")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="The store answers and holds a published snapshot")
    async def readyz():
        try:
            meta = store.call("meta")
        except StoreUnavailableError as e:
            return error(503, f"not ready: {str(e)[:200]}")
        if "watermark" not in meta:
            return error(503, "not ready: nothing published yet (run lakerec publish)")
        return {"status": "ready", "recommendations_version": int(meta["watermark"]),
                "published_at": meta.get("published_at")}

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if exposures is not None:
            for k_, v in (("sent", exposures.sent), ("dropped", exposures.dropped),
                          ("failed", exposures.failed), ("pending", exposures.pending())):
                m["exposures"].labels(k_).set(v)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="lakerec API",
                                   swagger_js_url="/_docs/swagger-ui-bundle.js",
                                   swagger_css_url="/_docs/swagger-ui.css",
                                   swagger_favicon_url="/_docs/favicon-32x32.png")

    app.add_middleware(_Timing, m=m)
    app.state.exposures = exposures
    return app


def app_from_env():
    """uvicorn's ``--factory`` entry: the app of the config in ``LAKEREC_SERVE_CONFIG``."""
    return create_app(ServeConfig.from_env())
