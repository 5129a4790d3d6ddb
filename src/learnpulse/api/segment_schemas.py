"""Request and response bodies of the segment routes (``/cluster/fit``, ``/cluster/predict``, ``/segments``,
``/users/{user_id}/segment``); pydantic only, shared with the client."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

MAX_FIT_ROWS = 200_000
MAX_PREDICT_ROWS = 100_000
MAX_PREDICT_STUDENTS = 1000
MAX_USER_ID = 2**63 - 1  # BIGINT

Method = Literal["kmeans", "gmm"]
SegmentStatus = Literal["persisting", "new", "vanished"]


def _rows(features: dict[str, list[float]], low: int, high: int) -> int:
    """The common number of rows of a feature mapping (``ValueError`` naming the lengths when they differ)."""
    lengths = {name: len(values) for name, values in features.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} ({v})" for k, v in lengths.items())
        raise ValueError(f"every feature needs the same number of values; got {listed}")
    n = next(iter(lengths.values()))
    if not low <= n <= high:
        raise ValueError(f"features need {low} to {high} rows; got {n}")
    return n


class ClusterFitRequest(BaseModel):
    """Feature rows in columns (name -> one value per row) and optional settings. Any numeric features work; those
    named in ``log_features`` are compared as ``log1p``."""

    model_config = ConfigDict(extra="forbid")

    features: dict[str, list[FiniteFloat]] = Field(
        min_length=1, description="Feature name -> one value per row (unit: student)."
    )
    ids: list[int | str] | None = Field(
        None, description="A label per row, echoed in the assignments (default: the row numbers)."
    )
    method: Method = Field("kmeans", description="kmeans, or gmm (a Gaussian mixture with full covariances).")
    n_clusters: int | None = Field(
        None, ge=2, le=50, description="Number of segments; null: chosen in 2..10 (silhouette for kmeans, BIC for gmm)."
    )
    log_features: list[str] | None = Field(
        None,
        description="Features compared as log1p(x) (heavy-tailed rates). Null: those of cluster-segments "
        "(attempts_per_week, study_minutes_per_week, attempts_per_active_day) that are among the features.",
    )
    random_state: int = Field(0, ge=0, description="Seed of every random choice: the same data and seed, same fit.")

    @model_validator(mode="after")
    def _check(self) -> ClusterFitRequest:
        n = _rows(self.features, 2, MAX_FIT_ROWS)
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(f"ids needs one label per row ({n}); got {len(self.ids)}")
        return self


class Candidate(BaseModel):
    """A number of segments tried by the automatic choice, with its score."""

    k: int
    silhouette: float | None = Field(None, description="kmeans: mean silhouette width on the score sample.")
    inertia: float | None = Field(None, description="kmeans: within-segment sum of squares on the fit sample.")
    bic: float | None = Field(None, description="gmm: Bayesian information criterion on the fit sample (lower wins).")


class SegmentProfile(BaseModel):
    """A segment of a fit: id, readable name, size and its centre in the features' units."""

    segment_id: int
    name: str
    size: int
    share: float
    centroid: dict[str, float | None] = Field(description="Feature -> the segment centre's value, in its units.")


class Assignment(BaseModel):
    row: int = Field(description="Row number in the request (0-based).")
    id: int | str | None = Field(None, description="The row's label from ids.")
    segment_id: int
    distance: float = Field(description="Euclidean distance to the segment's centre in the model's scaled space.")
    probability: float | None = Field(None, description="gmm: posterior membership probability of the segment.")


class ClusterFitResponse(BaseModel):
    method: Method
    k: int
    criterion: str = Field(description="How k was chosen: silhouette, bic, or fixed (n_clusters given).")
    selection: list[Candidate]
    silhouette: float | None = Field(description="Mean silhouette width of the fit on the score sample.")
    inertia: float | None
    bic: float | None
    segments: list[SegmentProfile]
    assignments: list[Assignment]
    model: dict[str, Any] = Field(description="The fitted model (SegmentModel.to_json), enough to predict with.")


