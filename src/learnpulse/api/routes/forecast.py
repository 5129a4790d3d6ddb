"""Forecast routes.

- ``POST /prophet/fit``: fits prophet's trend model to the series in the body and returns the forecast, the
  anomalous points and the parameters (stateless; the batch engine by default, prophet itself on request).
- ``POST /prophet/predict``: the stored forecasts of the latest forecast-prophet run for students.
- ``GET /anomalies``: the anomalous weeks that run (or an earlier one) found, strongest first, paginated.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import Response
from pydantic import TypeAdapter

from learnpulse.api.deps import ReadEngineDep, SettingsDep, bad_cursor, decode_cursor, encode_cursor, require_token
from learnpulse.api.forecast_schemas import (
    AnomalyPoint,
    AnomalyRow,
    Direction,
    FittedPoint,
    ForecastPoint,
    ProphetFitRequest,
    ProphetFitResponse,
    ProphetParameters,
    ProphetPredictRequest,
    ProphetPredictResponse,
    StudentForecast,
    WeekForecast,
)
from learnpulse.api.schemas import Page, error_responses
from learnpulse.api.values import finite_or_none
from learnpulse.engines.forecast import BatchForecaster, ForecastModel, ProphetForecaster
from learnpulse.errors import InsufficientDataError, NotFoundError
from learnpulse.settings import Settings
from learnpulse.store import forecast as store
from learnpulse.store.buckets import week_start
from learnpulse.store.survival import known_students

router = APIRouter(tags=["forecast"], dependencies=[Depends(require_token)])

NO_RUN = "no forecasts yet: run forecast-prophet (`learnpulse run forecast-prophet`)"
CURSOR_KIND = "anomalies"
_PAGE = TypeAdapter(Page[AnomalyRow])


def _day(value: Any) -> date:
    return pd.Timestamp(value).date()


# --- POST /prophet/fit --------------------------------------------------------------------------------------------


def _options(request: ProphetFitRequest, settings: Settings) -> dict[str, Any]:
    """The options given, with the job's settings as defaults for the horizon and the anomaly threshold (so the
    endpoint answers as forecast-prophet would); the engine's defaults for the rest."""
    given = {k: v for k, v in request.options.model_dump().items() if v is not None}
    given.setdefault("horizon", settings.prophet_forecast_weeks)
    given.setdefault("anomaly_threshold", settings.prophet_anomaly_threshold)
    return given


def _fit_model(request: ProphetFitRequest, options: dict[str, Any]) -> ForecastModel:
    ds = pd.to_datetime(pd.Series(request.ds))
    y_sd = None if request.y_sd is None else np.array([np.nan if v is None else v for v in request.y_sd], dtype=float)
    if request.engine == "prophet":
        reference = ProphetForecaster(**options).fit(ds, request.y, y_sd)
        assert reference.model_ is not None
        return reference.model_
    frame = pd.DataFrame({"unit": 0, "ds": ds, "y": request.y})
    if y_sd is not None:
        frame["y_sd"] = y_sd
    batch = BatchForecaster(**options).fit(frame, y_sd="y_sd" if y_sd is not None else None)
    if batch.skipped_ is not None and len(batch.skipped_):
        # Dates are distinct and values finite (validated), so the only reason left is a short series.
        raise InsufficientDataError(
            f"the series has {len(request.y)} point(s); at least {batch.options.min_points} are needed",
            {"points": len(request.y), "min_points": batch.options.min_points},
        )
    return batch.model(0)


