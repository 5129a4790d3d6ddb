"""Validated ingest: what loads, what is refused (and why, and where), and that a refusal leaves no trace."""

from __future__ import annotations

import gzip
import math
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, inspect, select

from learnpulse import ingest
from learnpulse.errors import ConflictError, InvalidInputError, LearnpulseError
from learnpulse.ingest import ingest_attempts, ingest_goals, read_attempts, read_goals
from learnpulse.store import loading
from learnpulse.store.tables import attempt, ingest_batch, user_goal

HEADER = "attempt_id,user_id,item_id,topic_id,is_correct,answered_at,time_spent_s"
VALID = f"""\
{HEADER}
1,10,100,3,true,2026-03-02T21:15:00+09:00,12.5
2,10,101,3,FALSE,2026-03-02T12:15:00Z,
3,11,100,3,1,2026-03-02 07:15:00.250-05:00,NaN
4,11,102,4,no,2026-03-03T00:00:00.000001+00:00,0
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def stored_attempts(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(attempt).order_by(attempt.c.attempt_id))]


def batches(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(ingest_batch).order_by(ingest_batch.c.batch_id))]


def stored_goals(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(user_goal).order_by(user_goal.c.user_id))]


def rejection(exc: LearnpulseError) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = exc.details["problems"]
    return problems


# --- valid files ---------------------------------------------------------------------------------------------


def test_valid_csv_loads_and_round_trips_exactly(engine: Engine, tmp_path: Path) -> None:
    result = ingest_attempts(engine, write(tmp_path / "a.csv", VALID))
    assert (result.rows_in, result.rows_added, result.already_loaded) == (4, 4, False)
    assert result.batch_id is not None
    b = result.batch_id
    assert stored_attempts(engine) == [
        (1, 10, 100, 3, True, datetime(2026, 3, 2, 12, 15, tzinfo=UTC), 12.5, b),
        (2, 10, 101, 3, False, datetime(2026, 3, 2, 12, 15, tzinfo=UTC), None, b),
        (3, 11, 100, 3, True, datetime(2026, 3, 2, 12, 15, 0, 250_000, tzinfo=UTC), None, b),
        (4, 11, 102, 4, False, datetime(2026, 3, 3, 0, 0, 0, 1, tzinfo=UTC), 0.0, b),
    ]
    [batch] = batches(engine)
    assert batch[0] == b
    assert batch[1:6] == ("attempts", str((tmp_path / "a.csv").resolve()), result.sha256, 4, 4)


def test_valid_parquet_with_zoned_timestamps_loads(engine: Engine, tmp_path: Path) -> None:
    seoul = pd.DatetimeIndex(["2026-03-02 21:15:00", "2026-03-03 08:00:00.123456"]).tz_localize("Asia/Seoul")
    table = pa.table(
        {
            "attempt_id": pa.array([7, 8], pa.int32()),
            "user_id": pa.array([1, 2], pa.uint16()),
            "item_id": [5, 6],
            "topic_id": [9, 9],
            "is_correct": [True, False],
            "answered_at": pa.array(seoul, pa.timestamp("ns", tz="Asia/Seoul")),
            "time_spent_s": [float("nan"), 3.25],
            "comment": ["x", "y"],
        }
    )
    pq.write_table(table, tmp_path / "a.parquet")
    result = ingest_attempts(engine, tmp_path / "a.parquet")
    assert result.rows_added == 2
    assert result.warnings == ["ignored extra column: comment"]
    b = result.batch_id
    assert stored_attempts(engine) == [
        (7, 1, 5, 9, True, datetime(2026, 3, 2, 12, 15, tzinfo=UTC), None, b),
        (8, 2, 6, 9, False, datetime(2026, 3, 2, 23, 0, 0, 123_456, tzinfo=UTC), 3.25, b),
    ]


def test_gzipped_csv_and_frame_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "a.csv.gz"
    path.write_bytes(gzip.compress(VALID.encode()))
    frame = read_attempts(path)
    assert frame.dtypes.astype(str).to_dict() == {
        "attempt_id": "int64",
        "user_id": "int64",
        "item_id": "int64",
        "topic_id": "int64",
        "is_correct": "bool",
        "answered_at": "datetime64[us, UTC]",
        "time_spent_s": "float64",
    }
    assert frame["is_correct"].tolist() == [True, False, True, False]
    assert frame["time_spent_s"].isna().tolist() == [False, True, True, False]


def test_optional_time_column_may_be_absent_and_booleans_are_lenient(engine: Engine, tmp_path: Path) -> None:
    text = """\
    attempt_id,user_id,item_id,topic_id,is_correct,answered_at
    1,1,1,1, Yes ,2026-01-01T00:00Z
    2,1,1,1,T,2026-01-01T00:00+0100
    3,1,1,1,f,2026-01-01T00:00-01
    """
    ingest_attempts(engine, write(tmp_path / "a.csv", text))
    rows = stored_attempts(engine)
    assert [r[4] for r in rows] == [True, True, False]
    assert [r[5].hour for r in rows] == [0, 23, 1]
    assert [r[6] for r in rows] == [None, None, None]


def test_identical_repeated_rows_are_collapsed_with_a_warning(engine: Engine, tmp_path: Path) -> None:
    text = VALID + "2,10,101,3,false,2026-03-02T21:15:00+09:00,\n"  # row 2 again, same instant written differently
    result = ingest_attempts(engine, write(tmp_path / "a.csv", text))
    assert (result.rows_in, result.rows_added) == (5, 4)
    assert any("collapsed" in w for w in result.warnings)


def test_awkward_floats_and_microseconds_survive_a_reload_without_conflict(engine: Engine, tmp_path: Path) -> None:
    text = f"""\
    {HEADER}
    1,1,1,1,true,2026-03-02T21:15:00.000001+09:00,{1 / 3!r}
    2,1,1,1,true,1999-12-31T23:59:59.999999-00:30,{0.1 + 0.2!r}
    3,1,1,1,true,2026-03-02T00:00:00.1234567Z,5e-324
    """
    path = write(tmp_path / "a.csv", text)
    ingest_attempts(engine, path)
    rows = stored_attempts(engine)
    assert [r[6] for r in rows] == [1 / 3, 0.1 + 0.2, 5e-324]
    assert [r[5] for r in rows] == [
        datetime(2026, 3, 2, 12, 15, 0, 1, tzinfo=UTC),
        datetime(2000, 1, 1, 0, 29, 59, 999_999, tzinfo=UTC),
        datetime(2026, 3, 2, 0, 0, 0, 123_456, tzinfo=UTC),  # finer than a microsecond: truncated
    ]
    assert ingest_attempts(engine, path).rows_added == 0
    assert ingest_attempts(engine, write(tmp_path / "b.csv", text + "9,1,1,1,t,2026-03-03T00:00Z,\n")).rows_added == 1


# --- idempotence ---------------------------------------------------------------------------------------------


def test_loading_the_same_file_twice_adds_nothing(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", VALID)
    ingest_attempts(engine, path)
    rows, loads = stored_attempts(engine), batches(engine)
    again = ingest_attempts(engine, path)
    assert (again.rows_added, again.batch_id, again.already_loaded) == (0, None, True)
    assert stored_attempts(engine) == rows
    assert batches(engine) == loads


def test_an_overlapping_file_adds_only_the_new_rows(engine: Engine, tmp_path: Path) -> None:
    first = ingest_attempts(engine, write(tmp_path / "a.csv", VALID))
    overlap = f"""\
    {HEADER}
    3,11,100,3,true,2026-03-02T12:15:00.25Z,
    4,11,102,4,false,2026-03-03T09:00:00.000001+09:00,0.0
    5,12,100,3,true,2026-03-04T10:00:00+09:00,7
    """
    second = ingest_attempts(engine, write(tmp_path / "b.csv", overlap))
    assert (second.rows_in, second.rows_added, second.already_loaded) == (3, 1, False)
    assert second.batch_id is not None and second.batch_id != first.batch_id
    rows = stored_attempts(engine)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    assert [r[7] for r in rows] == [first.batch_id] * 4 + [second.batch_id]
    assert [b[5] for b in batches(engine)] == [4, 1]  # rows_added per batch


def test_big_appends_rebuild_indexes_and_keep_them(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk path that drops and rebuilds attempt's secondary indexes leaves the same indexes behind."""
    monkeypatch.setattr(loading, "REBUILD_MIN_ROWS", 2)
    before = sorted(ix["name"] for ix in inspect(engine).get_indexes("attempt"))
    ingest_attempts(engine, write(tmp_path / "a.csv", VALID))  # direct path, empty table: rebuilds
    overlap = VALID + "".join(f"{i},1,1,1,true,2026-03-05T00:00Z,1\n" for i in range(5, 20))
    result = ingest_attempts(engine, write(tmp_path / "b.csv", overlap))  # staged path, 15 new vs 4: rebuilds
    assert result.rows_added == 15
    assert sorted(ix["name"] for ix in inspect(engine).get_indexes("attempt")) == before
    assert len(before) == 2
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(attempt)).scalar_one() == 19


