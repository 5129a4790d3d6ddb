"""forecast-prophet: per-student forecasts of the learning index ``I_t`` and anomalous weeks.

One run, as of date ``A`` (settings in brackets):

1. **Window**: the ``PROPHET_LOOKBACK_WEEKS`` (12) complete local weeks ending by ``A`` (the week of ``A`` when ``A``
   is a Sunday, else the week before; :func:`learnpulse.store.buckets.complete_weeks`), as calibrate-irt's window.
   build-kpi must have built the days up to ``A``.
2. **Series**: per student, one point per week of the window with an ``I_t`` in ``weekly_kpi``: ``ds`` = the week's
   local Monday, ``y = I_t``. ``I_t`` is calibrate-irt's IRT ability on 0-100 (``50 + 10 theta``) and ``i_t_sd`` its
   posterior SD on the same scale, passed to the engine as the known measurement SD ``y_sd`` of each point (used
   for a week the answers of step 3 do not measure). Weeks
   without activity have no row: the series simply has a gap (the model's time axis is the date, not the row
   number). Two scales are never mixed: when the window holds any IRT value, only IRT weeks are used (a week still
   holding build-kpi's accuracy placeholder, e.g. newer than the last calibration, is left out and counted in the
   summary); before the first calibration the placeholder is the series, without ``y_sd``.
3. **Answers**: the anomaly rule judges each IRT week by the week's own answers (:func:`load_answers`): every
   attempt of the window's weeks to an item of the newest calibration as of ``A`` (linked, so on the scale of
   ``I_t``), with the item's 2PL parameters put on the ``I_t`` scale (``a = alpha / 10``, ``b = 50 + 10 beta``, as
   ``I_t = 50 + 10 theta``). Before the first calibration there are none, and the placeholder is judged as a plain
   series.
4. **Fit** (:mod:`learnpulse.engines.forecast`, the batch engine: prophet's piecewise-linear trend, no seasonality,
   fitted by vectorised MAP, which reaches at least prophet's own log-posterior): a forecast of the
   ``PROPHET_FORECAST_WEEKS`` (4) weeks after the student's last observed week, with an 80% interval (for a
   student absent in the window's last weeks, some of those weeks may already lie before ``A``); a series of
   fewer than 6 points (the engine's ``min_points``) is skipped with the engine's reason. **Anomalies**: the
   engine's rule (module docstring of :mod:`learnpulse.engines.forecast`): against the trend ``yhat`` (after a robust
   refit without the candidate weeks), a week's evidence is its answers' score ``U`` and information ``I`` at
   ``yhat``; the residual is ``r = U / I`` (how far the week's answers alone, without the IRT population prior that
   shrinks ``I_t``, put it from the trend) and the week is anomalous when ``|r| > PROPHET_ANOMALY_THRESHOLD (2.5) x
   s`` with ``s = sqrt(1 / I + (0.05 y_scale)^2)`` (the residual's sampling SD and the engine's floor, the spread
   around the trend the rule allows); ``direction`` is ``drop`` or ``jump``, ``score = |r| / s``, the expected range
   ``yhat -+ threshold s`` and the evidence ``yhat + r`` are recorded beside the week's ``I_t``. On the default
   synthetic school (2,000 students, 351 injected one-week drops in the window) this finds the drops with precision
   0.859 and recall 0.712 (``tests/test_forecast_job.py``; judged on ``I_t`` with ``i_t_sd`` as its SD, as before:
   0.843 / 0.644; the accuracy placeholder gave 0.32 / 0.68).
5. **Parallelism**: the students are cut into chunks (:func:`learnpulse.engines.forecast.make_chunks`); each chunk
   is fitted by :func:`fit_chunk_safely` (the engine's pure :func:`~learnpulse.engines.forecast.fit_chunk`, one BLAS
   thread). With ``DASK_SCHEDULER_ADDRESS`` set, the chunks are scattered to that Dask cluster and mapped there
   (``distributed.Client(address)``; the workers need ``learnpulse`` installed); otherwise they run on a local
   process pool (``concurrent.futures.ProcessPoolExecutor`` with one worker per CPU available to this process, the
   ``forkserver`` start method where the platform has it, else ``spawn``: never ``fork``, which would copy the open
   database connection and any threads into the children). Up to ``INLINE_MAX_STUDENTS`` (5,000) students run in
   this process, where the fit takes well under the seconds a pool needs to start. Run options ``workers`` (1 = in
   this process) and ``chunk_size`` override the choice. The results do not depend on the chunking or the
   executor: every series is fitted on its own and its forecast simulation is seeded by the student's id. As with
   any ``spawn``/``forkserver`` pool, a script that runs the job must guard its entry point with ``if __name__ ==
   "__main__":`` (the children import the main module); the ``learnpulse`` command does.
6. **Failures**: a chunk whose fit raises is split in halves and refitted until the failing students stand alone;
   each is recorded (``status = 'failed'`` with the error as ``reason``) and the others are fitted as usual. When
   no student could be fitted and some failed, the run fails.
7. **Store**, in the run's one transaction: the rows of an earlier run for the same as-of date are removed first (a
   re-run replaces, never duplicates); ``prophet_fit_meta``: one row per student with a series (``fitted``,
   ``skipped`` or ``failed`` with ``reason``; ``n_points``; ``parameters`` = ``k, m, delta, changepoints_t,
   sigma_obs`` on prophet's scales, the scaling ``y_scale, start, t_scale_days``, ``log_posterior``, ``converged``,
   ``iterations``, ``anomalies``; ``changepoints`` = the changepoint dates; ``forecast`` = ``[{week_start, yhat,
   yhat_lower, yhat_upper}]``); ``prophet_anomalies``: one row per anomalous week (``y`` its ``I_t``, ``evidence``,
   ``yhat``, ``lower``, ``upper``, ``score``, ``direction``); ``weekly_kpi``: ``i_t_next``,
   ``i_t_next_lower``, ``i_t_next_upper`` (the forecast of the week after) on each fitted student's last observed
   week, and ``anomaly`` (true/false) on every judged week of the window (NULL on the window's other weeks). The
   ``i_t_next*`` of earlier weeks stay: they are the forecasts made when those weeks were the latest.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from learnpulse.engines.forecast import ChunkResult, ForecastOptions, SeriesChunk, fit_chunk, make_chunks
from learnpulse.engines.irt import LEARNING_INDEX_CENTRE, LEARNING_INDEX_SCALE
from learnpulse.errors import ConfigError, InsufficientDataError, InvalidInputError, LearnpulseError
from learnpulse.jobs.base import Job, JobContext, JobOutcome, json_safe
from learnpulse.jobs.fit_survival_churn import require_kpi_through
from learnpulse.jobs.runner import describe_error
from learnpulse.schedule import BY_NAME, cron_of
from learnpulse.store import forecast as store
from learnpulse.store import irt as irt_store
from learnpulse.store.buckets import complete_weeks, day_number

NAME = "forecast-prophet"
ENGINE = "batch"  # prophet_fit_meta.engine: the vectorised MAP fit of prophet's model
INLINE_MAX_STUDENTS = 5000  # up to this many students the fit runs in this process (a pool costs more to start)
MAX_CHUNK = 5000  # students per chunk: bounds a worker's memory (arrays of chunk x weeks x changepoints)
MIN_CHUNK = 250  # below this the per-chunk overhead (pickling, scheduling) outweighs the vectorised fit
CHUNKS_PER_WORKER = 4  # several chunks per worker even out uneven chunks
DASK_CONNECT_TIMEOUT_S = 30
REASON_MAX_CHARS = 500
Say = Callable[[str], None]


# --- one chunk, failures isolated ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedUnit:
    """A student whose fit raised: the id, the points of the series and the error (``type: message``)."""

    unit: Any
    points: int
    reason: str


@dataclass(frozen=True)
class ChunkOutcome:
    """What :func:`fit_chunk_safely` returns for one chunk: the engine's results (one per part that could be fitted;
    one for the whole chunk when nothing failed) and the students whose fit failed. Picklable."""

    results: list[ChunkResult] = field(default_factory=list)
    failed: list[FailedUnit] = field(default_factory=list)


def _part(chunk: SeriesChunk, rows: np.ndarray[Any, Any]) -> SeriesChunk:
    answers = None
    if chunk.answers is not None:
        position = np.full(len(chunk.units), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        new_row = position[chunk.answers.row]
        answers = chunk.answers.select(new_row >= 0, new_row)
    return SeriesChunk(
        units=chunk.units[rows],
        keys=chunk.keys[rows],
        ds_ns=chunk.ds_ns[rows],
        y=chunk.y[rows],
        y_sd=None if chunk.y_sd is None else chunk.y_sd[rows],
        answers=answers,
    )


def _fit_isolating(chunk: SeriesChunk, options: ForecastOptions) -> ChunkOutcome:
    try:
        return ChunkOutcome(results=[fit_chunk(chunk, options)])
    except Exception as exc:  # any error of one series must not sink the others: isolate it (see below)
        if len(chunk.units) == 1:
            unit = chunk.units[0]
            points = int(np.count_nonzero(~np.isnan(chunk.y[0])))
            plain = unit.item() if isinstance(unit, np.generic) else unit
            return ChunkOutcome(failed=[FailedUnit(plain, points, describe_error(exc)[:REASON_MAX_CHARS])])
    # Bisect: the series are fitted independently, so the halves give the same results as the whole would have;
    # only the parts that contain a failing series are split again (log2(chunk) refits per failing student).
    half = len(chunk.units) // 2
    outcomes = [
        _fit_isolating(_part(chunk, rows), options) for rows in (np.arange(half), np.arange(half, len(chunk.units)))
    ]
    return ChunkOutcome(
        results=[r for o in outcomes for r in o.results], failed=[f for o in outcomes for f in o.failed]
    )


def fit_chunk_safely(chunk: SeriesChunk, options: ForecastOptions) -> ChunkOutcome:
    """The unit of parallel work: :func:`~learnpulse.engines.forecast.fit_chunk` on ``chunk`` with ``options``, a
    student whose fit raises isolated and recorded as :class:`FailedUnit` (the chunk is bisected until the failing
    series stand alone). Runs with one BLAS thread: the parallelism is across chunks, and several processes each
    running a BLAS thread per core would oversubscribe the machine. Pure apart from that; picklable arguments and
    result, so it can run in a process pool or on Dask."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_isolating(chunk, options)