# --- POST /cluster/predict ------------------------------------------------------------------------------------


class ClusterPredictRequest(BaseModel):
    """Either ``user_ids`` (their stored current segment) or ``features`` (rows scored with the latest stored
    model): exactly one of the two."""

    model_config = ConfigDict(extra="forbid")

    user_ids: list[Annotated[int, Field(ge=1, le=MAX_USER_ID)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_PREDICT_STUDENTS,
        description="Students whose segment in the latest run is wanted (duplicates answered once).",
    )
    features: dict[str, list[FiniteFloat]] | None = Field(
        None,
        min_length=1,
        description="Feature rows: name -> one value per row; names exactly the stored model's (GET /segments).",
    )

    @model_validator(mode="after")
    def _check(self) -> ClusterPredictRequest:
        if self.features is not None:
            _rows(self.features, 1, MAX_PREDICT_ROWS)
        return self


class RunRef(BaseModel):
    """The stored cluster-segments run that answered."""

    run_id: int
    as_of: date
    method: Method
    k: int


class RowSegment(BaseModel):
    segment_id: int
    name: str
    distance: float = Field(description="Euclidean distance to the segment's centre in the model's scaled space.")
    probability: float | None = Field(None, description="gmm: posterior membership probability.")


class StudentSegment(BaseModel):
    """A student's segment in a stored run. ``status`` ``segmented``: the fields are set; ``not_segmented``: a
    student known to the store without a segment in that run (fewer than three active weeks in its window);
    ``unknown_student``: no attempt, goal or KPI row of that id."""

    user_id: int
    status: Literal["segmented", "not_segmented", "unknown_student"]
    segment_id: int | None = None
    name: str | None = None
    distance: float | None = Field(None, description="To the segment's centre in the model's scaled space.")
    probability: float | None = Field(None, description="gmm: membership probability.")


class ClusterPredictResponse(BaseModel):
    """``students`` (one per distinct requested id, in request order) for ``user_ids``; ``rows`` (in order) for
    ``features``."""

    run: RunRef
    students: list[StudentSegment] | None = None
    rows: list[RowSegment] | None = None


# --- GET /segments, GET /users/{user_id}/segment ------------------------------------------------------------


class FeatureInfo(BaseModel):
    name: str
    unit: str
    description: str


class StoredSegment(BaseModel):
    """One ``segment_meta`` row: a segment of the run, or (``vanished``, size 0) one of the previous run's that has
    no successor, with its last centroid."""

    segment_id: int = Field(description="Stable: a segment that persists from run to run keeps its id.")
    name: str
    size: int
    share: float
    status: SegmentStatus
    matched_previous_id: int | None = Field(description="The previous run's segment it continues.")
    match_distance: float | None = Field(description="RMS distance between the two centres, in IQRs per feature.")
    mean_distance: float | None = Field(None, description="Mean distance of its students to the centre.")
    mean_probability: float | None = Field(None, description="gmm: mean membership probability of its students.")
    centroid: dict[str, float | None] | None = Field(description="Feature -> centre value, in the feature's units.")


class SegmentsResponse(BaseModel):
    """The latest cluster-segments run: how it was fitted and its segments (largest first, vanished last)."""

    run_id: int
    as_of: date
    method: Method
    k: int
    criterion: str
    silhouette: float | None
    bic: float | None
    students: int = Field(description="Students segmented.")
    skipped: int = Field(description="Students with rows in the window but too few active weeks.")
    window_start: date
    window_end: date
    previous_run_id: int | None
    features: list[FeatureInfo] = Field(description="The features of the centroids, with units.")
    segments: list[StoredSegment]


class UserSegment(BaseModel):
    """A student's segment in the latest run."""

    user_id: int
    run_id: int
    as_of: date
    segment_id: int
    name: str
    distance: float
    probability: float | None
    centroid: dict[str, float | None] | None = Field(description="The segment's centre, in the features' units.")
