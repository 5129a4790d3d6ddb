"""calibrate-irt: 2PL item calibration and the learning index ``I_t`` (``weekly_kpi.i_t``, ``i_t_sd``).

One run, as of date ``A``:

1. **Window**: the ``WINDOW_WEEKS`` (12) complete local weeks ending by ``A`` (the week of ``A`` when ``A`` is a
   Sunday, else the week before), every attempt answered in them.
2. **Persons are student-weeks**: ability changes from week to week (that is what ``I_t`` tracks), so each
   (student, week) is one person of the calibration and gets its own ability.
3. **Calibrate** :class:`~learnpulse.engines.irt.IRT2PL` by marginal maximum likelihood with the population
   estimated as a histogram (``latent="empirical"``: the school is a mixture of learner types, not a normal); items
   with fewer than 30 answers in the window, or all answers right or all wrong, are flagged and left out.
4. **Link** to the scale of the previous calibration (Stocking-Lord on the items calibrated in both runs); the first
   calibration defines the scale (its student-weeks have mean 0, SD 1). A re-run on the same data therefore
   reproduces the same parameters (drift ~0, tested).
5. **Score**: EAP ability and posterior SD of every student-week of the window on the linked scale;
   ``I_t = clip(50 + 10 theta, 0, 100)`` and ``i_t_sd = 10 SD`` replace those weeks' values in ``weekly_kpi``
   (``i_t_source = 'irt'``; build-kpi never overwrites them). A student-week whose answers were all to flagged
   items gets NULL. Weeks before the window that still hold build-kpi's accuracy placeholder (the first run) are
   scored with the same calibration, so every week of a student's series is on one scale.
6. **Store** ``irt_calibration_meta`` (window, counts, linking constants, likelihood, convergence, the model) and
   ``irt_item`` (a, b, SEs, responses, flag per item), in the run's one transaction.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

from learnpulse.engines.irt import IRT2PL, learning_index, link
from learnpulse.errors import InsufficientDataError
from learnpulse.jobs.base import Job, JobContext, JobOutcome, json_safe
from learnpulse.jobs.fit_survival_churn import require_kpi_through
from learnpulse.schedule import BY_NAME, cron_of
from learnpulse.store import irt as store
from learnpulse.store.buckets import complete_weeks, day_number

NAME = "calibrate-irt"
WINDOW_WEEKS = 12
ENGINE_PARAMS: dict[str, Any] = {"latent": "empirical", "min_responses": 30}
INDEX_SD_SCALE = 10.0  # I_t = 50 + 10 theta, so its SD is 10 x theta's
_WEEK_CODE = 1000  # person label = user_id * 1000 + week index (the window has far fewer than 1000 weeks)


def person_labels(user_id: np.ndarray[Any, Any], week: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """One integer label per student-week."""
    labels: np.ndarray[Any, Any] = user_id.astype(np.int64) * _WEEK_CODE + week.astype(np.int64)
    return labels


def score_weeks(model: IRT2PL, responses: pd.DataFrame, first: date) -> pd.DataFrame:
    """``user_id, week_start, i_t, i_t_sd`` of every student-week in ``responses`` (weeks counted from ``first``)."""
    week = (responses["day"].to_numpy() - day_number(first)) // 7
    persons = person_labels(responses["user_id"].to_numpy(), week)
    scores = model.score(
        persons, responses["item_id"].to_numpy(), responses["correct"].to_numpy(), unknown_items="ignore"
    )
    person = scores["person"].to_numpy(dtype=np.int64)
    return pd.DataFrame(
        {
            "user_id": person // _WEEK_CODE,
            "week_start": [first + timedelta(days=7 * int(w)) for w in person % _WEEK_CODE],
            "i_t": learning_index(scores["theta"].to_numpy()),
            "i_t_sd": INDEX_SD_SCALE * scores["sd"].to_numpy(),
        }
    )


def _backfill(ctx: JobContext, model: IRT2PL, first: date) -> int:
    """Score the weeks before the window that still hold the accuracy placeholder with this calibration, so that
    a student's whole series is on one scale (a one-off on the first run; later runs find nothing to do)."""
    oldest = store.first_placeholder_week(ctx.conn, first)
    if oldest is None:
        return 0
    last = first - timedelta(days=1)
    old = store.load_responses(ctx.conn, first_day=oldest, last_day=last, tz=ctx.settings.timezone)
    ctx.say(f"backfilling I_t of the weeks {oldest} .. {last} ({len(old):,} answers)")
    return store.write_learning_index(ctx.conn, score_weeks(model, old, oldest)) if len(old) else 0


