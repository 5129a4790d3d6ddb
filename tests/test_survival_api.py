"""POST /survival/fit through the real app and the client on a live server: same answers as the engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from learnpulse.api.app import create_app
from learnpulse.client import Client, InvalidRequest
from learnpulse.engines.survival import CoxPH
from learnpulse.settings import load_settings
from learnpulse.store.db import make_engine
from learnpulse.store.schema import upgrade

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
