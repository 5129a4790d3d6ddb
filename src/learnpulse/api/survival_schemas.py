"""Request and response models of the survival routes (pydantic only, shared with the client)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
