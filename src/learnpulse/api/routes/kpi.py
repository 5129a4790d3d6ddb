"""``GET /users/{user_id}/kpi``: a student's weekly KPIs (``weekly_kpi``), oldest week first, paginated."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from pydantic import TypeAdapter

from learnpulse.api.deps import ReadEngineDep, bad_cursor, decode_cursor, encode_cursor, require_token
from learnpulse.api.schemas import KpiWeek, Page, error_responses
from learnpulse.errors import InvalidInputError, NotFoundError
from learnpulse.store import reads

router = APIRouter(tags=["kpi"], dependencies=[Depends(require_token)])

CURSOR_KIND = "kpi"
_PAGE = TypeAdapter(Page[KpiWeek])
MAX_USER_ID = 2**63 - 1  # BIGINT


@router.get(
    "/users/{user_id}/kpi",
    response_model=Page[KpiWeek],
    summary="A student's weekly KPIs",
    responses=error_responses({404: "unknown student", 422: "invalid parameter or cursor"}),
)
def user_kpi(
    *,
    engine: ReadEngineDep,
    user_id: Annotated[int, Path(ge=1, le=MAX_USER_ID)],
    date_from: Annotated[date | None, Query(alias="from", description="First day of interest (inclusive).")] = None,
    date_to: Annotated[date | None, Query(alias="to", description="Last day of interest (inclusive).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Weeks per page.")] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the previous page.")] = None,
) -> Response:
    """The student's rows of ``weekly_kpi`` by ``week_start`` ascending: every week (Monday to Sunday, local time)
    that overlaps ``[from, to]``. JSON names of the model columns: ``I_t``, ``P``, ``sigma``, ``S`` (SQL: ``i_t``,
    ``p``, ``sigma``, ``s``). A student known to the store (attempts, a goal or KPIs) with no week in the range
    gets an empty page; an unknown student gets 404."""
    if date_from is not None and date_to is not None and date_from > date_to:
        raise InvalidInputError(
            "`from` is after `to`",
            {"problems": [{"location": "query.to", "problem": "must be on or after `from`", "type": "date_range"}]},
        )
    after: date | None = None
    if cursor is not None:
        try:
            after = date.fromisoformat(str(decode_cursor(CURSOR_KIND, cursor)))
        except ValueError:
            raise bad_cursor() from None
    with engine.connect() as conn:
        page = reads.user_kpi(conn, user_id, date_from=date_from, date_to=date_to, after_week=after, limit=limit)
        if not page.rows and after is None and not reads.user_known(conn, user_id):
            raise NotFoundError(f"unknown user {user_id}", {"user_id": user_id})
    next_cursor = encode_cursor(CURSOR_KIND, page.rows[-1]["week_start"].isoformat()) if page.more else None
    # Validated and serialised here in one pass of pydantic's core rather than by FastAPI (which would validate
    # the page again): this is the API's hot path. The response_model above still documents the shape.
    return Response(
        _PAGE.dump_json(_PAGE.validate_python({"items": page.rows, "next_cursor": next_cursor})),
        media_type="application/json",
    )