# --- rejections ----------------------------------------------------------------------------------------------


REJECTIONS = [
    pytest.param(
        "attempt_id,user_id,item_id,is_correct,answered_at\n1,1,1,true,2026-01-01T00:00Z\n",
        [(None, "topic_id", "required column is missing")],
        id="missing-column",
    ),
    pytest.param(
        f"{HEADER}\n1,1,1,1,true,2026-01-01T00:00Z,\n2,1,1,1,true,yesterday,\n",
        [(3, "answered_at", "not an ISO-8601 timestamp with a zone")],
        id="bad-timestamp",
    ),
    pytest.param(
        f"{HEADER}\n1,1,1,1,true,2026-02-30T10:00Z,\n",
        [(2, "answered_at", "not a valid date and time")],
        id="impossible-date",
    ),
    pytest.param(
        f"{HEADER}\n1,1,1,1,true,2026-01-01T00:00Z,\n2,1,1,1,true,2026-03-02T21:15:00,\n",
        [(3, "answered_at", "no time zone")],
        id="naive-timestamp",
    ),
    pytest.param(
        f"{HEADER}\n1,1,1,1,maybe,2026-01-01T00:00Z,\n",
        [(2, "is_correct", "not a boolean")],
        id="bad-boolean",
    ),
    pytest.param(
        f"{HEADER}\n1,1,1.5,1,true,2026-01-01T00:00Z,\n2,0,1,1,true,2026-01-01T00:00Z,\n"
        "3,-4,1,1,true,2026-01-01T00:00Z,\n4,1,1,x,true,2026-01-01T00:00Z,\n",
        [
            (2, "item_id", "not a positive integer"),
            (3, "user_id", "not a positive integer"),
            (4, "user_id", "not a positive integer"),
            (5, "topic_id", "not a positive integer"),
        ],
        id="bad-ids",
    ),
    pytest.param(
        f"{HEADER}\n1,1,1,1,true,2026-01-01T00:00Z,-3\n2,1,1,1,true,2026-01-01T00:00Z,soon\n",
        [(2, "time_spent_s", "negative"), (3, "time_spent_s", "not a number")],
        id="bad-time",
    ),
    pytest.param(
        f"{HEADER}\n1,1,1,1,true,2026-01-01T00:00Z,\n\n1,1,1,1,false,2026-01-01T00:00Z,\n",
        [(4, "attempt_id", "attempt_id 1 also on line 2 with different is_correct")],
        id="duplicate-id-different-content",  # the blank line counts: the repeat is on line 4
    ),
    pytest.param(
        f"{HEADER}\n1,1,1,1,true,2026-01-01T00:00Z\n",
        [(2, None, "expected 7 fields, found 6")],
        id="wrong-field-count",
    ),
    pytest.param(f"{HEADER}\n", [(None, None, "no data rows")], id="header-only"),
    pytest.param("", [(None, None, "empty (0 bytes)")], id="zero-bytes"),
]


