"""Request and response bodies of the IRT routes (``/irt/calibrate``, ``/irt/score``, ``/items/{item_id}``)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Responses(BaseModel):
    """The sparse list of answers: one entry per answer (a person may answer an item more than once)."""

    model_config = ConfigDict(extra="forbid")
    person: list[int | str] = Field(min_length=1)
    item: list[int | str] = Field(min_length=1)
    correct: list[bool | int] = Field(min_length=1)


class CalibrateRequest(Responses):
    min_responses: int = Field(30, ge=1)
    latent: Literal["normal", "empirical"] = "normal"


class ItemParameters(BaseModel):
    item_id: int | str
    a: float | None
    b: float | None
    se_a: float | None
    se_b: float | None
    n_responses: int
    p_correct: float
    flag: str | None = Field(description="too_few_responses | no_variance | null (calibrated)")


class CalibrateResponse(BaseModel):
    items: list[ItemParameters]
    log_likelihood: float
    iterations: int
    converged: bool
    model: dict[str, Any] = Field(description="IRT2PL.to_json()")


class Ability(BaseModel):
    person: int | str
    theta: float | None = Field(description="EAP ability on the stored scale (null: no calibrated item answered)")
    sd: float | None = Field(description="posterior SD of theta")
    i_t: float | None = Field(description="learning index: clip(50 + 10 theta, 0, 100)")
    i_t_sd: float | None
    n_responses: int


class ScoreResponse(BaseModel):
    run_id: int
    as_of: date
    abilities: list[Ability]


class ItemRun(BaseModel):
    run_id: int
    as_of: date
    a: float | None
    b: float | None
    se_a: float | None
    se_b: float | None
    n_responses: int
    p_correct: float
    flag: str | None


class ItemInfo(BaseModel):
    item_id: int
    latest: ItemRun
    history: list[ItemRun] = Field(description="the item in the newest calibrations, newest first (up to 10)")
