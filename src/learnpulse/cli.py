"""The ``learnpulse`` command: database, data, jobs and the demo.

Every ``LearnpulseError`` is printed as one clear message (with its details) on stderr and exits with status 2;
nothing else of a failure reaches the terminal unless ``--debug`` is given.
"""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.exceptions import TyperException

from learnpulse.errors import LearnpulseError, NotFoundError
from learnpulse.settings import Settings, load_settings

app = typer.Typer(help="learnpulse: learning-analytics models over exam-prep question attempts.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
ingest_app = typer.Typer(help="Load validated files into the store.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ingest_app, name="ingest")

out = Console()
err = Console(stderr=True)
_debug = False


@app.callback()
def _root(debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False) -> None:
    global _debug  # noqa: PLW0603 - one flag for the error printer
    _debug = debug


def _settings() -> Settings:
    return load_settings()


def _engine(settings: Settings, *, check_schema: bool = True) -> Any:
    """The database engine; unless told otherwise, refuse to work on a schema that is not at the latest migration."""
    from learnpulse.store.db import make_engine
    from learnpulse.store.schema import require_current

    engine = make_engine(settings.database_url)
    if check_schema:
        require_current(engine)
    return engine


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


# --- db ------------------------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the schema or bring it to the latest migration."""
    from learnpulse.store.db import safe_url
    from learnpulse.store.schema import upgrade

    settings = _settings()
    before, after = upgrade(_engine(settings, check_schema=False))
    where = safe_url(settings.database_url)
    change = "unchanged" if before == after else f"from {before or 'empty'}"
    out.print(f"schema at {after} ({change}) on {where}")


# --- data ----------------------------------------------------------------------------------------------------


@app.command()
def generate(
    students: Annotated[int, typer.Option(min=1, help="Number of students.")] = 2000,
    weeks: Annotated[int, typer.Option(min=1, help="Weeks of activity.")] = 16,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same world.")] = 42,
    replace: Annotated[bool, typer.Option(help="Replace an existing different world and all its data.")] = False,
) -> None:
    """Simulate a school with known truth and store it (data and truth tables)."""
    result = _generate(_settings(), students=students, weeks=weeks, seed=seed, replace=replace)
    out.print(result)


def _generate(settings: Settings, *, students: int, weeks: int, seed: int, replace: bool) -> Any:
    """Simulate and store a world unless exactly that world is already stored; returns the SaveResult."""
    from learnpulse.store.world import SaveResult, save_world, world_is_present
    from learnpulse.synthetic import WorldParams, generate_world

    params = WorldParams(students=students, weeks=weeks, seed=seed, timezone=settings.learnpulse_timezone)
    engine = _engine(settings)
    if world_is_present(engine, params):
        err.print(f"this world (seed {seed}, {students:,} students x {weeks} weeks) is already stored")
        return SaveResult(attempts=0, students=students, items=0, already_present=True, batch_id=None)
    with _progress() as bar:
        task = bar.add_task("simulating students", total=students)
        world = generate_world(params, progress=lambda done: bar.update(task, completed=done))
        save = bar.add_task("storing attempts", total=len(world.attempts))
        return save_world(engine, world, replace=replace, progress=lambda n: bar.advance(save, n))


@ingest_app.command("attempts")
def ingest_attempts(file: Annotated[Path, typer.Argument(help="CSV or Parquet file of attempts.")]) -> None:
    """Validate and load attempts; an invalid file is rejected whole."""
    from learnpulse.ingest import ingest_attempts as load

    settings = _settings()
    with _progress() as bar:
        task = bar.add_task(f"loading {file.name}", total=None)
        result = load(_engine(settings), file, progress=lambda n: bar.advance(task, n))
    out.print(result.summary())


@ingest_app.command("goals")
def ingest_goals(file: Annotated[Path, typer.Argument(help="CSV or Parquet file of goals.")]) -> None:
    """Validate and load student goals (upsert by user_id)."""
    from learnpulse.ingest import ingest_goals as load

    out.print(load(_engine(_settings()), file).summary())


# --- jobs ----------------------------------------------------------------------------------------------------


@app.command("run")
def run(
    job: Annotated[str, typer.Argument(help="Job name, e.g. build-kpi (see `learnpulse jobs`).")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="Local date YYYY-MM-DD (default: today).")] = None,
    full: Annotated[bool, typer.Option(help="Recompute everything instead of only what changed.")] = False,
) -> None:
    """Run one job now, recorded in job_run."""
    result = _run_job(
        _settings(), job, _parse_date(as_of, "--as-of") if as_of else None, {"full": full} if full else {}
    )
    out.print_json(
        json.dumps(
            {
                "job": result.job,
                "run_id": result.run_id,
                "as_of": str(result.as_of),
                "rows_written": result.rows_written,
                **result.summary,
            }
        )
    )


def _run_job(settings: Settings, name: str, as_of: date | None, options: dict[str, Any]) -> Any:
    from learnpulse.jobs import REGISTRY
    from learnpulse.jobs.runner import run_job

    if name not in REGISTRY:
        raise NotFoundError(f"unknown job {name!r}; known jobs: {', '.join(sorted(REGISTRY))}", {"job": name})
    return run_job(
        REGISTRY[name],
        settings,
        _engine(settings),
        as_of=as_of,
        options=options,
        progress=lambda m: err.print(f"[dim]{name}:[/] {m}"),
    )


@app.command("jobs")
def jobs() -> None:
    """List the jobs with their schedules (UTC) and last run."""
    from learnpulse.jobs import REGISTRY
    from learnpulse.store.runs import recent_runs

    settings = _settings()
    engine = _engine(settings)
    table = Table("job", "schedule (UTC)", "last run", "status", "description")
    with engine.connect() as conn:
        for job in REGISTRY.values():
            last = recent_runs(conn, job.name, limit=1)
            started = str(last[0]["started_at"])[:19] if last else "-"
            table.add_row(job.name, job.schedule, started, last[0]["status"] if last else "-", job.description)
    out.print(table)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    insecure_dev: Annotated[
        bool, typer.Option("--insecure-dev", help="Development only: serve without a bearer token (warns).")
    ] = False,
) -> None:
    """Serve the HTTP API (bearer token from LEARNPULSE_API_TOKEN or LEARNPULSE_API_TOKEN_FILE)."""
    import logging

    from learnpulse.api.server import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(_settings(), host=host, port=port, workers=workers, insecure_dev=insecure_dev)