@router.post(
    "/prophet/fit",
    response_model=ProphetFitResponse,
    summary="Fit prophet's trend model to a series: forecast, anomalies, parameters",
    responses=error_responses({422: "invalid series or options, or too few points"}),
)
def fit(settings: SettingsDep, request: Annotated[ProphetFitRequest, Body()]) -> ProphetFitResponse:
    """Fit prophet's piecewise-linear trend (no seasonality) to the series in the body and return the forecast of
    the ``horizon`` points after the last date with intervals, the in-sample fit, the anomalous points (the
    forecast-prophet rule: residual beyond ``anomaly_threshold`` robust residual SDs, each point's known ``y_sd``
    raising its own scale) and the parameters with the model. ``engine``: ``batch`` (default; the vectorised MAP
    fit forecast-prophet runs) or ``prophet`` (prophet's own fit, the reference). Defaults of ``horizon`` and
    ``anomaly_threshold``: PROPHET_FORECAST_WEEKS and PROPHET_ANOMALY_THRESHOLD. Nothing is stored."""
    options = _options(request, settings)
    model = _fit_model(request, options)
    forecast, fitted, anomalies = model.predict(), model.fitted(), model.anomalies()
    return ProphetFitResponse(
        engine=request.engine,
        n_points=len(model.history_y),
        options=model.options.to_dict(),
        parameters=ProphetParameters(
            k=model.k,
            m=model.m,
            delta=[float(v) for v in model.delta],
            changepoints_t=[float(v) for v in model.changepoints_t],
            changepoints=[_day(v) for v in model.changepoints_ns],
            sigma_obs=model.sigma_obs,
            y_scale=model.y_scale,
            start=_day(model.start_ns),
            t_scale_days=model.t_scale_ns / 86_400e9,
            log_posterior=model.log_posterior,
            converged=model.converged,
        ),
        forecast=[
            ForecastPoint(
                step=int(r["step"]),
                ds=_day(r["ds"]),
                yhat=float(r["yhat"]),
                yhat_lower=finite_or_none(r["yhat_lower"]),
                yhat_upper=finite_or_none(r["yhat_upper"]),
            )
            for r in forecast.to_dict("records")
        ],
        fitted=[
            FittedPoint(
                ds=_day(r["ds"]),
                y=float(r["y"]),
                yhat=float(r["yhat"]),
                yhat_lower=finite_or_none(r["yhat_lower"]),
                yhat_upper=finite_or_none(r["yhat_upper"]),
            )
            for r in fitted.to_dict("records")
        ],
        anomalies=[
            AnomalyPoint(
                ds=_day(r["ds"]),
                y=float(r["y"]),
                yhat=float(r["yhat"]),
                lower=float(r["expected_lower"]),
                upper=float(r["expected_upper"]),
                residual=float(r["residual"]),
                scale=float(r["scale"]),
                score=float(r["score"]),
                direction=r["direction"],
            )
            for r in anomalies.to_dict("records")
        ],
        model=model.to_json(),
    )


# --- POST /prophet/predict ----------------------------------------------------------------------------------------


def _student(user_id: int, row: dict[str, Any] | None, known: set[int]) -> StudentForecast:
    if row is None:
        return StudentForecast(user_id=user_id, status="no_series" if user_id in known else "unknown_student")
    if row["status"] != "fitted":
        return StudentForecast(user_id=user_id, status=row["status"], reason=row["reason"], n_points=row["n_points"])
    weeks = [
        WeekForecast(
            week_start=date.fromisoformat(w["week_start"]),
            yhat=float(w["yhat"]),
            yhat_lower=finite_or_none(w["yhat_lower"]),
            yhat_upper=finite_or_none(w["yhat_upper"]),
        )
        for w in row["forecast"]
    ]
    return StudentForecast(
        user_id=user_id,
        status="fitted",
        n_points=row["n_points"],
        last_week=store.last_observed_week(row["forecast"]),
        forecast=weeks,
    )


