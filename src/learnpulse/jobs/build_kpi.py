"""build-kpi: daily topic features and weekly activity KPIs from attempts, incrementally.

Days and Monday-start weeks are bucketed in ``LEARNPULSE_TIMEZONE``. A run with ``--as-of D`` uses attempts
answered before the end of local day D. The first run, a change of time zone, or ``full=True`` rebuilds everything;
otherwise only what new attempts touch is recomputed (see ``learnpulse.store.kpi``). An as-of date earlier than the
last build's needs ``full=True``, because rows after it would otherwise stay behind.
"""

from __future__ import annotations

from learnpulse.errors import ConflictError
from learnpulse.jobs.base import Job, JobContext, JobOutcome
from learnpulse.schedule import BY_NAME, cron_of
from learnpulse.store import kpi, runs

NAME = "build-kpi"


def run(ctx: JobContext) -> JobOutcome:
    stored = runs.get_state(ctx.conn, NAME)
    state = kpi.KpiState.from_json(stored) if stored else None
    full = bool(ctx.options.get("full")) or state is None or state.timezone != ctx.settings.learnpulse_timezone
    if state is not None and not full and state.as_of is not None and ctx.as_of < state.as_of:
        raise ConflictError(
            f"as-of {ctx.as_of} is before the last build's as-of {state.as_of}; run with --full to rebuild up to it",
            {"as_of": ctx.as_of.isoformat(), "last_as_of": state.as_of.isoformat()},
        )
    ctx.say(f"{'full' if full else 'incremental'} build up to {ctx.as_of} ({ctx.settings.learnpulse_timezone})")
    counts, new_state = kpi.build(
        ctx.conn,
        tz=ctx.settings.timezone,
        as_of=ctx.as_of,
        state=state or kpi.KpiState(),
        full=full,
        run_id=ctx.run_id,
    )
    runs.put_state(ctx.conn, NAME, new_state.to_json())
    return JobOutcome(
        rows_written=counts.daily_rows + counts.weekly_rows,
        summary={
            "mode": "full" if full else "incremental",
            "students": counts.students,
            "daily_rows": counts.daily_rows,
            "weekly_rows": counts.weekly_rows,
        },
    )


BUILD_KPI = Job(
    name=NAME,
    run=run,
    schedule=cron_of(NAME),
    description=BY_NAME[NAME].description,
    settings=("LEARNPULSE_TIMEZONE",),
)