def run(ctx: JobContext) -> JobOutcome:
    require_kpi_through(ctx)
    started = time.perf_counter()
    first, last = complete_weeks(ctx.as_of, WINDOW_WEEKS)
    responses = store.load_responses(
        ctx.conn, first_day=first, last_day=last + timedelta(days=6), tz=ctx.settings.timezone
    )
    if responses.empty:
        raise InsufficientDataError(
            f"no attempts in the weeks {first} .. {last + timedelta(days=6)} to calibrate items on",
            {"window_start": first.isoformat(), "window_end": (last + timedelta(days=6)).isoformat()},
        )
    first_day = day_number(first)
    week = (responses["day"].to_numpy() - first_day) // 7
    persons = person_labels(responses["user_id"].to_numpy(), week)
    ctx.say(f"calibrating on {len(responses):,} answers of {len(np.unique(persons)):,} student-weeks")
    model = IRT2PL(**ENGINE_PARAMS).fit(persons, responses["item_id"].to_numpy(), responses["correct"].to_numpy())
    previous = store.latest_calibration(ctx.conn)
    linking: dict[str, Any] = {"method": "base scale: the first calibration (student-weeks mean 0, SD 1)"}
    if previous is not None:
        linked = link(model, IRT2PL.from_json(previous["model"]))
        model = linked.model
        drift = np.abs(linked.drift["drift_b"].to_numpy(dtype=np.float64))
        linking = {
            "method": linked.method,
            "base_run_id": int(previous["run_id"]),
            "base_as_of": previous["as_of"].isoformat(),
            "A": linked.A,
            "B": linked.B,
            "anchors": len(linked.anchors),
            "max_abs_b_drift": float(drift.max()) if len(drift) else None,
            "max_abs_a_drift": float(np.abs(linked.drift["drift_a"].to_numpy(dtype=np.float64)).max())
            if len(drift)
            else None,
        }
    index = score_weeks(model, responses, first)
    backfilled = _backfill(ctx, model, first)
    items = model.item_parameters()
    meta = {
        "run_id": ctx.run_id,
        "as_of": ctx.as_of,
        "window_start": first,
        "window_end": last + timedelta(days=6),
        "n_responses": len(responses),
        "n_persons": len(np.unique(persons)),
        "n_items": int(items["flag"].isna().sum()),
        "n_flagged": int(items["flag"].notna().sum()),
        "linking": linking,
        "log_likelihood": float(model.log_likelihood_ or 0.0),
        "iterations": int(model.n_iter_ or 0),
        "converged": bool(model.converged_),
        "settings": ENGINE_PARAMS,
        "elapsed_seconds": time.perf_counter() - started,
        "model": model.to_json(),
    }
    written = store.record_calibration(
        ctx.conn,
        json_safe(meta),
        items[["item_id", "a", "b", "se_a", "se_b", "n_responses", "p_correct", "flag"]],
    )
    updated = store.write_learning_index(ctx.conn, index) + backfilled
    ctx.say(f"{meta['n_items']} items calibrated, {meta['n_flagged']} flagged; I_t of {updated:,} student-weeks")
    return JobOutcome(
        rows_written=written + updated,
        summary={
            "responses": len(responses),
            "student_weeks": meta["n_persons"],
            "items": meta["n_items"],
            "flagged": meta["n_flagged"],
            "iterations": meta["iterations"],
            "linked": previous is not None,
            "weekly_kpi_rows": updated,
        },
    )


CALIBRATE_IRT = Job(
    name=NAME,
    run=run,
    schedule=cron_of(NAME),
    description=BY_NAME[NAME].description,
    settings=(),
)
