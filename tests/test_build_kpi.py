"""build-kpi: arithmetic, time-zone bucketing, incremental = full, idempotence, atomicity, locking."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from learnpulse.errors import ConflictError, JobLockedError
from learnpulse.store import kpi
from learnpulse.store.db import make_engine, transaction
from learnpulse.store.locks import job_lock
from learnpulse.store.schema import upgrade
from tests.helpers import attempts_frame, build_kpi, count, load_batch, read_table
from tests.kpi_oracle import expected_daily, expected_weekly

D = date.fromisoformat


def test_hand_computed_week_with_seoul_edges(engine: Engine) -> None:
    load_batch(
        engine,
        attempts_frame(
            [
                (7, 1, True, "2026-03-08T23:30:00Z", 30.0),  # Sunday 23:30 UTC = Monday 08:30 in Seoul
                (7, 1, False, "2026-03-08T14:59:59Z", None),  # Sunday 23:59:59 in Seoul: previous week
                (7, 2, True, "2026-03-08T15:00:00Z", 90.0),  # Monday 00:00 in Seoul
                (7, 2, False, "2026-03-10T03:00:00+09:00", 60.0),  # Tuesday in Seoul, given with an offset
                (8, 1, True, "2026-03-15T14:00:00Z", 12.0),  # Sunday 23:00 in Seoul: still week of 03-09
            ]
        ),
    )
    result = build_kpi(engine, D("2026-03-31"))
    assert result.summary["mode"] == "full"

    daily = read_table(engine, "features_topic_daily", ["user_id", "topic_id", "day"])
    assert [tuple(r) for r in daily[["user_id", "topic_id", "day", "attempts", "correct"]].itertuples(index=False)] == [
        (7, 1, D("2026-03-08"), 1, 0),
        (7, 1, D("2026-03-09"), 1, 1),
        (7, 2, D("2026-03-09"), 1, 1),
        (7, 2, D("2026-03-10"), 1, 0),
        (8, 1, D("2026-03-15"), 1, 1),
    ]
    # A missing time counts towards attempts but not towards study time.
    assert daily.loc[0, "time_spent_s"] == 0.0 and daily.loc[0, "timed_attempts"] == 0

    weekly = read_table(engine, "weekly_kpi", ["user_id", "week_start"]).set_index(["user_id", "week_start"])
    assert list(weekly.index) == [(7, D("2026-03-02")), (7, D("2026-03-09")), (8, D("2026-03-09"))]
    week = weekly.loc[(7, D("2026-03-09"))]
    assert week["attempts"] == 3 and week["correct"] == 2
    assert week["accuracy"] == pytest.approx(2 / 3)
    assert week["active_days"] == 2 and week["topics"] == 2
    assert week["study_minutes"] == pytest.approx((30 + 90 + 60) / 60)
    assert week["i_t"] == pytest.approx(100 * 3 / 5) and week["i_t_source"] == "accuracy"
    assert weekly.loc[(7, D("2026-03-02")), "i_t"] == pytest.approx(100 * 1 / 3)
    assert pd.isna(week["p"]) and pd.isna(week["s"]) and pd.isna(week["sigma"])


def test_as_of_excludes_later_days_until_a_later_run(engine: Engine) -> None:
    load_batch(
        engine,
        attempts_frame(
            [(1, 1, True, "2026-03-02T10:00:00+09:00", 5.0), (1, 1, True, "2026-03-04T10:00:00+09:00", 5.0)]
        ),
    )
    build_kpi(engine, D("2026-03-03"))
    assert read_table(engine, "weekly_kpi")["attempts"].tolist() == [1]
    # No new batch, but the held-back attempt of 03-04 enters when as-of moves past it.
    result = build_kpi(engine, D("2026-03-05"))
    assert result.summary["mode"] == "incremental"
    assert read_table(engine, "weekly_kpi")["attempts"].tolist() == [2]


def test_earlier_as_of_needs_full(engine: Engine) -> None:
    load_batch(
        engine,
        attempts_frame(
            [(1, 1, True, "2026-03-02T10:00:00+09:00", 5.0), (1, 1, True, "2026-03-10T10:00:00+09:00", 5.0)]
        ),
    )
    build_kpi(engine, D("2026-03-31"))
    with pytest.raises(ConflictError, match="--full"):
        build_kpi(engine, D("2026-03-05"))
    build_kpi(engine, D("2026-03-05"), full=True)
    assert read_table(engine, "weekly_kpi")["week_start"].tolist() == [D("2026-03-02")]


def test_dst_zone_buckets_by_local_wall_clock(engine: Engine) -> None:
    # New York leaves EST (-5) for EDT (-4) at 2026-03-08 07:00 UTC.
    load_batch(
        engine,
        attempts_frame(
            [
                (1, 1, True, "2026-03-08T04:30:00Z", 1.0),  # 23:30 EST on Saturday 03-07
                (1, 1, True, "2026-03-09T03:30:00Z", 1.0),  # 23:30 EDT on Sunday 03-08
                (1, 1, True, "2026-03-09T04:30:00Z", 1.0),  # 00:30 EDT on Monday 03-09
                (1, 1, True, "2026-11-01T04:30:00Z", 1.0),  # 00:30 EDT on Sunday 11-01
                (1, 1, True, "2026-11-02T04:30:00Z", 1.0),  # 23:30 EST on Sunday 11-01
            ]
        ),
    )
    build_kpi(engine, D("2026-12-31"), tz="America/New_York")
    daily = read_table(engine, "features_topic_daily", ["day"])
    assert daily["day"].tolist() == [D("2026-03-07"), D("2026-03-08"), D("2026-03-09"), D("2026-11-01")]
    assert daily["attempts"].tolist() == [1, 1, 1, 2]


def _random_attempts(rng: np.random.Generator, n: int, first_id: int) -> pd.DataFrame:
    start = pd.Timestamp("2026-03-01T00:00:00Z").value // 1000
    stamps = start + rng.integers(0, 40 * 86_400 * 1_000_000, n)
    times = rng.uniform(1, 300, n)
    return pd.DataFrame(
        {
            "attempt_id": np.arange(first_id, first_id + n, dtype=np.int64),
            "user_id": rng.integers(1, 30, n),
            "item_id": rng.integers(1, 50, n),
            "topic_id": rng.integers(1, 5, n),
            "is_correct": rng.random(n) < 0.6,
            "answered_at": pd.to_datetime(stamps, unit="us", utc=True),
            "time_spent_s": np.where(rng.random(n) < 0.1, np.nan, times),
        }
    )


def _compare_with_oracle(engine: Engine, frames: list[pd.DataFrame], tz: str, as_of: date) -> None:
    everything = pd.concat(frames, ignore_index=True)
    want_daily = expected_daily(everything, tz, as_of)
    got_daily = read_table(engine, "features_topic_daily", ["user_id", "topic_id", "day"])
    cols = ["user_id", "topic_id", "day", "attempts", "correct", "timed_attempts"]
    pd.testing.assert_frame_equal(got_daily[cols], want_daily[cols], check_dtype=False)
    np.testing.assert_allclose(
        got_daily["time_spent_s"].astype(float), want_daily["time_spent_s"].astype(float), rtol=1e-9
    )
    want_weekly = expected_weekly(want_daily)
    got_weekly = read_table(engine, "weekly_kpi", ["user_id", "week_start"])
    wcols = ["user_id", "week_start", "attempts", "correct", "active_days", "topics"]
    pd.testing.assert_frame_equal(got_weekly[wcols], want_weekly[wcols], check_dtype=False)
    for col in ("accuracy", "study_minutes", "i_t"):
        np.testing.assert_allclose(got_weekly[col].astype(float), want_weekly[col].astype(float), rtol=1e-9)
    # Invariant: daily totals add up to weekly totals.
    assert got_daily["attempts"].sum() == got_weekly["attempts"].sum()
    assert got_daily["correct"].sum() == got_weekly["correct"].sum()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=3),
    tz=st.sampled_from(["Asia/Seoul", "UTC", "America/New_York", "Australia/Lord_Howe"]),
    as_of_day=st.integers(0, 45),
)
def test_incremental_builds_match_the_pandas_oracle(
    tmp_path_factory: pytest.TempPathFactory, seed: int, sizes: list[int], tz: str, as_of_day: int
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('kpi') / 'k.db'}")
    upgrade(engine)
    rng = np.random.default_rng(seed)
    frames: list[pd.DataFrame] = []
    as_of = D("2026-03-01") + pd.Timedelta(days=as_of_day).to_pytimedelta()
    for size in sizes:  # one batch and one incremental run per size
        frames.append(_random_attempts(rng, size, first_id=1 + sum(len(f) for f in frames)))
        load_batch(engine, frames[-1])
        build_kpi(engine, as_of, tz=tz)
    _compare_with_oracle(engine, frames, tz, as_of)


def test_incremental_equals_full_and_rerun_changes_nothing(engine: Engine) -> None:
    rng = np.random.default_rng(3)
    first = _random_attempts(rng, 2000, first_id=1)
    second = _random_attempts(rng, 300, first_id=5001)
    load_batch(engine, first)
    build_kpi(engine, D("2026-04-15"))
    load_batch(engine, second)
    result = build_kpi(engine, D("2026-04-15"))
    assert result.summary["mode"] == "incremental"
    _compare_with_oracle(engine, [first, second], "Asia/Seoul", D("2026-04-15"))

    before = read_table(engine, "weekly_kpi", ["user_id", "week_start"])
    again = build_kpi(engine, D("2026-04-15"))
    assert again.rows_written == 0
    pd.testing.assert_frame_equal(read_table(engine, "weekly_kpi", ["user_id", "week_start"]), before)


def test_model_columns_are_never_clobbered(engine: Engine) -> None:
    load_batch(
        engine,
        attempts_frame(
            [(1, 1, True, "2026-03-02T10:00:00+09:00", 5.0), (2, 1, True, "2026-03-02T10:00:00+09:00", 5.0)]
        ),
    )
    build_kpi(engine, D("2026-03-08"))
    with transaction(engine) as conn:
        conn.execute(text("UPDATE weekly_kpi SET p = 0.7, sigma = 0.1, s = 0.2"))
        conn.execute(text("UPDATE weekly_kpi SET i_t = 55.5, i_t_source = 'irt' WHERE user_id = 1"))
    load_batch(
        engine,
        attempts_frame(
            [(1, 1, False, "2026-03-03T10:00:00+09:00", 5.0), (2, 1, False, "2026-03-03T10:00:00+09:00", 5.0)]
        ),
    )
    build_kpi(engine, D("2026-03-08"))
    weekly = read_table(engine, "weekly_kpi", ["user_id"])
    assert weekly["attempts"].tolist() == [2, 2]
    assert weekly["p"].tolist() == [0.7, 0.7] and weekly["s"].tolist() == [0.2, 0.2]
    assert weekly["sigma"].tolist() == [0.1, 0.1]
    assert weekly.loc[0, "i_t"] == 55.5 and weekly.loc[0, "i_t_source"] == "irt"  # IRT's index stays
    assert weekly.loc[1, "i_t"] == pytest.approx(50.0)  # the placeholder follows the data


def test_a_failing_build_leaves_nothing_and_records_the_failure(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_batch(engine, attempts_frame([(1, 1, True, "2026-03-02T10:00:00+09:00", 5.0)]))

    def boom(*_: object, **__: object) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(kpi, "_upsert_weeks", boom)  # fails after the daily rows were written
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_kpi(engine, D("2026-03-08"))
    assert count(engine, "features_topic_daily") == 0 and count(engine, "weekly_kpi") == 0
    assert count(engine, "job_state") == 0
    runs = read_table(engine, "job_run")
    assert runs["status"].tolist() == ["failed"] and "disk on fire" in runs.loc[0, "error"]
    monkeypatch.undo()
    assert build_kpi(engine, D("2026-03-08")).summary["mode"] == "full"  # the next run starts clean


def test_a_second_run_while_locked_exits_with_a_clear_message(engine: Engine) -> None:
    with job_lock(engine, "build-kpi"), pytest.raises(JobLockedError, match="already running"):
        build_kpi(engine, D("2026-03-08"))
    assert count(engine, "job_run") == 0
    build_kpi(engine, D("2026-03-08"))  # released afterwards
