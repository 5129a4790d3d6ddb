"""Dependencies of the routes: settings, the database engine, bearer-token auth, and opaque cursors.

The dependencies are ``async`` on purpose: they do no I/O, and FastAPI runs a synchronous dependency in a worker
thread, which would cost a thread hop on every request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from learnpulse.api.errors import UnauthorizedError
from learnpulse.errors import InvalidInputError
from learnpulse.settings import Settings

REALM = "learnpulse"

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The token of LEARNPULSE_API_TOKEN or of the file LEARNPULSE_API_TOKEN_FILE.",
)


class BearerAuth:
    """Checks bearer tokens in constant time. Holds only a digest of the token, so no repr or dump can show it."""

    def __init__(self, token: str | None) -> None:
        self._digest = None if token is None else hashlib.sha256(token.encode("utf-8")).digest()

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self._digest is None:  # insecure development mode without a token
            return
        if credentials is None:
            raise UnauthorizedError(
                "missing bearer token: send the header Authorization: Bearer <token>",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
            )
        # Comparing fixed-length digests keeps the comparison constant-time whatever the length of the guess.
        offered = hashlib.sha256(credentials.credentials.encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(offered, self._digest):
            raise UnauthorizedError(
                "invalid bearer token",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'},
            )

    def __repr__(self) -> str:
        return f"BearerAuth(enabled={self.enabled})"


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    auth: BearerAuth = request.app.state.auth
    auth.check(credentials)


async def get_read_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.read_engine
    return engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]  # for writes: transactions are real
ReadEngineDep = Annotated[Engine, Depends(get_read_engine)]  # for reads: autocommit on PostgreSQL


# --- cursors -------------------------------------------------------------------------------------------------


def encode_cursor(kind: str, key: Any) -> str:
    """An opaque cursor: urlsafe base64 (unpadded) of ``{"k": kind, "v": key}``."""
    raw = json.dumps({"k": kind, "v": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, cursor: str) -> Any:
    """The key inside a cursor made by ``encode_cursor(kind, ...)``; anything else is a 422 on ``query.cursor``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("k") != kind or "v" not in data:
            raise ValueError("not a cursor of this list")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_cursor() from None
    return data["v"]


def bad_cursor() -> InvalidInputError:
    return InvalidInputError(
        "invalid cursor: pass back the next_cursor of a previous page unchanged",
        {"problems": [{"location": "query.cursor", "problem": "not a cursor of this list", "type": "cursor"}]},
    )
