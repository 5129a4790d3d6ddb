"""Survival routes: ``POST /survival/fit`` fits a Cox model on data sent in the body (stateless)."""

from __future__ import annotations

from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Body, Depends

from learnpulse.api.deps import require_token
from learnpulse.api.schemas import ErrorResponse
from learnpulse.api.survival_schemas import CoefficientRow, SurvivalFitRequest, SurvivalFitResponse
from learnpulse.engines.survival import CoxPH

router = APIRouter(tags=["survival"], dependencies=[Depends(require_token)])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or invalid bearer token"},
    422: {"model": ErrorResponse, "description": "invalid data (lengths, values) or too few events"},
}


@router.post("/survival/fit", response_model=SurvivalFitResponse, summary="Fit a Cox model", responses=_ERRORS)
def fit(request: Annotated[SurvivalFitRequest, Body()]) -> SurvivalFitResponse:
    """Fit a Cox proportional-hazards model (Efron ties by default) to the rows in the body and return the hazard
    ratios with intervals, the concordance and the model itself. Nothing is stored."""
    model = CoxPH(penalizer=request.penalizer, ties=request.ties, alpha=request.alpha).fit(
        request.durations, request.events, pd.DataFrame(request.covariates)
    )
    summary = model.summary()
    rows = [
        CoefficientRow(
            name=str(name),
            coef=float(r["coef"]),
            se=float(r["se"]),
            hazard_ratio=float(r["hazard_ratio"]),
            hr_lower=float(r["hr_lower"]),
            hr_upper=float(r["hr_upper"]),
            z=float(r["z"]),
            p=float(r["p"]),
        )
        for name, r in summary.iterrows()
    ]
    return SurvivalFitResponse(
        n=int(model.n_ or 0),
        events=int(model.events_ or 0),
        log_likelihood=float(model.log_likelihood_ or 0.0),
        concordance=float(model.concordance_ or 0.0),
        coefficients=rows,
        model=model.to_json(),
    )
