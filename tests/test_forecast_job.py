"""forecast-prophet on SQLite and PostgreSQL (stored fits, anomalies and weekly_kpi columns; re-runs; failures;
process pool and Dask), the forecast routes, and anomaly recovery and forecast error on the default synthetic school.

The small school is calibrated by calibrate-irt first, so the series are the IRT index with its posterior SD, as in
production.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, update

from learnpulse.api.app import create_app
from learnpulse.api.routes import forecast as forecast_routes
from learnpulse.engines.forecast import BatchForecaster, ChunkResult, ForecastOptions, SeriesChunk, forecast_error
from learnpulse.errors import ConfigError, InsufficientDataError, LearnpulseError
from learnpulse.jobs import forecast_prophet as job
from learnpulse.jobs.runner import RunResult, run_job
from learnpulse.settings import load_settings
from learnpulse.store import irt as irt_store
from learnpulse.store.buckets import complete_weeks, day_number
from learnpulse.store.db import make_engine, transaction
from learnpulse.store.schema import upgrade
from learnpulse.store.tables import user_goal, weekly_kpi
from learnpulse.store.world import save_world
from learnpulse.synthetic import World, WorldParams, generate_world
from tests.helpers import build_kpi, default_school, read_table, run_named

SMALL = WorldParams(students=200, weeks=14, seed=11, n_items=120)
AS_OF = SMALL.end_date - timedelta(days=1)  # the world's last day, a Sunday: the window ends with its last week
FIRST, LAST = complete_weeks(AS_OF, 12)
TOKEN = "forecast-test-token"
THRESHOLD = 2.5


@cache
def small_world() -> World:
    return generate_world(SMALL)


def run_forecast(
    engine: Engine, as_of: date = AS_OF, options: dict[str, Any] | None = None, **overrides: Any
) -> RunResult:
    settings = load_settings(database_url=engine.url.render_as_string(hide_password=False), **overrides)
    return run_job(job.FORECAST_PROPHET, settings, engine, as_of=as_of, options=options)


@pytest.fixture
def school(engine: Engine) -> Engine:
    save_world(engine, small_world())
    build_kpi(engine, AS_OF)
    run_named(engine, "calibrate-irt", AS_OF)
    return engine


def window_series(engine: Engine) -> pd.DataFrame:
    """The window's weekly_kpi rows with an I_t (what the job reads), ``ds`` as a timestamp."""
    kpi = read_table(engine, "weekly_kpi", ["user_id", "week_start"])
    kpi["ds"] = pd.to_datetime(kpi["week_start"])
    inside = (kpi["ds"] >= pd.Timestamp(FIRST)) & (kpi["ds"] <= pd.Timestamp(LAST)) & kpi["i_t"].notna()
    return kpi[inside].reset_index(drop=True)


def window_answers(engine: Engine, as_of: date = AS_OF) -> pd.DataFrame:
    """The answers of the window's weeks to the items of the newest calibration, on the I_t scale (``user_id, ds, a,
    b, correct``; ``a = alpha / 10``, ``b = 50 + 10 beta``): what the job gives the engine, built here from the
    stored attempts and ``irt_item`` rows."""
    first, last = complete_weeks(as_of, 12)
    items = read_table(engine, "irt_item")
    items = items[(items["run_id"] == items["run_id"].max()) & items["a"].notna()]
    with engine.connect() as conn:
        answers = irt_store.load_responses(
            conn, first_day=first, last_day=last + timedelta(days=6), tz=load_settings().timezone
        )
    answers = answers.merge(items[["item_id", "a", "b"]], on="item_id")
    weeks = (answers["day"] - day_number(first)) // 7
    return pd.DataFrame(
        {
            "user_id": answers["user_id"],
            "ds": pd.Timestamp(first) + pd.to_timedelta(7 * weeks, unit="D"),
            "a": answers["a"] / 10,
            "b": 50 + 10 * answers["b"],
            "correct": answers["correct"],
        }
    )


def fits_of(engine: Engine, run_id: int | None = None) -> pd.DataFrame:
    fits = read_table(engine, "prophet_fit_meta", ["run_id", "user_id"])
    return fits if run_id is None else fits[fits["run_id"] == run_id].reset_index(drop=True)


