"""Liveness, readiness and metrics: open to anyone (no token), as probes and scrapers expect."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from learnpulse.api.deps import ReadEngineDep
from learnpulse.api.metrics import ApiMetrics
from learnpulse.api.schemas import ErrorResponse, Health, Readiness
from learnpulse.store.schema import head_revision, require_current

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the database answers and its schema is at the latest migration",
    responses={503: {"model": ErrorResponse, "description": "database_unavailable or schema_out_of_date"}},
)
def readyz(engine: ReadEngineDep) -> Readiness:
    require_current(engine)
    return Readiness(schema_revision=head_revision())


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
)
def metrics(request: Request) -> Response:
    api_metrics: ApiMetrics = request.app.state.metrics
    content, media_type = api_metrics.render()
    return Response(content, media_type=media_type)
