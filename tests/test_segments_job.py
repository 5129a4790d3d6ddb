"""cluster-segments on SQLite and PostgreSQL (rows written, identical re-runs, stable ids a week later, new and
vanished segments, fixed k, the mixture, an unmatched lineage), the segment routes, and the quality bars on the
default synthetic school with the IRT learning index (calibrate-irt runs before every clustering, as in production).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sklearn.metrics import adjusted_rand_score
from sqlalchemy import Engine

from learnpulse.api.app import create_app
from learnpulse.api.routes import segments as routes
from learnpulse.engines.segments import DEFAULT_MAX_DISTANCE, SegmentModel
from learnpulse.errors import InsufficientDataError
from learnpulse.jobs.cluster_segments import CLUSTER_SEGMENTS, NAME
from learnpulse.jobs.runner import RunResult, run_job
from learnpulse.segment_features import FEATURE_NAMES, SegmentFeatures, build_features, window
from learnpulse.settings import load_settings
from learnpulse.store.db import make_engine, transaction
from learnpulse.store.runs import get_state, put_state
from learnpulse.store.schema import upgrade
from learnpulse.store.world import save_world
from learnpulse.synthetic import World, WorldParams, generate_world
from tests.helpers import build_kpi, read_table, run_named

SMALL = WorldParams(students=300, weeks=14, seed=7)
TOKEN = "segments-test-token"


def sunday(params: WorldParams, week: int) -> date:
    """The Sunday that ends the world's week ``week`` (1-based): an as-of date whose window ends with that week."""
    return params.start_date + timedelta(weeks=week, days=-1)


W12, W13, W14 = (sunday(SMALL, w) for w in (12, 13, 14))


@cache
def small_world() -> World:
    return generate_world(SMALL)


@pytest.fixture
def school(engine: Engine) -> Engine:
    save_world(engine, small_world())
    build_kpi(engine, W14)
    return engine


def cluster(engine: Engine, as_of: date, *, calibrate: bool = True, **overrides: Any) -> RunResult:
    """calibrate-irt (the I_t the features read) then cluster-segments as of ``as_of``."""
    if calibrate:
        run_named(engine, "calibrate-irt", as_of)
    settings = load_settings(database_url=engine.url.render_as_string(hide_password=False), **overrides)
    return run_job(CLUSTER_SEGMENTS, settings, engine, as_of=as_of)


def meta_of(engine: Engine, run_id: int) -> pd.DataFrame:
    meta = read_table(engine, "segment_meta", ["run_id", "segment_id"])
    return meta[meta["run_id"] == run_id].reset_index(drop=True)


def users_of(engine: Engine, run_id: int) -> pd.DataFrame:
    rows = read_table(engine, "user_segment", ["run_id", "user_id"])
    return rows[rows["run_id"] == run_id].drop(columns="run_id").set_index("user_id")


def features_from_tables(engine: Engine, as_of: date) -> SegmentFeatures:
    """The features of ``as_of`` from the tables read back independently of the job's loader."""
    return build_features(read_table(engine, "weekly_kpi"), read_table(engine, "features_topic_daily"), as_of=as_of)


def stored_model(engine: Engine, run_id: int) -> SegmentModel:
    with engine.connect() as conn:
        state = get_state(conn, NAME)
    assert state is not None
    entry = next(m for m in state["models"] if m["run_id"] == run_id)
    return SegmentModel.from_json(entry["model"])


# --- the job --------------------------------------------------------------------------------------------------


