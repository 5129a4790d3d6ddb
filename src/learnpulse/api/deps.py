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
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from learnpulse.api.errors import UnauthorizedError
from learnpulse.errors import ConfigError, InvalidInputError
from learnpulse.settings import Settings

REALM = "learnpulse"
logger = logging.getLogger("learnpulse.api")

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The token of LEARNPULSE_API_TOKEN or of the file LEARNPULSE_API_TOKEN_FILE.",
)


TOKEN_RECHECK_SECONDS = 5.0
"""How often a token file is looked at again (one ``stat``), so a rotated secret takes effect without a restart."""


class BearerAuth:
    """Checks bearer tokens in constant time. Holds only a digest of the token, so no repr or dump can show it.

    With ``token_file`` (a mounted secret, which Kubernetes replaces in place when the secret rotates) the file is
    looked at again at most every ``TOKEN_RECHECK_SECONDS``; when it has changed, ``read_token`` gives the new token.
    A changed file that cannot be used (unreadable, empty: a rotation caught halfway) keeps the previous token and
    logs why, never the token.
    """

    def __init__(
        self,
        token: str | None,
        *,
        token_file: Path | None = None,
        read_token: Callable[[], str | None] | None = None,
    ) -> None:
        self._digest = None if token is None else self._digest_of(token)
        self._token_file = token_file if read_token is not None else None
        self._read_token = read_token
        self._signature = self._file_signature()
        self._next_check = time.monotonic() + TOKEN_RECHECK_SECONDS

    @staticmethod
    def _digest_of(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8")).digest()

    def _file_signature(self) -> tuple[int, int, int] | None:
        if self._token_file is None:
            return None
        try:
            found = self._token_file.stat()  # follows the ..data symlink a mounted secret swaps
        except OSError:
            return None
        return (found.st_ino, found.st_mtime_ns, found.st_size)

    def _refresh(self) -> None:
        if self._token_file is None or self._read_token is None:
            return
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + TOKEN_RECHECK_SECONDS
        signature = self._file_signature()
        if signature == self._signature:
            return
        self._signature = signature
        try:
            token = self._read_token()
        except ConfigError as exc:
            logger.warning("the API token file changed but cannot be used, keeping the previous token: %s", exc)
            return
        if token is not None:
            self._digest = self._digest_of(token)
            logger.info("API token reloaded from %s", self._token_file)

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self._digest is None:  # insecure development mode without a token
            return
        self._refresh()
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
