"""The one error hierarchy. Every error a user can cause or meet is a ``LearnpulseError``.

Each carries a stable machine-readable ``code``, a human ``message`` and structured ``details``; the CLI prints
them and the API turns them into ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any


class LearnpulseError(Exception):
    """Base class: ``code`` names the kind of failure, ``details`` holds what a caller needs to act on it."""

    code = "learnpulse_error"
    http_status = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class ConfigError(LearnpulseError):
    """A setting (environment variable or .env entry) is missing or invalid; ``details['variable']`` names it."""

    code = "config_error"


class InvalidInputError(LearnpulseError):
    """Input data failed validation; ``details['problems']`` lists row/column/reason entries."""

    code = "invalid_input"
    http_status = 422


class ConflictError(LearnpulseError):
    """The request contradicts what is stored (e.g. a known id with different content)."""

    code = "conflict"
    http_status = 409


class NotFoundError(LearnpulseError):
    code = "not_found"
    http_status = 404


class JobLockedError(LearnpulseError):
    """Another run of the same job holds its lock."""

    code = "job_locked"
    http_status = 409


class InsufficientDataError(LearnpulseError):
    """There is too little data to do what was asked; the reason is recorded, nothing is made up."""

    code = "insufficient_data"
    http_status = 422


class NotFittedError(LearnpulseError):
    """A model was asked to predict, summarise or serialise before ``fit`` (or ``from_json``) gave it its state."""

    code = "not_fitted"
    http_status = 409


class DiagnosticsFailedError(LearnpulseError):
    """A Bayesian fit finished but its sampler diagnostics (R-hat, divergences) fail the bar: nothing it estimated
    is used; ``details['diagnostics']`` holds the figures."""

    code = "diagnostics_failed"
    http_status = 422

    def __init__(self, message: str, details: dict[str, Any] | None = None, record: dict[str, Any] | None = None):
        super().__init__(message, details)
        self.record = record  # what the failing job keeps of the failed fit (not shown to users)


class DatabaseUnavailableError(LearnpulseError):
    code = "database_unavailable"
    http_status = 503


class SchemaOutOfDateError(LearnpulseError):
    """The database schema is not at the latest migration; run ``learnpulse db upgrade``."""

    code = "schema_out_of_date"
    http_status = 503