@pytest.mark.parametrize(("text", "expected"), REJECTIONS)
def test_invalid_files_are_rejected_whole_naming_row_column_and_reason(
    engine: Engine, tmp_path: Path, text: str, expected: list[tuple[int | None, str | None, str]]
) -> None:
    ingest_attempts(engine, write(tmp_path / "good.csv", VALID))
    rows, loads = stored_attempts(engine), batches(engine)
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInputError) as info:
        ingest_attempts(engine, path)
    problems = rejection(info.value)
    assert len(problems) == len(expected), problems
    for problem, (row, column, reason) in zip(problems, expected, strict=True):
        assert problem["row"] == row
        assert problem["column"] == column
        assert reason in problem["reason"]
    assert info.value.details["file"] == str(path)
    assert info.value.details["error_count"] == len(expected)
    assert str(path) in info.value.message
    assert stored_attempts(engine) == rows
    assert batches(engine) == loads


def test_a_good_row_next_to_a_bad_one_is_not_loaded_either(engine: Engine, tmp_path: Path) -> None:
    text = f"{HEADER}\n100,1,1,1,true,2026-01-01T00:00Z,\n101,1,1,1,true,2026-01-01T00:00,\n"
    with pytest.raises(InvalidInputError):
        ingest_attempts(engine, write(tmp_path / "a.csv", text))
    assert stored_attempts(engine) == []
    assert batches(engine) == []


