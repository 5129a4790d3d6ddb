"""Growth routes.

- ``POST /growth/fit``: fits the hierarchical growth model on data sent in the body (stateless; NUTS runs in the
  request, seconds for hundreds of units).
- ``POST /growth/predict``: P, sigma and the weekly trajectory (50% and 90% intervals) from the stored model, for
  students with their stored goal or a what-if target and deadline.
- ``GET /growth/model``: the model in use (latest succeeded fit-bayesian-growth run).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Body, Depends

from learnpulse import metrics
from learnpulse.api.deps import ReadEngineDep, SettingsDep, require_token
from learnpulse.api.growth_schemas import (
    GoalPrediction,
    GrowthFitRequest,
    GrowthFitResponse,
    GrowthModelInfo,
    GrowthPredictRequest,
    GrowthPredictResponse,
    ParameterRow,
    TrajectoryPoint,
)
from learnpulse.api.schemas import error_responses
from learnpulse.engines.growth import GrowthModel
from learnpulse.errors import NotFoundError
from learnpulse.jobs.fit_bayesian_growth import ACCURACY_BOUNDS, time_of
from learnpulse.store import growth as store

router = APIRouter(tags=["growth"], dependencies=[Depends(require_token)])


@router.post(
    "/growth/fit",
    response_model=GrowthFitResponse,
    summary="Fit a hierarchical growth model",
    responses=error_responses({422: "invalid data (lengths, values, trials) or too little data"}),
)
def fit(request: Annotated[GrowthFitRequest, Body()]) -> GrowthFitResponse:
    """Fit ``y ~ time + (time | unit)`` (gaussian) or ``y | trials(trials) ~ time + (time | unit)`` (binomial)
    with NUTS and return the posterior summary (brms's table with R-hat and ESS), the diagnostics and the model.
    Nothing is stored."""
    model = GrowthModel(
        request.family, iter=request.iter, chains=request.chains, seed=request.seed, sampler=request.sampler
    ).fit(request.unit, request.time, request.y, request.trials)
    table = model.fixed_effects()
    return GrowthFitResponse(
        formula=model.formula,
        family=model.family,
        sampler=model.sampler,
        parameters=[
            ParameterRow.model_validate({"parameter": str(name), **row}) for name, row in table.to_dict("index").items()
        ],
        diagnostics=model.diagnostics_ or {},
        model=model.to_json(),
    )


_STORED = error_responses({404: "no growth model stored yet", 422: "invalid body"})


@router.post(
    "/growth/predict",
    response_model=GrowthPredictResponse,
    summary="Goal probability P, sigma and trajectory from the stored model",
    responses=_STORED,
)
def predict(
    engine: ReadEngineDep, settings: SettingsDep, request: Annotated[GrowthPredictRequest, Body()]
) -> GrowthPredictResponse:
    """For each student: ``P`` = posterior probability that the expected accuracy at the deadline reaches the
    target, ``sigma`` = its posterior SD, the flag (``little_history``: partially pooled; ``no_history``: the
    population's answer), and the predicted weekly accuracy from the model's first week to the deadline with
    50% and 90% intervals. Without ``target``/``deadline`` the student's stored goal is used."""
    as_of = request.as_of or datetime.now(settings.timezone).date()
    ids = list(dict.fromkeys(request.user_ids))
    with engine.connect() as conn:
        fit_row, model = metrics.load_bayesian(conn, ids)
        answers = metrics.bayesian_answers(conn, ids, as_of=as_of, target=request.target, deadline=request.deadline)
    start = fit_row["window_start"]
    students = []
    for answer in answers:
        trajectory = None
        if request.trajectory:
            end = answer.deadline or (as_of + timedelta(days=7 * 4))
            weeks = [start + timedelta(days=7 * w) for w in range(max(1, (end - start).days // 7 + 1))]
            times = np.array([time_of(w, start) + 0.5 for w in weeks])
            frame = model.predict([answer.user_id], times, bounds=ACCURACY_BOUNDS)
            trajectory = [
                TrajectoryPoint(week_start=w, **{k: float(r[k]) for k in ("mean", "q05", "q25", "q50", "q75", "q95")})
                for w, r in zip(weeks, frame.to_dict("records"), strict=True)
            ]
        students.append(
            GoalPrediction(**{k: v for k, v in answer.to_dict().items() if k != "model_run_id"}, trajectory=trajectory)
        )
    return GrowthPredictResponse(
        run_id=int(fit_row["run_id"]), as_of=as_of, family=str(fit_row["family"]), students=students
    )


@router.get(
    "/growth/model",
    response_model=GrowthModelInfo,
    summary="The growth model in use",
    responses=error_responses({404: "no growth model stored yet"}),
)
def growth_model(engine: ReadEngineDep) -> GrowthModelInfo:
    """The latest succeeded fit: formula, family, priors, fixed effects, group-level SDs and correlation with 95%
    intervals, residual sigma, diagnostics; and the status of the newest run (a failed newer run keeps this one)."""
    with engine.connect() as conn:
        fit_row = store.latest_fit(conn)
        newest = store.latest_run(conn)
    if fit_row is None or newest is None:
        raise NotFoundError(metrics.NO_MODEL, {"job": "fit-bayesian-growth"})
    return GrowthModelInfo.model_validate(
        {**fit_row, "latest_run_status": newest["status"], "latest_run_reason": newest["reason"]}
    )
