"""Request and response bodies of the forecast routes (``/prophet/fit``, ``/prophet/predict``, ``/anomalies``).

Pydantic only (no FastAPI, no engine), so the client can share them. Dates are local calendar dates (a weekly
series: the weeks' Mondays).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

MAX_SERIES_POINTS = 10_000
MAX_PREDICT_STUDENTS = 1000
MAX_USER_ID = 2**63 - 1  # BIGINT

Direction = Literal["drop", "jump"]
ForecastStatus = Literal["fitted", "skipped", "failed", "no_series", "unknown_student"]


class ProphetOptions(BaseModel):
    """The model's hyper-parameters (:class:`learnpulse.engines.forecast.ForecastOptions`); an absent or null
    option takes its default, shown in brackets."""

    model_config = ConfigDict(extra="forbid")

    horizon: int | None = Field(None, ge=1, le=520, description="Points to forecast [PROPHET_FORECAST_WEEKS, 4].")
    step_days: int | None = Field(None, ge=1, le=366, description="Days between forecast points [7].")
    n_changepoints: int | None = Field(
        None, ge=0, le=100, description="Potential trend changepoints (fewer on short series) [25]."
    )
    changepoint_range: float | None = Field(
        None, gt=0, le=1, description="Share of the history in which changepoints may lie [0.8]."
    )
    changepoint_prior_scale: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Laplace scale of the trend changes [0.05]."
    )
    interval_width: float | None = Field(None, gt=0, lt=1, description="Coverage of the intervals [0.8].")
    uncertainty_samples: int | None = Field(
        None, ge=0, le=20_000, description="Draws of the forecast simulation; 0 = no intervals [1000]."
    )
    anomaly_threshold: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="A point is anomalous beyond this many robust residual SDs [PROPHET_ANOMALY_THRESHOLD, 2.5].",
    )
    min_points: int | None = Field(None, ge=3, le=MAX_SERIES_POINTS, description="Shortest series fitted [6].")
    residual_scale_floor: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Floor of the residual scale, as a share of max |y| [0.05]."
    )
    robust_refit: bool | None = Field(None, description="Refit without the candidate anomalies before judging [true].")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed of the forecast simulation [0].")


class ProphetFitRequest(BaseModel):
    """One series: ``ds`` (distinct dates), ``y`` and optionally ``y_sd`` (the known measurement SD of each point,
    null = unknown), in the same order."""

    model_config = ConfigDict(extra="forbid")

    ds: list[date] = Field(min_length=1, max_length=MAX_SERIES_POINTS, description="Dates of the points (distinct).")
    y: list[FiniteFloat] = Field(min_length=1, max_length=MAX_SERIES_POINTS, description="Values, e.g. weekly I_t.")
    y_sd: list[Annotated[float, Field(ge=0, allow_inf_nan=False)] | None] | None = Field(
        None, description="Known measurement SD of each point (e.g. weekly_kpi.i_t_sd); null entries = unknown."
    )
    engine: Literal["batch", "prophet"] = Field(
        "batch",
        description="batch: the vectorised MAP fit of prophet's model (what forecast-prophet runs); "
        "prophet: prophet itself (the reference; slower).",
    )
    options: ProphetOptions = Field(default_factory=ProphetOptions)

    @model_validator(mode="after")
    def _consistent(self) -> ProphetFitRequest:
        n = len(self.ds)
        wrong = [f"y ({len(self.y)})"] if len(self.y) != n else []
        if self.y_sd is not None and len(self.y_sd) != n:
            wrong.append(f"y_sd ({len(self.y_sd)})")
        if wrong:
            raise ValueError(f"every column needs {n} values (one per date); these differ: {', '.join(wrong)}")
        if len(set(self.ds)) != n:
            raise ValueError("ds has repeated dates: one point per date")
        return self


class ForecastPoint(BaseModel):
    step: int = Field(description="1 = the first point after the last observed date.")
    ds: date
    yhat: float
    yhat_lower: float | None = Field(description="Interval bounds (null when uncertainty_samples = 0).")
    yhat_upper: float | None


class FittedPoint(BaseModel):
    ds: date
    y: float
    yhat: float = Field(description="The fitted trend at the point.")
    yhat_lower: float | None
    yhat_upper: float | None


class AnomalyPoint(BaseModel):
    ds: date
    y: float
    yhat: float = Field(description="Expected value (of the robust refit).")
    lower: float = Field(description="Expected range: yhat - threshold x scale.")
    upper: float
    residual: float = Field(description="y - yhat")
    scale: float = Field(description="Residual scale of the point (max of the series' robust scale and its y_sd).")
    score: float = Field(description="|residual| / scale")
    direction: Direction


class ProphetParameters(BaseModel):
    """Prophet's parameters on its own scales (``y / y_scale``, ``t = (ds - start) / t_scale``)."""

    k: float = Field(description="Initial growth rate.")
    m: float = Field(description="Offset.")
    delta: list[float] = Field(description="Rate changes at changepoints_t (exact zeros where the prior wins).")
    changepoints_t: list[float]
    changepoints: list[date] = Field(description="Dates of the changepoints (empty: too short a history).")
    sigma_obs: float
    y_scale: float
    start: date
    t_scale_days: float
    log_posterior: float = Field(description="Stan's lp__ of prophet's model at these parameters.")
    converged: bool


class ProphetFitResponse(BaseModel):
    engine: Literal["batch", "prophet"]
    n_points: int
    options: dict[str, Any] = Field(description="Every option in force.")
    parameters: ProphetParameters
    forecast: list[ForecastPoint]
    fitted: list[FittedPoint]
    anomalies: list[AnomalyPoint]
    model: dict[str, Any] = Field(description="The fitted model (ForecastModel.to_json()).")


class ProphetPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_ids: list[Annotated[int, Field(ge=1, le=MAX_USER_ID)]] = Field(
        min_length=1, max_length=MAX_PREDICT_STUDENTS, description="Students (duplicates answered once)."
    )


class WeekForecast(BaseModel):
    week_start: date
    yhat: float = Field(description="Forecast I_t of the week.")
    yhat_lower: float | None
    yhat_upper: float | None


class StudentForecast(BaseModel):
    """A student's stored forecast. ``status``: ``fitted`` (``forecast`` set); ``skipped`` (series too short; the
    reason says so) or ``failed`` (the fit raised; the reason is the error); ``no_series`` (known to the store but
    without I_t in the run's window); ``unknown_student``."""

    user_id: int
    status: ForecastStatus
    reason: str | None = None
    n_points: int | None = Field(None, description="Weeks of I_t in the series.")
    last_week: date | None = Field(None, description="The last observed week (the forecast starts the week after).")
    forecast: list[WeekForecast] | None = None


class ProphetPredictResponse(BaseModel):
    """The forecasts of the latest forecast-prophet run, one entry per distinct requested id, in request order."""

    run_id: int
    as_of: date
    students: list[StudentForecast]


class AnomalyRow(BaseModel):
    """A week whose I_t broke the student's pattern (a row of ``prophet_anomalies``)."""

    run_id: int
    as_of: date = Field(description="As-of date of the run that judged the week.")
    user_id: int
    week_start: date
    y: float = Field(description="Observed I_t.")
    evidence: float | None = Field(
        description="The I_t the rule judged: the week's estimate from its own answers alone (yhat + residual); y "
        "when the week was judged without answers; null in rows stored before it was recorded."
    )
    yhat: float = Field(description="Expected I_t.")
    lower: float = Field(description="Expected range: yhat -+ threshold x scale.")
    upper: float
    score: float = Field(description="|evidence - yhat| / residual scale.")
    direction: Direction