def test_an_id_stored_with_different_content_is_a_conflict_and_nothing_loads(engine: Engine, tmp_path: Path) -> None:
    ingest_attempts(engine, write(tmp_path / "a.csv", VALID))
    rows, loads = stored_attempts(engine), batches(engine)
    text = f"""\
    {HEADER}
    9,10,100,3,true,2026-03-05T00:00Z,1
    2,10,101,3,false,2026-03-02T12:15:00Z,4.5
    """
    with pytest.raises(ConflictError) as info:
        ingest_attempts(engine, write(tmp_path / "b.csv", text))
    [problem] = rejection(info.value)
    assert problem["row"] == 3 and problem["column"] == "attempt_id"
    assert "attempt_id 2 is already stored with different content" in problem["reason"]
    assert "time_spent_s: file 4.5, stored null" in problem["reason"]
    assert stored_attempts(engine) == rows  # attempt 9 was not loaded either
    assert batches(engine) == loads


def test_unsupported_and_missing_files_are_clear_errors(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unsupported file type"):
        ingest_attempts(engine, write(tmp_path / "a.json", VALID))
    with pytest.raises(InvalidInputError, match="no such file"):
        ingest_attempts(engine, tmp_path / "missing.csv")
    with pytest.raises(InvalidInputError, match="not a readable Parquet file"):
        ingest_attempts(engine, write(tmp_path / "a.parquet", VALID))
    empty = {
        "user_id": pa.array([], pa.int64()),
        "target": pa.array([], pa.float64()),
        "deadline": pa.array([], pa.date32()),
    }
    pq.write_table(pa.table(empty), tmp_path / "none.parquet")
    with pytest.raises(InvalidInputError, match="no data rows"):
        ingest_goals(engine, tmp_path / "none.parquet")
    assert batches(engine) == []


def test_parquet_rejections_name_rows_and_columns(tmp_path: Path) -> None:
    naive = pa.table(
        {
            "attempt_id": [1, 2],
            "user_id": [1, None],
            "item_id": [1, 1],
            "topic_id": [1, 1],
            "is_correct": [True, False],
            "answered_at": pa.array([datetime(2026, 1, 1), datetime(2026, 1, 2)], pa.timestamp("us")),
        }
    )
    pq.write_table(naive, tmp_path / "a.parquet")
    with pytest.raises(InvalidInputError) as info:
        read_attempts(tmp_path / "a.parquet")
    problems = rejection(info.value)
    assert problems[0]["row"] is None and problems[0]["column"] == "answered_at"
    assert "no time zone" in problems[0]["reason"]
    assert problems[1] == {"row": 2, "column": "user_id", "reason": "missing value"}
    assert info.value.details["row_label"] == "row"


def test_many_problems_are_capped_but_all_counted(tmp_path: Path) -> None:
    rows = "".join(f"{i},1,1,1,perhaps,2026-01-01T00:00Z,\n" for i in range(1, 251))
    with pytest.raises(InvalidInputError) as info:
        read_attempts(write(tmp_path / "a.csv", f"{HEADER}\n{rows}"))
    assert info.value.details["error_count"] == 250
    problems = rejection(info.value)
    assert len(problems) == ingest.MAX_LISTED
    assert [p["row"] for p in problems[:3]] == [2, 3, 4]
    assert info.value.details["counts"] == {"is_correct: not a boolean (use true/false, 1/0, t/f or yes/no)": 250}
    assert "... and 230 more" in info.value.message


# --- goals ---------------------------------------------------------------------------------------------------

GOALS = """\
user_id,target,deadline
1,0.8,2026-06-30
2,1,2026-07-31
"""


def test_goals_load_upsert_and_twice_is_a_no_op(engine: Engine, tmp_path: Path) -> None:
    first = ingest_goals(engine, write(tmp_path / "g.csv", GOALS))
    assert (first.rows_added, first.rows_updated) == (2, 0)
    b1 = first.batch_id
    assert stored_goals(engine) == [(1, 0.8, date(2026, 6, 30), b1), (2, 1.0, date(2026, 7, 31), b1)]

    loads = batches(engine)
    again = ingest_goals(engine, tmp_path / "g.csv")
    assert (again.rows_added, again.rows_updated, again.batch_id, again.already_loaded) == (0, 0, None, True)
    assert batches(engine) == loads

    changed = ingest_goals(
        engine, write(tmp_path / "g2.csv", "user_id,target,deadline\n1,0.9,2026-06-30\n3,0.5,2027-01-01\n")
    )
    assert (changed.rows_added, changed.rows_updated) == (1, 1)
    b2 = changed.batch_id
    assert stored_goals(engine) == [
        (1, 0.9, date(2026, 6, 30), b2),
        (2, 1.0, date(2026, 7, 31), b1),
        (3, 0.5, date(2027, 1, 1), b2),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user_id,target,deadline\n1,1.2,2026-06-30\n", (2, "target", "not in [0, 1]")),
        ("user_id,target,deadline\n1,-0.1,2026-06-30\n", (2, "target", "not in [0, 1]")),
        ("user_id,target,deadline\n1,0.5,30/06/2026\n", (2, "deadline", "not an ISO date")),
        ("user_id,target,deadline\n1,0.5,2026-02-29\n", (2, "deadline", "not a valid date")),
        ("user_id,target,deadline\n1,0.5,2026-06-30\n1,0.6,2026-06-30\n", (3, "user_id", "different target")),
        ("user_id,target\n1,0.5\n", (None, "deadline", "required column is missing")),
    ],
)
def test_invalid_goals_are_rejected(
    engine: Engine, tmp_path: Path, text: str, expected: tuple[int | None, str, str]
) -> None:
    row, column, reason = expected
    ingest_goals(engine, write(tmp_path / "g.csv", GOALS))
    goals, loads = stored_goals(engine), batches(engine)
    with pytest.raises(InvalidInputError) as info:
        ingest_goals(engine, write(tmp_path / "bad.csv", text))
    [problem] = rejection(info.value)
    assert (problem["row"], problem["column"]) == (row, column)
    assert reason in problem["reason"]
    assert stored_goals(engine) == goals
    assert batches(engine) == loads