def without_run(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.drop(columns="run_id").sort_values(keys).reset_index(drop=True)


# --- the job --------------------------------------------------------------------------------------------------


def test_the_job_stores_fits_anomalies_and_kpi_columns_as_the_engine_computes_them(school: Engine) -> None:
    result = run_forecast(school)
    series = window_series(school)
    assert set(series["i_t_source"]) == {"irt"} and result.summary["i_t_source"] == "irt"
    assert (job.FORECAST_PROPHET.name, job.FORECAST_PROPHET.schedule) == ("forecast-prophet", "0 5 * * 1")
    recorded = read_table(school, "job_run", ["run_id"]).iloc[-1]["parameters"]
    assert {
        k: recorded[k] for k in ("prophet_lookback_weeks", "prophet_forecast_weeks", "prophet_anomaly_threshold")
    } == {
        "prophet_lookback_weeks": 12,
        "prophet_forecast_weeks": 4,
        "prophet_anomaly_threshold": THRESHOLD,
    }

    # One prophet_fit_meta row per student with I_t in the window, with the number of weeks of the series.
    fits = fits_of(school, result.run_id)
    points = series.groupby("user_id").size()
    assert sorted(fits["user_id"]) == sorted(points.index)
    assert (fits.set_index("user_id")["n_points"] == points).all()
    assert set(fits["status"]) == {"fitted", "skipped"} and set(fits["engine"]) == {"batch"}
    assert (fits["as_of"] == AS_OF).all()
    fitted = fits[fits["status"] == "fitted"]
    skipped = fits[fits["status"] == "skipped"]
    assert (fitted["n_points"] >= 6).all() and (skipped["n_points"] < 6).all() and len(fitted) > 100
    assert all(r == f"fewer than 6 points ({n})" for r, n in zip(skipped["reason"], skipped["n_points"], strict=True))
    assert skipped["parameters"].isna().all() and skipped["forecast"].isna().all()
    assert result.summary["fitted"] == len(fitted) and result.summary["skipped"] == len(skipped)

    # The same computation done here with the engine on the series read back (I_t with i_t_sd as y_sd) and the
    # answers of its weeks.
    answers = window_answers(school)
    assert result.summary["anomaly_evidence"]["answers"] == len(answers) > 0
    reference = BatchForecaster(horizon=4, anomaly_threshold=THRESHOLD).fit(
        series, unit="user_id", ds="ds", y="i_t", y_sd="i_t_sd", answers=answers
    )
    assert reference.forecast_ is not None and reference.anomalies_ is not None
    stored = pd.DataFrame(
        [
            {"unit": u, "step": h + 1, "ds": pd.Timestamp(w["week_start"]), "yhat": w["yhat"], "lo": w["yhat_lower"]}
            | {"hi": w["yhat_upper"]}
            for u, fc in zip(fitted["user_id"], fitted["forecast"], strict=True)
            for h, w in enumerate(fc)
        ]
    )
    both = stored.merge(reference.forecast_, on=["unit", "step", "ds"], how="outer", indicator=True)
    assert (both["_merge"] == "both").all() and len(both) == 4 * len(fitted)
    np.testing.assert_allclose(both["yhat_x"], both["yhat_y"], rtol=1e-12)
    np.testing.assert_allclose(both["lo"], both["yhat_lower"], rtol=1e-12)  # seeded by the student's id
    assert (both["lo"] < both["yhat_x"]).all() and (both["yhat_x"] < both["hi"]).all()
    params = fitted["parameters"].iloc[0]
    assert {"k", "m", "delta", "changepoints_t", "sigma_obs", "y_scale", "start", "log_posterior"} <= set(params)
    assert len(fitted["changepoints"].iloc[0]) == len(params["delta"])

    anomalies = read_table(school, "prophet_anomalies", ["user_id", "week_start"])
    assert (anomalies["run_id"] == result.run_id).all() and len(anomalies) == result.summary["anomalies"] > 0
    mine = set(zip(anomalies["user_id"], pd.to_datetime(anomalies["week_start"]), strict=True))
    theirs = set(zip(reference.anomalies_["unit"], reference.anomalies_["ds"], strict=True))
    assert mine == theirs
    assert (anomalies["score"] > THRESHOLD).all()
    # judged on the week's evidence from its own answers; y is the week's I_t
    drop = anomalies["direction"] == "drop"
    assert (anomalies.loc[drop, "evidence"] < anomalies.loc[drop, "lower"]).all()
    assert (anomalies.loc[~drop, "evidence"] > anomalies.loc[~drop, "upper"]).all()
    # score = |evidence - yhat| / s and the range is yhat -+ threshold s
    scale = (anomalies["upper"] - anomalies["lower"]) / (2 * THRESHOLD)
    np.testing.assert_allclose(np.abs(anomalies["evidence"] - anomalies["yhat"]) / scale, anomalies["score"], rtol=1e-9)
    i_t = series.set_index(["user_id", "ds"])["i_t"]
    keys = pd.MultiIndex.from_arrays([anomalies["user_id"], pd.to_datetime(anomalies["week_start"])])
    np.testing.assert_allclose(anomalies["y"], i_t.loc[keys].to_numpy(), rtol=1e-12)

    # weekly_kpi: anomaly on every judged week (true exactly at the anomalies), NULL elsewhere; i_t_next on the
    # last observed week of each fitted student: the first forecast week.
    kpi = read_table(school, "weekly_kpi", ["user_id", "week_start"])
    kpi["ds"] = pd.to_datetime(kpi["week_start"])
    judged = (
        kpi["user_id"].isin(fitted["user_id"])
        & kpi["ds"].between(pd.Timestamp(FIRST), pd.Timestamp(LAST))
        & kpi["i_t"].notna()
    )
    assert kpi.loc[~judged, "anomaly"].isna().all() and kpi.loc[judged, "anomaly"].notna().all()
    true_rows = kpi[kpi["anomaly"] == True]  # noqa: E712
    flagged = set(zip(true_rows["user_id"], true_rows["ds"], strict=True))
    assert flagged == mine
    with_next = kpi[kpi["i_t_next"].notna()].set_index("user_id")
    assert sorted(with_next.index) == sorted(fitted["user_id"])
    last_weeks = kpi[judged].groupby("user_id")["ds"].max()
    assert (with_next["ds"] == last_weeks.reindex(with_next.index)).all()
    first_step = stored[stored["step"] == 1].set_index("unit")
    np.testing.assert_allclose(with_next["i_t_next"], first_step.loc[with_next.index, "yhat"], rtol=1e-12)
    np.testing.assert_allclose(with_next["i_t_next_lower"], first_step.loc[with_next.index, "lo"], rtol=1e-12)
    assert (with_next["ds"] + pd.Timedelta(days=7) == first_step.loc[with_next.index, "ds"]).all()
    assert result.summary["weekly_kpi_rows"] == int(judged.sum())


def test_a_rerun_replaces_the_rows_of_the_same_as_of_date(school: Engine) -> None:
    first = run_forecast(school)
    before_fits = without_run(fits_of(school), ["user_id"])
    before_kpi = read_table(school, "weekly_kpi", ["user_id", "week_start"])
    again = run_forecast(school)
    assert again.summary["replaced_runs"] == [first.run_id]
    assert set(fits_of(school)["run_id"]) == {again.run_id}
    pd.testing.assert_frame_equal(without_run(fits_of(school), ["user_id"]), before_fits)
    pd.testing.assert_frame_equal(read_table(school, "weekly_kpi", ["user_id", "week_start"]), before_kpi)

    # A lower threshold: more anomalies, and weekly_kpi's flags are exactly the new run's (none left over).
    lower = run_forecast(school, prophet_anomaly_threshold=1.5)
    anomalies = read_table(school, "prophet_anomalies")
    assert set(anomalies["run_id"]) == {lower.run_id} and len(anomalies) > first.summary["anomalies"]
    kpi = read_table(school, "weekly_kpi")
    flagged = kpi[kpi["anomaly"] == True]  # noqa: E712
    assert set(zip(flagged["user_id"], flagged["week_start"], strict=True)) == set(
        zip(anomalies["user_id"], anomalies["week_start"], strict=True)
    )

    # The data change (a student's last week loses its I_t): the re-run moves that student's forecast to the
    # week before, and the row that held the replaced run's forecast is cleared, not left stale.
    fits = fits_of(school)
    user = int(fits[(fits["status"] == "fitted") & (fits["n_points"] >= 8)]["user_id"].iloc[0])
    in_window = (kpi["week_start"] >= FIRST) & (kpi["week_start"] <= LAST)
    rows = kpi[(kpi["user_id"] == user) & kpi["i_t"].notna() & in_window].sort_values("week_start")
    old_last, new_last = rows["week_start"].iloc[-1], rows["week_start"].iloc[-2]
    with transaction(school) as conn:
        conn.execute(
            update(weekly_kpi)
            .where(weekly_kpi.c.user_id == user, weekly_kpi.c.week_start == old_last)
            .values(i_t=None, i_t_sd=None)
        )
    final = run_forecast(school, prophet_anomaly_threshold=1.5)
    mine = read_table(school, "weekly_kpi").set_index(["user_id", "week_start"])
    assert pd.isna(mine.loc[(user, old_last), "i_t_next"]) and pd.isna(mine.loc[(user, old_last), "anomaly"])
    stored = fits_of(school, final.run_id).set_index("user_id").loc[user]
    assert stored["n_points"] == len(rows) - 1
    assert mine.loc[(user, new_last), "i_t_next"] == pytest.approx(stored["forecast"][0]["yhat"], rel=1e-12)
    assert stored["forecast"][0]["week_start"] == (new_last + timedelta(days=7)).isoformat()

    # Another as-of date is another run: both are kept.
    earlier = run_forecast(school, as_of=AS_OF - timedelta(days=7))
    assert set(fits_of(school)["run_id"]) == {final.run_id, earlier.run_id}


def test_a_failing_student_is_recorded_and_the_others_go_on(school: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    clean = fits_of(school, run_forecast(school).run_id).set_index("user_id")
    victim = int(clean[clean["status"] == "fitted"].index[len(clean) // 3])
    real = job.fit_chunk

    def failing(chunk: SeriesChunk, options: ForecastOptions) -> ChunkResult:
        if victim in chunk.units:
            raise FloatingPointError("singular design for this student")
        return real(chunk, options)

    monkeypatch.setattr(job, "fit_chunk", failing)
    result = run_forecast(school)
    assert result.summary["failed"] == 1 and result.summary["fitted"] == (clean["status"] == "fitted").sum() - 1
    fits = fits_of(school, result.run_id).set_index("user_id")
    assert fits.loc[victim, "status"] == "failed"
    assert fits.loc[victim, "reason"] == "FloatingPointError: singular design for this student"
    assert fits.loc[victim, "n_points"] == clean.loc[victim, "n_points"]
    # Everybody else exactly as in the clean run (the chunk was split around the failing student).
    others = fits.drop(index=victim).drop(columns="run_id")
    pd.testing.assert_frame_equal(others, clean.drop(index=victim).drop(columns="run_id"))
    kpi = read_table(school, "weekly_kpi")
    assert kpi.loc[kpi["user_id"] == victim, ["anomaly", "i_t_next"]].isna().all().all()

    # When nobody can be fitted the run fails, is recorded as failed and leaves the last run's rows in place.
    def broken(chunk: SeriesChunk, options: ForecastOptions) -> ChunkResult:
        raise RuntimeError("broken")

    monkeypatch.setattr(job, "fit_chunk", broken)
    with pytest.raises(LearnpulseError, match="no student could be fitted"):
        run_forecast(school)
    runs = read_table(school, "job_run", ["run_id"])
    assert runs.iloc[-1]["status"] == "failed" and "RuntimeError: broken" in runs.iloc[-1]["error"]
    assert set(fits_of(school)["run_id"]) == {result.run_id}


def test_the_job_needs_build_kpi_and_some_i_t(school: Engine) -> None:
    with pytest.raises(InsufficientDataError, match=r"built days up to .* only"):
        run_forecast(school, as_of=AS_OF + timedelta(days=7))
    with pytest.raises(InsufficientDataError, match="no I_t in the weeks"):
        run_forecast(school, as_of=SMALL.start_date - timedelta(days=30))
    with pytest.raises(LearnpulseError, match="run option workers must be an integer >= 1"):
        run_forecast(school, options={"workers": 0})
    assert read_table(school, "prophet_fit_meta").empty


def test_placeholder_weeks_are_not_mixed_with_irt_weeks(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    save_world(engine, small_world())
    build_kpi(engine, AS_OF)
    # Before any calibration the series is build-kpi's accuracy placeholder, without y_sd.
    placeholder = run_forecast(engine)
    assert placeholder.summary["i_t_source"] == "accuracy" and placeholder.summary["fitted"] > 100
    # A calibration a week older leaves the last week on the placeholder: that week is left out.
    run_named(engine, "calibrate-irt", AS_OF - timedelta(days=7))
    kpi = read_table(engine, "weekly_kpi")
    stale = int(((kpi["i_t_source"] == "accuracy") & (kpi["week_start"] == LAST)).sum())
    assert stale > 0 and set(kpi.loc[kpi["week_start"] < LAST, "i_t_source"].dropna()) == {"irt"}
    mixed = run_forecast(engine)
    assert mixed.summary["i_t_source"] == "irt" and mixed.summary["placeholder_weeks_left_out"] == stale
    kpi = read_table(engine, "weekly_kpi")
    assert kpi.loc[kpi["week_start"] == LAST, "anomaly"].isna().all()
    engine.dispose()


def test_local_processes_and_dask_give_the_same_rows(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import LocalCluster

    engine = make_engine(sqlite_url)
    upgrade(engine)
    save_world(engine, small_world())
    build_kpi(engine, AS_OF)
    run_named(engine, "calibrate-irt", AS_OF)

    def snapshot() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        kpi = read_table(engine, "weekly_kpi", ["user_id", "week_start"])
        return (
            without_run(fits_of(engine), ["user_id"]),
            without_run(read_table(engine, "prophet_anomalies"), ["user_id", "week_start"]),
            kpi[["user_id", "week_start", "anomaly", "i_t_next", "i_t_next_lower", "i_t_next_upper"]],
        )

    inline = run_forecast(engine)
    assert (inline.summary["executor"], inline.summary["chunks"]) == ("inline", 1)
    expected = snapshot()
    pooled = run_forecast(engine, options={"workers": 2, "chunk_size": 40})
    assert (pooled.summary["executor"], pooled.summary["workers"], pooled.summary["chunks"]) == ("processes", 2, 5)
    for got, want in zip(snapshot(), expected, strict=True):
        pd.testing.assert_frame_equal(got, want)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        on_dask = run_forecast(engine, options={"chunk_size": 40}, dask_scheduler_address=cluster.scheduler_address)
    assert (on_dask.summary["executor"], on_dask.summary["chunks"]) == ("dask", 5)
    for got, want in zip(snapshot(), expected, strict=True):
        pd.testing.assert_frame_equal(got, want)
    runs = read_table(engine, "job_run", ["run_id"])
    assert runs.iloc[-1]["parameters"]["dask_scheduler_address"] == cluster.scheduler_address

    # An unreachable scheduler is a configuration error naming the variable.
    monkeypatch.setattr(job, "DASK_CONNECT_TIMEOUT_S", 1)
    with pytest.raises(ConfigError, match="DASK_SCHEDULER_ADDRESS"):
        run_forecast(engine, dask_scheduler_address="tcp://127.0.0.1:9")
    engine.dispose()


def test_chunk_sizes_spread_the_work_and_stay_bounded() -> None:
    assert job.chunk_size_for(100, 2) == job.MIN_CHUNK
    assert job.chunk_size_for(100_000, 2) == job.MAX_CHUNK
    assert job.chunk_size_for(16_000, 2) == 2000
    assert job.available_cpus() >= 1


# --- the API --------------------------------------------------------------------------------------------------


@pytest.fixture
def api(engine: Engine) -> Iterator[TestClient]:
    settings = load_settings(database_url=engine.url.render_as_string(hide_password=False), learnpulse_api_token=TOKEN)
    app = create_app(settings)
    if not any(getattr(route, "path", None) == "/prophet/fit" for route in app.routes):
        app.include_router(forecast_routes.router)  # until app.py registers the router
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_predict_and_anomalies_routes(school: Engine, api: TestClient) -> None:
    assert api.post("/prophet/predict", json={"user_ids": [1]}).status_code == 404
    assert api.get("/anomalies").json() == {"items": [], "next_cursor": None}
    older = run_forecast(school, as_of=AS_OF - timedelta(days=7))
    result = run_forecast(school)
    fits = fits_of(school, result.run_id).set_index("user_id")
    fitted = int(fits[fits["status"] == "fitted"].index[0])
    skipped = int(fits[fits["status"] == "skipped"].index[0])
    batch = int(read_table(school, "ingest_batch")["batch_id"].iloc[0])
    with transaction(school) as conn:  # a student the store knows (a goal) without any I_t
        conn.execute(
            insert(user_goal).values(user_id=10**6, target=0.7, deadline=AS_OF + timedelta(days=30), batch_id=batch)
        )

    body = api.post("/prophet/predict", json={"user_ids": [fitted, skipped, 10**6, 10**7, fitted]}).json()
    assert (body["run_id"], body["as_of"]) == (result.run_id, AS_OF.isoformat())  # the latest as-of date
    statuses = [(s["user_id"], s["status"]) for s in body["students"]]
    assert statuses == [(fitted, "fitted"), (skipped, "skipped"), (10**6, "no_series"), (10**7, "unknown_student")]
    mine = body["students"][0]
    assert [w["yhat"] for w in mine["forecast"]] == [w["yhat"] for w in fits.loc[fitted, "forecast"]]
    assert mine["n_points"] == fits.loc[fitted, "n_points"]
    assert date.fromisoformat(mine["last_week"]) + timedelta(days=7) == date.fromisoformat(
        mine["forecast"][0]["week_start"]
    )
    assert body["students"][1]["reason"].startswith("fewer than 6 points")
    problem = api.post("/prophet/predict", json={"user_ids": []})
    assert (
        problem.status_code == 422 and problem.json()["error"]["details"]["problems"][0]["location"] == "body.user_ids"
    )

    # GET /anomalies: the latest run, strongest first, every row once across pages of 3.
    stored = read_table(school, "prophet_anomalies")
    stored = stored[stored["run_id"] == result.run_id]
    assert len(stored) > 3
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = api.get("/anomalies", params=params).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(items) == len(stored) and {i["run_id"] for i in items} == {result.run_id}
    assert [i["score"] for i in items] == sorted(stored["score"], reverse=True)
    assert {i["as_of"] for i in items} == {AS_OF.isoformat()}
    week = pd.Timestamp(items[0]["week_start"])
    some_day = (week + pd.Timedelta(days=3)).date().isoformat()  # any day of the week selects it
    one_week = api.get("/anomalies", params={"week": some_day, "limit": 1000}).json()["items"]
    assert one_week and {i["week_start"] for i in one_week} == {week.date().isoformat()}
    assert len(one_week) == int((pd.to_datetime(stored["week_start"]) == week).sum())
    drops = api.get("/anomalies", params={"direction": "drop", "limit": 1000}).json()["items"]
    assert len(drops) == int((stored["direction"] == "drop").sum()) and {i["direction"] for i in drops} == {"drop"}
    old = api.get("/anomalies", params={"run_id": older.run_id, "limit": 1000}).json()["items"]
    assert {i["run_id"] for i in old} == {older.run_id} and {i["as_of"] for i in old} == {
        (AS_OF - timedelta(days=7)).isoformat()
    }
    assert api.get("/anomalies", params={"run_id": 10**6}).status_code == 404
    first_page = api.get("/anomalies", params={"limit": 1}).json()
    mismatch = api.get("/anomalies", params={"cursor": first_page["next_cursor"], "run_id": older.run_id})
    assert mismatch.status_code == 422
    bad = api.get("/anomalies", params={"cursor": "bm90LWEtY3Vyc29y"})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["problems"][0]["location"] == "query.cursor"
    assert api.get("/anomalies", params={"direction": "sideways"}).status_code == 422
    assert api.get("/anomalies", headers={"Authorization": "Bearer wrong"}).status_code == 401


def kinked_drop_series() -> dict[str, Any]:
    """12 weekly points on a rising trend with a drop in week 6."""
    weeks = pd.date_range("2026-03-02", periods=12, freq="7D")
    rng = np.random.default_rng(3)
    y = 45 + 0.8 * np.arange(12) + rng.normal(0, 1.0, 12)
    y[6] -= 15
    return {"ds": [d.date().isoformat() for d in weeks], "y": y.tolist(), "y_sd": [1.5] * 12}


def test_fit_route_batch_and_prophet_engines(sqlite_url: str) -> None:
    settings = load_settings(database_url=sqlite_url, learnpulse_api_token=TOKEN, prophet_forecast_weeks=3)
    app = create_app(settings)
    if not any(getattr(route, "path", None) == "/prophet/fit" for route in app.routes):
        app.include_router(forecast_routes.router)
    series = kinked_drop_series()
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        batch = api.post("/prophet/fit", json=series).json()
        ref = api.post("/prophet/fit", json=series | {"engine": "prophet"}).json()
        # defaults from the settings: PROPHET_FORECAST_WEEKS (3 here) and PROPHET_ANOMALY_THRESHOLD
        assert batch["options"]["horizon"] == 3 and batch["options"]["anomaly_threshold"] == THRESHOLD
        assert [p["ds"] for p in batch["forecast"]] == ["2026-05-25", "2026-06-01", "2026-06-08"]
        assert [(a["ds"], a["direction"]) for a in batch["anomalies"]] == [("2026-04-13", "drop")]
        assert [(a["ds"], a["direction"]) for a in ref["anomalies"]] == [("2026-04-13", "drop")]
        assert batch["engine"] == "batch" and ref["engine"] == "prophet" and batch["n_points"] == 12
        assert batch["model"]["fitted_by"] == "batch-map" and ref["model"]["fitted_by"] == "prophet"
        # the fast engine reaches at least prophet's log-posterior and forecasts within 2% of y_scale of it
        assert batch["parameters"]["log_posterior"] >= ref["parameters"]["log_posterior"] - 1e-9
        y_scale = batch["parameters"]["y_scale"]
        for mine, theirs in zip(batch["forecast"], ref["forecast"], strict=True):
            assert abs(mine["yhat"] - theirs["yhat"]) <= 0.02 * y_scale
            assert mine["yhat_lower"] < mine["yhat"] < mine["yhat_upper"]
        assert len(batch["fitted"]) == 12 and len(batch["parameters"]["changepoints"]) == len(
            batch["parameters"]["delta"]
        )
        # the known SD raises a point's scale: a large enough y_sd on the dropped week hides the drop
        noisy = series | {"y_sd": [1.5] * 6 + [20.0] + [1.5] * 5}
        assert api.post("/prophet/fit", json=noisy).json()["anomalies"] == []
        options = api.post("/prophet/fit", json=series | {"options": {"horizon": 1, "anomaly_threshold": 100}}).json()
        assert len(options["forecast"]) == 1 and options["anomalies"] == []

        def problem(body: dict[str, Any]) -> tuple[int, str, list[str]]:
            r = api.post("/prophet/fit", json=body)
            error = r.json()["error"]
            return r.status_code, error["code"], [p["location"] for p in error["details"].get("problems", [])]

        short = {"ds": series["ds"][:4], "y": series["y"][:4]}
        assert problem(short)[:2] == (422, "insufficient_data")
        assert problem(short | {"engine": "prophet"})[:2] == (422, "insufficient_data")
        assert problem(series | {"y": series["y"][:5]}) == (422, "invalid_input", ["body"])
        assert problem(series | {"ds": [series["ds"][0]] * 12}) == (422, "invalid_input", ["body"])
        assert problem(series | {"options": {"horizon": 0, "extra": 1}}) == (
            422,
            "invalid_input",
            ["body.options.horizon", "body.options.extra"],
        )
        assert problem(series | {"y_sd": [-1.0] * 12})[2][0] == "body.y_sd.0"
        assert api.post("/prophet/fit", json=series, headers={"Authorization": "Bearer no"}).status_code == 401


# --- quality on the default world ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated_school(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, World, date]:
    """The default world, calibrated and forecast as of its last day (so the injected drops, which happen up to
    its second-to-last week, lie in the window)."""
    return default_school(tmp_path_factory.mktemp("forecast"), "calibrate-irt")


@pytest.fixture(scope="module")
def anomaly_figures(calibrated_school: tuple[Engine, World, date]) -> dict[str, float]:
    """Precision (every flagged week is a claim; only drops are injected, so a flagged jump is a false one) and
    recall (an injected drop is found when the same student-week is flagged as a drop) at the default threshold."""
    engine, world, as_of = calibrated_school
    result = run_forecast(engine, as_of=as_of)
    first, _ = complete_weeks(as_of, 12)
    truth = world.anomalies.assign(week_start=pd.to_datetime(world.anomalies["week_start"]))
    truth = truth[truth["week_start"] >= pd.Timestamp(first)]
    true_weeks = set(zip(truth["user_id"], truth["week_start"], strict=True))
    flagged = read_table(engine, "prophet_anomalies")
    flagged = flagged[flagged["run_id"] == result.run_id]
    claims = set(zip(flagged["user_id"], pd.to_datetime(flagged["week_start"]), strict=True))
    drops = flagged[flagged["direction"] == "drop"]
    found = set(zip(drops["user_id"], pd.to_datetime(drops["week_start"]), strict=True)) & true_weeks
    figures = {
        "injected": len(true_weeks),
        "flagged": len(claims),
        "precision": len(claims & true_weeks) / len(claims),
        "recall": len(found) / len(true_weeks),
    }
    print(
        f"\nanomalies on the default world: {figures['injected']} injected drops in the window, "
        f"{figures['flagged']} weeks flagged; precision {figures['precision']:.3f}, recall {figures['recall']:.3f}"
    )
    return figures


def test_the_issue_bar_for_anomalies_on_the_default_world(anomaly_figures: dict[str, float]) -> None:
    """The issue's bar at the default threshold: precision >= 0.8 and recall >= 0.7. Measured: precision 0.859,
    recall 0.712 (351 injected drops in the window, 291 weeks flagged). The rule judges each week by its own answers
    (score test at the trend; engine docstring); on the EAP index with its posterior SD it was 0.843 / 0.644. On
    other default-size worlds (``WorldParams(seed=s)``): seeds 1, 2, 3 give 0.846 / 0.716, 0.866 / 0.723,
    0.912 / 0.713; seeds 4 and 5 miss the recall bar (0.848 / 0.674, 0.850 / 0.661), where even the oracle score test
    of the next test reaches only 0.73 at precision 0.8."""
    assert anomaly_figures["injected"] > 300
    assert anomaly_figures["precision"] >= 0.8 and anomaly_figures["recall"] >= 0.7


def _oracle_week_scores(engine: Engine, world: World, as_of: date) -> pd.DataFrame:
    """The best any detector could do with one week's answers: the score test of each student-week's answers
    against the student's **true** ability without the anomaly (``theta0 + g w``) under the **true** item
    parameters, ``z = sum a (x - p) / sqrt(sum a^2 p (1 - p))`` (standard normal under "no anomaly"), one row per
    student-week of the window with ``z``, ``answers`` and ``injected``."""
    first, last = complete_weeks(as_of, 12)
    with engine.connect() as conn:
        answers = irt_store.load_responses(
            conn, first_day=first, last_day=last + timedelta(days=6), tz=load_settings().timezone
        )
    answers["week_start"] = pd.Timestamp(first) + pd.to_timedelta((answers["day"] - day_number(first)) // 7 * 7, "D")
    weeks = world.student_weeks.assign(week_start=pd.to_datetime(world.student_weeks["week_start"]))
    injected = world.anomalies.assign(week_start=pd.to_datetime(world.anomalies["week_start"]))
    weeks = weeks.merge(injected[["user_id", "week_start", "effect"]], how="left", on=["user_id", "week_start"])
    weeks["trend"] = weeks["theta"] - weeks["effect"].fillna(0.0)
    rows = answers.merge(weeks[["user_id", "week_start", "trend", "effect"]], on=["user_id", "week_start"])
    items = world.items.set_index("item_id").loc[rows["item_id"]]
    a, b = items["a"].to_numpy(), items["b"].to_numpy()
    p = 1.0 / (1.0 + np.exp(-a * (rows["trend"].to_numpy() - b)))
    rows = rows.assign(u=a * (rows["correct"].to_numpy() - p), i=a * a * p * (1.0 - p))
    scores = (
        rows.groupby(["user_id", "week_start"])
        .agg(u=("u", "sum"), i=("i", "sum"), answers=("u", "size"), effect=("effect", "first"))
        .reset_index()
    )
    return scores.assign(z=scores["u"] / np.sqrt(scores["i"]), injected=scores["effect"].notna())


def test_the_job_is_close_to_a_detector_that_knows_the_truth(
    calibrated_school: tuple[Engine, World, date], anomaly_figures: dict[str, float]
) -> None:
    """Facts about the default world that fail if the world changes, and the job against them. The oracle score test
    (true trend, true items; a jump claim counts against precision as in ``anomaly_figures``) flags so many ordinary
    weeks at |z| > 2.5 that its precision is far below 0.8 (about 1.2% of 16,000 ordinary weeks exceed 2.5 standard
    normal SDs, against some 300 drops): a rule calibrated to the null at threshold 2.5 cannot reach precision 0.8
    here, which is why the job's scale also carries the floor. At the oracle's best cut for precision 0.8 its recall is
    about 0.75: no detector of one week's answers does much better. The job, which estimates both the trend and the
    items, is within 0.05 of that recall at a precision above 0.8."""
    engine, world, as_of = calibrated_school
    scores = _oracle_week_scores(engine, world, as_of)
    assert int(scores["injected"].sum()) == anomaly_figures["injected"]
    flagged = scores["z"].abs() > THRESHOLD
    precision_at_default = float((flagged & scores["injected"]).sum() / flagged.sum())
    ranked = scores.iloc[np.argsort(-scores["z"].abs().to_numpy())]
    hits = np.cumsum(ranked["injected"].to_numpy())
    precision = hits / np.arange(1, len(ranked) + 1)
    ceiling = float(hits[precision >= 0.8].max() / anomaly_figures["injected"])
    print(
        f"\noracle score test: at |z| > {THRESHOLD} precision {precision_at_default:.3f}; best recall at precision "
        f">= 0.8: {ceiling:.3f} (the job: precision {anomaly_figures['precision']:.3f}, recall "
        f"{anomaly_figures['recall']:.3f})"
    )
    assert precision_at_default < 0.7
    assert 0.7 <= ceiling < 0.8
    assert anomaly_figures["precision"] >= 0.8 and anomaly_figures["recall"] >= ceiling - 0.05


def test_forecasts_beat_the_last_value_on_the_default_world(calibrated_school: tuple[Engine, World, date]) -> None:
    """Fit on the window ending four weeks before the world's end; compare the forecasts with the I_t observed in
    the four weeks after (noisy: each week's own measurement error) and with the simulated truth on the I_t scale
    (``a + b theta``, ``a`` and ``b`` by least squares of I_t on the true ability over the training weeks; the IRT
    scale is only defined up to the first calibration's standardisation)."""
    engine, world, as_of = calibrated_school
    cut = as_of - timedelta(days=28)
    result = run_forecast(engine, as_of=cut)
    first, last = complete_weeks(cut, 12)
    kpi = read_table(engine, "weekly_kpi")
    kpi["ds"] = pd.to_datetime(kpi["week_start"])
    train = kpi[kpi["ds"].between(pd.Timestamp(first), pd.Timestamp(last)) & kpi["i_t"].notna()]
    fits = fits_of(engine, result.run_id)
    fits = fits[fits["status"] == "fitted"]
    last_y = train.sort_values("ds").groupby("user_id")["i_t"].last()
    forecast = pd.DataFrame(
        [
            {"unit": u, "step": h + 1, "ds": pd.Timestamp(w["week_start"]), "yhat": w["yhat"], "last_y": last_y[u]}
            for u, fc in zip(fits["user_id"], fits["forecast"], strict=True)
            for h, w in enumerate(fc)
        ]
    )
    observed = kpi[kpi["ds"] > pd.Timestamp(last)].rename(columns={"user_id": "unit", "i_t": "y"})
    weeks = world.student_weeks.assign(ds=pd.to_datetime(world.student_weeks["week_start"]))
    paired = train.merge(weeks[["user_id", "ds", "theta"]], on=["user_id", "ds"])
    b, a = np.polyfit(paired["theta"], paired["i_t"], 1)
    truth = weeks.assign(unit=weeks["user_id"], y=a + b * weeks["theta"])
    lines = []
    errors = {}
    for label, target in (("observed I_t", observed), ("truth a + b theta", truth)):
        for step in (1, 4):
            err = forecast_error(forecast, target, step=step)
            errors[label, step] = err
            lines.append(
                f"{label}, {step} week(s) ahead: MAE {err.mae:.2f} vs last value {err.mae_naive:.2f} "
                f"(skill {err.skill:+.3f}, n={err.n})"
            )
    print(f"\nforecast error (I_t = {a:.1f} + {b:.2f} theta on the training weeks):\n" + "\n".join(lines))
    # The issue's criterion: four weeks ahead against the simulated truth.
    assert errors["truth a + b theta", 4].n > 1000
    assert errors["truth a + b theta", 4].mae < errors["truth a + b theta", 4].mae_naive
    assert errors["truth a + b theta", 1].mae < errors["truth a + b theta", 1].mae_naive
    # Next week's forecast (weekly_kpi.i_t_next) also beats the last value against what was observed.
    assert errors["observed I_t", 1].mae < errors["observed I_t", 1].mae_naive
