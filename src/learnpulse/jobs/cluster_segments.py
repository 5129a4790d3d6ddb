"""cluster-segments: learner segments with stable ids and readable names (``segment_meta``, ``user_segment``).

One run, as of date ``A`` (settings ``CLUSTER_LOOKBACK_WEEKS``, ``CLUSTER_N_CLUSTERS``, ``CLUSTER_METHOD``):

1. **Data**: build-kpi must have built the days up to ``A``. The ``weekly_kpi`` and ``features_topic_daily`` rows of
   the ``CLUSTER_LOOKBACK_WEEKS`` complete local weeks ending by ``A`` are read (``I_t`` as calibrate-irt wrote it,
   or build-kpi's accuracy placeholder where it has not).
2. **Features**: :func:`learnpulse.segment_features.build_features`, one row per student (level and trend of
   accuracy and ``I_t``, volume, regularity, topic breadth and spread; units in ``FEATURES``). A student with fewer
   than three active weeks in the window gets no segment: they are listed in the run's summary (``skipped``,
   ``skipped_students``, the first :data:`SKIPPED_LISTED` ids) and have no ``user_segment`` row in this run.
3. **Segments**: :class:`~learnpulse.engines.segments.SegmentModel` with ``method=CLUSTER_METHOD`` (``kmeans`` or
   ``gmm``) and ``n_clusters=CLUSTER_N_CLUSTERS`` (empty: k chosen in 2..10 by the silhouette on a sample for
   k-means, by BIC for the mixture), the heavy-tailed rates compared as ``log1p``, ``random_state`` fixed at
   :data:`RANDOM_STATE`.
4. **Stable ids**: the segments are matched to those of the *previous run* (the latest stored run with an as-of date
   before ``A``) with :func:`~learnpulse.engines.segments.align_segments`: a matched segment keeps its id and name
   (``status = 'persisting'``, ``matched_previous_id``, ``match_distance``), an unmatched one gets a fresh id and
   name (``'new'``), and each previous segment without a successor gets a row of size 0 with its last centroid
   (``'vanished'``). The first run numbers its segments 1..k. If the previous run's model is no longer kept (a
   re-run of a date more than ``MODEL_HISTORY`` runs back), nothing can be matched: every segment is new, with ids
   above every id stored so far, and every previous segment has vanished; the summary says so.
5. **Store**, in the run's one transaction: ``segment_meta`` (one row per segment: name, size, centroid in the
   features' units, ``quality``: the run's method, k, how k was chosen with every candidate's score, silhouette /
   BIC / inertia, students and window, and the segment's share and mean distance, and mean membership probability
   for ``gmm``), ``user_segment`` (per student: segment, Euclidean distance to the segment's centre in the scaled
   feature space, membership probability for ``gmm``) and the fitted model in ``job_state``
   (:mod:`learnpulse.store.segments`). Rows of an earlier run with the same as-of date are replaced.

**Deterministic**: the same data and settings give the same features, the same fit (every random choice is seeded)
and the same previous run, hence identical ids, names and assignments. Re-running an older date does not re-run the
later ones: run those again, in date order, to refresh their matches.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd

from learnpulse.engines.segments import SegmentMatch, SegmentModel, align_segments
from learnpulse.errors import InsufficientDataError, InvalidInputError
from learnpulse.jobs.base import Job, JobContext, JobOutcome
from learnpulse.jobs.fit_survival_churn import require_kpi_through
from learnpulse.schedule import BY_NAME, cron_of
from learnpulse.segment_features import LOG_FEATURES, SegmentFeatures, build_features, window
from learnpulse.store import segments as store

NAME = "cluster-segments"
RANDOM_STATE = 0
SKIPPED_LISTED = 1000  # skipped students listed by id in the summary (all are counted)


def _finite(value: Any) -> Any:
    """JSON-safe copy: NumPy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value


def engine_for(method: str, n_clusters: int | None) -> SegmentModel:
    """The estimator the job fits (also what ``POST /cluster/fit`` uses by default)."""
    return SegmentModel(method, n_clusters, log_features=LOG_FEATURES, random_state=RANDOM_STATE)


def load_features(ctx: JobContext, lookback_weeks: int) -> SegmentFeatures:
    """The features of every student with enough history in the window ending by the run's as-of date."""
    first, last = window(ctx.as_of, lookback_weeks)
    weekly, daily = store.load_window(ctx.conn, first_day=first, last_day=last)
    return build_features(weekly, daily, as_of=ctx.as_of, lookback_weeks=lookback_weeks)