def test_goals_from_parquet_dates(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"user_id": [4], "target": [0.7], "deadline": pa.array([date(2026, 9, 1)], pa.date32())}),
        tmp_path / "g.parquet",
    )
    frame = read_goals(tmp_path / "g.parquet")
    assert frame["deadline"].tolist() == [pd.Timestamp("2026-09-01")]
    assert frame["target"].tolist() == [0.7]


# --- property: whatever valid frame is written as CSV reads back equal ------------------------------------

_instants = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
_offsets = st.integers(min_value=-12 * 60, max_value=14 * 60)
_ids = st.integers(min_value=1, max_value=10**18 - 1)
_rows = st.lists(
    st.tuples(
        _ids,
        _ids,
        _ids,
        st.booleans(),
        st.sampled_from(["true/false", "1/0", "t/f", "yes/no"]),
        _instants,
        _offsets,
        st.one_of(st.none(), st.floats(min_value=0, max_value=1e9, allow_nan=False)),
    ),
    min_size=1,
    max_size=30,
)


def _iso(instant: datetime, offset_minutes: int) -> str:
    """The instant as local wall-clock time at a UTC offset, with that offset: the same instant, spelled otherwise."""
    local = (instant + timedelta(minutes=offset_minutes)).replace(tzinfo=None)
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{local.isoformat()}{sign}{hours:02d}:{minutes:02d}"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows)
def test_any_valid_frame_written_as_csv_reads_back_equal(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[Any, ...]]
) -> None:
    n = len(rows)
    expected = pd.DataFrame(
        {
            "attempt_id": np.arange(1, n + 1, dtype=np.int64),
            "user_id": np.array([r[0] for r in rows], dtype=np.int64),
            "item_id": np.array([r[1] for r in rows], dtype=np.int64),
            "topic_id": np.array([r[2] for r in rows], dtype=np.int64),
            "is_correct": np.array([r[3] for r in rows], dtype=bool),
            "answered_at": pd.Series([r[5] for r in rows]).astype("datetime64[us, UTC]").array,
            "time_spent_s": np.array([math.nan if r[7] is None else r[7] for r in rows], dtype=np.float64),
        }
    )
    spelled = [r[4].split("/")[0 if r[3] else 1] for r in rows]
    lines = [
        f"{i + 1},{r[0]},{r[1]},{r[2]},{spelled[i]},{_iso(r[5], r[6])},{'' if r[7] is None else repr(r[7])}"
        for i, r in enumerate(rows)
    ]
    path = tmp_path_factory.mktemp("prop") / "a.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    frame = read_attempts(path)
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), expected)
