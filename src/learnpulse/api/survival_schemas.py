"""Request and response models of the survival and alert routes (pydantic only, shared with the client)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

MAX_FIT_ROWS = 1_000_000


class SurvivalFitRequest(BaseModel):
    """Generic survival data in columns: one duration, one event flag and one value per covariate for each row."""

    model_config = ConfigDict(extra="forbid")

    durations: list[float] = Field(
        min_length=2, max_length=MAX_FIT_ROWS, description="Time to event or censoring, > 0."
    )
    events: list[int] = Field(description="1 = the event happened at the duration, 0 = censored.")
    covariates: dict[str, list[float]] = Field(min_length=1, description="Covariate name -> one value per row.")
    penalizer: float = Field(0.0, ge=0, description="L2 penalty λ on per-SD coefficients (0 = none).")
    ties: Literal["efron", "breslow"] = "efron"
    alpha: float = Field(0.05, gt=0, lt=1, description="1 - confidence level of the hazard-ratio intervals.")

    @model_validator(mode="after")
    def _same_lengths(self) -> SurvivalFitRequest:
        n = len(self.durations)
        wrong = [f"events ({len(self.events)})"] if len(self.events) != n else []
        wrong += [f"covariates.{k} ({len(v)})" for k, v in self.covariates.items() if len(v) != n]
        if wrong:
            raise ValueError(f"every column needs {n} values (one per duration); these differ: {', '.join(wrong)}")
        return self


class CoefficientRow(BaseModel):
    name: str
    coef: float = Field(description="log hazard ratio per unit of the covariate")
    se: float
    hazard_ratio: float
    hr_lower: float
    hr_upper: float
    z: float
    p: float


class SurvivalFitResponse(BaseModel):
    n: int
    events: int
    log_likelihood: float
    concordance: float = Field(description="Harrell's C on the training rows")
    coefficients: list[CoefficientRow]
    model: dict[str, Any] = Field(description="The fitted model (CoxPH.to_json), enough to predict with.")


# --- the stored churn model: GET /survival/model ----------------------------------------------------------------


class ChurnCovariate(BaseModel):
    name: str
    unit: str
    description: str


class DroppedCovariate(BaseModel):
    """A feature left out of one part of the model (``component``) because it was constant in the training rows."""

    name: str
    reason: str
    component: Literal["first_day", "later_days"] | None = None


class ChurnCoefficient(BaseModel):
    """One feature of one part of the churn model. ``component`` ``first_day``: the logistic regression of
    ``P(t = 1)``, ``coef`` a log odds ratio per unit with ``odds_ratio`` and its 95% interval; ``later_days``: the
    Cox model of the days after the first, ``coef`` a log hazard ratio per unit with ``hazard_ratio`` and its
    interval. Standard errors are model-based; z and p are Wald's; ``mean``/``sd`` are the training rows' (null: not
    finite). ``component`` null: a fit stored before the two-part model (one Cox model for all days)."""

    component: Literal["first_day", "later_days"] | None = None
    covariate: str
    unit: str
    coef: float | None
    se: float | None
    odds_ratio: float | None = None
    or_lower: float | None = None
    or_upper: float | None = None
    hazard_ratio: float | None = None
    hr_lower: float | None = None
    hr_upper: float | None = None
    z: float | None
    p: float | None
    mean: float | None = None
    sd: float | None = None


class CalibrationGroup(BaseModel):
    """Held-out rows with the full follow-up, in groups (deciles) of predicted S: mean predicted vs observed
    churn within the horizon."""

    group: int
    n: int
    predicted: float
    observed: float
    predicted_min: float
    predicted_max: float


class HeldOut(BaseModel):
    fraction: float = Field(description="Share of students held out (by a fixed hash of user_id).")
    students: int
    rows: int
    events: int
    concordance: float | None = Field(description="Harrell's C of S on the held-out rows.")


class LandmarkInfo(BaseModel):
    landmark: date
    rows: int
    events: int
    follow_up_days: int


class ChurnModel(BaseModel):
    """The latest fit of ``fit-survival-churn`` (``survival_fit_meta``)."""

    run_id: int = Field(description="job_run of the fit.")
    as_of: date = Field(description="As-of date of the fit (the latest stored).")
    lookback_days: int
    threshold_days: int = Field(description="T: a gap this long is churn; also the horizon of S.")
    formula: str = Field(description="The two parts: the first day's logistic regression, the later days' Cox model.")
    covariates: list[ChurnCovariate] = Field(
        description="The model's covariates (its inputs, what POST /survival/predict takes), in order, with units."
    )
    derived_covariates: list[ChurnCovariate] = Field(
        default_factory=list, description="Features the model derives from the covariates (fixed formulas)."
    )
    dropped_covariates: list[DroppedCovariate]
    coefficients: list[ChurnCoefficient] = Field(description="First-day rows, then later-days rows.")
    n: int = Field(description="Training landmark rows.")
    n_students: int = Field(description="Training students.")
    events: int = Field(description="Churn events in the training rows.")
    log_likelihood: float
    concordance_train: float | None
    concordance_heldout: float | None
    heldout: HeldOut
    calibration: list[CalibrationGroup]
    calibration_mean_abs_gap: float | None
    landmarks: list[LandmarkInfo]
    model: dict[str, Any] | None = Field(
        None, description="The model itself (ChurnModel.to_json); only with include_model=true."
    )


# --- POST /survival/predict ---------------------------------------------------------------------------------------

MAX_PREDICT_STUDENTS = 1000
MAX_PREDICT_ROWS = 100_000
MAX_USER_ID = 2**63 - 1  # BIGINT

PredictStatus = Literal["scored", "churned", "not_enrolled", "unknown_student"]


class SurvivalPredictRequest(BaseModel):
    """Either ``user_ids`` (with an optional ``as_of``) or ``covariates`` (with optional ``at`` and
    ``horizon_days``): exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    user_ids: list[Annotated[int, Field(ge=1, le=MAX_USER_ID)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_PREDICT_STUDENTS,
        description="Students to score at the as-of date with the latest stored model (duplicates answered once).",
    )
    as_of: date | None = Field(
        None, description="Scoring landmark (end of this local day); default: the last day build-kpi has built."
    )
    covariates: dict[str, list[FiniteFloat]] | None = Field(
        None, min_length=1, description="Covariate rows: name -> one value per row; names exactly the model's."
    )
    at: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Days already survived on the landmark clock (default 0)."
    )
    horizon_days: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Horizon of the probability (default: the model's T)."
    )

    @model_validator(mode="after")
    def _rows(self) -> SurvivalPredictRequest:
        if self.covariates is not None:
            lengths = {name: len(values) for name, values in self.covariates.items()}
            if len(set(lengths.values())) > 1:
                listed = ", ".join(f"{k} ({v})" for k, v in lengths.items())
                raise ValueError(f"every covariate needs the same number of values; got {listed}")
            n = next(iter(lengths.values()))
            if not 1 <= n <= MAX_PREDICT_ROWS:
                raise ValueError(f"covariates need 1 to {MAX_PREDICT_ROWS} rows; got {n}")
        return self


