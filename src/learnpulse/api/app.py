"""The FastAPI application: ``create_app(settings)`` builds one app with its own database engine.

Routes: ``/healthz``, ``/readyz`` and ``/metrics`` are open; every other route, the OpenAPI document
(``/openapi.json``) and its pages (``/docs``, ``/redoc``) included, needs ``Authorization: Bearer <token>``.

Middleware, outermost first: metrics (counts everything, refusals and 500s included), the body-size limit (413
before routing), the catch-all that turns an escaped exception into the one error shape (see ``api.errors``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from learnpulse.api.deps import BearerAuth, require_token
from learnpulse.api.errors import CatchAllMiddleware, PayloadTooLargeError, error_response, install_error_handlers
from learnpulse.api.metrics import ApiMetrics, MetricsMiddleware
from learnpulse.api.routes import alerts, forecast, growth, health, irt, jobs, kpi, segments, survival
from learnpulse.errors import ConfigError
from learnpulse.settings import Settings
from learnpulse.store.db import is_sqlite, make_engine

logger = logging.getLogger("learnpulse.api")

API_VERSION = "1"


def engine_options(url: str) -> dict[str, Any]:
    """Pool settings for a server: enough connections for the worker threads; fail fast when the database is away."""
    if url.startswith("sqlite"):
        return {}
    return {"pool_size": 10, "max_overflow": 30, "pool_timeout": 10, "connect_args": {"connect_timeout": 5}}


def create_app(settings: Settings, *, insecure_dev: bool = False) -> FastAPI:
    """Build the API. Without a token (LEARNPULSE_API_TOKEN / LEARNPULSE_API_TOKEN_FILE) it refuses with
    ``ConfigError`` unless ``insecure_dev``, in which case every route is open (and a warning is logged)."""
    token = settings.api_token()
    if token is None and not insecure_dev:
        raise ConfigError(
            "the API needs a bearer token: set LEARNPULSE_API_TOKEN or LEARNPULSE_API_TOKEN_FILE "
            "(or start in insecure development mode, never in production)",
            {"variable": "LEARNPULSE_API_TOKEN"},
        )
    if token is None:
        logger.warning("INSECURE DEVELOPMENT MODE: no API token is set, every route is open to anyone")
    engine = make_engine(settings.database_url, **engine_options(settings.database_url))
    # Reads run one statement each (a second only to tell an unknown student from an empty range): on PostgreSQL
    # they skip the BEGIN/ROLLBACK round trips in autocommit mode. Anything that writes uses `engine`.
    read_engine = engine if is_sqlite(engine) else engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="learnpulse",
        version=API_VERSION,
        summary="Per-student weekly learning KPIs (I_t, P, sigma, S) and the jobs that compute them.",
        description=(
            "Every route except /healthz, /readyz and /metrics needs `Authorization: Bearer <token>`. "
            'Every error is `{"error": {"code", "message", "details"}}`. '
            "Lists are paginated with opaque cursors: pass `next_cursor` back as `cursor`."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.read_engine = read_engine
    app.state.auth = BearerAuth(token, token_file=settings.learnpulse_api_token_file, read_token=settings.api_token)
    app.state.metrics = metrics = ApiMetrics(read_engine)

    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(kpi.router)
    app.include_router(jobs.router)
    app.include_router(survival.router)
    app.include_router(growth.router)
    app.include_router(irt.router)
    app.include_router(segments.router)
    app.include_router(forecast.router)
    app.include_router(alerts.router)
    _add_docs(app)

    # add_middleware puts each new one outside the previous ones.
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.learnpulse_api_max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _add_docs(app: FastAPI) -> None:
    """The OpenAPI document and its pages, behind the token like every route that is not a probe."""
    secured = [Depends(require_token)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=secured)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=secured)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="learnpulse API")

    @app.get("/redoc", include_in_schema=False, dependencies=secured)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="learnpulse API")


class BodySizeLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413 before routing.

    A declared ``Content-Length`` over the limit is refused without reading anything. A body without one
    (``Transfer-Encoding: chunked``) is read here, counting bytes, and refused as soon as the count passes the
    limit; under the limit it is handed on unchanged. A declared length is also enforced while the app reads.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body {size} is over the limit of {self.max_bytes} bytes (LEARNPULSE_API_MAX_BODY_BYTES)",
            {"limit_bytes": self.max_bytes},
            headers={"Connection": "close"},
        )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: PayloadTooLargeError) -> None:
        response = error_response(exc.http_status, exc.code, exc.message, exc.details, exc.headers)
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                response = error_response(400, "bad_request", "invalid Content-Length header")
                await response(scope, receive, send)
                return
            if length > self.max_bytes:
                await self._refuse(scope, receive, send, self._too_large(f"of {length} bytes"))
                return
            await self.app(scope, self._counting(receive), send)
            return

        # No declared length: read the (possibly chunked) body here, up to the limit.
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client went away
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._refuse(scope, receive, send, self._too_large("without Content-Length"))
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, self._replay(b"".join(chunks), receive), send)

    def _counting(self, receive: Receive) -> Receive:
        total = 0

        async def counting_receive() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_bytes:
                    raise self._too_large("longer than declared")
            return message

        return counting_receive

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        sent = False

        async def replay_receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay_receive