def test_job_writes_segments_and_assignments_and_a_rerun_is_identical(school: Engine) -> None:
    first = cluster(school, W12)
    meta = meta_of(school, first.run_id)
    k = first.summary["segments"]
    assert 2 <= k <= 10 and len(meta) == k
    assert list(meta["segment_id"]) == list(range(1, k + 1)) and set(meta["status"]) == {"new"}
    assert meta["matched_previous_id"].isna().all() and meta["name"].is_unique
    assert (meta["as_of"].astype(str) == W12.isoformat()).all()
    quality = meta.iloc[0]["quality"]
    assert quality["method"] == "kmeans" and quality["criterion"] == "silhouette" and quality["k"] == k
    assert [c["k"] for c in quality["selection"]] == list(range(2, 11))
    best = max(quality["selection"], key=lambda c: c["silhouette"])
    assert best["k"] == k and quality["bic"] is None
    assert (quality["window_start"], quality["window_end"]) == tuple(d.isoformat() for d in window(W12, 12))

    # Every student with three active weeks has exactly one row; the others are listed as skipped, not guessed.
    features = features_from_tables(school, W12)
    users = users_of(school, first.run_id)
    assert list(users.index) == list(features.features.index)
    assert first.summary["skipped_students"] == sorted(features.skipped["user_id"].tolist())
    assert first.summary["skipped"] == len(features.skipped) > 0 and not set(features.skipped["user_id"]) & set(
        users.index
    )
    assert users["probability"].isna().all() and (users["distance"] >= 0).all()
    assert int(meta["size"].sum()) == len(users) == first.summary["students"] == quality["students"]
    sizes = users["segment_id"].value_counts()
    assert [int(sizes[s]) for s in meta["segment_id"]] == meta["size"].tolist()
    np.testing.assert_allclose([q["share"] for q in meta["quality"]], meta["size"] / len(users))

    # The stored model reproduces the stored assignments from the features, and the centroids are its centres in
    # the features' units.
    model = stored_model(school, first.run_id)
    pred = model.predict(features.features[list(FEATURE_NAMES)])
    np.testing.assert_array_equal(pred["segment_id"].to_numpy(), users["segment_id"].to_numpy())
    np.testing.assert_allclose(pred["distance"].to_numpy(), users["distance"].to_numpy(), rtol=1e-9)
    assert model.centers_original_ is not None
    for i, row in enumerate(meta.to_dict("records")):
        assert list(row["centroid"]) == list(FEATURE_NAMES)
        np.testing.assert_allclose(list(row["centroid"].values()), model.centers_original_[i], rtol=1e-9)
        mine = users[users["segment_id"] == row["segment_id"]]
        assert row["quality"]["mean_distance"] == pytest.approx(mine["distance"].mean())
    run = read_table(school, "job_run").set_index("run_id").loc[first.run_id]
    assert run["status"] == "succeeded" and run["parameters"]["cluster_method"] == "kmeans"
    assert run["parameters"]["cluster_lookback_weeks"] == 12 and run["parameters"]["cluster_n_clusters"] is None

    # Same data again: the rows of the as-of date are replaced by identical ones.
    again = cluster(school, W12, calibrate=False)
    assert again.run_id != first.run_id
    assert meta_of(school, first.run_id).empty and users_of(school, first.run_id).empty
    rerun = meta_of(school, again.run_id)
    columns = ["segment_id", "name", "size", "status", "centroid"]
    pd.testing.assert_frame_equal(rerun[columns], meta[columns])
    pd.testing.assert_frame_equal(users_of(school, again.run_id), users)
    assert again.summary == first.summary
    assert len(read_table(school, "segment_meta")) == k
    with school.connect() as conn:
        state = get_state(conn, NAME)
    assert state is not None and [m["run_id"] for m in state["models"]] == [again.run_id]


