"""Request and response bodies of the growth routes (``/growth/fit``, ``/growth/predict``, ``/growth/model``)."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from learnpulse.engines.growth_options import Family, Sampler

MAX_STUDENTS = 1000
# POST /growth/fit runs NUTS inside the request. Its caps keep that to seconds or tens of seconds and the API process
# under its memory limit (bench/api_memory.py: 5,000 binomial students x 12 weeks, 30 s, 2.0 GB peak): the rows, the
# units (the binomial family samples two coefficients per unit and keeps their draws) and rows x iter x chains (the
# work; at brms's iter=1000, chains=2 it allows the full 60,000 rows). Larger fits are the fit-bayesian-growth job's.
MAX_FIT_ROWS = 60_000
MAX_FIT_UNITS = 5_000
MAX_FIT_WORK = MAX_FIT_ROWS * 1000 * 2
_JOB = "for more, run the fit-bayesian-growth job"
_ROWS = f"one per row, at most {MAX_FIT_ROWS:,} rows ({_JOB})"


class GrowthFitRequest(BaseModel):
    """Long-format data: one row per (unit, time). ``y`` is the response (gaussian) or the successes out of
    ``trials`` (binomial)."""

    model_config = ConfigDict(extra="forbid")
    family: Family = "gaussian"
    unit: list[int | str] = Field(min_length=2, max_length=MAX_FIT_ROWS, description=f"Unit (student) id, {_ROWS}.")
    time: list[float] = Field(
        min_length=2, max_length=MAX_FIT_ROWS, description="Time of the row (e.g. week), from an origin near the data."
    )
    y: list[float] = Field(min_length=2, max_length=MAX_FIT_ROWS, description="Response, or successes (binomial).")
    trials: list[float] | None = Field(None, max_length=MAX_FIT_ROWS, description="Attempts (binomial only).")
    iter: int = Field(1000, ge=20, le=20000, description="iterations per chain, half of them warm-up (brms)")
    chains: int = Field(2, ge=1, le=8)
    seed: int = 0
    sampler: Sampler = Field(
        "nuts", description="nuts, or gibbs for the binomial family (BRMS_SAMPLER: NUTS on the population only)"
    )

    @model_validator(mode="after")
    def _fits_in_a_request(self) -> GrowthFitRequest:
        units = len(set(self.unit))
        if units > MAX_FIT_UNITS:
            raise ValueError(f"{units:,} distinct units is over the {MAX_FIT_UNITS:,} a request fits; {_JOB}")
        work = len(self.y) * self.iter * self.chains
        if work > MAX_FIT_WORK:
            raise ValueError(
                f"rows x iter x chains = {len(self.y):,} x {self.iter:,} x {self.chains} is over the {MAX_FIT_WORK:,} "
                f"a request fits: fewer rows, iterations or chains, or {_JOB}"
            )
        return self


class ParameterRow(BaseModel):
    parameter: str
    estimate: float
    est_error: float
    q2_5: float = Field(alias="q2.5")
    q97_5: float = Field(alias="q97.5")
    rhat: float
    ess_bulk: float
    ess_tail: float
    model_config = ConfigDict(populate_by_name=True)


class GrowthFitResponse(BaseModel):
    formula: str
    family: str
    sampler: str
    parameters: list[ParameterRow]
    diagnostics: dict[str, Any]
    model: dict[str, Any] = Field(description="GrowthModel.to_json(): what predict needs, units included")


class GrowthPredictRequest(BaseModel):
    """Students scored with the stored model; ``target`` and ``deadline`` replace their stored goal (what-if)."""

    model_config = ConfigDict(extra="forbid")
    user_ids: list[int] = Field(min_length=1, max_length=MAX_STUDENTS)
    target: float | None = Field(None, ge=0, le=1)
    deadline: date | None = None
    as_of: date | None = Field(None, description="default: today in LEARNPULSE_TIMEZONE")
    trajectory: bool = Field(True, description="also return the weekly trajectory with 50% and 90% intervals")


class TrajectoryPoint(BaseModel):
    week_start: date
    mean: float
    q05: float
    q25: float
    q50: float
    q75: float
    q95: float


class GoalPrediction(BaseModel):
    user_id: int
    target: float | None
    deadline: date | None
    p: float | None = Field(description="P(expected accuracy at the deadline >= target)")
    sigma: float | None = Field(description="posterior SD of the expected accuracy at the deadline")
    expected: float | None
    n_weeks: int
    flag: str = Field(description="ok | little_history | no_history | no_goal | deadline_passed")
    method: str
    trajectory: list[TrajectoryPoint] | None = None


class GrowthPredictResponse(BaseModel):
    run_id: int
    as_of: date
    family: str
    students: list[GoalPrediction]


class GrowthModelInfo(BaseModel):
    run_id: int
    as_of: date
    formula: str
    family: str
    sampler: str = Field(description="BRMS_SAMPLER of the fit: nuts, or gibbs (binomial family)")
    iter: int
    chains: int
    lookback_weeks: int
    window_start: date
    priors: dict[str, Any]
    n_units: int
    n_obs: int
    fixed_effects: dict[str, Any] | None
    random_effects: dict[str, Any] | None
    residual_sigma: dict[str, Any] | None
    diagnostics: dict[str, Any] | None
    elapsed_seconds: float
    latest_run_status: str = Field(description="status of the newest run: a newer failed run leaves this model in use")
    latest_run_reason: str | None = None
