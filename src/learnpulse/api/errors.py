"""The one error handler: every failure leaves the API as ``{"error": {"code", "message", "details"}}``.

- ``LearnpulseError`` -> its ``http_status`` and ``to_dict()`` (``DatabaseUnavailableError`` with a generic message:
  the database's address stays in the server's log).
- ``RequestValidationError`` -> 422 ``invalid_input`` with ``details.problems = [{location, problem, type}]``,
  ``location`` a dotted path such as ``query.from`` or ``body.items.0.y``. The offending input is not echoed.
- ``StarletteHTTPException`` (unknown route, wrong method, ...) -> its status, a code from ``HTTP_CODES``.
- SQLAlchemy errors that mean the database cannot be reached -> 503 ``database_unavailable``; a missing table or
  column (a database never migrated) -> 503 ``schema_out_of_date``; other database
  errors, and any other exception -> 500 ``internal_error`` with a generic message and an ``error_id`` that the
  server's log line (with the traceback) also carries. No stack trace, SQL or setting ever reaches a client.

Nothing here logs request headers, so the bearer token cannot end up in a log through this module.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from learnpulse.errors import DatabaseUnavailableError, LearnpulseError, SchemaOutOfDateError

logger = logging.getLogger("learnpulse.api")

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    503: "service_unavailable",
}

# Texts of driver errors (psycopg, sqlite3) that mean "cannot reach the database", as opposed to a bad query.
_UNREACHABLE = (
    "connection refused",
    "connection failed",
    "could not connect",
    "could not translate host",
    "connection timeout",
    "timeout expired",
    "server closed the connection",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "unable to open database file",
    "database is locked",
    "disk i/o error",
)
# ... and texts that mean the schema is missing or behind (a database that was never migrated).
_SCHEMA_MISSING = ("no such table", "no such column", "undefinedtable", "undefinedcolumn")


class ApiHttpError(LearnpulseError):
    """An error only the HTTP layer raises; ``headers`` are added to the response."""

    def __init__(self, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message, details)
        self.headers = headers or {}


class UnauthorizedError(ApiHttpError):
    code = "unauthorized"
    http_status = 401


class PayloadTooLargeError(ApiHttpError):
    code = "payload_too_large"
    http_status = 413


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details or {})}}
    return JSONResponse(body, status_code=status, headers=headers)


def _where(request: Request) -> str:
    route = request.scope.get("route")
    return f"{request.method} {getattr(route, 'path', request.url.path)}"


def database_unreachable(exc: BaseException) -> bool:
    """True for errors that mean the database cannot be reached (rather than a bad query or a bug)."""
    if isinstance(exc, PoolTimeoutError | DatabaseUnavailableError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        text = str(exc.orig).lower()
        return any(fragment in text for fragment in _UNREACHABLE)
    return False


def schema_missing(exc: BaseException) -> bool:
    """True for database errors that mean a table or column is missing: the schema is not at the latest migration."""
    if not isinstance(exc, DBAPIError):
        return False
    text = f"{type(exc.orig).__name__} {exc.orig}".lower()
    return any(fragment in text for fragment in _SCHEMA_MISSING)


def _unavailable(request: Request, exc: BaseException) -> JSONResponse:
    reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
    logger.warning("database unavailable on %s: %s: %s", _where(request), type(exc).__name__, reason)
    return error_response(
        503,
        DatabaseUnavailableError.code,
        "the database is unavailable; try again later",
        headers={"Retry-After": "2"},
    )


def internal_error(request: Request, exc: BaseException) -> JSONResponse:
    """500 with a generic message; the traceback goes to the server's log under the same error_id."""
    error_id = uuid.uuid4().hex[:16]
    logger.error("unhandled %s on %s [error_id=%s]", type(exc).__name__, _where(request), error_id, exc_info=exc)
    return error_response(
        500, "internal_error", "internal server error; the server logged the details", {"error_id": error_id}
    )


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """THE handler, registered for every exception class the app can meet."""
    if database_unreachable(exc):
        return _unavailable(request, exc)
    if schema_missing(exc):
        logger.error("schema out of date on %s: %s", _where(request), str(getattr(exc, "orig", exc)).splitlines()[0])
        return error_response(
            503,
            SchemaOutOfDateError.code,
            "the database schema is not at the latest migration: run `learnpulse db upgrade`",
        )
    if isinstance(exc, LearnpulseError):
        headers = exc.headers if isinstance(exc, ApiHttpError) else None
        if exc.http_status >= 500:
            level = logging.WARNING if exc.http_status == 503 else logging.ERROR
            logger.log(level, "%s on %s: %s", exc.code, _where(request), exc.message)
        return error_response(exc.http_status, exc.code, exc.message, exc.details, headers)
    if isinstance(exc, RequestValidationError):
        problems = [
            {
                "location": ".".join(str(part) for part in error.get("loc", ())),
                "problem": str(error.get("msg", "invalid")),
                "type": str(error.get("type", "invalid")),
            }
            for error in exc.errors()
        ]
        return error_response(422, "invalid_input", "the request is invalid", {"problems": problems})
    if isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) and exc.detail else "HTTP error"
        if status == 404 and message == "Not Found":
            message = f"no route {request.url.path}"
        elif status == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(status, HTTP_CODES.get(status, "http_error"), message, None, exc.headers)
    return internal_error(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    for cls in (LearnpulseError, RequestValidationError, StarletteHTTPException, DBAPIError, PoolTimeoutError):
        app.add_exception_handler(cls, handle_error)
    # Starlette runs an `Exception` handler in its outermost middleware and then re-raises (so the server logs
    # the error a second time); CatchAllMiddleware below answers first, this one is the last resort.
    app.add_exception_handler(Exception, handle_error)


class CatchAllMiddleware:
    """Turns an exception that escaped the routes into the one error shape, without re-raising it.

    Installed innermost (next to FastAPI's own exception middleware) so outer middlewares, such as the metrics,
    see a 500 response rather than an exception.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if started:  # too late for an error response: let the server close the connection
                raise
            response = await handle_error(Request(scope), exc)
            await response(scope, receive, send)