def test_a_run_a_week_later_keeps_ids_and_fixed_k_records_new_and_vanished_segments(school: Engine) -> None:
    first = cluster(school, W12)
    before = meta_of(school, first.run_id)
    k = len(before)
    later = cluster(school, W13)
    after = meta_of(school, later.run_id)
    quality = after.iloc[0]["quality"]
    assert quality["previous_run_id"] == first.run_id and quality["previous_as_of"] == W12.isoformat()
    # The school has not changed in a week: every segment persists with its id and name.
    assert len(after) == k and set(after["status"]) == {"persisting"}
    assert (after["matched_previous_id"] == after["segment_id"]).all()
    assert (after["match_distance"] <= DEFAULT_MAX_DISTANCE).all()
    assert dict(zip(after["segment_id"], after["name"], strict=True)) == dict(
        zip(before["segment_id"], before["name"], strict=True)
    )
    old, new = users_of(school, first.run_id)["segment_id"], users_of(school, later.run_id)["segment_id"]
    both = old.index.intersection(new.index)
    kept = float((old.loc[both] == new.loc[both]).mean())
    assert len(both) > 0.8 * SMALL.students and kept >= 0.9, kept

    # Two more segments than before: the persisting ones keep their ids, the others get fresh ids above k.
    more = cluster(school, W13, calibrate=False, cluster_n_clusters=k + 2)
    rows = meta_of(school, more.run_id)
    assert meta_of(school, later.run_id).empty  # replaced: one run per as-of date
    assert rows.iloc[0]["quality"]["criterion"] == "fixed" and len(rows) == k + 2
    persisting, new_rows = rows[rows["status"] == "persisting"], rows[rows["status"] == "new"]
    assert len(persisting) + len(new_rows) == k + 2 and len(new_rows) >= 2
    assert set(persisting["segment_id"]) <= set(before["segment_id"])
    assert (persisting["matched_previous_id"] == persisting["segment_id"]).all()
    assert sorted(new_rows["segment_id"]) == list(range(k + 1, k + 1 + len(new_rows)))
    assert new_rows["matched_previous_id"].isna().all() and rows["name"].is_unique
    vanished = rows[rows["status"] == "vanished"]
    assert set(vanished["segment_id"]) == set(before["segment_id"]) - set(persisting["segment_id"])
    assert more.summary["new"] == sorted(new_rows["segment_id"].tolist())

    # Two segments: at least k - 2 of the previous ones vanish, recorded with size 0 and their last profile.
    fewer = cluster(school, W13, calibrate=False, cluster_n_clusters=2)
    rows = meta_of(school, fewer.run_id)
    current = rows[rows["status"] != "vanished"]
    vanished = rows[rows["status"] == "vanished"]
    assert len(current) == 2 and len(vanished) >= k - 2
    assert set(vanished["segment_id"]) | set(current["matched_previous_id"].dropna().astype(int)) == set(
        before["segment_id"]
    )
    assert (vanished["size"] == 0).all() and vanished["matched_previous_id"].isna().all()
    for _, row in vanished.iterrows():
        previous = before.set_index("segment_id").loc[row["segment_id"]]
        assert row["name"] == previous["name"] and row["centroid"] == pytest.approx(previous["centroid"])
    assert sorted(fewer.summary["vanished"]) == sorted(vanished["segment_id"].tolist())
    assert set(users_of(school, fewer.run_id)["segment_id"]) == set(current["segment_id"])


def test_without_the_previous_model_the_segments_start_a_new_lineage(school: Engine) -> None:
    first = cluster(school, W12)
    before = meta_of(school, first.run_id)
    with transaction(school) as conn:
        put_state(conn, NAME, {"models": []})  # as if the previous run's model had been pruned
    later = cluster(school, W13)
    rows = meta_of(school, later.run_id)
    current, vanished = rows[rows["status"] != "vanished"], rows[rows["status"] == "vanished"]
    assert set(current["status"]) == {"new"} and current["matched_previous_id"].isna().all()
    top = int(before["segment_id"].max())
    assert sorted(current["segment_id"]) == list(range(top + 1, top + 1 + len(current)))  # ids never reused
    assert sorted(vanished["segment_id"]) == sorted(before["segment_id"]) and (vanished["size"] == 0).all()
    assert later.summary["previous_model"] == "not kept" and rows.iloc[0]["quality"]["previous_model_kept"] is False


def test_gmm_stores_membership_probabilities(school: Engine) -> None:
    result = cluster(school, W12, cluster_method="gmm", cluster_n_clusters=3)
    meta = meta_of(school, result.run_id)
    quality = meta.iloc[0]["quality"]
    assert quality["method"] == "gmm" and quality["criterion"] == "fixed" and quality["bic"] is not None
    assert len(meta) == 3 and quality["inertia"] is None
    users = users_of(school, result.run_id)
    # The most probable of three components has a probability of at least 1/3.
    assert users["probability"].between(1 / 3 - 1e-9, 1.0).all()
    for _, row in meta.iterrows():
        mine = users[users["segment_id"] == row["segment_id"]]
        assert row["quality"]["mean_probability"] == pytest.approx(mine["probability"].mean())
    model = stored_model(school, result.run_id)
    assert model.method == "gmm"
    proba = model.predict_proba(features_from_tables(school, W12).features)
    np.testing.assert_allclose(proba.max(axis=1).to_numpy(), users["probability"].to_numpy(), rtol=1e-9)