def _previous_model(ctx: JobContext, previous: dict[str, Any] | None) -> SegmentModel | None:
    if previous is None:
        return None
    stored = store.stored_model(ctx.conn, NAME, int(previous["run_id"]))
    if stored is None:
        return None
    try:
        return SegmentModel.from_json(stored)
    except InvalidInputError:  # a format this version cannot read: as good as not kept
        return None


def _unmatched(
    ctx: JobContext, model: SegmentModel, previous: dict[str, Any]
) -> tuple[SegmentMatch, list[dict[str, Any]]]:
    """No previous model to match with: new ids above every stored id; the previous run's segments vanish."""
    match = align_segments(model, None)
    offset = store.max_segment_id(ctx.conn, other_than=ctx.as_of)
    assert model.segment_ids_ is not None and model.k_ is not None
    model.segment_ids_ = [offset + i for i in model.segment_ids_]
    model.id_counter_ = offset + model.k_
    match.new = list(model.segment_ids_)
    for seg, new_id in zip(match.segments, model.segment_ids_, strict=True):
        seg["segment_id"] = new_id
    old = [s for s in store.segments_of(ctx.conn, int(previous["run_id"])) if s["status"] != "vanished"]
    match.vanished = sorted(int(s["segment_id"]) for s in old)
    return match, old


def run(ctx: JobContext) -> JobOutcome:
    require_kpi_through(ctx)
    started = time.perf_counter()
    settings = ctx.settings
    lookback = settings.cluster_lookback_weeks
    features = load_features(ctx, lookback)
    frame = features.features
    if frame.empty:
        raise InsufficientDataError(
            f"no student has {features.min_active_weeks} active weeks in {features.window_start} .. "
            f"{features.window_end}: nothing to segment",
            {
                "window_start": features.window_start.isoformat(),
                "window_end": features.window_end.isoformat(),
                "skipped": len(features.skipped),
            },
        )
    ctx.say(f"segmenting {len(frame):,} students ({len(features.skipped):,} with too few weeks skipped)")
    model = engine_for(settings.cluster_method, settings.cluster_n_clusters).fit(frame)

    previous = store.previous_run(ctx.conn, ctx.as_of)
    previous_model = _previous_model(ctx, previous)
    vanished_rows: list[dict[str, Any]]
    if previous is not None and previous_model is None:
        ctx.say(f"the model of the previous run {previous['run_id']} is not kept: its segments cannot be matched")
        match, previous_rows = _unmatched(ctx, model, previous)
        vanished_rows = [
            {"segment_id": int(s["segment_id"]), "name": s["name"], "centroid": s["centroid"], "size": s["size"]}
            for s in previous_rows
        ]
    else:
        match = align_segments(model, previous_model)
        vanished_rows = _vanished_rows(previous_model, match.vanished)

    assert model.k_ is not None and model.sizes_ is not None and model.centers_original_ is not None
    assert model.segment_ids_ is not None and model.names_ is not None
    pred = model.predict(frame)
    assignments = pd.DataFrame(
        {
            "user_id": frame.index.to_numpy(dtype=np.int64),
            "segment_id": pred["segment_id"].to_numpy(dtype=np.int64),
            "distance": pred["distance"].to_numpy(dtype=np.float64),
            "probability": pred["probability"].to_numpy(dtype=np.float64),
        }
    )
    run_quality = _run_quality(model, features, previous, previous_model is not None, match)
    by_segment = assignments.groupby("segment_id")
    mean_distance = by_segment["distance"].mean()
    mean_probability = by_segment["probability"].mean()
    total = int(model.sizes_.sum())
    rows: list[dict[str, Any]] = []
    for i, seg in enumerate(match.segments):
        seg_id = int(seg["segment_id"])
        size = int(model.sizes_[i])
        quality = {
            **run_quality,
            "share": size / total,
            "mean_distance": float(mean_distance.get(seg_id, math.nan)),
            "mean_probability": float(mean_probability.get(seg_id, math.nan)) if model.method == "gmm" else None,
        }
        rows.append(
            {
                "segment_id": seg_id,
                "name": str(seg["name"]),
                "size": size,
                "status": "new" if seg["previous_segment_id"] is None else "persisting",
                "matched_previous_id": seg["previous_segment_id"],
                "match_distance": seg["distance"],
                "centroid": _finite(
                    dict(zip(model.feature_names_ or [], model.centers_original_[i].tolist(), strict=True))
                ),
                "quality": _finite(quality),
            }
        )
    for old in vanished_rows:
        rows.append(
            {
                "segment_id": old["segment_id"],
                "name": old["name"],
                "size": 0,
                "status": "vanished",
                "matched_previous_id": None,
                "match_distance": None,
                "centroid": _finite(old["centroid"]),
                "quality": _finite({**run_quality, "share": 0.0, "previous_size": old["size"], "mean_distance": None}),
            }
        )
    written = store.record_run(
        ctx.conn,
        job=NAME,
        run_id=ctx.run_id,
        as_of=ctx.as_of,
        segments=rows,
        assignments=assignments,
        model=_finite(model.to_json()),
    )
    persisting = [int(s["segment_id"]) for s in match.segments if s["previous_segment_id"] is not None]
    skipped = features.skipped.sort_values("user_id")
    ctx.say(
        f"{model.k_} segments ({model.criterion_}): {len(persisting)} persisting, {len(match.new)} new, "
        f"{len(match.vanished)} vanished, in {time.perf_counter() - started:.1f} s"
    )
    return JobOutcome(
        rows_written=written,
        summary=_finite(
            {
                "students": len(frame),
                "segments": model.k_,
                "method": model.method,
                "criterion": model.criterion_,
                "silhouette": model.silhouette_,
                "bic": model.bic_,
                "persisting": persisting,
                "new": match.new,
                "vanished": match.vanished,
                "previous_run_id": None if previous is None else int(previous["run_id"]),
                "previous_model": "none" if previous is None else ("kept" if previous_model else "not kept"),
                "skipped": len(skipped),
                "skipped_students": skipped["user_id"].head(SKIPPED_LISTED).astype(int).tolist(),
                "skipped_reasons": skipped["reason"].value_counts().sort_index().to_dict(),
                "names": dict(zip(model.segment_ids_, model.names_, strict=True)),
            }
        ),
    )


