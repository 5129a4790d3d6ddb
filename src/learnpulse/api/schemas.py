"""Response models of the HTTP API, shared by the server (OpenAPI, serialisation) and ``learnpulse.client``.

Naming: ``weekly_kpi``'s model columns are lower case in SQL (``i_t``, ``p``, ``sigma``, ``s``) but appear in JSON
under the original system's names ``I_t``, ``P``, ``sigma``, ``S``. The models accept either spelling on input
(``KpiWeek.model_validate`` of a database row or of a JSON body) and always write the original names.

This module imports pydantic only (no FastAPI), so the client can use it without the server's dependencies.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

JobStatus = Literal["running", "succeeded", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True, frozen=True)


class KpiWeek(_Model):
    """One row of ``weekly_kpi``: a student's week (local Monday start in LEARNPULSE_TIMEZONE)."""

    user_id: int
    week_start: date = Field(description="Local Monday that starts the week.")
    attempts: int = Field(description="Questions answered that week.")
    correct: int = Field(description="Of which correct.")
    accuracy: float = Field(description="correct / attempts.")
    active_days: int = Field(description="Local days with at least one attempt.")
    study_minutes: float = Field(description="Recorded answering time / 60.")
    topics: int = Field(description="Distinct topics practised.")
    i_t: float | None = Field(
        None, alias="I_t", description="I_t, learning index on 0-100 (SQL column i_t); null until computed."
    )
    i_t_source: str | None = Field(
        None, description="Where I_t comes from: 'accuracy' (placeholder of build-kpi) or 'irt' (calibrated)."
    )
    p: float | None = Field(
        None, alias="P", description="P, probability of reaching the goal by its deadline (SQL column p)."
    )
    sigma: float | None = Field(None, description="σ, uncertainty (SD) of the growth prediction (SQL column sigma).")
    s: float | None = Field(None, alias="S", description="S, churn risk (SQL column s).")
    kpi_run_id: int | None = Field(None, description="job_run that last wrote the activity columns.")


class JobRun(_Model):
    """One row of ``job_run``: a job run's parameters, timing and outcome."""

    run_id: int
    job: str
    parameters: dict[str, Any]
    as_of: date | None
    started_at: datetime
    finished_at: datetime | None
    status: JobStatus
    rows_written: int | None
    error: str | None = Field(description="The failure's code and message when status is 'failed'.")


class Page(_Model, Generic[T]):
    """One page of a list. Pass ``next_cursor`` back as ``cursor`` for the next page; null on the last page."""

    items: list[T]
    next_cursor: str | None = None


class Health(_Model):
    status: Literal["ok"] = "ok"


class Readiness(_Model):
    status: Literal["ready"] = "ready"
    schema_revision: str = Field(description="Alembic revision the database is at (the latest one).")


class ErrorBody(_Model):
    code: str = Field(description="Stable machine-readable kind of failure, e.g. not_found, invalid_input.")
    message: str = Field(description="What went wrong, for a human.")
    details: dict[str, Any] = Field(description="Structured context, e.g. problems: [{location, problem}].")


class ErrorResponse(_Model):
    """The one shape of every error the API returns."""

    error: ErrorBody


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a route behind the bearer token: 401 plus the given statuses, all ErrorResponse."""
    merged = {401: "missing or invalid bearer token", **descriptions}
    return {status: {"model": ErrorResponse, "description": text} for status, text in merged.items()}