@router.post(
    "/prophet/predict",
    response_model=ProphetPredictResponse,
    summary="Stored I_t forecasts of the latest forecast-prophet run",
    responses=error_responses({404: "no forecast-prophet run stored yet", 422: "invalid body"}),
)
def predict(engine: ReadEngineDep, request: Annotated[ProphetPredictRequest, Body()]) -> ProphetPredictResponse:
    """Each student's forecast from the latest forecast-prophet run (latest as-of date): the weeks after the
    student's last observed week with the forecast I_t and its interval. One entry per distinct id, in request
    order, with a ``status``: ``fitted``; ``skipped`` or ``failed`` (with the ``reason``); ``no_series`` (known,
    but no I_t in the run's window); ``unknown_student``. An unknown id is not an error."""
    ids = list(dict.fromkeys(request.user_ids))
    with engine.connect() as conn:
        run = store.latest_run(conn)
        if run is None:
            raise NotFoundError(NO_RUN, {"job": "forecast-prophet"})
        rows = store.fits_of(conn, run.run_id, ids)
        missing = [u for u in ids if u not in rows]
        known = known_students(conn, missing) if missing else set()
    return ProphetPredictResponse(
        run_id=run.run_id, as_of=run.as_of, students=[_student(u, rows.get(u), known) for u in ids]
    )


# --- GET /anomalies -----------------------------------------------------------------------------------------------


def _cursor_key(cursor: str) -> tuple[int, float, int, date]:
    """(run_id, score, user_id, week_start) of the previous page's last row."""
    key = decode_cursor(CURSOR_KIND, cursor)
    try:
        run_id, score, user_id, week = key["r"], key["s"], key["u"], date.fromisoformat(key["w"])
    except (TypeError, KeyError, ValueError):
        raise bad_cursor() from None
    for value in (run_id, user_id):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_cursor()
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise bad_cursor()
    return run_id, float(score), user_id, week


@router.get(
    "/anomalies",
    response_model=Page[AnomalyRow],
    summary="Anomalous weeks of I_t, strongest first",
    responses=error_responses({404: "the run_id asked for is not stored", 422: "invalid parameter or cursor"}),
)
def anomalies(
    *,
    engine: ReadEngineDep,
    week: Annotated[
        date | None, Query(description="Only this week (any day of it; weeks start on Monday). Default: all weeks.")
    ] = None,
    direction: Annotated[Direction | None, Query(description="Only drops or only jumps.")] = None,
    run_id: Annotated[
        int | None, Query(ge=1, description="The forecast-prophet run; default: the latest (latest as-of date).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Anomalies per page.")] = 100,
    cursor: Annotated[str | None, Query(max_length=300, description="next_cursor of the previous page.")] = None,
) -> Response:
    """Rows of ``prophet_anomalies`` judged by one forecast-prophet run (each run judges the weeks of its window,
    the PROPHET_LOOKBACK_WEEKS weeks up to its as-of date), ordered by ``score`` descending, then ``user_id`` and
    ``week_start``. The cursor keeps the run, so paging stays on it even if a newer run is stored meanwhile. No run
    stored yet gives an empty page."""
    after: tuple[float, int, date] | None = None
    if cursor is not None:
        cursor_run, score, user_id, after_week = _cursor_key(cursor)
        if run_id is not None and run_id != cursor_run:
            raise bad_cursor()
        run_id, after = cursor_run, (score, user_id, after_week)
    monday = week_start(week) if week is not None else None
    with engine.connect() as conn:
        run = store.latest_run(conn) if run_id is None else store.run_ref(conn, run_id)
        if run is None:
            if run_id is not None:
                raise NotFoundError(f"no forecast-prophet run {run_id} is stored", {"run_id": run_id})
            empty: dict[str, Any] = {"items": [], "next_cursor": None}
            return Response(_PAGE.dump_json(_PAGE.validate_python(empty)), media_type="application/json")
        page = store.anomalies_page(conn, run_id=run.run_id, week=monday, direction=direction, after=after, limit=limit)
    items = [dict(row) | {"as_of": run.as_of} for row in page.rows]
    next_cursor = None
    if page.more:
        last = page.rows[-1]
        next_cursor = encode_cursor(
            CURSOR_KIND,
            {
                "r": run.run_id,
                "s": float(last["score"]),
                "u": int(last["user_id"]),
                "w": _day(last["week_start"]).isoformat(),
            },
        )
    return Response(
        _PAGE.dump_json(_PAGE.validate_python({"items": items, "next_cursor": next_cursor})),
        media_type="application/json",
    )
