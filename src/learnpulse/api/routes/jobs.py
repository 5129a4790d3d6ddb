"""``GET /jobs/runs``: recent job runs (``job_run``), newest first, filterable by job and status, paginated."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import TypeAdapter

from learnpulse.api.deps import ReadEngineDep, bad_cursor, decode_cursor, encode_cursor, require_token
from learnpulse.api.schemas import JobRun, JobStatus, Page, error_responses
from learnpulse.store import reads

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_token)])

CURSOR_KIND = "runs"
_PAGE = TypeAdapter(Page[JobRun])


@router.get(
    "/jobs/runs",
    response_model=Page[JobRun],
    summary="Recent job runs",
    responses=error_responses({422: "invalid parameter or cursor"}),
)
def job_runs(
    *,
    engine: ReadEngineDep,
    job: Annotated[str | None, Query(min_length=1, max_length=64, description="Only runs of this job.")] = None,
    status: Annotated[JobStatus | None, Query(description="Only runs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Runs per page.")] = 50,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page.")] = None,
) -> Response:
    """Rows of ``job_run`` by ``run_id`` descending (newest first). A job name with no runs gives an empty page."""
    before: int | None = None
    if cursor is not None:
        key = decode_cursor(CURSOR_KIND, cursor)
        if not isinstance(key, int) or isinstance(key, bool) or key < 1:
            raise bad_cursor()
        before = key
    with engine.connect() as conn:
        page = reads.job_runs(conn, job=job, status=status, before_run_id=before, limit=limit)
    next_cursor = encode_cursor(CURSOR_KIND, int(page.rows[-1]["run_id"])) if page.more else None
    return Response(
        _PAGE.dump_json(_PAGE.validate_python({"items": page.rows, "next_cursor": next_cursor})),
        media_type="application/json",
    )
