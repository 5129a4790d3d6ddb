"""Run the API with uvicorn: ``serve(settings, host=..., port=..., workers=..., insecure_dev=...)``.

uvicorn starts each of several workers in a fresh process from an import string, so the app is built there by
``app_factory()`` from the environment. ``serve()`` therefore writes the settings it was given into its own
environment first (every field that was set explicitly, under its variable name) together with
``LEARNPULSE_API_INSECURE_DEV``, and the workers read them back: every worker runs with exactly the settings
``serve()`` checked. (The token is exported only if it was given as LEARNPULSE_API_TOKEN, i.e. was already in the
environment or passed explicitly; a token file stays a file.)

uvicorn's access log records method, path and status, never request headers, and nothing in ``learnpulse.api``
logs headers: the bearer token does not reach a log.
"""

from __future__ import annotations

import ipaddress
import logging
import os

from fastapi import FastAPI
from pydantic import SecretStr

from learnpulse.errors import ConfigError
from learnpulse.settings import Settings, load_settings

logger = logging.getLogger("learnpulse.api")

INSECURE_DEV_ENV = "LEARNPULSE_API_INSECURE_DEV"
APP_FACTORY = "learnpulse.api.server:app_factory"


def app_factory() -> FastAPI:
    """Build the app from the environment (what each uvicorn worker calls)."""
    from learnpulse.api.app import create_app

    return create_app(load_settings(), insecure_dev=os.environ.get(INSECURE_DEV_ENV, "") == "1")


def _env_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def export_settings(settings: Settings) -> None:
    """Put the explicitly set settings into ``os.environ`` so that worker processes load the same ones."""
    for name in sorted(settings.model_fields_set):
        os.environ[name.upper()] = _env_value(getattr(settings, name))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    insecure_dev: bool,
    log_level: str = "info",
) -> None:
    """Serve the API until interrupted. Refuses (``ConfigError``) to start without a token unless ``insecure_dev``."""
    import uvicorn

    from learnpulse.api.metrics import reset_multiprocess_dir

    if workers < 1:
        raise ConfigError(f"workers must be at least 1, not {workers}", {"workers": workers})
    token = settings.api_token()  # also fails here, before any worker starts, on an unreadable token file
    if token is None and not insecure_dev:
        raise ConfigError(
            "refusing to start the API without a bearer token: set LEARNPULSE_API_TOKEN or "
            "LEARNPULSE_API_TOKEN_FILE (or pass --insecure-dev for local development only)",
            {"variable": "LEARNPULSE_API_TOKEN"},
        )
    if insecure_dev:
        if token is None:
            exposure = "" if _is_loopback(host) else f" AND IT LISTENS ON {host}, NOT ONLY ON THIS MACHINE"
            logger.warning(
                "INSECURE DEVELOPMENT MODE: no API token, every route is open to anyone%s. Never use in production.",
                exposure,
            )
        else:
            logger.warning("--insecure-dev given but a token is set: the token is still required")
    export_settings(settings)
    os.environ[INSECURE_DEV_ENV] = "1" if insecure_dev else "0"
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        logger.warning(
            "%d workers without PROMETHEUS_MULTIPROC_DIR: /metrics reports only the worker that answers", workers
        )
    reset_multiprocess_dir()
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        server_header=False,
    )
