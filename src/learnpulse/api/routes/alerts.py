"""``GET /alerts``: the inactivity alerts of one day (``inactivity_alert``), riskiest first, paginated."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import TypeAdapter

from learnpulse.api.deps import ReadEngineDep, bad_cursor, decode_cursor, encode_cursor, require_token
from learnpulse.api.schemas import Page, error_responses
from learnpulse.api.survival_schemas import AlertTier, InactivityAlert
from learnpulse.store import survival as store

router = APIRouter(tags=["alerts"], dependencies=[Depends(require_token)])

CURSOR_KIND = "alerts"
_PAGE = TypeAdapter(Page[InactivityAlert])


def _cursor_key(cursor: str) -> tuple[date, float | None, int]:
    """(alert date, s, user_id) of the previous page's last row."""
    key = decode_cursor(CURSOR_KIND, cursor)
    try:
        day = date.fromisoformat(key["d"])
        s, user_id = key["s"], key["u"]
    except (TypeError, KeyError, ValueError):
        raise bad_cursor() from None
    if isinstance(s, bool) or not (s is None or isinstance(s, int | float)):
        raise bad_cursor()
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        raise bad_cursor()
    return day, None if s is None else float(s), user_id


@router.get(
    "/alerts",
    response_model=Page[InactivityAlert],
    summary="Inactivity alerts of a day, riskiest first",
    responses=error_responses({422: "invalid parameter or cursor"}),
)
def alerts(
    *,
    engine: ReadEngineDep,
    alert_date: Annotated[
        date | None, Query(alias="date", description="Day of the alerts; default: the latest day with alerts.")
    ] = None,
    tier: Annotated[AlertTier | None, Query(description="Only alerts of this tier.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Alerts per page.")] = 100,
    cursor: Annotated[str | None, Query(max_length=300, description="next_cursor of the previous page.")] = None,
) -> Response:
    """Rows of ``inactivity_alert`` for one day, ordered by ``s`` descending (students without a score last), then
    ``user_id`` ascending. Without ``date``, the latest day that has alerts (the cursor keeps that day, so paging
    stays on it even if detect-inactivity stores a newer day meanwhile). No alerts at all gives an empty page."""
    after: tuple[float | None, int] | None = None
    if cursor is not None:
        day, s, user_id = _cursor_key(cursor)
        if alert_date is not None and alert_date != day:
            raise bad_cursor()
        alert_date, after = day, (s, user_id)
    empty: dict[str, Any] = {"items": [], "next_cursor": None}
    with engine.connect() as conn:
        if alert_date is None:
            alert_date = store.latest_alert_date(conn)
        if alert_date is None:
            return Response(_PAGE.dump_json(_PAGE.validate_python(empty)), media_type="application/json")
        page = store.alerts_page(conn, alert_date=alert_date, tier=tier, after=after, limit=limit)
    next_cursor = None
    if page.more:
        last = page.rows[-1]
        s_last = None if last["s"] is None else float(last["s"])
        next_cursor = encode_cursor(CURSOR_KIND, {"d": alert_date.isoformat(), "s": s_last, "u": int(last["user_id"])})
    return Response(
        _PAGE.dump_json(_PAGE.validate_python({"items": page.rows, "next_cursor": next_cursor})),
        media_type="application/json",
    )
