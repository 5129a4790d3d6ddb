"""fit-bayesian-growth and the goal-attainment metrics on SQLite and PostgreSQL, and the growth model's quality on the
default synthetic school (coverage of the students' true slopes, P against whether they reached their goal)."""

from __future__ import annotations

from datetime import date, timedelta
from functools import cache

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtr
from sqlalchemy import Engine

from learnpulse import metrics
from learnpulse.engines import growth as growth_engine
from learnpulse.errors import DiagnosticsFailedError, NotFoundError
from learnpulse.jobs import fit_bayesian_growth as job
from learnpulse.settings import load_settings
from learnpulse.store import growth as store
from learnpulse.store.buckets import complete_weeks
from learnpulse.store.world import save_world
from learnpulse.synthetic import World, WorldParams, generate_world, own_topic_accuracy
from tests.helpers import build_kpi, default_school, read_table, run_named

SMALL = WorldParams(students=250, weeks=10, seed=3)
SMALL_AS_OF = SMALL.end_date - timedelta(days=1)
FAST = {"lookback_weeks": 8}


@cache
def small_world() -> World:
    return generate_world(SMALL)


@pytest.fixture
def school(engine: Engine) -> Engine:
    save_world(engine, small_world())
    build_kpi(engine, SMALL_AS_OF)
    return engine


def test_window_is_the_complete_weeks_ending_by_the_as_of_date() -> None:
    # 2026-06-21 is a Sunday: its own week is complete and is the last; a Monday's window ends the week before.
    assert complete_weeks(date(2026, 6, 21), 12) == (date(2026, 3, 30), date(2026, 6, 15))
    assert complete_weeks(date(2026, 6, 22), 12) == (date(2026, 3, 30), date(2026, 6, 15))
    assert complete_weeks(date(2026, 6, 28), 2) == (date(2026, 6, 15), date(2026, 6, 22))
    # Week w's accuracy stands for its middle: the window's first Monday is time -0.5, the next Monday 0.5.
    assert job.time_of(date(2026, 3, 30), date(2026, 3, 30)) == -0.5
    assert job.time_of(date(2026, 4, 6), date(2026, 3, 30)) == 0.5


def test_fit_stores_the_model_p_and_sigma_and_a_rerun_replaces_them(school: Engine) -> None:
    result = run_named(school, job.NAME, SMALL_AS_OF, **FAST)
    meta = read_table(school, "growth_brms_meta")
    assert len(meta) == 1
    row = meta.iloc[0]
    assert row["status"] == "succeeded" and row["family"] == "gaussian"
    assert row["iter"] in (1000, job.RETRY_ITER_FACTOR * 1000)  # BRMS_ITER, or the retry with longer chains
    assert row["formula"] == "accuracy ~ time + (time | user)"
    assert set(row["fixed_effects"]) == {"Intercept", "time"}
    assert set(row["random_effects"]) == {"sd(Intercept)", "sd(time)", "cor(Intercept,time)"}
    for effect in (*row["fixed_effects"].values(), *row["random_effects"].values(), row["residual_sigma"]):
        assert effect["q2.5"] <= effect["estimate"] <= effect["q97.5"]
    assert row["diagnostics"]["max_rhat"] <= job.MAX_RHAT and row["diagnostics"]["divergences"] == 0
    assert "student_t" in row["priors"]["Intercept"]

    units = read_table(school, "growth_unit")
    goals = small_world().goals
    assert set(goals["user_id"]) <= set(units["user_id"])
    with_p = units[units["p"].notna()]
    assert with_p["p"].between(0, 1).all() and (with_p["sigma"] > 0).all()
    assert with_p["expected"].between(0, 1).all()
    assert set(units["flag"]) <= {"ok", "little_history", "no_history"}  # every simulated student has a live goal
    assert (units.loc[units["n_obs"] == 0, "flag"] == "no_history").all()
    assert (units.loc[units["n_obs"].between(1, job.MIN_WEEKS - 1), "flag"] == "little_history").all()
    assert result.summary["goal_probabilities"] == len(with_p)

    # weekly_kpi: the rows of the as-of week carry the students' P and sigma.
    kpi = read_table(school, "weekly_kpi")
    week = kpi[pd.to_datetime(kpi["week_start"]) == pd.Timestamp(SMALL_AS_OF - timedelta(days=6))]
    assert len(week) > 0
    merged = week.merge(units, on="user_id", suffixes=("_kpi", ""))
    np.testing.assert_allclose(merged["p_kpi"], merged["p"])
    np.testing.assert_allclose(merged["sigma_kpi"], merged["sigma"])

    # Same data, same seed: a re-run gives the same numbers and replaces the students' rows.
    run_named(school, job.NAME, SMALL_AS_OF, **FAST)
    again = read_table(school, "growth_unit")
    assert len(again) == len(units) and set(again["run_id"]) == {int(meta["run_id"].max()) + 1}
    np.testing.assert_allclose(
        again.sort_values("user_id")["p"].to_numpy(), units.sort_values("user_id")["p"].to_numpy()
    )