@app.command()
def scheduler(
    cron: Annotated[
        list[str] | None,
        typer.Option(help="Override a schedule: JOB=CRON (5 fields, or 6 with seconds last). Repeatable."),
    ] = None,
    only: Annotated[list[str] | None, typer.Option(help="Schedule only these jobs. Repeatable.")] = None,
) -> None:
    """Run the registered jobs on their schedules (UTC) until SIGTERM or Ctrl-C; a running job finishes first."""
    import logging
    import signal

    from learnpulse.jobs import REGISTRY
    from learnpulse.scheduler import Scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    _engine(settings)  # fail now, not at the first firing, if the database is not ready
    crons = {name: job.schedule for name, job in REGISTRY.items() if not only or name in only}
    for override in cron or []:
        name, _, expression = override.partition("=")
        if name not in REGISTRY:
            raise NotFoundError(f"--cron names unknown job {name!r}", {"job": name})
        crons[name] = expression.strip()
    sched = Scheduler(crons, run=lambda name: _run_job(settings, name, None, {}))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sched.stop())
    sched.serve()


# --- demo ----------------------------------------------------------------------------------------------------


@app.command()
def demo(
    students: Annotated[int, typer.Option(min=50, help="Students in the demo school.")] = 2000,
    weeks: Annotated[int, typer.Option(min=4, help="Weeks of activity.")] = 16,
) -> None:
    """Upgrade the database, simulate a school, run every job and print a summary. Safe to re-run."""
    from learnpulse.demo import run_demo

    run_demo(_settings(), students=students, weeks=weeks, generate=_generate, run_job=_run_job, console=out)


def _parse_date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param_hint=option) from None


def main() -> None:
    """Entry point: run the app, turning LearnpulseError into a clear message and exit status 2."""
    try:
        app(standalone_mode=False)
    except LearnpulseError as exc:
        if _debug:
            raise
        err.print(f"[bold red]error[/] ({exc.code}): {exc.message}")
        for problem in exc.details.get("problems", [])[:20]:
            err.print(f"  - {', '.join(f'{k}={v}' for k, v in problem.items())}")
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except TyperException as exc:  # usage errors: bad option, missing argument, ...
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err.print(exc.format_message())
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
