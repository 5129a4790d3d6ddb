"""IRT routes.

- ``POST /irt/calibrate``: calibrates a 2PL model on the answers in the body (stateless).
- ``POST /irt/score``: EAP ability, its SD and the learning index for the answers in the body, with the latest
  stored calibration (its scale is the scale of ``weekly_kpi.I_t``).
- ``GET /items/{item_id}``: the item's parameters in the latest calibrations.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from learnpulse.api.deps import ReadEngineDep, require_token
from learnpulse.api.irt_schemas import (
    Ability,
    CalibrateRequest,
    CalibrateResponse,
    ItemInfo,
    ItemParameters,
    ItemRun,
    Responses,
    ScoreResponse,
)
from learnpulse.api.schemas import error_responses
from learnpulse.api.values import finite_or_none
from learnpulse.engines.irt import IRT2PL, learning_index
from learnpulse.errors import NotFoundError
from learnpulse.jobs.calibrate_irt import INDEX_SD_SCALE
from learnpulse.store import irt as store

_PARAMETERS = {"a", "b", "se_a", "se_b"}  # floats that are NaN for flagged items
router = APIRouter(tags=["irt"], dependencies=[Depends(require_token)])
NO_MODEL = "no item calibration yet: run calibrate-irt (`learnpulse run calibrate-irt`)"


@router.post(
    "/irt/calibrate",
    response_model=CalibrateResponse,
    summary="Calibrate a 2PL model",
    responses=error_responses({422: "invalid answers (lengths, values) or too few items to calibrate"}),
)
def calibrate(request: Annotated[CalibrateRequest, Body()]) -> CalibrateResponse:
    """Marginal maximum likelihood (EM) on the answers in the body: every item's discrimination ``a`` and
    difficulty ``b`` with standard errors (flagged items have none), and the model. Nothing is stored."""
    model = IRT2PL(min_responses=request.min_responses, latent=request.latent).fit(
        request.person, request.item, [int(c) for c in request.correct]
    )
    items = [
        ItemParameters(**{str(k): (finite_or_none(v) if k in _PARAMETERS else v) for k, v in row.items()})
        for row in model.item_parameters().drop(columns=["cov_ab"]).to_dict("records")
    ]
    return CalibrateResponse(
        items=items,
        log_likelihood=float(model.log_likelihood_ or 0.0),
        iterations=int(model.n_iter_ or 0),
        converged=bool(model.converged_),
        model=model.to_json(),
    )


@router.post(
    "/irt/score",
    response_model=ScoreResponse,
    summary="Ability and learning index from the stored calibration",
    responses=error_responses({404: "no calibration stored yet", 422: "invalid answers"}),
)
def score(engine: ReadEngineDep, request: Annotated[Responses, Body()]) -> ScoreResponse:
    """EAP ability and posterior SD per person from the answers in the body, with the latest calibration of
    calibrate-irt; answers to items it did not calibrate are ignored (a person with none gets nulls)."""
    with engine.connect() as conn:
        fit = store.latest_calibration(conn)
    if fit is None:
        raise NotFoundError(NO_MODEL, {"job": "calibrate-irt"})
    model = IRT2PL.from_json(fit["model"])
    scored = model.score(request.person, request.item, [int(c) for c in request.correct], unknown_items="ignore")
    index = learning_index(scored["theta"].to_numpy())
    abilities = [
        Ability(
            person=row["person"],
            theta=finite_or_none(row["theta"]),
            sd=finite_or_none(row["sd"]),
            i_t=finite_or_none(i_t),
            i_t_sd=finite_or_none(INDEX_SD_SCALE * row["sd"]),
            n_responses=int(row["n_responses"]),
        )
        for row, i_t in zip(scored.to_dict("records"), index, strict=True)
    ]
    return ScoreResponse(run_id=int(fit["run_id"]), as_of=fit["as_of"], abilities=abilities)


@router.get(
    "/items/{item_id}",
    response_model=ItemInfo,
    summary="An item's calibrated parameters",
    responses=error_responses({404: "item never calibrated"}),
)
def item(engine: ReadEngineDep, item_id: int) -> ItemInfo:
    """The item's discrimination and difficulty (with SEs, answers and flag) in the latest calibration that saw it,
    and in up to ten recent calibrations, newest first."""
    with engine.connect() as conn:
        history = store.item_history(conn, item_id)
    if not history:
        raise NotFoundError(f"item {item_id} has not been calibrated", {"item_id": item_id})
    runs = [
        ItemRun(**{k: (finite_or_none(v) if k in _PARAMETERS else v) for k, v in row.items() if k != "item_id"})
        for row in history
    ]
    return ItemInfo(item_id=item_id, latest=runs[0], history=runs)