def test_too_little_data_fails_the_run_with_a_reason(school: Engine) -> None:
    early = sunday(SMALL, 2)  # two weeks of data: nobody has three active weeks
    with pytest.raises(InsufficientDataError, match="nothing to segment"):
        cluster(school, early, calibrate=False)
    run = read_table(school, "job_run").iloc[-1]
    assert run["job"] == NAME and run["status"] == "failed" and "insufficient_data" in run["error"]
    assert read_table(school, "segment_meta").empty


# --- the routes -----------------------------------------------------------------------------------------------


def segment_app(engine: Engine) -> FastAPI:
    settings = load_settings(database_url=engine.url.render_as_string(hide_password=False), learnpulse_api_token=TOKEN)
    app = create_app(settings)
    if "/segments" not in {getattr(r, "path", None) for r in app.routes}:
        app.include_router(routes.router)  # until app.py registers the router
    return app


@pytest.fixture
def api(school: Engine) -> Iterator[TestClient]:
    with TestClient(segment_app(school), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def problems(response: Any) -> list[str]:
    return sorted(p["location"] for p in response.json()["error"]["details"]["problems"])


def test_segment_routes(school: Engine, api: TestClient) -> None:
    assert api.get("/segments", headers={"Authorization": "Bearer nope"}).status_code == 401
    for response in (
        api.get("/segments"),
        api.get("/users/1/segment"),
        api.post("/cluster/predict", json={"user_ids": [1]}),
    ):
        assert response.status_code == 404 and response.json()["error"]["details"]["job"] == NAME

    result = cluster(school, W12)
    features = features_from_tables(school, W12)
    stored = users_of(school, result.run_id)

    # Stateless fit of the same features with the job's defaults: the job's segments.
    body = {
        "features": {n: features.features[n].tolist() for n in FEATURE_NAMES},
        "ids": [int(u) for u in features.features.index],
    }
    fitted = api.post("/cluster/fit", json=body)
    assert fitted.status_code == 200, fitted.text
    out = fitted.json()
    assert out["k"] == result.summary["segments"] and out["criterion"] == "silhouette"
    assert [a["id"] for a in out["assignments"]] == body["ids"]
    assert [a["segment_id"] for a in out["assignments"]] == stored["segment_id"].tolist()
    assert {s["segment_id"]: s["name"] for s in out["segments"]} == {
        int(k): v for k, v in result.summary["names"].items()
    }
    again = SegmentModel.from_json(out["model"]).predict(features.features)
    assert again["segment_id"].tolist() == [a["segment_id"] for a in out["assignments"]]
    gmm = api.post("/cluster/fit", json={**body, "method": "gmm", "n_clusters": 2}).json()
    assert gmm["k"] == 2 and all(0.5 <= a["probability"] <= 1 for a in gmm["assignments"])
    bad = api.post("/cluster/fit", json={"features": {"a": [1.0, 2.0, 3.0], "b": [1.0, 2.0]}})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    few = api.post("/cluster/fit", json={"features": {"a": [1.0, 2.0]}})
    assert few.status_code == 422 and few.json()["error"]["code"] == "insufficient_data"

    segments = api.get("/segments").json()
    assert segments["run_id"] == result.run_id and segments["as_of"] == W12.isoformat()
    assert [f["name"] for f in segments["features"]] == list(FEATURE_NAMES)
    assert sum(s["size"] for s in segments["segments"]) == segments["students"] == len(stored)
    sizes = [s["size"] for s in segments["segments"]]
    assert sizes == sorted(sizes, reverse=True) and {s["status"] for s in segments["segments"]} == {"new"}
    assert segments["skipped"] == result.summary["skipped"]

    user_id = int(stored.index[0])
    mine = api.get(f"/users/{user_id}/segment").json()
    assert mine["segment_id"] == stored.loc[user_id, "segment_id"] and mine["run_id"] == result.run_id
    assert mine["distance"] == pytest.approx(stored.loc[user_id, "distance"])
    assert mine["name"] == result.summary["names"][str(mine["segment_id"])]
    skipped = int(result.summary["skipped_students"][0])
    gone = api.get(f"/users/{skipped}/segment")
    assert gone.status_code == 404 and gone.json()["error"]["details"]["reason"] == "not_segmented"
    assert api.get("/users/99999999/segment").json()["error"]["details"]["reason"] == "unknown_student"

    by_ids = api.post("/cluster/predict", json={"user_ids": [user_id, skipped, 99999999, user_id]}).json()
    assert by_ids["run"]["run_id"] == result.run_id and by_ids["run"]["method"] == "kmeans"
    assert [s["status"] for s in by_ids["students"]] == ["segmented", "not_segmented", "unknown_student"]
    assert by_ids["students"][0]["segment_id"] == mine["segment_id"]

    # Feature rows scored with the stored model land in the students' stored segments.
    sample = features.features.iloc[:25]
    rows = api.post("/cluster/predict", json={"features": {n: sample[n].tolist() for n in FEATURE_NAMES}})
    assert rows.status_code == 200, rows.text
    got = rows.json()["rows"]
    assert [r["segment_id"] for r in got] == stored["segment_id"].iloc[:25].tolist()
    np.testing.assert_allclose([r["distance"] for r in got], stored["distance"].iloc[:25], rtol=1e-9)

    both = api.post("/cluster/predict", json={"user_ids": [1], "features": {"a": [1.0]}})
    assert both.status_code == 422 and problems(both) == ["body.features", "body.user_ids"]
    neither = api.post("/cluster/predict", json={})
    assert neither.status_code == 422 and problems(neither) == ["body.features", "body.user_ids"]
    wrong = {n: [1.0] for n in FEATURE_NAMES[1:]} | {"shoe_size": [42.0]}
    names = api.post("/cluster/predict", json={"features": wrong})
    assert names.status_code == 422
    assert problems(names) == [f"body.features.{FEATURE_NAMES[0]}", "body.features.shoe_size"]


# --- quality on the default world ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, RunResult, RunResult]:
    """The default world (2,000 students, 16 weeks) segmented as of the end of week 15 and of week 16 (its last
    day), calibrate-irt before each."""
    params = WorldParams()
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('segments') / 'school.db'}")
    upgrade(engine)
    save_world(engine, generate_world(params))
    last = params.end_date - timedelta(days=1)
    assert last == sunday(params, 16)
    build_kpi(engine, last)
    week_15 = cluster(engine, sunday(params, 15))
    week_16 = cluster(engine, last)
    return engine, week_15, week_16


