"""SQL of the build-kpi job: ``features_topic_daily`` and the activity columns of ``weekly_kpi``.

Everything runs inside the database (``INSERT ... SELECT ... GROUP BY``), so ten million attempts never travel
to Python. Incremental runs recompute only the (student, day range) that new attempts touch:

* an attempt is *new* when its ``batch_id`` is above the watermark of the last run, or its batch was held back
  because it had attempts after that run's as-of date (``pending`` batches);
* for each student with new attempts, every day between the earliest and the latest new attempt is recomputed
  from all of the student's attempts (found through the ``(user_id, answered_at)`` index), and every week that
  those days fall in is recomputed from ``features_topic_daily``.

Weekly rows are upserted; only the activity columns and the accuracy-based I_t placeholder are written, and the
placeholder never replaces an I_t that another job (IRT) wrote. An update that would change nothing is skipped,
so a re-run leaves every row as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, text

from learnpulse.store.buckets import date_param, day_sql, instant_param, local_day_start_utc, week_start_of_day_sql
from learnpulse.store.types import from_epoch_us

# I_t until IRT calibration exists: 100 x Laplace-smoothed weekly accuracy, (correct + 1) / (attempts + 2).
ACCURACY_INDEX_SQL = "100.0 * (SUM(correct) + 1) / (SUM(attempts) + 2)"
DAILY_PK = "pk_features_topic_daily"
PG_WORK_MEM = "256MB"
DAILY_VALUES = ("attempts", "correct", "accuracy", "time_spent_s", "timed_attempts")
FLOAT_COLUMNS = frozenset({"accuracy", "time_spent_s", "study_minutes", "i_t"})
ACTIVITY_COLUMNS = ("attempts", "correct", "accuracy", "active_days", "study_minutes", "topics")


@dataclass
class KpiState:
    """What the last successful build saw: stored in ``job_state`` under ``build-kpi``."""

    watermark: int = 0  # highest ingest batch fully considered
    as_of: date | None = None
    timezone: str | None = None
    pending: list[int] = field(default_factory=list)  # batches with attempts after as_of

    def to_json(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "timezone": self.timezone,
            "pending": self.pending,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KpiState:
        as_of = data.get("as_of")
        return cls(
            watermark=int(data.get("watermark", 0)),
            as_of=date.fromisoformat(as_of) if as_of else None,
            timezone=data.get("timezone"),
            pending=[int(b) for b in data.get("pending", [])],
        )


@dataclass
class KpiCounts:
    students: int = 0  # students whose rows were recomputed
    daily_rows: int = 0
    weekly_rows: int = 0  # weekly rows inserted or changed


class _Sql:
    """Dialect-specific fragments for one build (time zone and data span fixed)."""

    def __init__(self, conn: Connection, tz: ZoneInfo, span: tuple[datetime, datetime]) -> None:
        self.dialect = conn.dialect.name
        self.tz = tz
        self.span = span

    def day(self, column: str) -> str:
        return day_sql(self.dialect, column, self.tz, *self.span)

    def week(self, day_column: str) -> str:
        return week_start_of_day_sql(self.dialect, day_column)

    def plus_days(self, day_column: str, days: int) -> str:
        if self.dialect == "postgresql":
            return f"({day_column} + {days})"
        return f"date({day_column}, '{days:+d} days')"

    def shift_instant(self, column: str, days: int) -> str:
        if self.dialect == "postgresql":
            return f"({column} + INTERVAL '{days} days')"
        return f"({column} + {days * 86_400_000_000})"

    def per_dirty_student(self, table: str, alias: str, condition: str) -> str:
        """FROM-clause pairing each ``kpi_dirty k`` student with its rows of ``table`` matching ``condition``.

        Written so both planners loop over the (few) dirty students and seek each one's rows through an index
        whose prefix is user_id, instead of scanning the whole table: SQLite keeps the CROSS JOIN order;
        PostgreSQL gets a LATERAL subquery that OFFSET 0 keeps from being flattened into a hash join.
        """
        match = f"{alias}.user_id = k.user_id AND {condition}"
        if self.dialect == "postgresql":
            return f"kpi_dirty k CROSS JOIN LATERAL (SELECT * FROM {table} {alias} WHERE {match} OFFSET 0) {alias}"
        return f"kpi_dirty k CROSS JOIN {table} {alias} ON {match}"

    def differs(self, stored: str, new: str, column: str) -> str:
        """True when a recomputed value really differs from the stored one. Floating-point sums depend on the
        order rows are added in, which depends on the query plan, so a change in the last bits is no change."""
        if column in FLOAT_COLUMNS:
            return f"({stored} IS NULL OR ABS({stored} - {new}) > 1e-9 * (ABS({stored}) + ABS({new}) + 1))"
        return f"{stored} IS DISTINCT FROM {new}" if self.dialect == "postgresql" else f"{stored} IS NOT {new}"


def _instant(conn: Connection, value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return from_epoch_us(int(value))


def _new_attempts_clause(state: KpiState) -> tuple[str, dict[str, Any]]:
    batches = ", ".join(str(int(b)) for b in state.pending)
    clause = "(batch_id > :watermark" + (f" OR batch_id IN ({batches}))" if batches else ")")
    return clause, {"watermark": state.watermark}


def build(
    conn: Connection, *, tz: ZoneInfo, as_of: date, state: KpiState, full: bool, run_id: int
) -> tuple[KpiCounts, KpiState]:
    """Recompute what attempts up to the end of local day ``as_of`` require; returns counts and the new state."""
    dialect = conn.dialect.name
    end = local_day_start_utc(as_of + timedelta(days=1), tz)
    end_p = instant_param(dialect, end)
    if dialect == "postgresql":
        # Room to hash-aggregate and sort millions of rows in memory rather than in temporary files.
        conn.execute(text(f"SET LOCAL work_mem = '{PG_WORK_MEM}'"))
        conn.execute(text(f"SET LOCAL maintenance_work_mem = '{PG_WORK_MEM}'"))
        conn.execute(text("SET LOCAL jit = off"))  # compiling costs more than it saves on these statements
    watermark = int(conn.execute(text("SELECT COALESCE(MAX(batch_id), 0) FROM ingest_batch")).scalar_one())
    counts = KpiCounts()

    if full:
        span_row = conn.execute(text("SELECT MIN(answered_at), MAX(answered_at) FROM attempt")).one()
        pending_sql, params = "answered_at >= :end", dict[str, Any]()
        if span_row[0] is None:
            conn.execute(text("DELETE FROM features_topic_daily"))
            conn.execute(text("DELETE FROM weekly_kpi"))
            return counts, KpiState(watermark, as_of, tz.key, [])
        sql = _Sql(conn, tz, (_instant(conn, span_row[0]), min(_instant(conn, span_row[1]), end)))
        counts.daily_rows = _rebuild_all_days(conn, sql, end_p)
        counts.weekly_rows = _upsert_weeks(conn, sql, run_id, dirty=False)
        # Weeks after as-of have no data in this build.
        conn.execute(text("DELETE FROM weekly_kpi WHERE week_start > :d"), {"d": date_param(dialect, as_of)})
        counts.students = int(conn.execute(text("SELECT COUNT(DISTINCT user_id) FROM weekly_kpi")).scalar_one())
    else:
        new_clause, params = _new_attempts_clause(state)
        pending_sql = f"{new_clause} AND answered_at >= :end"
        counts.students, span = _collect_dirty(conn, new_clause, params, end_p)
        if counts.students:
            sql = _Sql(conn, tz, span)
            _fill_dirty_days(conn, sql)
            if dialect == "postgresql":
                # Each dirty student's rows are a few adjacent index entries: plain index scans beat bitmaps.
                conn.execute(text("SET LOCAL enable_bitmapscan = off"))
            counts.daily_rows = _rebuild_dirty_days(conn, sql, end_p)
            counts.weekly_rows = _upsert_weeks(conn, sql, run_id, dirty=True)
        conn.execute(text("DROP TABLE IF EXISTS kpi_dirty"))

    pending = [
        int(r[0])
        for r in conn.execute(
            text(f"SELECT DISTINCT batch_id FROM attempt WHERE {pending_sql} AND batch_id <= :wm_now"),
            {**params, "end": end_p, "wm_now": watermark},
        )
    ]
    return counts, KpiState(watermark, as_of, tz.key, sorted(pending))


def _rebuild_all_days(conn: Connection, sql: _Sql, end_p: object) -> int:
    """Replace every daily row. On PostgreSQL the primary key is rebuilt once after the insert, which is several
    times faster than maintaining it row by row (the table is locked until the build commits)."""
    if sql.dialect != "postgresql":
        conn.execute(text("DELETE FROM features_topic_daily"))
        return _insert_days(conn, sql, "attempt a", "a.answered_at < :end", {"end": end_p})
    conn.execute(text("TRUNCATE features_topic_daily"))
    conn.execute(text(f"ALTER TABLE features_topic_daily DROP CONSTRAINT {DAILY_PK}"))
    rows = _insert_days(conn, sql, "attempt a", "a.answered_at < :end", {"end": end_p})
    conn.execute(
        text(f"ALTER TABLE features_topic_daily ADD CONSTRAINT {DAILY_PK} PRIMARY KEY (user_id, day, topic_id)")
    )
    return rows


def _insert_days(
    conn: Connection, sql: _Sql, source: str, where: str, params: dict[str, Any], *, upsert: bool = False
) -> int:
    """Aggregate attempts per (student, local day, topic) into features_topic_daily.

    Rows are inserted in key order so that each student's rows sit together in the table: the incremental
    build, the weekly roll-up and the API then read a student's rows from a few pages instead of one page per row
    (PostgreSQL's hash aggregation would otherwise store them in hash order).
    """
    day = sql.day("a.answered_at")
    on_conflict = ""
    if upsert:
        changed = " OR ".join(sql.differs(f"features_topic_daily.{c}", f"excluded.{c}", c) for c in DAILY_VALUES)
        on_conflict = (
            "ON CONFLICT (user_id, day, topic_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in DAILY_VALUES)
            + f" WHERE {changed}"
        )
    result = conn.execute(
        text(f"""
        INSERT INTO features_topic_daily
            (user_id, day, topic_id, attempts, correct, accuracy, time_spent_s, timed_attempts)
        SELECT user_id, day, topic_id, COUNT(*), SUM(c), AVG(CAST(c AS FLOAT)), COALESCE(SUM(t), 0), COUNT(t)
        FROM (
            SELECT a.user_id, a.topic_id, {day} AS day,
                   CASE WHEN a.is_correct THEN 1 ELSE 0 END AS c, a.time_spent_s AS t
            FROM {source} WHERE {where}
        ) x
        WHERE true
        GROUP BY user_id, day, topic_id
        ORDER BY user_id, day, topic_id
        {on_conflict}
        """),
        params,
    )
    return int(result.rowcount)


def _collect_dirty(
    conn: Connection, new_clause: str, params: dict[str, Any], end_p: object
) -> tuple[int, tuple[datetime, datetime]]:
    """Create temp table ``kpi_dirty`` (one row per student with new attempts); return its size and time span.

    ``+user_id`` keeps SQLite from walking the whole (user_id, answered_at) index to avoid a sort; the new
    attempts are found through the batch_id index instead (seconds -> milliseconds on 10 M attempts).
    """
    conn.execute(text("DROP TABLE IF EXISTS kpi_dirty"))
    conn.execute(
        text(f"""
        CREATE TEMP TABLE kpi_dirty AS
        SELECT +user_id AS user_id, MIN(answered_at) AS t_min, MAX(answered_at) AS t_max
        FROM attempt WHERE {new_clause} AND answered_at < :end
        GROUP BY +user_id
        """),
        {**params, "end": end_p},
    )
    n, lo, hi = conn.execute(text("SELECT COUNT(*), MIN(t_min), MAX(t_max) FROM kpi_dirty")).one()
    if not n:
        return 0, (datetime.min, datetime.min)
    return int(n), (_instant(conn, lo), _instant(conn, hi))


def _fill_dirty_days(conn: Connection, sql: _Sql) -> None:
    """Add each dirty student's local day range and the weeks it spans."""
    conn.execute(
        text(f"""
        CREATE TEMP TABLE kpi_dirty_days AS
        SELECT user_id,
               {sql.shift_instant("t_min", -2)} AS t_lo, {sql.shift_instant("t_max", 2)} AS t_hi,
               {sql.day("t_min")} AS day_min, {sql.day("t_max")} AS day_max
        FROM kpi_dirty
        """)
    )
    conn.execute(text("DROP TABLE kpi_dirty"))
    conn.execute(
        text(f"""
        CREATE TEMP TABLE kpi_dirty AS
        SELECT user_id, t_lo, t_hi, day_min, day_max,
               {sql.week("day_min")} AS week_min, {sql.plus_days(sql.week("day_max"), 6)} AS week_max_end
        FROM kpi_dirty_days
        ORDER BY user_id
        """)
    )
    conn.execute(text("DROP TABLE kpi_dirty_days"))
    conn.execute(text("CREATE INDEX kpi_dirty_user ON kpi_dirty (user_id)"))
    if sql.dialect == "postgresql":
        conn.execute(text("ANALYZE kpi_dirty"))  # temporary tables get no automatic statistics


def _rebuild_dirty_days(conn: Connection, sql: _Sql, end_p: object) -> int:
    """Recompute the dirty students' days. Attempts are append-only, so every stored row in the range is
    recomputed too: an upsert suffices and no row has to be deleted."""
    day = sql.day("a.answered_at")
    return _insert_days(
        conn,
        sql,
        sql.per_dirty_student("attempt", "a", "a.answered_at BETWEEN k.t_lo AND k.t_hi"),
        f"a.answered_at < :end AND {day} BETWEEN k.day_min AND k.day_max",
        {"end": end_p},
        upsert=True,
    )


def _upsert_weeks(conn: Connection, sql: _Sql, run_id: int, *, dirty: bool) -> int:
    source = "features_topic_daily f"
    if dirty:
        source = sql.per_dirty_student("features_topic_daily", "f", "f.day BETWEEN k.week_min AND k.week_max_end")
    keep_irt = "weekly_kpi.i_t_source IS NULL OR weekly_kpi.i_t_source = 'accuracy'"
    changed = " OR ".join(sql.differs(f"weekly_kpi.{c}", f"excluded.{c}", c) for c in ACTIVITY_COLUMNS)
    changed += f" OR (({keep_irt}) AND {sql.differs('weekly_kpi.i_t', 'excluded.i_t', 'i_t')})"
    result = conn.execute(
        text(f"""
        INSERT INTO weekly_kpi
            (user_id, week_start, attempts, correct, accuracy, active_days, study_minutes, topics,
             i_t, i_t_source, kpi_run_id)
        SELECT user_id, week_start, SUM(attempts), SUM(correct), CAST(SUM(correct) AS FLOAT) / SUM(attempts),
               COUNT(DISTINCT day), SUM(time_spent_s) / 60.0, COUNT(DISTINCT topic_id),
               {ACCURACY_INDEX_SQL}, 'accuracy', :run_id
        FROM (SELECT f.*, {sql.week("f.day")} AS week_start FROM {source}) x
        WHERE true
        GROUP BY user_id, week_start
        ORDER BY user_id, week_start
        ON CONFLICT (user_id, week_start) DO UPDATE SET
            attempts = excluded.attempts, correct = excluded.correct, accuracy = excluded.accuracy,
            active_days = excluded.active_days, study_minutes = excluded.study_minutes, topics = excluded.topics,
            i_t = CASE WHEN {keep_irt} THEN excluded.i_t ELSE weekly_kpi.i_t END,
            i_t_source = CASE WHEN {keep_irt} THEN excluded.i_t_source ELSE weekly_kpi.i_t_source END,
            kpi_run_id = excluded.kpi_run_id
        WHERE {changed}
        """),
        {"run_id": run_id},
    )
    return int(result.rowcount)
