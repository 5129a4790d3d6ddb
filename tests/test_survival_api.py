"""The survival and alert routes through the real app and the client: POST /survival/fit gives the engine's
answers; GET /survival/model, POST /survival/predict and GET /alerts (SQLite and PostgreSQL) give what the jobs
stored and computed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from learnpulse import churn
from learnpulse.api.app import create_app
from learnpulse.client import Client, InvalidRequest
from learnpulse.engines.survival import CoxPH
from learnpulse.jobs import REGISTRY
from learnpulse.jobs.fit_survival_churn import load_activity
from learnpulse.jobs.runner import run_job
from learnpulse.settings import load_settings
from learnpulse.store import survival as store
from learnpulse.store.db import make_engine
from learnpulse.store.schema import upgrade
from learnpulse.store.world import save_world
from learnpulse.synthetic import World, WorldParams, generate_world
from tests.helpers import build_kpi, read_table

TOKEN = "survival-test-token"
ROSSI = Path(__file__).parent / "data" / "survival" / "rossi.csv"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    upgrade(make_engine(url))
    app = create_app(load_settings(database_url=url, learnpulse_api_token=TOKEN))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def _rossi_body() -> dict[str, object]:
    rossi = pd.read_csv(ROSSI)
    covariates = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
    return {
        "durations": rossi["week"].tolist(),
        "events": rossi["arrest"].tolist(),
        "covariates": {c: rossi[c].astype(float).tolist() for c in covariates},
    }


def test_fit_returns_the_engines_answer_and_a_usable_model(api: TestClient) -> None:
    body = _rossi_body()
    response = api.post("/survival/fit", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    local = CoxPH().fit(body["durations"], body["events"], pd.DataFrame(body["covariates"]))
    assert data["n"] == 432 and data["events"] == 114
    np.testing.assert_allclose([c["coef"] for c in data["coefficients"]], local.coef_, rtol=1e-12)
    np.testing.assert_allclose([c["se"] for c in data["coefficients"]], local.se_, rtol=1e-12)
    assert data["concordance"] == pytest.approx(local.concordance_)
    model = CoxPH.from_json(data["model"])  # what came back predicts like the local fit
    x = pd.DataFrame(body["covariates"]).head(5)
    np.testing.assert_allclose(model.predict_survival(x, [10, 30, 52]), local.predict_survival(x, [10, 30, 52]))


def test_fit_rejects_bad_data_with_locations(api: TestClient) -> None:
    body = _rossi_body()
    body["events"] = body["events"][:-1]  # type: ignore[index]
    response = api.post("/survival/fit", json=body)
    assert response.status_code == 422
    assert "events (431)" in response.text

    no_events = {"durations": [1.0, 2.0, 3.0], "events": [0, 0, 0], "covariates": {"x": [1.0, 2.0, 4.0]}}
    response = api.post("/survival/fit", json=no_events)
    assert response.status_code == 422 and response.json()["error"]["code"] == "insufficient_data"


def test_fit_needs_the_token(api: TestClient) -> None:
    response = api.post("/survival/fit", json=_rossi_body(), headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


def test_client_fit_survival(api: TestClient) -> None:
    body = _rossi_body()
    client = Client("http://testserver", TOKEN, transport=api._transport)  # type: ignore[attr-defined]
    result = client.fit_survival(body["durations"], body["events"], body["covariates"])  # type: ignore[arg-type]
    assert [c.name for c in result.coefficients] == list(body["covariates"])  # type: ignore[arg-type]
    assert result.coefficients[0].hazard_ratio == pytest.approx(np.exp(result.coefficients[0].coef))
    with pytest.raises(InvalidRequest):
        client.fit_survival([1.0, 2.0], [1], {"x": [1.0, 2.0]})


# --- the stored churn model: GET /survival/model, POST /survival/predict, GET /alerts ----------------------------

WORLD = WorldParams(students=300, weeks=10)
AS_OF = WORLD.end_date - timedelta(days=1)  # the world's last day
T = 14
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@cache
def _world() -> World:
    return generate_world(WORLD)


def _run(engine: Engine, job: str, as_of: date) -> None:
    settings = load_settings(database_url=engine.url.render_as_string(hide_password=False))
    run_job(REGISTRY[job], settings, engine, as_of=as_of)


@pytest.fixture
def empty_api(engine: Engine) -> Iterator[TestClient]:
    """The API on a migrated database (SQLite and PostgreSQL) holding nothing yet."""
    settings = load_settings(database_url=engine.url.render_as_string(hide_password=False), learnpulse_api_token=TOKEN)
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


@pytest.fixture
def school(engine: Engine, empty_api: TestClient) -> tuple[TestClient, Engine]:
    """A small school with build-kpi, fit-survival-churn and detect-inactivity run as of its last day."""
    save_world(engine, _world())
    build_kpi(engine, AS_OF)
    _run(engine, "fit-survival-churn", AS_OF)
    _run(engine, "detect-inactivity", AS_OF)
    return empty_api, engine


def _fit(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        fit = store.latest_fit(conn)
    assert fit is not None
    return fit


def test_the_model_and_predictions_are_404_until_a_fit_is_stored(engine: Engine, empty_api: TestClient) -> None:
    for response in (
        empty_api.get("/survival/model"),
        empty_api.post("/survival/predict", json={"user_ids": [1]}),
        empty_api.post("/survival/predict", json={"covariates": {"x": [1.0]}}),
    ):
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "not_found" and "no churn model yet: run fit-survival-churn" in error["message"]

    save_world(engine, _world())
    build_kpi(engine, AS_OF)
    _run(engine, "fit-survival-churn", AS_OF)
    fit = _fit(engine)
    response = empty_api.get("/survival/model")
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["run_id"] == fit["run_id"] and data["as_of"] == AS_OF.isoformat() and data["threshold_days"] == T
    assert data["n"] == fit["n_rows"] and data["events"] == fit["n_events"] and data["n_students"] > 0
    assert data["concordance_heldout"] == pytest.approx(fit["concordance_heldout"])
    assert [c["name"] for c in data["covariates"]] == list(churn.COVARIATE_NAMES)
    assert [c["name"] for c in data["derived_covariates"]] == list(churn.DERIVED_NAMES)
    assert [(c["component"], c["covariate"]) for c in data["coefficients"]] == [
        (c["component"], c["covariate"]) for c in fit["coefficients"]
    ]
    assert {c["component"] for c in data["coefficients"]} == {"first_day", "later_days"}
    for c, stored in zip(data["coefficients"], fit["coefficients"], strict=True):
        if c["component"] == "first_day":
            assert c["odds_ratio"] == pytest.approx(stored["odds_ratio"]) and c["hazard_ratio"] is None
            assert c["or_lower"] <= c["odds_ratio"] <= c["or_upper"]
        else:
            assert c["hazard_ratio"] == pytest.approx(stored["hazard_ratio"]) and c["odds_ratio"] is None
            assert c["hr_lower"] <= c["hazard_ratio"] <= c["hr_upper"]
    assert len(data["calibration"]) == 10 and data["calibration"] == fit["calibration"]["groups"]
    assert data["heldout"]["concordance"] == pytest.approx(data["concordance_heldout"])
    assert data["model"] is None  # only on request
    full = empty_api.get("/survival/model", params={"include_model": "true"}).json()
    assert full["model"] == fit["model"]
    assert empty_api.get("/survival/model", headers={"Authorization": "Bearer wrong"}).status_code == 401

    # A model stored by an earlier version (a single Cox model) cannot score: treated as no model, with the fix.
    body = _rossi_body()
    legacy = CoxPH().fit(body["durations"], body["events"], pd.DataFrame(body["covariates"])).to_json()
    old_rows = [{k: v for k, v in c.items() if k != "component"} for c in fit["coefficients"]]
    with engine.begin() as conn:
        store.replace_fit(conn, {**fit, "model": legacy, "coefficients": old_rows})
    described = empty_api.get("/survival/model")  # what was stored can still be read
    assert described.status_code == 200 and {c["component"] for c in described.json()["coefficients"]} == {None}
    response = empty_api.post("/survival/predict", json={"user_ids": [1]})
    assert response.status_code == 404 and "run fit-survival-churn again" in response.json()["error"]["message"]


def test_predict_by_user_ids_gives_the_jobs_s_and_a_status_for_the_others(school: tuple[TestClient, Engine]) -> None:
    api, engine = school
    scores = read_table(engine, "survival_score").set_index("user_id")
    everyone = sorted(int(u) for u in _world().students["user_id"])
    unknown = 10**12
    response = api.post("/survival/predict", json={"user_ids": [unknown, *everyone, everyone[0]]})
    assert response.status_code == 200, response.text
    data = response.json()
    fit = _fit(engine)
    assert data["fit"] == {"run_id": fit["run_id"], "as_of": AS_OF.isoformat(), "threshold_days": T}
    assert data["as_of"] == AS_OF.isoformat() and data["horizon_days"] == T and data["rows"] is None
    students = data["students"]
    assert [s["user_id"] for s in students] == [unknown, *everyone]  # request order, each id once
    by_id = {s["user_id"]: s for s in students}
    assert by_id[unknown] == {
        "user_id": unknown,
        "status": "unknown_student",
        "s": None,
        "linear_predictor": None,
        "days_since_last_attempt": None,
        "top_factors": None,
    }
    scored = {u for u, s in by_id.items() if s["status"] == "scored"}
    assert scored == set(scores.index) and len(scored) > 100
    for user_id in scored:
        got, stored = by_id[user_id], scores.loc[user_id]
        assert abs(got["s"] - stored["s"]) <= 1e-12
        assert abs(got["linear_predictor"] - stored["linear_predictor"]) <= 1e-12
        assert got["days_since_last_attempt"] == stored["days_since_last_attempt"]
        assert got["top_factors"] == stored["top_factors"]
    others = [s for s in students if s["status"] not in {"scored", "unknown_student"}]
    assert others and all(s["s"] is None and s["top_factors"] is None for s in others)
    churned = {s["user_id"] for s in others if s["status"] == "churned"}
    assert all(by_id[u]["days_since_last_attempt"] >= T for u in churned)
    alerts = read_table(engine, "inactivity_alert")
    assert set(alerts.loc[alerts["tier"] == "churned", "user_id"]) == churned  # the job's view of the same day
    assert {s["status"] for s in others} <= {"churned", "not_enrolled"}

    # Before any attempt every student is known but not enrolled yet; an as-of not built yet is refused.
    before = api.post("/survival/predict", json={"user_ids": everyone[:3], "as_of": "2026-01-01"}).json()
    assert [s["status"] for s in before["students"]] == ["not_enrolled"] * 3 and before["as_of"] == "2026-01-01"
    later = api.post("/survival/predict", json={"user_ids": [1], "as_of": (AS_OF + timedelta(days=1)).isoformat()})
    assert later.status_code == 422 and later.json()["error"]["code"] == "insufficient_data"


def test_predict_by_user_ids_at_an_earlier_date_scores_with_the_latest_model(
    school: tuple[TestClient, Engine],
) -> None:
    api, engine = school
    earlier = AS_OF - timedelta(days=7)
    model = churn.ChurnModel.from_json(_fit(engine)["model"])
    with engine.connect() as conn:
        x = churn.at_risk_covariates(
            load_activity(conn, start=earlier - timedelta(days=60), end=earlier), earlier, threshold_days=T
        ).set_index("user_id")
    ids = [int(u) for u in x.index[:25]]
    data = api.post("/survival/predict", json={"user_ids": ids, "as_of": earlier.isoformat()}).json()
    assert data["as_of"] == earlier.isoformat() and all(s["status"] == "scored" for s in data["students"])
    expected = model.event_probability(x.loc[ids], at=0, horizon=T)
    np.testing.assert_allclose([s["s"] for s in data["students"]], expected, rtol=1e-9)


def test_predict_with_covariate_rows_is_the_models_probability(school: tuple[TestClient, Engine]) -> None:
    api, engine = school
    model = churn.ChurnModel.from_json(_fit(engine)["model"])
    names = list(model.covariates)
    rng = np.random.default_rng(3)
    values = np.abs(model.reference + rng.normal(size=(6, len(names))) * model.covariate_scales)
    rows = pd.DataFrame(values, columns=names)
    body = {"covariates": {n: rows[n].tolist() for n in names}}
    data = api.post("/survival/predict", json=body).json()
    assert data["students"] is None and data["at"] == 0 and data["horizon_days"] == T
    np.testing.assert_allclose(
        [r["s"] for r in data["rows"]], model.event_probability(rows, at=0, horizon=T), rtol=1e-12
    )
    np.testing.assert_allclose([r["linear_predictor"] for r in data["rows"]], model.linear_predictor(rows), rtol=1e-12)
    factors = churn.top_factors(model.contributions(rows), rows, 3)
    assert [r["top_factors"] for r in data["rows"]] == factors
    shifted = api.post("/survival/predict", json={**body, "at": 3, "horizon_days": 7}).json()
    np.testing.assert_allclose(
        [r["s"] for r in shifted["rows"]], model.event_probability(rows, at=3, horizon=7), rtol=1e-12
    )


def _problems(response: Any) -> set[str]:
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    return {p["location"] for p in response.json()["error"]["details"]["problems"]}


def test_predict_needs_exactly_one_input_and_the_models_covariate_names(school: tuple[TestClient, Engine]) -> None:
    api, engine = school
    names = list(churn.ChurnModel.from_json(_fit(engine)["model"]).covariates)
    rows = {n: [1.0, 2.0] for n in names}
    both = api.post("/survival/predict", json={"user_ids": [1], "covariates": rows})
    assert _problems(both) == {"body.user_ids", "body.covariates"}
    assert _problems(api.post("/survival/predict", json={})) == {"body.user_ids", "body.covariates"}
    assert _problems(api.post("/survival/predict", json={"user_ids": [1], "at": 2})) == {"body.at"}
    assert _problems(api.post("/survival/predict", json={"covariates": rows, "as_of": "2026-04-01"})) == {"body.as_of"}
    wrong = {**{n: v for n, v in rows.items() if n != names[0]}, "shoe_size": [40.0, 41.0]}
    response = api.post("/survival/predict", json={"covariates": wrong})
    assert _problems(response) == {f"body.covariates.{names[0]}", "body.covariates.shoe_size"}
    assert names[0] in response.json()["error"]["message"] and "shoe_size" in response.json()["error"]["message"]
    uneven = api.post("/survival/predict", json={"covariates": {**rows, names[0]: [1.0]}})
    assert uneven.status_code == 422 and "same number of values" in uneven.text
    assert _problems(api.post("/survival/predict", json={"user_ids": [0]})) == {"body.user_ids.0"}
    assert api.post("/survival/predict", json={"user_ids": [1]}, headers={"Authorization": "x"}).status_code == 401


def test_alerts_filter_and_paginate_riskiest_first(school: tuple[TestClient, Engine]) -> None:
    api, engine = school
    stored = read_table(engine, "inactivity_alert")
    assert len(stored) > 20 and stored["s"].isna().any() and stored["s"].notna().any()

    def pages(params: dict[str, Any]) -> list[dict[str, Any]]:
        items, cursor = [], None
        while True:
            response = api.get("/alerts", params={**params, **({"cursor": cursor} if cursor else {})})
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["items"]) <= params["limit"]
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items

    items = pages({"limit": 7})  # default date: the latest
    assert [a["user_id"] for a in items] == _expected_order(stored)  # every alert once, riskiest first
    assert {a["alert_date"] for a in items} == {AS_OF.isoformat()}
    first = next(a for a in items if a["s"] is not None)
    row = stored.set_index("user_id").loc[first["user_id"]]
    assert first["tier"] == row["tier"] and first["reasons"] == row["reasons"] and first["s"] == row["s"]
    assert first["top_factors"] == row["top_factors"]

    for tier in ("high", "churned"):
        chosen = pages({"limit": 5, "tier": tier, "date": AS_OF.isoformat()})
        assert [a["user_id"] for a in chosen] == _expected_order(stored[stored["tier"] == tier])
    assert api.get("/alerts", params={"date": "2020-01-01"}).json() == {"items": [], "next_cursor": None}

    cursor = api.get("/alerts", params={"limit": 2}).json()["next_cursor"]
    other_day = api.get("/alerts", params={"limit": 2, "cursor": cursor, "date": "2020-01-01"})
    assert other_day.status_code == 422 and _problems(other_day) == {"query.cursor"}
    runs_cursor = api.get("/jobs/runs", params={"limit": 1}).json()["next_cursor"]
    assert _problems(api.get("/alerts", params={"cursor": runs_cursor})) == {"query.cursor"}
    assert _problems(api.get("/alerts", params={"tier": "purple"})) == {"query.tier"}
    assert api.get("/alerts", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.get("/alerts", headers={"Authorization": ""}).status_code == 401


def _expected_order(alerts: pd.DataFrame) -> list[int]:
    scored = alerts[alerts["s"].notna()].sort_values(["s", "user_id"], ascending=[False, True])
    unscored = alerts[alerts["s"].isna()].sort_values("user_id")
    return [int(u) for u in [*scored["user_id"], *unscored["user_id"]]]


def test_client_survival_model_predict_and_alerts(school: tuple[TestClient, Engine]) -> None:
    api, engine = school
    client = Client("http://testserver", TOKEN, transport=api._transport)  # type: ignore[attr-defined]
    fit = _fit(engine)
    model = client.survival_model()
    assert model.run_id == fit["run_id"] and model.model is None and model.threshold_days == T
    assert client.survival_model(include_model=True).model == fit["model"]

    scores = read_table(engine, "survival_score").sort_values("user_id")
    ids = [int(u) for u in scores["user_id"][:5]]
    predicted = client.predict_survival(ids, as_of=AS_OF)
    assert [s.user_id for s in predicted.students or []] == ids
    np.testing.assert_allclose([s.s for s in predicted.students or []], scores["s"][:5], rtol=0, atol=1e-12)
    names = [c.name for c in model.covariates]
    rows = client.predict_survival(covariates={n: [0.0, 1.0] for n in names}, horizon_days=7)
    assert rows.rows is not None and len(rows.rows) == 2 and rows.horizon_days == 7
    with pytest.raises(InvalidRequest) as info:
        client.predict_survival(ids, covariates={n: [0.0] for n in names})
    assert {p["location"] for p in info.value.details["problems"]} == {"body.user_ids", "body.covariates"}

    page = client.alerts(AS_OF, "high", limit=3)
    assert len(page.items) == 3 and all(a.tier == "high" for a in page.items) and page.next_cursor
    every = list(client.iter_alerts(limit=10))
    assert [a.user_id for a in every] == _expected_order(read_table(engine, "inactivity_alert"))
