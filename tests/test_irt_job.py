"""calibrate-irt on SQLite and PostgreSQL (stored items, linking, I_t in weekly_kpi), the IRT routes and client, and
item and ability recovery on the default synthetic school."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from functools import cache

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from learnpulse.api.app import create_app
from learnpulse.client import Client, NotFound
from learnpulse.jobs import calibrate_irt as job
from learnpulse.settings import load_settings
from learnpulse.store import irt as store
from learnpulse.store.buckets import complete_weeks
from learnpulse.store.world import save_world
from learnpulse.synthetic import World, WorldParams, generate_world
from tests.helpers import build_kpi, default_school, read_table, run_named

SMALL = WorldParams(students=300, weeks=8, seed=4, n_items=120)
AS_OF = SMALL.end_date - timedelta(days=1)
TOKEN = "irt-test-token"


@cache
def small_world() -> World:
    return generate_world(SMALL)


@pytest.fixture
def school(engine: Engine) -> Engine:
    save_world(engine, small_world())
    build_kpi(engine, AS_OF)
    return engine


def _week_rows(engine: Engine) -> pd.DataFrame:
    kpi = read_table(engine, "weekly_kpi", ["user_id", "week_start"])
    first, last = complete_weeks(AS_OF, job.WINDOW_WEEKS)
    weeks = pd.to_datetime(kpi["week_start"])
    return kpi[(weeks >= pd.Timestamp(first)) & (weeks <= pd.Timestamp(last))]


def test_calibration_stores_items_and_rewrites_i_t_and_a_rerun_does_not_drift(school: Engine) -> None:
    before = _week_rows(school)
    assert set(before["i_t_source"]) == {"accuracy"}
    first = run_named(school, job.NAME, AS_OF)
    meta = read_table(school, "irt_calibration_meta")
    assert len(meta) == 1 and meta.iloc[0]["converged"]
    assert meta.iloc[0]["linking"]["method"].startswith("base scale")
    items = read_table(school, "irt_item")
    assert len(items) == SMALL.n_items
    calibrated = items[items["flag"].isna()]
    assert len(calibrated) == meta.iloc[0]["n_items"] > 0.8 * SMALL.n_items
    assert (calibrated["a"] > 0).all() and (calibrated["se_b"] > 0).all()
    assert items.loc[items["flag"].notna(), "a"].isna().all()

    after = _week_rows(school)
    assert set(after["i_t_source"]) == {"irt"} and first.summary["weekly_kpi_rows"] == len(after)
    assert after["i_t"].between(0, 100).all() and (after["i_t_sd"] > 0).all()
    # On the base scale the student-weeks have mean 0 and SD 1: I_t averages about 50 with SD about 10.
    assert 45 < after["i_t"].mean() < 55 and 6 < after["i_t"].std() < 14

    # Same data again: linked to the first run, the unchanged items do not drift and I_t stays put.
    run_named(school, job.NAME, AS_OF)
    meta = read_table(school, "irt_calibration_meta")
    assert len(meta) == 1  # the same as-of date replaces the calibration
    linking = meta.iloc[0]["linking"]
    assert linking["A"] == pytest.approx(1.0, abs=1e-4) and linking["B"] == pytest.approx(0.0, abs=1e-4)
    assert linking["max_abs_b_drift"] < 1e-4 and linking["max_abs_a_drift"] < 1e-4
    again = _week_rows(school)
    np.testing.assert_allclose(again["i_t"], after["i_t"], atol=1e-3)

    # build-kpi never overwrites an IRT index.
    build_kpi(school, AS_OF, full=True)
    assert set(_week_rows(school)["i_t_source"]) == {"irt"}


@pytest.fixture
def api(engine: Engine) -> Iterator[TestClient]:
    settings = load_settings(database_url=engine.url.render_as_string(hide_password=False), learnpulse_api_token=TOKEN)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_irt_routes_and_client(school: Engine, api: TestClient) -> None:
    client = Client("http://testserver", TOKEN, transport=api._transport)  # type: ignore[attr-defined]
    attempts = small_world().attempts
    with pytest.raises(NotFound):
        client.score_irt([1], [1], [1])
    with pytest.raises(NotFound):
        client.item(1)

    sample = attempts[attempts["user_id"] <= 200]
    calibrated = client.calibrate_irt(sample["user_id"].tolist(), sample["item_id"].tolist(), sample["is_correct"])
    assert len(calibrated.items) == sample["item_id"].nunique() and calibrated.converged
    assert all((i.a is None) == (i.flag is not None) for i in calibrated.items)

    run_named(school, job.NAME, AS_OF)
    # Scoring one student-week's answers through the API gives the I_t the job wrote for that week.
    first, _ = complete_weeks(AS_OF, job.WINDOW_WEEKS)
    row = _week_rows(school).sort_values("attempts").iloc[-1]
    local = attempts["answered_at"].dt.tz_convert(SMALL.timezone).dt.tz_localize(None)
    week = pd.Timestamp(row["week_start"])
    mine = attempts[(attempts["user_id"] == row["user_id"]) & (local >= week) & (local < week + pd.Timedelta(days=7))]
    scored = client.score_irt(["me"] * len(mine), mine["item_id"].tolist(), mine["is_correct"].tolist())
    assert scored.abilities[0].i_t == pytest.approx(row["i_t"], abs=1e-6)
    assert scored.abilities[0].i_t_sd == pytest.approx(row["i_t_sd"], abs=1e-6)

    item_id = int(read_table(school, "irt_item").dropna(subset=["a"])["item_id"].iloc[0])
    info = client.item(item_id)
    assert info.item_id == item_id and info.latest.a is not None and len(info.history) == 1
    assert api.get("/items/99999999").status_code == 404
    assert first <= date.fromisoformat(str(row["week_start"]))


# --- quality on the default world ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_irt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, World]:
    engine, world, _ = default_school(tmp_path_factory.mktemp("irt"), job.NAME)
    return engine, world


def test_items_are_recovered_on_the_default_world(default_irt: tuple[Engine, World]) -> None:
    engine, world = default_irt
    items = read_table(engine, "irt_item").dropna(subset=["a"]).merge(world.items, on="item_id", suffixes=("", "_true"))
    r_a = np.corrcoef(items["a"], items["a_true"])[0, 1]
    r_b = np.corrcoef(items["b"], items["b_true"])[0, 1]
    print(f"item recovery: r(a) = {r_a:.3f}, r(b) = {r_b:.3f} over {len(items)} items")
    assert r_a >= 0.9 and r_b >= 0.97


def test_ability_is_recovered_for_weeks_with_30_answers(default_irt: tuple[Engine, World]) -> None:
    engine, world = default_irt
    kpi = read_table(engine, "weekly_kpi")
    kpi = kpi[(kpi["i_t_source"] == "irt") & (kpi["attempts"] >= 30)]
    truth = world.student_weeks.assign(week_start=lambda f: pd.to_datetime(f["week_start"]).dt.date)
    both = kpi.merge(truth, on=["user_id", "week_start"])
    r = np.corrcoef(both["i_t"], both["theta"])[0, 1]
    print(f"ability recovery: r(I_t, theta) = {r:.3f} over {len(both)} student-weeks with >= 30 answers")
    assert len(both) > 1000 and r >= 0.9
    with engine.connect() as conn:
        assert store.latest_calibration(conn) is not None