def test_the_binomial_family_with_the_gibbs_sampler(school: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """BRMS_FAMILY=binomial, BRMS_SAMPLER=gibbs: the run passes the gate and stores P for every goal; the rows are
    laid out as a grid with a column per student (shared weeks, or each student's own rows padded)."""
    layouts: list[dict[str, np.ndarray]] = []
    original = growth_engine._binomial_layout

    def record(data: growth_engine.GrowthData, *, grid: bool = False) -> dict[str, np.ndarray]:
        layouts.append(original(data, grid=grid))
        return layouts[-1]

    monkeypatch.setattr(growth_engine, "_binomial_layout", record)
    result = run_named(school, job.NAME, SMALL_AS_OF, brms_family="binomial", brms_sampler="gibbs", **FAST)
    assert layouts and all("code" not in layout for layout in layouts)
    row = read_table(school, "growth_brms_meta").iloc[0]
    assert row["status"] == "succeeded" and row["family"] == "binomial" and row["sampler"] == "gibbs"
    diagnostics = row["diagnostics"]
    assert diagnostics["sampler"] == "gibbs" and diagnostics["max_rhat"] <= job.MAX_RHAT
    assert 0.5 <= diagnostics["units_acceptance"] < 1
    units = read_table(school, "growth_unit")
    with_p = units[units["p"].notna()]
    assert with_p["p"].between(0, 1).all() and (with_p["sigma"] > 0).all()
    assert result.summary["goal_probabilities"] == len(with_p) > 0


def test_failed_diagnostics_are_recorded_and_the_previous_model_stays(
    school: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_named(school, job.NAME, SMALL_AS_OF, **FAST)
    before = read_table(school, "growth_unit")
    kpi_before = read_table(school, "weekly_kpi", ["user_id", "week_start"])
    monkeypatch.setattr(job, "MAX_RHAT", 0.5)  # no chain can pass: R-hat is about 1 at best
    monkeypatch.setattr(job, "RETRY_ITER_FACTOR", 1)  # and no retry with longer chains
    with pytest.raises(DiagnosticsFailedError, match="max R-hat"):
        run_named(school, job.NAME, SMALL_AS_OF, **FAST)
    meta = read_table(school, "growth_brms_meta", ["run_id"])
    assert list(meta["status"]) == ["succeeded", "failed"] and list(meta["sampler"]) == ["nuts", "nuts"]
    failed = meta.iloc[1]
    assert "diagnostics failed" in failed["reason"] and failed["diagnostics"]["max_rhat"] > 0.5
    runs = read_table(school, "job_run", ["run_id"])
    assert runs.iloc[-1]["status"] == "failed" and "diagnostics_failed" in runs.iloc[-1]["error"]
    pd.testing.assert_frame_equal(read_table(school, "growth_unit"), before)
    pd.testing.assert_frame_equal(read_table(school, "weekly_kpi", ["user_id", "week_start"]), kpi_before)
    with school.connect() as conn:
        in_use = store.latest_fit(conn)
    assert in_use is not None and in_use["run_id"] == int(meta.iloc[0]["run_id"])


def test_metrics_paths_give_the_same_shape_and_honest_flags(school: Engine) -> None:
    settings = load_settings(**FAST)
    users = [int(u) for u in small_world().students["user_id"][:40]]
    with school.connect() as conn, pytest.raises(NotFoundError, match="fit-bayesian-growth"):
        metrics.compute_goal_attainment_probability(conn, users[0], settings, as_of=SMALL_AS_OF, use_bayesian=True)
    run_named(school, job.NAME, SMALL_AS_OF, **FAST)
    with school.connect() as conn:
        bayes = [
            metrics.compute_goal_attainment_probability(conn, u, settings, as_of=SMALL_AS_OF, use_bayesian=True)
            for u in users
        ]
        trend = [
            metrics.compute_goal_attainment_probability(conn, u, settings, as_of=SMALL_AS_OF, use_bayesian=False)
            for u in users
        ]
        stranger = metrics.bayesian_answers(conn, [999_999], as_of=SMALL_AS_OF, target=0.6, deadline=SMALL.end_date)
        easy, hard = (
            metrics.bayesian_answers(conn, users[:1], as_of=SMALL_AS_OF, target=t, deadline=SMALL.end_date)[0]
            for t in (0.2, 0.9)
        )
    assert [set(b.to_dict()) for b in bayes] == [set(t.to_dict()) for t in trend]
    assert {b.method for b in bayes} == {"bayesian"} and {t.method for t in trend} == {"trend"}
    units = read_table(school, "growth_unit").set_index("user_id")
    for b in bayes:  # the metric reads the same model the job wrote
        assert b.p == pytest.approx(units.at[b.user_id, "p"], abs=1e-9)
    for t in trend:
        if t.n_weeks < job.MIN_WEEKS:
            assert t.p is None and t.flag in {"little_history", "no_history"}
        else:
            assert t.p is not None and 0 <= t.p <= 1 and t.sigma is not None and t.sigma > 0
    # A student the model never saw gets the population's answer, flagged, not a crash or a certainty.
    assert stranger[0].flag == "no_history" and stranger[0].p is not None and 0.01 < stranger[0].p < 0.99
    assert easy.p is not None and hard.p is not None and easy.p > hard.p


# --- quality on the default world ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_growth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, World, date]:
    return default_school(tmp_path_factory.mktemp("growth"), job.NAME)


def _true_slopes(world: World, weekly: pd.DataFrame, first: date) -> pd.Series:
    """Each student's true slope: least squares of their expected accuracy on their own topics (the simulator's
    latent trajectory, anomalies left out) over the window weeks in which they practised."""
    items = world.items.sort_values("item_id")
    n_topics = world.params.n_topics
    topic_start = np.searchsorted(items["topic_id"].to_numpy(), np.arange(1, n_topics + 1))
    topic_count = np.bincount(items["topic_id"].to_numpy() - 1, minlength=n_topics)
    topics = world.attempts.groupby("user_id")["topic_id"].unique()
    students = world.students.set_index("user_id")
    offset = (first - world.params.start_date).days // 7
    slopes = {}
    for user, rows in weekly.groupby("user_id"):
        w = ((rows["week"] - (first - date(1970, 1, 1)).days) // 7).to_numpy()
        studied = np.full((len(w), n_topics), n_topics)
        own = np.sort(topics[user]) - 1
        studied[:, : len(own)] = own
        theta = students.at[user, "theta0"] + students.at[user, "growth"] * (w + offset)
        acc = own_topic_accuracy(
            theta,
            studied,
            topic_start=topic_start,
            topic_count=topic_count,
            a=items["a"].to_numpy(),
            b=items["b"].to_numpy(),
        )
        slopes[user] = np.polyfit(w, acc, 1)[0]
    return pd.Series(slopes)


def test_90pc_intervals_of_the_true_slopes_cover_them_85_to_95pc_of_the_time(
    default_growth: tuple[Engine, World, date],
) -> None:
    engine, world, as_of = default_growth
    first, last = complete_weeks(as_of, 12)
    with engine.connect() as conn:
        weekly = store.load_weekly_accuracy(conn, first_week=first, last_week=last)
    counts = weekly.groupby("user_id").size()
    weekly = weekly[weekly["user_id"].isin(counts[counts >= job.MIN_WEEKS].index)]
    truth = _true_slopes(world, weekly, first)
    units = read_table(engine, "growth_unit").set_index("user_id").loc[truth.index]
    z = (truth - units["m1"]) / np.sqrt(units["v11"])
    coverage = float(np.mean(np.abs(z) <= 1.6449))
    print(f"coverage of 90% slope intervals: {coverage:.3f} over {len(z)} students (z mean {z.mean():.2f})")
    assert 0.85 <= coverage <= 0.95


def _reliability(p: pd.Series, reached: pd.Series) -> pd.DataFrame:
    groups = pd.qcut(p.rank(method="first"), 10, labels=False)
    return (
        pd.DataFrame({"p": p, "reached": reached.astype(float)})
        .groupby(groups)
        .agg(predicted=("p", "mean"), observed=("reached", "mean"), n=("p", "size"))
    )


def test_p_beats_the_trend_path_in_brier_score(default_growth: tuple[Engine, World, date]) -> None:
    engine, world, as_of = default_growth
    reached = world.students.set_index("user_id")["goal_reached"]
    users = [int(u) for u in world.students["user_id"]]
    with engine.connect() as conn:
        bayes = pd.DataFrame([a.to_dict() for a in metrics.bayesian_answers(conn, users, as_of=as_of)])
        trend = pd.DataFrame([a.to_dict() for a in metrics.trend_answers(conn, users, as_of=as_of, lookback_weeks=12)])
    both = bayes.merge(trend, on="user_id", suffixes=("_b", "_t")).dropna(subset=["p_b", "p_t"])
    outcome = both["user_id"].map(reached).astype(float)
    brier_b = float(((both["p_b"] - outcome) ** 2).mean())
    brier_t = float(((both["p_t"] - outcome) ** 2).mean())
    print(f"Brier: Bayesian {brier_b:.4f}, trend {brier_t:.4f} on {len(both)} students")
    assert brier_b < brier_t


@pytest.mark.xfail(
    strict=True,
    reason="measured here (the gaussian job, every student with a live goal, those without weeks in the window "
    "included): the top decile off by 0.45; on the students with history (bench/growth_calibration.py) 0.29 "
    "(gaussian) / 0.23 (binomial). The simulator sets each goal at the accuracy the student would reach growing at "
    "their learner type's mean rate, so reaching it means growing faster than one's type; the brms formula's single "
    "normal population shrinks every slope toward the mixture's mean, a per-type bias of P. At 6,000 students "
    "(binomial) the same formula fitted within each true learner type, with one-week drops screened out, meets the "
    "bar (every decile within 0.036); within the cluster-segments segments (ARI 0.81) 0.11-0.13; a segment-informed "
    "growth mixture 0.09 (bench/growth_mixture.py). Meeting it needs the learner type in the growth model (a model "
    "decision); and with ~1,800 students even a perfectly calibrated P meets 0.05 in every decile in only 30-38% of "
    "outcome draws (92% at ~5,500)",
)
def test_p_is_calibrated_against_reaching_the_goal(default_growth: tuple[Engine, World, date]) -> None:
    engine, world, _ = default_growth
    units = read_table(engine, "growth_unit").dropna(subset=["p"])
    reached = units["user_id"].map(world.students.set_index("user_id")["goal_reached"])
    table = _reliability(units["p"], reached)
    print(table)
    enough = table[table["n"] >= 50]
    assert (enough["predicted"] - enough["observed"]).abs().max() <= 0.05


def test_p_matches_the_normal_tail_of_the_stored_moments(default_growth: tuple[Engine, World, date]) -> None:
    """P in growth_unit is exactly Phi((m . x_T - target) / sd) from the stored moments (gaussian family)."""
    engine, _, as_of = default_growth
    first, _ = complete_weeks(as_of, 12)
    units = read_table(engine, "growth_unit").dropna(subset=["p"])
    t = job.time_of(pd.Series(units["deadline"]), first)
    mean = units["m0"] + units["m1"] * t
    sd = np.sqrt(units["v00"] + 2 * t * units["v01"] + t * t * units["v11"])
    np.testing.assert_allclose(units["p"], ndtr((mean - units["target"]) / sd), atol=1e-12)
