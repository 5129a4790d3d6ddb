"""Segment routes.

- ``POST /cluster/fit``: segments the feature rows in the body (k-means or a Gaussian mixture, automatic k unless
  given): segments with names and profiles, each row's segment, and the model. Stateless: nothing is stored.
- ``POST /cluster/predict``: with the latest run of cluster-segments, either the stored current segment of students
  (``user_ids``) or the segment of feature rows scored with that run's model (``features``).
- ``GET /segments``: the latest run's segments: names, sizes, profiles (centroids in the features' units), status
  against the previous run, and how the run was fitted.
- ``GET /users/{user_id}/segment``: a student's segment in the latest run.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Body, Depends, Path
from sqlalchemy import Connection

from learnpulse.api.deps import ReadEngineDep, require_token
from learnpulse.api.inputs import model_columns
from learnpulse.api.schemas import error_responses
from learnpulse.api.segment_schemas import (
    MAX_USER_ID,
    Assignment,
    Candidate,
    ClusterFitRequest,
    ClusterFitResponse,
    ClusterPredictRequest,
    ClusterPredictResponse,
    FeatureInfo,
    RowSegment,
    RunRef,
    SegmentProfile,
    SegmentsResponse,
    StoredSegment,
    StudentSegment,
    UserSegment,
)
from learnpulse.api.values import finite_or_none
from learnpulse.engines.segments import SegmentModel
from learnpulse.errors import InvalidInputError, NotFoundError
from learnpulse.jobs.cluster_segments import NAME as JOB
from learnpulse.segment_features import FEATURES, LOG_FEATURES
from learnpulse.store import segments as store
from learnpulse.store.survival import known_students

router = APIRouter(tags=["segments"], dependencies=[Depends(require_token)])

NO_RUN = "no learner segments yet: run cluster-segments (`learnpulse run cluster-segments`)"
_STORED_ERROR = {404: "cluster-segments has not stored a run yet"}


def _centroid(values: dict[str, Any] | None) -> dict[str, float | None] | None:
    return None if values is None else {str(k): finite_or_none(v) for k, v in values.items()}


@router.post(
    "/cluster/fit",
    response_model=ClusterFitResponse,
    summary="Segment feature rows",
    responses=error_responses({422: "invalid rows (lengths, values, log features) or too few rows for the segments"}),
)
def fit(request: Annotated[ClusterFitRequest, Body()]) -> ClusterFitResponse:
    """Segment the rows in the body with the engine of cluster-segments: robust scaling (median / IQR, ``log1p``
    first for ``log_features``), then k-means or a Gaussian mixture; with ``n_clusters`` null, k in 2..10 by the
    silhouette on a sample (kmeans) or BIC (gmm). Segments are ordered largest first, numbered 1..k and named from
    their profiles. Nothing is stored."""
    names = list(request.features)
    frame = pd.DataFrame({n: np.asarray(request.features[n], dtype=np.float64) for n in names})
    log_features = request.log_features
    if log_features is None:
        log_features = [f for f in LOG_FEATURES if f in request.features]
    model = SegmentModel(
        request.method, request.n_clusters, log_features=log_features, random_state=request.random_state
    ).fit(frame)
    pred = model.predict(frame)
    profiles = model.profiles()
    segments = [
        SegmentProfile(
            segment_id=int(row["segment_id"]),
            name=str(row["name"]),
            size=int(row["size"]),
            share=float(row["share"]),
            centroid={n: finite_or_none(row[n]) for n in names},
        )
        for row in profiles.to_dict("records")
    ]
    labels: list[int | str | None] = list(request.ids) if request.ids is not None else [None] * len(frame)
    assignments = [
        Assignment(
            row=i,
            id=label,
            segment_id=int(seg),
            distance=float(dist),
            probability=finite_or_none(prob),
        )
        for i, (label, seg, dist, prob) in enumerate(
            zip(labels, pred["segment_id"], pred["distance"], pred["probability"], strict=True)
        )
    ]
    assert model.k_ is not None and model.criterion_ is not None
    return ClusterFitResponse(
        method=request.method,
        k=model.k_,
        criterion=model.criterion_,
        selection=[
            Candidate(**{k: finite_or_none(v) if k != "k" else v for k, v in s.items()}) for s in model.selection_ or []
        ],
        silhouette=finite_or_none(model.silhouette_),
        inertia=finite_or_none(model.inertia_),
        bic=finite_or_none(model.bic_),
        segments=segments,
        assignments=assignments,
        model=model.to_json(),
    )


def _latest(conn: Connection) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The latest run (``run_id``, ``as_of``) and its ``segment_meta`` rows; 404 before the first run."""
    run = store.latest_run(conn)
    if run is None:
        raise NotFoundError(NO_RUN, {"job": JOB})
    return run, store.segments_of(conn, int(run["run_id"]))