def test_segments_recover_the_learner_types(default_runs: tuple[Engine, RunResult, RunResult]) -> None:
    engine, _, last = default_runs
    truth = read_table(engine, "sim_student").set_index("user_id")["learner_type"]
    users = users_of(engine, last.run_id)
    ari = adjusted_rand_score(truth.loc[users.index], users["segment_id"])
    print(f"cluster-segments on the default world: k = {last.summary['segments']}, ARI = {ari:.3f}")
    assert last.summary["segments"] == 4 and last.summary["criterion"] == "silhouette"
    assert ari >= 0.8, ari
    names = last.summary["names"]
    majority = pd.crosstab(truth.loc[users.index], users["segment_id"]).idxmax(axis=1)  # type -> segment
    assert majority.nunique() == 4
    assert "high-achievers" in names[str(majority[1])]
    assert "strugglers" in names[str(majority[2])]
    assert "improvers" in names[str(majority[3])]
    assert "casual" in names[str(majority[4])]


def test_a_week_later_the_students_keep_their_segment_ids(default_runs: tuple[Engine, RunResult, RunResult]) -> None:
    engine, first, later = default_runs
    assert later.summary["persisting"] == sorted(first.summary["persisting"] + first.summary["new"])
    assert later.summary["new"] == [] and later.summary["vanished"] == []
    before, after = users_of(engine, first.run_id)["segment_id"], users_of(engine, later.run_id)["segment_id"]
    # The simulated learner types never change, so every student in both runs counts.
    both = before.index.intersection(after.index)
    kept = float((before.loc[both] == after.loc[both]).mean())
    print(f"cluster-segments a week later: {kept:.1%} of {len(both)} students keep their segment id")
    assert len(both) > 0.8 * WorldParams().students and kept >= 0.95, kept
