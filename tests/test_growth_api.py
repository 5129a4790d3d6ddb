"""The growth routes through the real app and the client: POST /growth/fit gives the engine's answer; GET
/growth/model and POST /growth/predict (SQLite and PostgreSQL) give what fit-bayesian-growth stored."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from learnpulse.api.app import create_app
from learnpulse.client import Client, InvalidRequest, NotFound
from learnpulse.engines.growth import GrowthModel
from learnpulse.jobs import fit_bayesian_growth as job
from learnpulse.settings import load_settings
from learnpulse.store.world import save_world
from learnpulse.synthetic import World, WorldParams, generate_world
from tests.helpers import build_kpi, read_table, run_named

TOKEN = "growth-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WORLD = WorldParams(students=200, weeks=10, seed=9)
AS_OF = WORLD.end_date - timedelta(days=1)


@cache
def _world() -> World:
    return generate_world(WORLD)


@pytest.fixture
def api(engine: Engine) -> Iterator[TestClient]:
    settings = load_settings(database_url=engine.url.render_as_string(hide_password=False), learnpulse_api_token=TOKEN)
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client


def _client(api: TestClient) -> Client:
    return Client("http://testserver", TOKEN, transport=api._transport)  # type: ignore[attr-defined]


def _simulated(units: int = 40, weeks: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    unit = np.repeat(np.arange(units), weeks)
    time = np.tile(np.arange(weeks), units).astype(float)
    y = 0.5 + rng.normal(0, 0.08, units)[unit] + (0.01 + rng.normal(0, 0.005, units)[unit]) * time
    return pd.DataFrame({"unit": unit, "time": time, "y": y + rng.normal(0, 0.04, len(unit))})


def test_fit_route_returns_the_engines_answer(api: TestClient) -> None:
    data = _simulated()
    body = {"unit": data["unit"].tolist(), "time": data["time"].tolist(), "y": data["y"].tolist(), "iter": 400}
    response = api.post("/growth/fit", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    local = GrowthModel(iter=400).fit(data["unit"], data["time"], data["y"])
    ours = {row["parameter"]: row["estimate"] for row in out["parameters"]}
    expected = local.fixed_effects()["estimate"].to_dict()
    assert ours == pytest.approx(expected, rel=1e-9)  # same data, same seed: the same draws
    assert out["formula"] == "y ~ time + (time | unit)" and out["diagnostics"]["divergences"] == 0
    assert GrowthModel.from_json(out["model"]).predict([0], [3.0])["mean"][0] == pytest.approx(
        local.predict([0], [3.0])["mean"][0]
    )
    bad = api.post("/growth/fit", json={**body, "y": [*body["y"][:-1], None]})
    assert bad.status_code == 422
    binomial = api.post("/growth/fit", json={**body, "family": "binomial"})  # no trials
    assert binomial.status_code == 422 and "trials" in binomial.text
    gibbs = api.post("/growth/fit", json={**body, "sampler": "gibbs"})  # the gaussian family has no units to sample
    assert gibbs.status_code == 422 and "sampler" in gibbs.text and "binomial" in gibbs.text
    assert api.post("/growth/fit", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_client_fits_the_binomial_family_with_the_gibbs_sampler(api: TestClient) -> None:
    data = _simulated()
    rng = np.random.default_rng(5)
    trials = rng.integers(5, 30, len(data))
    correct = rng.binomial(trials, data["y"].clip(0.05, 0.95))
    out = _client(api).fit_growth(
        data["unit"].tolist(),
        data["time"].tolist(),
        correct.tolist(),
        trials.tolist(),
        family="binomial",
        iter=400,
        sampler="gibbs",
    )
    assert out.family == "binomial" and out.sampler == out.diagnostics["sampler"] == "gibbs"
    assert 0.5 <= out.diagnostics["units_acceptance"] < 1 and out.diagnostics["divergences"] == 0
    rows = {row.parameter: row for row in out.parameters}
    assert rows["time"].q2_5 <= 0.04 <= rows["time"].q97_5  # accuracy ~0.5 + 0.01 t: a logit slope of ~0.04


def test_fit_route_refuses_more_rows_than_it_can_fit_in_a_request(api: TestClient) -> None:
    """Above its caps (rows, units, rows x iter x chains) the API answers 422 at once, naming what is over and the job
    that fits such data, instead of running NUTS for minutes inside a request and outgrowing the API pod's memory."""
    from learnpulse.api.growth_schemas import MAX_FIT_ROWS, MAX_FIT_UNITS

    def problems(body: dict[str, Any]) -> list[dict[str, Any]]:
        response = api.post("/growth/fit", json=body)
        assert response.status_code == 422, response.text
        return list(response.json()["error"]["details"]["problems"])

    n = MAX_FIT_ROWS + 1
    over = problems({"unit": [i % 100 for i in range(n)], "time": [0.0] * n, "y": [0.5] * n})
    assert {p["location"] for p in over} == {"body.unit", "body.time", "body.y"}
    assert "60000" in over[0]["problem"]
    n = MAX_FIT_UNITS + 1
    (units,) = problems({"unit": list(range(n)), "time": [0.0] * n, "y": [0.5] * n})
    assert "5,001 distinct units" in units["problem"] and "fit-bayesian-growth" in units["problem"]
    n = 7_000
    (work,) = problems({"unit": [i % 500 for i in range(n)], "time": [0.0] * n, "y": [0.5] * n, "iter": 10_000})
    assert "7,000 x 10,000 x 2" in work["problem"]
    assert "fit-bayesian-growth" in api.get("/openapi.json").text


def test_stored_model_routes_and_client(engine: Engine, api: TestClient) -> None:
    client = _client(api)
    with pytest.raises(NotFound):
        client.growth_model()
    with pytest.raises(NotFound):
        client.predict_goal_probability([1])
    save_world(engine, _world())
    build_kpi(engine, AS_OF)
    run_named(engine, job.NAME, AS_OF, lookback_weeks=8)
    units = read_table(engine, "growth_unit").set_index("user_id")

    info = client.growth_model()
    assert info.family == "gaussian" and info.sampler == "nuts" and info.latest_run_status == "succeeded"
    assert info.n_units > 100
    assert info.fixed_effects is not None and set(info.fixed_effects) == {"Intercept", "time"}

    ids = [int(u) for u in units.index[:5]] + [10_000_000]
    answer = client.predict_goal_probability(ids, as_of=AS_OF)
    by_id = {s.user_id: s for s in answer.students}
    for u in ids[:5]:
        assert by_id[u].p == pytest.approx(units.at[u, "p"], abs=1e-9)
        trajectory = by_id[u].trajectory or []
        assert trajectory and all(0 <= t.q05 <= t.q25 <= t.q50 <= t.q75 <= t.q95 <= 1 for t in trajectory)
        assert trajectory[-1].week_start <= units.at[u, "deadline"] < trajectory[-1].week_start + timedelta(days=7)
    assert by_id[10_000_000].flag == "no_goal" and by_id[10_000_000].p is None

    what_if = client.predict_goal_probability(ids[:1], target=0.99, deadline=AS_OF + timedelta(days=14), as_of=AS_OF)
    assert what_if.students[0].target == 0.99 and what_if.students[0].p is not None
    assert what_if.students[0].p < 0.5
    with pytest.raises(InvalidRequest):
        client.predict_goal_probability(ids[:1], target=1.5)