def _run_ref(run: dict[str, Any], rows: list[dict[str, Any]]) -> RunRef:
    quality = rows[0]["quality"]
    return RunRef(run_id=run["run_id"], as_of=run["as_of"], method=quality["method"], k=quality["k"])


@router.get(
    "/segments",
    response_model=SegmentsResponse,
    summary="The latest learner segments",
    responses=error_responses(_STORED_ERROR),
)
def segments(engine: ReadEngineDep) -> SegmentsResponse:
    """The segments of the latest cluster-segments run (largest first, then the previous run's segments that
    vanished, with size 0 and their last profile): stable id, name, size and share, status against the previous run
    (``persisting``, ``new``, ``vanished``) and the profile: the centre of each feature in its unit (``features``
    lists them)."""
    with engine.connect() as conn:
        run, rows = _latest(conn)
    quality = rows[0]["quality"]
    centroid_names = set(rows[0]["centroid"] or {})
    return SegmentsResponse(
        run_id=run["run_id"],
        as_of=run["as_of"],
        method=quality["method"],
        k=quality["k"],
        criterion=quality["criterion"],
        silhouette=finite_or_none(quality.get("silhouette")),
        bic=finite_or_none(quality.get("bic")),
        students=quality["students"],
        skipped=quality["skipped"],
        window_start=quality["window_start"],
        window_end=quality["window_end"],
        previous_run_id=quality.get("previous_run_id"),
        features=[FeatureInfo(**f.to_json()) for f in FEATURES if f.name in centroid_names],
        segments=[
            StoredSegment(
                segment_id=r["segment_id"],
                name=r["name"],
                size=r["size"],
                share=float(r["quality"].get("share") or 0.0),
                status=r["status"],
                matched_previous_id=r["matched_previous_id"],
                match_distance=finite_or_none(r["match_distance"]),
                mean_distance=finite_or_none(r["quality"].get("mean_distance")),
                mean_probability=finite_or_none(r["quality"].get("mean_probability")),
                centroid=_centroid(r["centroid"]),
            )
            for r in rows
        ],
    )


@router.get(
    "/users/{user_id}/segment",
    response_model=UserSegment,
    summary="A student's current segment",
    responses=error_responses({404: "no run stored yet, unknown student, or no segment in the latest run"}),
)
def user_segment(engine: ReadEngineDep, user_id: Annotated[int, Path(ge=1, le=MAX_USER_ID)]) -> UserSegment:
    """The student's segment in the latest cluster-segments run, with its distance to the segment's centre (and,
    for gmm, the membership probability) and the segment's profile. A student without a segment in that run (fewer
    than three active weeks in its window) gets 404 with ``details.reason = "not_segmented"``."""
    with engine.connect() as conn:
        run, rows = _latest(conn)
        found = store.student_segments(conn, int(run["run_id"]), [user_id]).get(user_id)
        known = found is not None or bool(known_students(conn, [user_id]))
    if found is None:
        if not known:
            raise NotFoundError(f"unknown user {user_id}", {"user_id": user_id, "reason": "unknown_student"})
        raise NotFoundError(
            f"user {user_id} has no segment in the latest run (as of {run['as_of']}): too few active weeks",
            {"user_id": user_id, "reason": "not_segmented", "run_id": run["run_id"]},
        )
    centroid = next(r["centroid"] for r in rows if r["segment_id"] == found["segment_id"])
    return UserSegment(
        user_id=user_id,
        run_id=run["run_id"],
        as_of=run["as_of"],
        segment_id=found["segment_id"],
        name=found["name"],
        distance=float(found["distance"]),
        probability=finite_or_none(found["probability"]),
        centroid=_centroid(centroid),
    )


