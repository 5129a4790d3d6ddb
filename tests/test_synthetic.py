"""The synthetic school: deterministic, faithful to its own truth, and stored identically on both backends."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Connection, Engine, Table, func, insert, select

from learnpulse.errors import ConflictError, InvalidInputError
from learnpulse.store.db import make_engine, transaction
from learnpulse.store.schema import upgrade
from learnpulse.store.tables import (
    MODEL_TABLES,
    SURVIVAL_TABLES,
    attempt,
    ingest_batch,
    job_state,
    sim_anomaly,
    sim_item,
    sim_student,
    sim_student_week,
    sim_world,
    user_goal,
    weekly_kpi,
)
from learnpulse.store.world import save_world, world_is_present
from learnpulse.synthetic import (
    World,
    WorldParams,
    covariate_moments,
    generate_world,
    own_topic_accuracy,
)

SMALL = WorldParams(students=120, weeks=6, block_students=50)


@pytest.fixture(scope="module")
def world() -> World:
    """The default world (2,000 students, 16 weeks, seed 42)."""
    return generate_world(WorldParams())


def local_days(w: World) -> pd.Series:
    """Local calendar day of each attempt, as days since start_date."""
    local = w.attempts["answered_at"].dt.tz_convert(w.params.timezone).dt.tz_localize(None).dt.normalize()
    return (local - pd.Timestamp(w.params.start_date)).dt.days


def assert_worlds_equal(a: World, b: World) -> None:
    for name in ("attempts", "goals", "students", "items", "student_weeks", "anomalies"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True, obj=name)


# --- determinism ---------------------------------------------------------------------------------------------


def test_same_parameters_give_the_identical_world_and_another_seed_a_different_one() -> None:
    params = WorldParams(students=300, weeks=8, seed=7)
    first, second = generate_world(params), generate_world(params)
    assert_worlds_equal(first, second)
    other = generate_world(WorldParams(students=300, weeks=8, seed=8))
    assert not first.attempts[["user_id", "item_id", "is_correct"]].equals(
        other.attempts[["user_id", "item_id", "is_correct"]]
    )
    assert not np.allclose(first.students["theta0"], other.students["theta0"])


def test_students_are_generated_in_independent_blocks_so_a_bigger_world_extends_a_smaller_one() -> None:
    done: list[int] = []
    big = generate_world(WorldParams(students=500, weeks=6, block_students=200), progress=done.append)
    small = generate_world(WorldParams(students=400, weeks=6, block_students=200))
    assert done == [200, 400, 500]
    pd.testing.assert_frame_equal(big.items, small.items)
    pd.testing.assert_frame_equal(big.students.iloc[:400], small.students)
    pd.testing.assert_frame_equal(big.goals.iloc[:400], small.goals)
    mine = big.attempts[big.attempts["user_id"] <= 400].drop(columns="attempt_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, small.attempts.drop(columns="attempt_id"))
    weeks = big.student_weeks[big.student_weeks["user_id"] <= 400].reset_index(drop=True)
    pd.testing.assert_frame_equal(weeks, small.student_weeks)


def test_parameters_round_trip_through_json_and_bad_ones_are_refused() -> None:
    params = WorldParams(students=10, seed=3)
    truth = generate_world(params).truth_parameters()
    assert WorldParams.from_json_dict(json.loads(json.dumps(truth))["params"]) == params
    with pytest.raises(InvalidInputError, match="not a Monday"):
        WorldParams(start_date=date(2026, 3, 3))
    with pytest.raises(InvalidInputError, match="timezone"):
        WorldParams(timezone="Mars/Olympus")


# --- shape of the frames -------------------------------------------------------------------------------------


def test_frames_have_the_documented_columns_types_and_ids(world: World) -> None:
    a = world.attempts
    assert dict(a.dtypes.astype(str)) == {
        "attempt_id": "int64",
        "user_id": "int64",
        "item_id": "int64",
        "topic_id": "int64",
        "is_correct": "bool",
        "answered_at": "datetime64[us, UTC]",
        "time_spent_s": "float64",
    }
    for frame, table in (
        (world.students, sim_student),
        (world.items, sim_item),
        (world.student_weeks, sim_student_week),
        (world.anomalies, sim_anomaly),
    ):
        assert list(frame.columns) == [c.name for c in table.columns]
    assert list(world.goals.columns) == ["user_id", "target", "deadline"]
    n = world.params.students
    assert a["attempt_id"].tolist() == list(range(1, len(a) + 1))
    assert world.students["user_id"].tolist() == list(range(1, n + 1))
    assert set(a["user_id"]) == set(range(1, n + 1))  # every student answers on the enrolment day
    assert a["item_id"].between(1, world.params.n_items).all()
    # attempt ids follow (answered_at, user_id)
    order = a.sort_values(["answered_at", "user_id"], kind="stable")["attempt_id"]
    assert order.tolist() == a["attempt_id"].tolist()
    topic_of = world.items.set_index("item_id")["topic_id"]
    assert (a["topic_id"].to_numpy() == topic_of.loc[a["item_id"]].to_numpy()).all()
    assert 8_000_000 <= len(a) / n * 50_000 <= 12_000_000  # ~10 M attempts at 50,000 students
    assert 0.04 <= a["time_spent_s"].isna().mean() <= 0.06
    json.dumps(world.truth_parameters())


def test_items_follow_the_2pl_ranges_and_students_study_a_varying_subset_of_topics(world: World) -> None:
    it = world.items
    assert it["a"].between(0.4, 2.5).all() and 0.85 < it["a"].median() < 1.2
    assert it["topic_id"].nunique() == world.params.n_topics
    studied = world.attempts.groupby("user_id")["topic_id"].nunique()
    assert (studied <= world.students.set_index("user_id")["topics"].loc[studied.index]).all()
    assert studied.min() == 1 and studied.max() == world.params.n_topics


# --- the truth is what happened ------------------------------------------------------------------------------


def test_answers_agree_with_the_irt_model(world: World) -> None:
    a = world.attempts.copy()
    a["week_start"] = pd.Timestamp(world.params.start_date) + pd.to_timedelta(local_days(world) // 7 * 7, "D")
    weeks = world.student_weeks.assign(week_start=lambda f: f["week_start"].astype("datetime64[us]"))
    a["week_start"] = a["week_start"].astype("datetime64[us]")
    a = a.merge(weeks, on=["user_id", "week_start"], how="left", validate="many_to_one")
    assert a["theta"].notna().all()  # every answer falls in a week of the student's truth
    a = a.merge(world.items[["item_id", "a", "b"]], on="item_id")
    p = 1 / (1 + np.exp(-a["a"] * (a["theta"] - a["b"])))
    bins = pd.cut(p, np.linspace(0, 1, 11))
    table = a.groupby(bins, observed=True).agg(n=("is_correct", "size"), obs=("is_correct", "mean"))
    table["exp"] = p.groupby(bins, observed=True).mean()
    table = table[table["n"] >= 2000]
    assert len(table) >= 8
    assert (table["obs"] - table["exp"]).abs().max() < 0.02, table


def test_students_answer_only_between_enrolment_and_churn(world: World) -> None:
    days = local_days(world)
    per = pd.DataFrame({"user_id": world.attempts["user_id"], "day": days}).groupby("user_id")["day"]
    s = world.students.set_index("user_id")
    first, last = per.min(), per.max()
    assert (first == s["enrol_day"]).all()
    churned = s["churn_day"].notna()
    assert (last[churned] < s.loc[churned, "churn_day"].astype(int)).all()
    assert (last < world.params.days).all()
    # the stayers are still around in the last week; the churned are not
    assert (last[~churned] >= world.params.days - 21).mean() > 0.9


def test_churn_follows_the_hazard_and_its_rate_is_realistic(world: World) -> None:
    s = world.students
    churned = s["churn_day"].notna()
    assert 0.2 <= churned.mean() <= 0.4
    assert s.loc[churned, "hazard_lp"].mean() > s.loc[~churned, "hazard_lp"].mean() + 0.5
    mom = covariate_moments(world.params)
    p = world.params
    lp = sum(
        beta * (s[name] - mom[name]["mean"]) / mom[name]["sd"]
        for name, beta in (
            ("engagement", p.hazard_beta_engagement),
            ("theta0", p.hazard_beta_theta0),
            ("regularity", p.hazard_beta_regularity),
        )
    )
    np.testing.assert_allclose(s["hazard_lp"], lp, rtol=0, atol=1e-12)
    truth = world.truth_parameters()["hazard"]
    assert truth["beta"] == {"engagement": -0.6, "theta0": -0.3, "regularity": -0.4}


def test_goals_have_deadlines_after_the_world_and_a_true_outcome(world: World) -> None:
    s = world.students
    end = pd.Timestamp(world.params.end_date)
    gap = (s["goal_deadline"] - end).dt.days
    assert gap.between(14, 84).all() and gap.nunique() > 30
    assert s["goal_target"].between(0.3, 0.95).all()
    assert 0.3 <= s["goal_reached"].mean() <= 0.7
    assert (s["goal_reached"] == (s["accuracy_at_deadline"] >= s["goal_target"])).all()
    # Accuracy is on the student's own topics: recompute it for the students whose attempts show all their topics.
    week = (s["goal_deadline"] - pd.Timestamp(world.params.start_date)).dt.days // 7
    seen = world.attempts.groupby("user_id")["topic_id"].unique()
    full = s[s["user_id"].map(seen.map(len)) == s["topics"]]
    assert len(full) > 0.8 * len(s)
    items = world.items.sort_values("item_id")
    n_topics = world.params.n_topics
    topic_start = np.searchsorted(items["topic_id"].to_numpy(), np.arange(1, n_topics + 1))
    topic_count = np.bincount(items["topic_id"].to_numpy() - 1, minlength=n_topics)
    studied = np.full((len(full), n_topics), n_topics)
    for row, user in enumerate(full["user_id"]):
        topics = np.sort(seen[user]) - 1
        studied[row, : len(topics)] = topics
    acc = own_topic_accuracy(
        (full["theta0"] + full["growth"] * week[full.index]).to_numpy(),
        studied,
        topic_start=topic_start,
        topic_count=topic_count,
        a=items["a"].to_numpy(),
        b=items["b"].to_numpy(),
    )
    np.testing.assert_allclose(full["accuracy_at_deadline"], acc, atol=1e-12)
    pd.testing.assert_series_equal(world.goals["target"], s["goal_target"], check_names=False)


def test_anomaly_weeks_show_a_clear_accuracy_drop(world: World) -> None:
    an, p = world.anomalies, world.params
    assert 0.01 <= len(an) / len(world.student_weeks) <= 0.05
    assert (an["kind"] == "drop").all() and (an["effect"] == -2.5).all()
    week = (an["week_start"] - pd.Timestamp(p.start_date)).dt.days // 7
    enrol_week = world.students.set_index("user_id").loc[an["user_id"], "enrol_day"].to_numpy() // 7
    assert (week.to_numpy() >= enrol_week + 4).all() and (week <= p.weeks - 2).all()

    obs = pd.DataFrame(
        {"user_id": world.attempts["user_id"], "week": local_days(world) // 7, "c": world.attempts["is_correct"]}
    )
    acc = obs.groupby(["user_id", "week"])["c"].mean()
    drops = []
    for user, w in zip(an["user_id"], week, strict=True):
        around = [acc.get((user, w + d)) for d in (-1, 1)]
        around = [x for x in around if x is not None]
        if around:
            drops.append(np.mean(around) - acc[(user, w)])
    assert len(drops) > 0.9 * len(an)
    assert np.mean(drops) > 0.25
    assert np.mean(np.array(drops) > 0) > 0.85


def test_learner_types_differ_clearly_in_behaviour(world: World) -> None:
    s = world.students.set_index("user_id")
    obs = pd.DataFrame({"user_id": world.attempts["user_id"], "day": local_days(world)})
    active_days = obs.groupby("user_id")["day"].nunique()
    span = s["churn_day"].fillna(world.params.days).astype(float) - s["enrol_day"]
    per_student = pd.DataFrame(
        {
            "type": s["learner_type_name"],
            "active": active_days / span,
            "per_day": obs.groupby("user_id").size() / active_days,
            "accuracy": world.attempts.groupby("user_id")["is_correct"].mean(),
        }
    )
    by = per_student.groupby("type").mean()
    active = by["active"].sort_values()
    assert list(active.index) == [
        "casual dabblers",
        "irregular strugglers",
        "fast improvers",
        "steady high-achievers",
    ]
    assert active.diff().dropna().min() > 0.1
    assert by["per_day"].sort_values().diff().dropna().min() > 0.7
    assert by.loc["steady high-achievers", "accuracy"] - by.loc["irregular strugglers", "accuracy"] > 0.4
    growth = s.groupby("learner_type_name")["growth"].mean()
    assert growth.idxmax() == "fast improvers" and growth.max() > 3 * growth.drop("fast improvers").max()


def test_answers_cluster_in_the_local_evening_and_some_fall_just_after_local_midnight(world: World) -> None:
    utc_hour = world.attempts["answered_at"].dt.hour
    local_hour = world.attempts["answered_at"].dt.tz_convert(world.params.timezone).dt.hour
    # 15:00-15:59 UTC is 00:00-00:59 in Seoul: the next local day, though still "last night" for the student
    assert (utc_hour == 15).mean() > 0.005
    assert (utc_hour == 14).mean() > 0.03  # and 23:xx local, just before midnight
    assert local_hour.between(18, 23).mean() > 0.6


# --- storing a world -----------------------------------------------------------------------------------------


def read_table(engine: Engine, table: Table, order: list[str]) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(select(table).order_by(*[table.c[c] for c in order]))
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def stored_attempts(engine: Engine) -> pd.DataFrame:
    frame = read_table(engine, attempt, ["attempt_id"])
    frame["answered_at"] = pd.to_datetime(frame["answered_at"], utc=True).astype("datetime64[us, UTC]")
    frame["time_spent_s"] = frame["time_spent_s"].astype("float64")
    frame["is_correct"] = frame["is_correct"].astype(bool)
    return frame


def stored_students(engine: Engine) -> pd.DataFrame:
    frame = read_table(engine, sim_student, ["user_id"])
    frame["churn_day"] = frame["churn_day"].astype("Int64")
    frame["goal_deadline"] = pd.to_datetime(frame["goal_deadline"]).astype("datetime64[s]")
    frame["learner_type_name"] = frame["learner_type_name"].astype(str)
    frame["goal_reached"] = frame["goal_reached"].astype(bool)
    return frame


def count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_saved_world_reads_back_identically(engine: Engine) -> None:
    w = generate_world(SMALL)
    written: list[int] = []
    result = save_world(engine, w, progress=written.append)
    assert result.already_present is False and result.attempts == len(w.attempts) == sum(written)
    assert (result.students, result.items) == (SMALL.students, SMALL.n_items)

    back = stored_attempts(engine)
    assert (back["batch_id"] == result.batch_id).all()
    pd.testing.assert_frame_equal(back.drop(columns="batch_id"), w.attempts, check_exact=True)
    pd.testing.assert_frame_equal(stored_students(engine), w.students, check_exact=True)
    goals = read_table(engine, user_goal, ["user_id"])
    assert goals["target"].tolist() == w.goals["target"].tolist()
    assert goals["deadline"].tolist() == [d.date() for d in w.goals["deadline"]]
    assert count(engine, sim_student_week) == len(w.student_weeks)
    assert count(engine, sim_item) == SMALL.n_items
    assert count(engine, sim_anomaly) == len(w.anomalies)
    with engine.connect() as conn:
        row = conn.execute(select(sim_world)).one()
        batch = conn.execute(select(ingest_batch)).one()
    assert row.world_id == 1 and row.seed == SMALL.seed and row.start_date == SMALL.start_date
    assert row.parameters == json.loads(json.dumps(w.truth_parameters()))
    assert batch.kind == "generate" and batch.source == "generate --students 120 --weeks 6 --seed 42"
    assert batch.rows_in == batch.rows_added == len(w.attempts)


@pytest.mark.postgres
def test_sqlite_and_postgresql_store_the_same_world(sqlite_url: str, pg_schema_url: str) -> None:
    w = generate_world(SMALL)
    frames: list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = []
    for url in (sqlite_url, pg_schema_url):
        eng = make_engine(url)
        upgrade(eng)
        save_world(eng, w)
        frames.append(
            (
                stored_attempts(eng).drop(columns="batch_id"),
                stored_students(eng),
                read_table(eng, sim_student_week, ["user_id", "week_start"]),
            )
        )
        eng.dispose()
    for lite, pg in zip(frames[0], frames[1], strict=True):
        pd.testing.assert_frame_equal(lite, pg, check_exact=True)


def test_saving_the_same_world_twice_is_a_no_op(engine: Engine) -> None:
    w = generate_world(SMALL)
    assert not world_is_present(engine, SMALL)
    first = save_world(engine, w)
    assert world_is_present(engine, SMALL)
    again = save_world(engine, generate_world(SMALL), progress=lambda _: pytest.fail("wrote rows"))
    assert again.already_present is True and again.batch_id == first.batch_id
    assert count(engine, attempt) == len(w.attempts) and count(engine, ingest_batch) == 1


def test_a_different_world_needs_replace_which_clears_everything_derived(engine: Engine) -> None:
    old = generate_world(SMALL)
    save_world(engine, old)
    new_params = WorldParams(students=80, weeks=5, seed=9, block_students=50)
    new = generate_world(new_params)
    with transaction(engine) as conn:
        conn.execute(
            insert(weekly_kpi).values(
                user_id=1,
                week_start=date(2026, 3, 2),
                attempts=1,
                correct=1,
                accuracy=1.0,
                active_days=1,
                study_minutes=1.0,
                topics=1,
            )
        )
        conn.execute(insert(job_state).values(job="build-kpi", state={"watermark": 1}, updated_at=datetime.now(UTC)))
        _insert_churn_results(conn)

    with pytest.raises(ConflictError, match="--replace") as info:
        save_world(engine, new)
    assert info.value.details["stored_world"]["seed"] == 42
    assert count(engine, attempt) == len(old.attempts)  # untouched

    result = save_world(engine, new, replace=True)
    assert result.already_present is False
    assert count(engine, attempt) == len(new.attempts)
    assert count(engine, sim_student) == count(engine, user_goal) == 80
    assert count(engine, weekly_kpi) == count(engine, job_state) == 0
    assert {t.name: count(engine, t) for t in MODEL_TABLES} == dict.fromkeys((t.name for t in MODEL_TABLES), 0)
    assert count(engine, ingest_batch) == 1
    assert world_is_present(engine, new_params) and not world_is_present(engine, SMALL)
    pd.testing.assert_frame_equal(stored_attempts(engine).drop(columns="batch_id"), new.attempts)


def _insert_churn_results(conn: Connection) -> None:
    """One row in each table of the churn model (a stored fit, a score, an alert) of the old world."""
    day = date(2026, 4, 1)
    fit_meta, score, alert = SURVIVAL_TABLES
    json_columns = {"landmarks", "covariates", "coefficients", "heldout", "calibration", "baseline"}
    conn.execute(
        insert(fit_meta).values(
            run_id=1,
            as_of=day,
            lookback_days=90,
            threshold_days=14,
            formula="Surv(t, churn) ~ x",
            n_rows=10,
            n_students=5,
            n_events=2,
            log_likelihood=-1.0,
            standardization={},
            model={},
            **{key: [] for key in json_columns},
        )
    )
    conn.execute(
        insert(score).values(
            as_of=day, user_id=1, run_id=1, s=0.5, linear_predictor=0.1, days_since_last_attempt=2, top_factors=[]
        )
    )
    conn.execute(
        insert(alert).values(
            alert_date=day, user_id=1, run_id=2, last_active_day=day, days_inactive=0, tier="high", reasons=[]
        )
    )
    assert all(count_in(conn, t) == 1 for t in SURVIVAL_TABLES)


def count_in(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_attempts_that_are_not_a_generated_world_are_never_overwritten_silently(engine: Engine) -> None:
    with transaction(engine) as conn:
        values: dict[str, Any] = {
            "batch_id": 1,
            "kind": "attempts",
            "source": "real.csv",
            "rows_in": 1,
            "rows_added": 1,
            "loaded_at": datetime.now(UTC),
        }
        conn.execute(insert(ingest_batch).values(**values))
        conn.execute(
            insert(attempt).values(
                attempt_id=1,
                user_id=1,
                item_id=1,
                topic_id=1,
                is_correct=True,
                answered_at=datetime(2026, 3, 2, tzinfo=UTC) + timedelta(hours=3),
                time_spent_s=None,
                batch_id=1,
            )
        )
    with pytest.raises(ConflictError, match="1 attempts"):
        save_world(engine, generate_world(SMALL))
    assert count(engine, attempt) == 1
    assert math.isclose(save_world(engine, generate_world(SMALL), replace=True).attempts, count(engine, attempt))