def _vanished_rows(previous: SegmentModel | None, vanished: list[int]) -> list[dict[str, Any]]:
    if previous is None or not vanished:
        return []
    assert previous.segment_ids_ is not None and previous.names_ is not None and previous.sizes_ is not None
    assert previous.centers_original_ is not None and previous.feature_names_ is not None
    out = []
    for seg_id in vanished:
        j = previous.segment_ids_.index(seg_id)
        out.append(
            {
                "segment_id": seg_id,
                "name": previous.names_[j],
                "size": int(previous.sizes_[j]),
                "centroid": dict(zip(previous.feature_names_, previous.centers_original_[j].tolist(), strict=True)),
            }
        )
    return out


def _run_quality(
    model: SegmentModel,
    features: SegmentFeatures,
    previous: dict[str, Any] | None,
    previous_kept: bool,
    match: SegmentMatch,
) -> dict[str, Any]:
    """The run-level figures every ``segment_meta`` row of the run carries in ``quality``."""
    return {
        "method": model.method,
        "k": model.k_,
        "criterion": model.criterion_,
        "selection": model.selection_,
        "silhouette": model.silhouette_,
        "bic": model.bic_,
        "inertia": model.inertia_,
        "students": model.n_,
        "fit_sample": model.n_fit_,
        "score_sample": model.n_score_,
        "skipped": len(features.skipped),
        "window_start": features.window_start.isoformat(),
        "window_end": features.window_end.isoformat(),
        "lookback_weeks": features.lookback_weeks,
        "min_active_weeks": features.min_active_weeks,
        "previous_run_id": None if previous is None else int(previous["run_id"]),
        "previous_as_of": None if previous is None else previous["as_of"].isoformat(),
        "previous_model_kept": previous_kept if previous is not None else None,
        "match_max_distance": match.max_distance,
        "comparable": match.comparable,
    }


CLUSTER_SEGMENTS = Job(
    name=NAME,
    run=run,
    schedule=cron_of(NAME),
    description=BY_NAME[NAME].description,
    settings=("CLUSTER_LOOKBACK_WEEKS", "CLUSTER_N_CLUSTERS", "CLUSTER_METHOD"),
)