@router.post(
    "/cluster/predict",
    response_model=ClusterPredictResponse,
    summary="Segments of students or feature rows from the latest run",
    responses=error_responses(
        {
            **_STORED_ERROR,
            422: "invalid body: neither or both of user_ids and features, or feature names not the model's",
        }
    ),
)
def predict(engine: ReadEngineDep, request: Annotated[ClusterPredictRequest, Body()]) -> ClusterPredictResponse:
    """With the latest run of cluster-segments. Send exactly one of:

    - ``user_ids``: each student's segment in that run as stored (name, distance, probability); ``status``
      ``not_segmented`` for a known student without one (too few active weeks), ``unknown_student`` otherwise.
    - ``features`` (name -> values, exactly the model's features, in their units, e.g. from GET /segments): each
      row's segment under that run's model: the nearest centre (kmeans) or the most probable component (gmm).
    """
    _check_one_input(request)
    with engine.connect() as conn:
        run, rows = _latest(conn)
        ref = _run_ref(run, rows)
        if request.user_ids is not None:
            return ClusterPredictResponse(run=ref, students=_students(conn, ref, request.user_ids))
        stored = store.stored_model(conn, JOB, ref.run_id)
    if stored is None:
        raise NotFoundError(
            f"the model of the latest run ({ref.run_id}, as of {ref.as_of}) is not kept: run cluster-segments again",
            {"job": JOB, "run_id": ref.run_id},
        )
    assert request.features is not None
    return ClusterPredictResponse(run=ref, rows=_rows(SegmentModel.from_json(stored), request.features))


def _check_one_input(request: ClusterPredictRequest) -> None:
    by_ids, by_rows = request.user_ids is not None, request.features is not None
    if by_ids == by_rows:
        problem = "send this or the other, not both" if by_ids else "one of user_ids and features is required"
        raise InvalidInputError(
            "send either user_ids or features",
            {
                "problems": [
                    {"location": f"body.{name}", "problem": problem, "type": "one_of"}
                    for name in ("user_ids", "features")
                ]
            },
        )


def _students(conn: Connection, ref: RunRef, user_ids: list[int]) -> list[StudentSegment]:
    ids = list(dict.fromkeys(user_ids))
    found = store.student_segments(conn, ref.run_id, ids)
    rest = [u for u in ids if u not in found]
    known = known_students(conn, rest) if rest else set()
    out = []
    for user_id in ids:
        row = found.get(user_id)
        if row is None:
            out.append(
                StudentSegment(user_id=user_id, status="not_segmented" if user_id in known else "unknown_student")
            )
        else:
            out.append(
                StudentSegment(
                    user_id=user_id,
                    status="segmented",
                    segment_id=row["segment_id"],
                    name=row["name"],
                    distance=float(row["distance"]),
                    probability=finite_or_none(row["probability"]),
                )
            )
    return out


def _rows(model: SegmentModel, features: dict[str, list[float]]) -> list[RowSegment]:
    names = list(model.feature_names_ or [])
    frame = model_columns(features, names, field="features", noun="feature")
    pred = model.predict(frame)
    name_of = dict(zip(model.segment_ids_ or [], model.names_ or [], strict=True))
    return [
        RowSegment(segment_id=int(seg), name=name_of[int(seg)], distance=float(dist), probability=finite_or_none(prob))
        for seg, dist, prob in zip(pred["segment_id"], pred["distance"], pred["probability"], strict=True)
    ]