# --- executors --------------------------------------------------------------------------------------------------


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def chunk_size_for(students: int, workers: int) -> int:
    """``CHUNKS_PER_WORKER`` chunks per worker, clamped to ``MIN_CHUNK .. MAX_CHUNK`` students."""
    return max(MIN_CHUNK, min(MAX_CHUNK, math.ceil(students / max(1, workers * CHUNKS_PER_WORKER))))


def _pool_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` where available (children fork from a clean server that has imported the engine once), else
    ``spawn``; never ``fork`` (see the module docstring)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # Takes effect only if this process has not started its fork server yet; harmless otherwise.
        context.set_forkserver_preload(["learnpulse.jobs.forecast_prophet"])
        return context
    return multiprocessing.get_context("spawn")


def _run_inline(chunks: Sequence[SeriesChunk], options: ForecastOptions, say: Say) -> list[ChunkOutcome]:
    out = []
    for i, chunk in enumerate(chunks, start=1):
        out.append(fit_chunk_safely(chunk, options))
        if len(chunks) > 1:
            say(f"chunk {i}/{len(chunks)} fitted")
    return out


def _run_pool(chunks: Sequence[SeriesChunk], options: ForecastOptions, workers: int, say: Say) -> list[ChunkOutcome]:
    results: dict[int, ChunkOutcome] = {}
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context()) as pool:
        futures = {pool.submit(fit_chunk_safely, chunk, options): i for i, chunk in enumerate(chunks)}
        for done, future in enumerate(as_completed(futures), start=1):
            results[futures[future]] = future.result()
            say(f"chunk {done}/{len(chunks)} fitted")
    return [results[i] for i in range(len(chunks))]


def _dask_client(address: str) -> Any:
    from distributed import Client

    try:
        return Client(address, timeout=DASK_CONNECT_TIMEOUT_S, set_as_default=False)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address!r} (DASK_SCHEDULER_ADDRESS): {exc}",
            {"variable": "DASK_SCHEDULER_ADDRESS"},
        ) from exc


def _run_dask(client: Any, chunks: Sequence[SeriesChunk], options: ForecastOptions, say: Say) -> list[ChunkOutcome]:
    from distributed import as_completed as dask_completed

    # Scatter first: the chunks travel to the workers as data, not inside the task graph (which the scheduler
    # would have to hold and would warn about above a few MB).
    data = client.scatter(list(chunks))
    futures = client.map(fit_chunk_safely, data, options=options)
    index = {future.key: i for i, future in enumerate(futures)}
    results: dict[int, ChunkOutcome] = {}
    for done, future in enumerate(dask_completed(futures, loop=client.loop), start=1):  # type: ignore[no-untyped-call]
        results[index[future.key]] = future.result()
        say(f"chunk {done}/{len(chunks)} fitted on Dask")
    return [results[i] for i in range(len(chunks))]


@dataclass(frozen=True)
class FitReport:
    """Where the chunks ran: ``executor`` (``inline``, ``processes`` or ``dask``), ``workers`` (processes, or Dask
    worker threads) and the number of ``chunks``."""

    executor: str
    workers: int
    chunks: int


def fit_series(
    series: pd.DataFrame,
    options: ForecastOptions,
    *,
    answers: pd.DataFrame | None = None,
    dask_address: str | None = None,
    workers: int | None = None,
    chunk_size: int | None = None,
    say: Say | None = None,
) -> tuple[list[ChunkOutcome], FitReport]:
    """Fit every student's series, chunked and in parallel (step 5 of the module docstring).

    ``series``: ``user_id, ds`` (naive dates), ``y``, ``y_sd`` (NaN: unknown), one row per student-week; ``answers``
    (optional): ``user_id, ds, a, b, correct``, the answers that measure the weeks (:func:`load_answers`). With
    ``dask_address`` the chunks run on that Dask cluster; otherwise on ``workers`` local processes (default: one
    per available CPU; 1, or at most ``INLINE_MAX_STUDENTS`` students when not given, = in this process).
    ``chunk_size`` default: :func:`chunk_size_for`. Returns the outcomes in chunk order and a :class:`FitReport`.
    """
    speak: Say = say if say is not None else (lambda _message: None)
    students = int(series["user_id"].nunique())

    def chunked(default_size: int) -> list[SeriesChunk]:
        size = chunk_size if chunk_size is not None else default_size
        return make_chunks(series, unit="user_id", ds="ds", y="y", y_sd="y_sd", answers=answers, chunk_size=size)

    if dask_address:
        client = _dask_client(dask_address)
        try:
            threads = max(1, sum(client.nthreads().values()))
            chunks = chunked(chunk_size_for(students, threads))
            speak(
                f"fitting {students:,} students in {len(chunks)} chunks on Dask at {dask_address} ({threads} threads)"
            )
            outcomes = _run_dask(client, chunks, options, speak)
        finally:
            client.close()
        return outcomes, FitReport("dask", threads, len(chunks))
    n_workers = workers if workers is not None else (1 if students <= INLINE_MAX_STUDENTS else available_cpus())
    # In this process one chunk is one vectorised fit: as large as memory comfortably allows.
    chunks = chunked(chunk_size_for(students, n_workers) if n_workers > 1 else MAX_CHUNK)
    if n_workers <= 1 or len(chunks) <= 1:
        speak(f"fitting {students:,} students in this process ({len(chunks)} chunk(s))")
        return _run_inline(chunks, options, speak), FitReport("inline", 1, len(chunks))
    speak(f"fitting {students:,} students in {len(chunks)} chunks on {n_workers} local processes")
    return _run_pool(chunks, options, n_workers, speak), FitReport("processes", n_workers, len(chunks))


# --- rows to store ------------------------------------------------------------------------------------------------


def _iso_days(ns: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """ISO dates (``YYYY-MM-DD``) of int64 nanosecond timestamps."""
    return np.datetime_as_string(np.asarray(ns, dtype="datetime64[ns]"), unit="D")


def _json(value: Any) -> str:
    """JSON text for a JSON column written by ``insert_frame`` (NaN -> null)."""
    return json.dumps(json_safe(value), separators=(",", ":"), allow_nan=False)


def _fit_rows(result: ChunkResult, run_id: int, as_of: date) -> list[dict[str, Any]]:
    """``prophet_fit_meta`` rows of one chunk result (fitted and skipped students)."""
    rows: list[dict[str, Any]] = []
    future_iso = _iso_days(result.future_ds_ns)
    start_iso = _iso_days(result.start_ns)
    for i in range(len(result.units)):
        unit = int(result.units[i])
        points = int(result.length[i])
        if result.status[i] != "ok":
            rows.append(_row(run_id, unit, as_of, status="skipped", reason=str(result.reason[i]), points=points))
            continue
        s = int(result.cp_mask[i].sum())
        idx = result.changepoint_index[i, :s]
        parameters = {
            "k": result.k[i],
            "m": result.m[i],
            "delta": result.delta[i, :s].tolist(),
            "changepoints_t": result.changepoints_t[i, :s].tolist(),
            "sigma_obs": result.sigma_obs[i],
            "y_scale": result.y_scale[i],
            "start": str(start_iso[i]),
            "t_scale_days": int(result.t_scale_ns[i]) / 86_400e9,
            "log_posterior": result.log_posterior[i],
            "converged": bool(result.converged[i]),
            "iterations": int(result.iterations[i]),
            "anomalies": int(result.anomalous[i, :points].sum()),
        }
        changepoints = _iso_days(result.ds_ns[i, idx[idx >= 0]]).tolist()
        forecast = [
            {
                "week_start": str(future_iso[i, h]),
                "yhat": result.yhat[i, h],
                "yhat_lower": result.yhat_lower[i, h],
                "yhat_upper": result.yhat_upper[i, h],
            }
            for h in range(result.yhat.shape[1])
        ]
        rows.append(
            _row(run_id, unit, as_of, status="fitted", reason=None, points=points)
            | {"parameters": _json(parameters), "changepoints": _json(changepoints), "forecast": _json(forecast)}
        )
    return rows


def _row(run_id: int, unit: int, as_of: date, *, status: str, reason: str | None, points: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "user_id": unit,
        "as_of": as_of,
        "status": status,
        "reason": reason,
        "n_points": points,
        "engine": ENGINE,
        "parameters": None,
        "changepoints": None,
        "forecast": None,
    }


def _judged_rows(result: ChunkResult) -> pd.DataFrame:
    """Every observed week of the fitted students: ``user_id, week_start, anomaly`` and ``i_t_next*`` (the step-1
    forecast) on each student's last observed week, NaN elsewhere."""
    width = result.y.shape[1]
    mask = result.ok[:, None] & (np.arange(width)[None, :] < result.length[:, None])
    rows, cols = np.nonzero(mask)
    last = cols == result.length[rows] - 1
    nan = np.full(len(rows), np.nan)
    return pd.DataFrame(
        {
            "user_id": result.units[rows].astype(np.int64),
            "week_start": np.asarray(result.ds_ns[rows, cols], dtype="datetime64[ns]"),
            "anomaly": result.anomalous[rows, cols].astype(bool),
            "i_t_next": np.where(last, result.yhat[rows, 0], nan),
            "i_t_next_lower": np.where(last, result.yhat_lower[rows, 0], nan),
            "i_t_next_upper": np.where(last, result.yhat_upper[rows, 0], nan),
        }
    )


def _anomaly_rows(result: ChunkResult, run_id: int) -> pd.DataFrame:
    a = result.anomalies_frame()
    return pd.DataFrame(
        {
            "run_id": np.full(len(a), run_id, dtype=np.int64),
            "user_id": a["unit"].to_numpy().astype(np.int64),
            "week_start": a["ds"].to_numpy(dtype="datetime64[ns]"),
            "y": a["y"].to_numpy(dtype=np.float64),
            "evidence": a["evidence"].to_numpy(dtype=np.float64),
            "yhat": a["yhat"].to_numpy(dtype=np.float64),
            "lower": a["expected_lower"].to_numpy(dtype=np.float64),
            "upper": a["expected_upper"].to_numpy(dtype=np.float64),
            "score": a["score"].to_numpy(dtype=np.float64),
            "direction": a["direction"].to_numpy().astype(str),
        }
    )


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --- the job ------------------------------------------------------------------------------------------------------


def load_series(ctx: JobContext, first: date, last: date) -> tuple[pd.DataFrame, str, int]:
    """Steps 1-2: the series of the window (``user_id, ds, y, y_sd``), the index's source (``irt`` or ``accuracy``)
    and the number of placeholder weeks left out because the window also holds IRT weeks."""
    raw = store.load_series(ctx.conn, first_week=first, last_week=last)
    if raw.empty:
        raise InsufficientDataError(
            f"no I_t in the weeks {first} .. {last + timedelta(days=6)} to forecast from: run build-kpi "
            "(and calibrate-irt) first",
            {"window_start": first.isoformat(), "window_end": (last + timedelta(days=6)).isoformat()},
        )
    irt = raw["irt"].to_numpy() == 1
    source = "irt" if irt.any() else "accuracy"
    kept = raw[irt] if irt.any() else raw
    series = pd.DataFrame(
        {
            "user_id": kept["user_id"].to_numpy(),
            "ds": pd.to_datetime(kept["week"].to_numpy(), unit="D"),
            "y": kept["i_t"].to_numpy(),
            "y_sd": kept["i_t_sd"].to_numpy(),
        }
    )
    return series, source, len(raw) - len(kept)


def load_answers(ctx: JobContext, first: date, last: date) -> tuple[pd.DataFrame | None, dict[str, Any] | None]:
    """Step 3: the answers that measure the IRT weeks of the window, for the anomaly rule: every attempt answered in
    the window (local weeks, as calibrate-irt buckets them) to an item of the newest calibration as of the run's
    date (else the newest: every calibration is linked to one scale), as ``user_id, ds`` (the week's Monday),
    ``a = alpha / 10``, ``b = 50 + 10 beta`` (the item's 2PL parameters on the ``I_t`` scale ``50 + 10 theta``) and
    ``correct``. ``(None, None)`` before the first calibration; else also a summary (calibration run, answers)."""
    calibration = irt_store.latest_calibration(ctx.conn, ctx.as_of) or irt_store.latest_calibration(ctx.conn)
    if calibration is None:
        return None, None
    run_id = int(calibration["run_id"])
    items = irt_store.calibrated_items(ctx.conn, run_id)
    responses = irt_store.load_responses(
        ctx.conn, first_day=first, last_day=last + timedelta(days=6), tz=ctx.settings.timezone
    )
    item = np.asarray(pd.Index(items["item_id"]).get_indexer(responses["item_id"]), dtype=np.int64)
    keep = item >= 0
    item = item[keep]
    start = day_number(first)
    monday = start + (responses["day"].to_numpy()[keep] - start) // store.WEEK_DAYS * store.WEEK_DAYS
    answers = pd.DataFrame(
        {
            "user_id": responses["user_id"].to_numpy()[keep],
            "ds": pd.to_datetime(monday, unit="D"),
            "a": items["a"].to_numpy()[item] / LEARNING_INDEX_SCALE,
            "b": LEARNING_INDEX_CENTRE + LEARNING_INDEX_SCALE * items["b"].to_numpy()[item],
            "correct": responses["correct"].to_numpy()[keep],
        }
    )
    return answers, {"calibration_run_id": run_id, "answers": len(answers)}


def _int_option(ctx: JobContext, name: str) -> int | None:
    value = ctx.options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(
            f"run option {name} must be an integer >= 1, got {value!r}",
            {"problems": [{"option": name, "reason": "must be an integer >= 1"}]},
        )
    return value


def run(ctx: JobContext) -> JobOutcome:
    require_kpi_through(ctx)
    started = time.perf_counter()
    settings = ctx.settings
    first, last = complete_weeks(ctx.as_of, settings.prophet_lookback_weeks)
    series, source, left_out = load_series(ctx, first, last)
    if source == "accuracy":
        ctx.say("no IRT I_t in the window yet (run calibrate-irt): forecasting build-kpi's accuracy placeholder")
    answers, evidence = load_answers(ctx, first, last) if source == "irt" else (None, None)
    options = ForecastOptions(
        horizon=settings.prophet_forecast_weeks,
        step_days=store.WEEK_DAYS,  # weekly points: the forecast weeks are the Mondays after the last one
        anomaly_threshold=settings.prophet_anomaly_threshold,
    )
    outcomes, report = fit_series(
        series,
        options,
        answers=answers,
        dask_address=settings.dask_scheduler_address,
        workers=_int_option(ctx, "workers"),
        chunk_size=_int_option(ctx, "chunk_size"),
        say=ctx.say,
    )
    results = [r for o in outcomes for r in o.results]
    failed = [f for o in outcomes for f in o.failed]
    fitted = sum(int(r.ok.sum()) for r in results)
    if failed and not fitted:
        raise LearnpulseError(
            f"no student could be fitted; {len(failed)} failed, e.g. student {failed[0].unit}: {failed[0].reason}",
            {"failed": len(failed), "first_failure": {"user_id": failed[0].unit, "reason": failed[0].reason}},
        )
    fits = [row for r in results for row in _fit_rows(r, ctx.run_id, ctx.as_of)]
    fits += [
        _row(ctx.run_id, int(f.unit), ctx.as_of, status="failed", reason=f.reason, points=f.points) for f in failed
    ]
    anomalies = _concat([_anomaly_rows(r, ctx.run_id) for r in results])
    judged = _concat([_judged_rows(r) for r in results])

    replaced = store.replace_run(ctx.conn, ctx.as_of)
    written = store.write_fits(ctx.conn, pd.DataFrame(fits))
    written += store.write_anomalies(ctx.conn, anomalies) if len(anomalies) else 0
    updated = store.write_kpi_columns(ctx.conn, first_week=first, last_week=last, judged=judged)
    drops = int((anomalies["direction"] == "drop").sum()) if len(anomalies) else 0
    skipped = len(fits) - fitted - len(failed)
    ctx.say(
        f"{fitted:,} students fitted, {skipped:,} skipped, {len(failed):,} failed; "
        f"{len(anomalies):,} anomalous weeks ({drops:,} drops)"
    )
    return JobOutcome(
        rows_written=written + updated,
        summary={
            "window_start": first.isoformat(),
            "window_end": (last + timedelta(days=6)).isoformat(),
            "i_t_source": source,
            "placeholder_weeks_left_out": left_out,
            "anomaly_evidence": evidence,
            "students": len(fits),
            "fitted": fitted,
            "skipped": skipped,
            "failed": len(failed),
            "anomalies": len(anomalies),
            "drops": drops,
            "jumps": len(anomalies) - drops,
            "weekly_kpi_rows": updated,
            "executor": report.executor,
            "workers": report.workers,
            "chunks": report.chunks,
            "replaced_runs": replaced,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )


FORECAST_PROPHET = Job(
    name=NAME,
    run=run,
    schedule=cron_of(NAME),
    description=BY_NAME[NAME].description,
    settings=(
        "PROPHET_LOOKBACK_WEEKS",
        "PROPHET_FORECAST_WEEKS",
        "PROPHET_ANOMALY_THRESHOLD",
        "DASK_SCHEDULER_ADDRESS",
    ),
)
