"""Write a simulated world (``learnpulse.synthetic``) to the database: its data and its truth, atomically.

The data go where real data go (``attempt``, ``user_goal``, one ``ingest_batch`` of kind ``generate``); the truth
goes to the ``sim_*`` tables. One database holds at most one world (``sim_world.world_id = 1``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, delete, func, insert, select, text

from learnpulse.errors import ConflictError
from learnpulse.store.bulk import insert_frame
from learnpulse.store.db import is_sqlite, transaction
from learnpulse.store.tables import (
    MODEL_TABLES,
    SIM_TABLES,
    attempt,
    features_topic_daily,
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
from learnpulse.synthetic import World, WorldParams, truth_parameters

WORLD_ID = 1
ATTEMPT_SLICE = 1_000_000  # rows of the attempts frame copied (to add batch_id) at a time

# Everything a new world replaces: the source data, what was derived from it (KPIs, churn models, scores and
# alerts), job watermarks and the old truth.
REPLACED_TABLES: tuple[Table, ...] = (
    attempt,
    user_goal,
    ingest_batch,
    features_topic_daily,
    weekly_kpi,
    *MODEL_TABLES,
    job_state,
    *SIM_TABLES,
)


@dataclass(frozen=True)
class SaveResult:
    attempts: int
    students: int
    items: int
    already_present: bool  # True: the same world was already stored and nothing was written
    batch_id: int | None  # the ingest_batch that holds the world's attempts and goals


def _canonical(parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters as they come back from a JSON column (tuples become lists, and so on)."""
    result: dict[str, Any] = json.loads(json.dumps(parameters))
    return result


def _sha256(parameters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()


def stored_world(conn: Connection) -> dict[str, Any] | None:
    """The truth parameters of the stored world, or None."""
    value = conn.execute(select(sim_world.c.parameters).where(sim_world.c.world_id == WORLD_ID)).scalar()
    return dict(value) if value is not None else None


def _count(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _present_batch(conn: Connection, parameters: dict[str, Any]) -> int | None:
    """The batch id if the database holds exactly this world and nothing else, else None."""
    stored = stored_world(conn)
    if stored is None or stored != _canonical(parameters):
        return None
    batches = conn.execute(select(ingest_batch.c.batch_id, ingest_batch.c.kind, ingest_batch.c.rows_added)).all()
    if len(batches) != 1 or batches[0].kind != "generate":
        return None
    students = int(parameters["params"]["students"])
    if _count(conn, attempt) != batches[0].rows_added or _count(conn, user_goal) != students:
        return None
    return int(batches[0].batch_id)


def world_is_present(engine: Engine, params: WorldParams) -> bool:
    """True when the database holds exactly the world ``params`` generate (cheap: nothing is simulated)."""
    with engine.connect() as conn:
        return _present_batch(conn, truth_parameters(params)) is not None


def _describe(stored: dict[str, Any]) -> str:
    p = stored.get("params", {})
    return f"a synthetic world (--students {p.get('students')} --weeks {p.get('weeks')} --seed {p.get('seed')})"


def _clear(conn: Connection) -> None:
    if is_sqlite(conn):
        for table in REPLACED_TABLES:
            conn.execute(delete(table))
    else:
        conn.execute(text(f"TRUNCATE {', '.join(t.name for t in REPLACED_TABLES)}"))


def save_world(
    engine: Engine,
    world: World,
    *,
    replace: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SaveResult:
    """Store ``world`` in one transaction; ``progress(rows)`` is called as attempts are written (increments).

    The same world already stored: nothing is written (``already_present``). Any other world or data: refused with
    ``ConflictError`` unless ``replace``, which first deletes the data, everything derived from it, job state and
    the old truth (in the same transaction, so a failure leaves the old world intact).
    """
    parameters = world.truth_parameters()
    counts = {"attempts": len(world.attempts), "students": len(world.students), "items": len(world.items)}
    with transaction(engine) as conn:
        if not is_sqlite(conn):
            # Serialise concurrent generators; SQLite's BEGIN IMMEDIATE already does.
            conn.execute(text(f"LOCK TABLE {sim_world.name} IN SHARE ROW EXCLUSIVE MODE"))
        batch = _present_batch(conn, parameters)
        if batch is not None and _count(conn, attempt) == counts["attempts"]:
            return SaveResult(**counts, already_present=True, batch_id=batch)
        stored = stored_world(conn)
        n_attempts, n_goals = _count(conn, attempt), _count(conn, user_goal)
        if not replace and (stored is not None or n_attempts or n_goals):
            if stored is None:
                held = f"{n_attempts} attempts and {n_goals} goals that are not a generated world"
            elif stored == _canonical(parameters):
                held = f"this synthetic world plus other data ({n_attempts} attempts, {n_goals} goals in all)"
            else:
                held = _describe(stored)
            raise ConflictError(
                f"the database already holds {held}; pass --replace to delete it (and everything derived from "
                "it) and store the new world",
                {
                    "stored_world": (stored or {}).get("params"),
                    "attempts": n_attempts,
                    "goals": n_goals,
                    "requested": parameters["params"],
                },
            )
        if replace:
            _clear(conn)
        batch_id = _write(conn, world, parameters, progress)
    return SaveResult(**counts, already_present=False, batch_id=batch_id)


def _write(conn: Connection, world: World, parameters: dict[str, Any], progress: Callable[[int], None] | None) -> int:
    p = world.params
    now = datetime.now(UTC)
    n = len(world.attempts)
    result = conn.execute(
        insert(ingest_batch).values(
            kind="generate",
            source=f"generate --students {p.students} --weeks {p.weeks} --seed {p.seed}",
            sha256=_sha256(parameters),
            rows_in=n,
            rows_added=n,
            loaded_at=now,
        )
    )
    pk = result.inserted_primary_key
    assert pk is not None
    batch_id = int(pk[0])
    for start in range(0, n, ATTEMPT_SLICE):
        part = world.attempts.iloc[start : start + ATTEMPT_SLICE].assign(batch_id=batch_id)
        insert_frame(conn, attempt, part, progress=progress)
    insert_frame(conn, user_goal, world.goals.assign(batch_id=batch_id))
    conn.execute(
        insert(sim_world).values(
            world_id=WORLD_ID,
            seed=p.seed,
            students=p.students,
            weeks=p.weeks,
            start_date=p.start_date,
            parameters=parameters,
            created_at=now,
        )
    )
    insert_frame(conn, sim_student, world.students)
    insert_frame(conn, sim_item, world.items)
    insert_frame(conn, sim_student_week, world.student_weeks)
    insert_frame(conn, sim_anomaly, world.anomalies)
    return batch_id
