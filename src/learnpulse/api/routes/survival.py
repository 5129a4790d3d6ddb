"""Survival routes.

- ``POST /survival/fit`` fits a Cox model on data sent in the body (stateless).
- ``GET /survival/model``: the latest churn model stored by fit-survival-churn (``survival_fit_meta``).
- ``POST /survival/predict``: churn risk S from that model (:class:`learnpulse.churn.ChurnModel`), for students
  (covariates built from the store at an as-of date by the job's own code,
  ``learnpulse.jobs.fit_survival_churn.current_covariates``) or for covariate rows sent in the body. Reads only:
  nothing is stored.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Body, Depends, Query
from sqlalchemy import Connection

from learnpulse import churn
from learnpulse.api.deps import ReadEngineDep, require_token
from learnpulse.api.inputs import model_columns
from learnpulse.api.schemas import error_responses
from learnpulse.api.survival_schemas import (
    ChurnModel,
    CoefficientRow,
    FitRef,
    RowPrediction,
    StudentPrediction,
    SurvivalFitRequest,
    SurvivalFitResponse,
    SurvivalPredictRequest,
    SurvivalPredictResponse,
)
from learnpulse.engines.survival import CoxPH
from learnpulse.errors import InsufficientDataError, InvalidInputError, NotFoundError
from learnpulse.jobs.fit_survival_churn import TOP_FACTORS, check_kpi_through, current_covariates, score
from learnpulse.store import survival as store

router = APIRouter(tags=["survival"], dependencies=[Depends(require_token)])

_ERRORS = error_responses({422: "invalid data (lengths, values) or too few events"})


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


NO_MODEL = "no churn model yet: run fit-survival-churn (`learnpulse run fit-survival-churn`)"
_STORED_ERROR = {404: "no churn model stored yet"}
_STORED_ERRORS = error_responses(_STORED_ERROR)


def _latest_fit(conn: Connection) -> dict[str, Any]:
    fit = store.latest_fit(conn)
    if fit is None:
        raise NotFoundError(NO_MODEL, {"job": "fit-survival-churn"})
    return fit


@router.get(
    "/survival/model", response_model=ChurnModel, summary="The latest stored churn model", responses=_STORED_ERRORS
)
def churn_model(
    engine: ReadEngineDep,
    include_model: Annotated[bool, Query(description="Also return the model itself (ChurnModel.to_json).")] = False,
) -> ChurnModel:
    """The fit with the latest as-of date: covariates (and the features derived from them), the first day's odds
    ratios and the later days' hazard ratios with intervals, held-out concordance and calibration, training rows
    and events. 404 when fit-survival-churn has not stored a model yet."""
    with engine.connect() as conn:
        fit = _latest_fit(conn)
    covariates = fit["covariates"]
    calibration = fit["calibration"]
    return ChurnModel.model_validate(
        {
            "run_id": fit["run_id"],
            "as_of": fit["as_of"],
            "lookback_days": fit["lookback_days"],
            "threshold_days": fit["threshold_days"],
            "formula": fit["formula"],
            "covariates": covariates["used"],
            "derived_covariates": covariates.get("derived", []),
            "dropped_covariates": covariates.get("dropped", []),
            "coefficients": fit["coefficients"],
            "n": fit["n_rows"],
            "n_students": fit["n_students"],
            "events": fit["n_events"],
            "log_likelihood": fit["log_likelihood"],
            "concordance_train": fit["concordance_train"],
            "concordance_heldout": fit["concordance_heldout"],
            "heldout": fit["heldout"],
            "calibration": calibration["groups"],
            "calibration_mean_abs_gap": calibration.get("mean_abs_gap"),
            "landmarks": fit["landmarks"],
            "model": fit["model"] if include_model else None,
        }
    )


@router.post(
    "/survival/predict",
    response_model=SurvivalPredictResponse,
    summary="Churn risk S from the latest stored model",
    responses=error_responses(
        {
            **_STORED_ERROR,
            422: "invalid body, covariate names not the model's, or build-kpi has not built the as-of date",
        }
    ),
)
def predict(engine: ReadEngineDep, request: Annotated[SurvivalPredictRequest, Body()]) -> SurvivalPredictResponse:
    """Score with the latest model of fit-survival-churn. Send exactly one of:

    - ``user_ids`` (and optionally ``as_of``, default: the last day build-kpi has built): each student's covariates
      at the as-of date are built from the store exactly as the job builds them, and S is the job's S
      (``P(a churn gap begins within T days | active so far)``, ``T`` = the model's ``threshold_days``), with the
      linear predictor and the top factors. A student who cannot be scored gets ``s = null`` and a ``status``:
      ``churned`` (already ``T`` or more days without an attempt), ``not_enrolled`` (known, but no attempt on or
      before the as-of date) or ``unknown_student``.
    - ``covariates`` (name -> values, exactly the model's covariates): ``s = P(t <= at + horizon_days | t > at, x)``
      per row (``at`` default 0, ``horizon_days`` default ``T``).
    """
    _check_one_input(request)
    with engine.connect() as conn:
        fit = _latest_fit(conn)
        model = _stored_model(fit)
        ref = FitRef(run_id=fit["run_id"], as_of=fit["as_of"], threshold_days=fit["threshold_days"])
        if request.user_ids is not None:
            return _predict_students(conn, fit, model, ref, user_ids=request.user_ids, as_of=request.as_of)
    assert request.covariates is not None
    return _predict_rows(model, ref, request.covariates, request.at, request.horizon_days)


def _stored_model(fit: dict[str, Any]) -> churn.ChurnModel:
    """The stored model; one in a format this version cannot use (e.g. a single Cox model stored before the
    two-part model) is treated as no model: the next run of the job replaces it."""
    try:
        return churn.ChurnModel.from_json(fit["model"])
    except InvalidInputError as exc:
        raise NotFoundError(
            f"the latest churn model (as of {fit['as_of']}, run {fit['run_id']}) was stored in a format this version "
            f"cannot use ({exc.message}): run fit-survival-churn again (`learnpulse run fit-survival-churn`)",
            {"job": "fit-survival-churn", "run_id": fit["run_id"]},
        ) from exc


def _check_one_input(request: SurvivalPredictRequest) -> None:
    by_ids, by_rows = request.user_ids is not None, request.covariates is not None
    problems: list[dict[str, str]] = []
    if by_ids == by_rows:
        problem = "send this or the other, not both" if by_ids else "one of user_ids and covariates is required"
        problems = [
            {"location": f"body.{name}", "problem": problem, "type": "one_of"} for name in ("user_ids", "covariates")
        ]
    elif by_ids:
        problems = [
            {"location": f"body.{name}", "problem": "only with covariates", "type": "not_allowed"}
            for name in ("at", "horizon_days")
            if getattr(request, name) is not None
        ]
    elif request.as_of is not None:
        problems = [{"location": "body.as_of", "problem": "only with user_ids", "type": "not_allowed"}]
    if problems:
        raise InvalidInputError(
            "send either user_ids (with an optional as_of) or covariates (with optional at and horizon_days)",
            {"problems": problems},
        )


def _predict_students(
    conn: Connection,
    fit: dict[str, Any],
    model: churn.ChurnModel,
    ref: FitRef,
    *,
    user_ids: list[int],
    as_of: date | None,
) -> SurvivalPredictResponse:
    t = int(fit["threshold_days"])
    if as_of is None:
        as_of = store.kpi_built_through(conn)
        if as_of is None:  # possible only if build-kpi's state was cleared after the fit
            raise InsufficientDataError(
                "build-kpi has never run: run `learnpulse run build-kpi` first", {"kpi_built_through": None}
            )
    else:
        check_kpi_through(conn, as_of)
    ids = list(dict.fromkeys(user_ids))
    current = current_covariates(conn, as_of, lookback_days=int(fit["lookback_days"]), threshold_days=t, user_ids=ids)
    scored = {int(row["user_id"]): row for row in score(model, current, t).to_dict("records")}
    rest = [u for u in ids if u not in scored]
    last_days = store.load_last_days_of(conn, rest, end=as_of) if rest else {}
    unseen = [u for u in rest if u not in last_days]
    known = store.known_students(conn, unseen) if unseen else set()
    students = []
    for user_id in ids:
        if user_id in scored:
            row = scored[user_id]
            item = StudentPrediction(
                user_id=user_id,
                status="scored",
                s=float(row["s"]),
                linear_predictor=float(row["linear_predictor"]),
                days_since_last_attempt=int(row["days_since_last_attempt"]),
                top_factors=row["top_factors"],
            )
        elif user_id in last_days:
            days = (as_of - last_days[user_id]).days
            item = StudentPrediction(user_id=user_id, status="churned", days_since_last_attempt=days)
        else:
            item = StudentPrediction(user_id=user_id, status="not_enrolled" if user_id in known else "unknown_student")
        students.append(item)
    return SurvivalPredictResponse(fit=ref, horizon_days=t, as_of=as_of, students=students)


def _predict_rows(
    model: churn.ChurnModel,
    ref: FitRef,
    covariates: dict[str, list[float]],
    at: float | None,
    horizon_days: float | None,
) -> SurvivalPredictResponse:
    names = list(model.covariates)
    frame = model_columns(covariates, names, field="covariates", noun="covariate")
    start = 0.0 if at is None else float(at)
    horizon = float(ref.threshold_days) if horizon_days is None else float(horizon_days)
    s = model.event_probability(frame, at=start, horizon=horizon)
    lp = model.linear_predictor(frame)
    factors = churn.top_factors(model.contributions(frame), frame, TOP_FACTORS)
    rows = [
        RowPrediction.model_validate({"s": float(p), "linear_predictor": float(x), "top_factors": f})
        for p, x, f in zip(s, lp, factors, strict=True)
    ]
    return SurvivalPredictResponse(fit=ref, horizon_days=horizon, at=start, rows=rows)