class TopFactor(BaseModel):
    """A covariate that raises the student's churn risk: ``contribution = ln L(x) - ln L(x with this covariate at
    its training mean)``, ``L`` the cumulative hazard over the horizon ``T``; ``hazard_ratio = exp(contribution)``:
    how many times the covariate multiplies the student's cumulative hazard."""

    covariate: str
    value: float | None = None
    contribution: float | None = None
    hazard_ratio: float | None = None


class FitRef(BaseModel):
    """The stored model that made a prediction."""

    run_id: int
    as_of: date
    threshold_days: int


class StudentPrediction(BaseModel):
    """A student's churn risk at the as-of date. ``status``: ``scored`` (active so far: ``s`` and the rest are set);
    ``churned`` (already ``threshold_days`` or more without an attempt: the model's question no longer applies);
    ``not_enrolled`` (known to the store but no attempt on or before the as-of date); ``unknown_student``."""

    user_id: int
    status: PredictStatus
    s: float | None = Field(None, description="S: P(a churn gap begins within threshold_days | active so far).")
    linear_predictor: float | None = Field(
        None, description="ln of the T-day cumulative hazard over that of a student at the training means."
    )
    days_since_last_attempt: int | None = Field(None, description="Also set for churned students.")
    top_factors: list[TopFactor] | None = None


class RowPrediction(BaseModel):
    s: float = Field(description="P(t <= at + horizon_days | t > at, x).")
    linear_predictor: float = Field(
        description="ln of the T-day cumulative hazard over that of a student at the training means."
    )
    top_factors: list[TopFactor]


class SurvivalPredictResponse(BaseModel):
    """``students`` (one per distinct requested id, in request order) for ``user_ids``; ``rows`` (in order) for
    ``covariates``."""

    fit: FitRef
    horizon_days: float
    as_of: date | None = None
    at: float | None = None
    students: list[StudentPrediction] | None = None
    rows: list[RowPrediction] | None = None


# --- GET /alerts ----------------------------------------------------------------------------------------------

AlertTier = Literal["high", "medium", "low", "churned", "unscored"]


class InactivityAlert(BaseModel):
    """One row of ``inactivity_alert``: a student flagged by detect-inactivity on ``alert_date``."""

    alert_date: date
    user_id: int
    run_id: int
    last_active_day: date
    days_inactive: int
    s: float | None = Field(description="Latest S on or before alert_date (null: not scored).")
    s_as_of: date | None
    tier: AlertTier
    reasons: list[dict[str, Any]]
    top_factors: list[TopFactor] | None
