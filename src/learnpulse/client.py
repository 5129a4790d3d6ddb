"""Python client of the learnpulse HTTP API (httpx).

    with Client("http://localhost:8000", token=os.environ["LEARNPULSE_API_TOKEN"]) as api:
        for week in api.iter_user_kpi(42, date_from="2026-03-01"):
            print(week.week_start, week.i_t, week.p)

Every method goes through one ``_request(method, path, *, params, json, idempotent)``: it adds the token, applies
the timeout, retries, and turns every error body ``{"error": {"code", "message", "details"}}`` into a typed
exception. Adding an endpoint is a few lines: call ``_request`` and validate the JSON into a model of
``learnpulse.api.schemas``.

Retries: only for idempotent calls (GET, HEAD, PUT, DELETE, or ``idempotent=True``), only after a transport error
(connection refused or reset, timeout) or a 502/503/504 answer; exponential backoff with jitter
(``backoff * 2**n``, between half and all of it), or the server's ``Retry-After`` when it gives one (capped at
``MAX_RETRY_AFTER``). A 4xx is never retried.

Exceptions (all ``ApiError``, itself a ``LearnpulseError``): ``Unauthorized`` (401), ``NotFound`` (404),
``InvalidRequest`` (400, 413, 422), ``ServiceUnavailable`` (502/503/504 once retries are spent), ``ConnectionFailed``
(no answer at all). Each carries ``status``, ``code``, ``message`` and ``details`` from the error body. The token
appears in no message, repr or exception.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx

from learnpulse.api.forecast_schemas import AnomalyRow, ProphetFitResponse, ProphetPredictResponse
from learnpulse.api.growth_schemas import GrowthFitResponse, GrowthModelInfo, GrowthPredictResponse
from learnpulse.api.irt_schemas import CalibrateResponse, ItemInfo, ScoreResponse
from learnpulse.api.schemas import Health, JobRun, JobStatus, KpiWeek, Page, Readiness
from learnpulse.api.segment_schemas import (
    ClusterFitResponse,
    ClusterPredictResponse,
    SegmentsResponse,
    UserSegment,
)
from learnpulse.api.survival_schemas import (
    AlertTier,
    ChurnModel,
    InactivityAlert,
    SurvivalFitResponse,
    SurvivalPredictResponse,
)
from learnpulse.engines.growth_options import Family, Sampler
from learnpulse.errors import LearnpulseError

T = TypeVar("T")

__all__ = [
    "ApiError",
    "Client",
    "ConnectionFailed",
    "InvalidRequest",
    "NotFound",
    "ServiceUnavailable",
    "Unauthorized",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({502, 503, 504})
MAX_RETRY_AFTER = 30.0  # seconds: a longer Retry-After is capped


class ApiError(LearnpulseError):
    """An error answer of the API (or no answer: ``ConnectionFailed``). ``status`` is None when nothing answered."""

    code = "api_error"

    def __init__(self, status: int | None, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.status = status
        self.code = code
        if status is not None:
            self.http_status = status

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite the extra constructor arguments
        return (type(self), (self.status, self.code, self.message, self.details))

    def __str__(self) -> str:
        prefix = f"HTTP {self.status} " if self.status is not None else ""
        return f"{prefix}{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class Unauthorized(ApiError):  # noqa: N818 - the names callers catch
    """401: missing or wrong token."""


class NotFound(ApiError):  # noqa: N818 - the names callers catch
    """404: unknown resource (e.g. an unknown student) or route."""


class InvalidRequest(ApiError):  # noqa: N818 - the names callers catch
    """400, 413 or 422: the request was refused as it stands; ``details['problems']`` says where."""


class ServiceUnavailable(ApiError):  # noqa: N818 - the names callers catch
    """502, 503 or 504 after the retries: the server or its database is unavailable."""


class ConnectionFailed(ApiError):  # noqa: N818 - the names callers catch
    """No HTTP answer (connection refused or reset, timeout) after the retries."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    413: InvalidRequest,
    422: InvalidRequest,
    502: ServiceUnavailable,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}


def _error_from(response: httpx.Response) -> ApiError:
    cls = _BY_STATUS.get(response.status_code, ApiError)
    code, message, details = f"http_{response.status_code}", response.reason_phrase or "HTTP error", {}
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
        details = dict(error.get("details") or {})
    except (ValueError, KeyError, TypeError):
        pass  # not our error shape (e.g. a proxy's page): keep the status line
    return cls(response.status_code, code, message, details)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _date_param(value: date | str | None) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, date) else str(value)


def _follow(fetch: Callable[[str | None], Page[T]]) -> Iterator[T]:
    """Every item of a paginated list: ``fetch(cursor)`` gets one page, starting with no cursor."""
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


class Client:
    """Client of the learnpulse API; use as a context manager (or call ``close()``)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 3,
        backoff: float = 0.25,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._token = token or None
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, token={'set' if self._token else 'none'})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the one request path ----------------------------------------------------------------------------------

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = _retry_after(response)
            if after is not None:
                return after
        full = self.backoff * 2.0**attempt
        return full / 2 + random.uniform(0, full / 2)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Send one call (with retries if idempotent) and return its JSON body; raise ``ApiError`` on failure."""
        method = method.upper()
        retryable = idempotent if idempotent is not None else method in IDEMPOTENT_METHODS
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, params=query, json=json, headers=headers)
            except httpx.TransportError as exc:
                if retryable and attempt < self.retries:
                    time.sleep(self._delay(attempt, None))
                    attempt += 1
                    continue
                tries = attempt + 1
                raise ConnectionFailed(
                    None,
                    "connection_failed",
                    f"{method} {self.base_url}{path}: no answer after {tries} attempt{'s' * (tries > 1)} "
                    f"({type(exc).__name__}: {exc})",
                    {"attempts": tries},
                ) from None
            if response.status_code in RETRY_STATUSES and retryable and attempt < self.retries:
                delay = self._delay(attempt, response)
                response.close()
                time.sleep(delay)
                attempt += 1
                continue
            if not response.is_success:
                raise _error_from(response)
            if not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise ApiError(
                    response.status_code,
                    "invalid_response",
                    f"{method} {self.base_url}{path}: the answer is not JSON",
                    {"content_type": response.headers.get("content-type")},
                ) from None

    # --- endpoints ---------------------------------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /healthz``: the server process answers."""
        return Health.model_validate(self._request("GET", "/healthz"))

    def ready(self) -> Readiness:
        """``GET /readyz``: the database answers and its schema is current (else ``ServiceUnavailable``)."""
        return Readiness.model_validate(self._request("GET", "/readyz"))

    def user_kpi(
        self,
        user_id: int,
        date_from: date | str | None = None,
        date_to: date | str | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[KpiWeek]:
        """``GET /users/{user_id}/kpi``: one page of the student's weeks overlapping [date_from, date_to]."""
        params = {"from": _date_param(date_from), "to": _date_param(date_to), "limit": limit, "cursor": cursor}
        return Page[KpiWeek].model_validate(self._request("GET", f"/users/{int(user_id)}/kpi", params=params))

    def iter_user_kpi(
        self, user_id: int, date_from: date | str | None = None, date_to: date | str | None = None, *, limit: int = 100
    ) -> Iterator[KpiWeek]:
        """Every week of ``user_kpi``, following the cursors (``limit`` weeks per request)."""
        return _follow(lambda cursor: self.user_kpi(user_id, date_from, date_to, limit=limit, cursor=cursor))

    def job_runs(
        self, job: str | None = None, status: JobStatus | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> Page[JobRun]:
        """``GET /jobs/runs``: one page of job runs, newest first."""
        params = {"job": job, "status": status, "limit": limit, "cursor": cursor}
        return Page[JobRun].model_validate(self._request("GET", "/jobs/runs", params=params))

    def iter_job_runs(
        self, job: str | None = None, status: JobStatus | None = None, *, limit: int = 50
    ) -> Iterator[JobRun]:
        """Every job run matching the filters, newest first, following the cursors."""
        return _follow(lambda cursor: self.job_runs(job, status, limit=limit, cursor=cursor))

    # --- survival ------------------------------------------------------------------------------------------

    def fit_survival(
        self,
        durations: Sequence[float],
        events: Sequence[int],
        covariates: Mapping[str, Sequence[float]],
        *,
        penalizer: float = 0.0,
        ties: Literal["efron", "breslow"] = "efron",
        alpha: float = 0.05,
    ) -> SurvivalFitResponse:
        """``POST /survival/fit``: fit a Cox model on the given rows (nothing is stored). A fit is a pure function
        of its input, so it is retried like an idempotent call."""
        body = {  # validated by the server, the one place that says what is acceptable
            "durations": [float(d) for d in durations],
            "events": [int(e) for e in events],
            "covariates": {k: [float(x) for x in v] for k, v in covariates.items()},
            "penalizer": penalizer,
            "ties": ties,
            "alpha": alpha,
        }
        data = self._request("POST", "/survival/fit", json=body, idempotent=True)
        return SurvivalFitResponse.model_validate(data)

    def predict_survival(
        self,
        user_ids: Sequence[int] | None = None,
        *,
        covariates: Mapping[str, Sequence[float]] | None = None,
        as_of: date | str | None = None,
        at: float | None = None,
        horizon_days: float | None = None,
    ) -> SurvivalPredictResponse:
        """``POST /survival/predict``: churn risk S from the latest stored model, for students (``user_ids``, at
        ``as_of``; default the last day build-kpi has built) or for covariate rows (``covariates``, with ``at`` and
        ``horizon_days``). Pass exactly one of ``user_ids`` and ``covariates``. A pure read: retried like an
        idempotent call."""
        body: dict[str, Any] = {
            "user_ids": None if user_ids is None else [int(u) for u in user_ids],
            "as_of": _date_param(as_of),
            "covariates": None if covariates is None else {k: [float(x) for x in v] for k, v in covariates.items()},
            "at": at,
            "horizon_days": horizon_days,
        }
        body = {k: v for k, v in body.items() if v is not None}
        data = self._request("POST", "/survival/predict", json=body, idempotent=True)
        return SurvivalPredictResponse.model_validate(data)

    def survival_model(self, include_model: bool = False) -> ChurnModel:
        """``GET /survival/model``: the latest stored churn model (``NotFound`` when there is none yet);
        ``include_model`` adds the model itself (``CoxPH.from_json`` loads it)."""
        params = {"include_model": "true" if include_model else None}
        return ChurnModel.model_validate(self._request("GET", "/survival/model", params=params))

    def fit_growth(
        self,
        unit: Sequence[int | str],
        time: Sequence[float],
        y: Sequence[float],
        trials: Sequence[float] | None = None,
        *,
        family: Family = "gaussian",
        iter: int = 1000,
        chains: int = 2,
        seed: int = 0,
        sampler: Sampler = "nuts",
    ) -> GrowthFitResponse:
        """``POST /growth/fit``: fit ``y ~ time + (time | unit)`` with NUTS (``sampler="gibbs"``, binomial only: NUTS
        on the population, Metropolis-Hastings on the units) on the given rows (nothing is stored). Deterministic for
        a seed, so retried like an idempotent call."""
        body: dict[str, Any] = {
            "family": family,
            "unit": list(unit),
            "time": [float(t) for t in time],
            "y": [float(v) for v in y],
            "trials": None if trials is None else [float(n) for n in trials],
            "iter": iter,
            "chains": chains,
            "seed": seed,
            "sampler": sampler,
        }
        data = self._request("POST", "/growth/fit", json=body, idempotent=True)
        return GrowthFitResponse.model_validate(data)

    def predict_goal_probability(
        self,
        user_ids: Sequence[int],
        *,
        target: float | None = None,
        deadline: date | str | None = None,
        as_of: date | str | None = None,
        trajectory: bool = True,
    ) -> GrowthPredictResponse:
        """``POST /growth/predict``: P, sigma (and the weekly trajectory) from the stored growth model, for the
        students' stored goals or a what-if ``target``/``deadline``. A pure read: retried like an idempotent call."""
        body: dict[str, Any] = {
            "user_ids": [int(u) for u in user_ids],
            "target": target,
            "deadline": _date_param(deadline),
            "as_of": _date_param(as_of),
            "trajectory": trajectory,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return GrowthPredictResponse.model_validate(
            self._request("POST", "/growth/predict", json=body, idempotent=True)
        )

    def growth_model(self) -> GrowthModelInfo:
        """``GET /growth/model``: the growth model in use (``NotFound`` when there is none yet)."""
        return GrowthModelInfo.model_validate(self._request("GET", "/growth/model"))

    def calibrate_irt(
        self,
        person: Sequence[int | str],
        item: Sequence[int | str],
        correct: Sequence[bool | int],
        *,
        min_responses: int = 30,
        latent: Literal["normal", "empirical"] = "normal",
    ) -> CalibrateResponse:
        """``POST /irt/calibrate``: 2PL item parameters from the given answers (nothing is stored). A pure function
        of its input: retried like an idempotent call."""
        body = {
            "person": list(person),
            "item": list(item),
            "correct": [int(c) for c in correct],
            "min_responses": min_responses,
            "latent": latent,
        }
        return CalibrateResponse.model_validate(self._request("POST", "/irt/calibrate", json=body, idempotent=True))

    def score_irt(
        self, person: Sequence[int | str], item: Sequence[int | str], correct: Sequence[bool | int]
    ) -> ScoreResponse:
        """``POST /irt/score``: EAP ability, SD and learning index per person with the stored calibration."""
        body = {"person": list(person), "item": list(item), "correct": [int(c) for c in correct]}
        return ScoreResponse.model_validate(self._request("POST", "/irt/score", json=body, idempotent=True))

    def item(self, item_id: int) -> ItemInfo:
        """``GET /items/{item_id}``: the item's parameters in the latest calibrations (``NotFound`` if never)."""
        return ItemInfo.model_validate(self._request("GET", f"/items/{int(item_id)}"))

    def fit_clusters(
        self,
        features: Mapping[str, Sequence[float]],
        *,
        ids: Sequence[int | str] | None = None,
        method: Literal["kmeans", "gmm"] = "kmeans",
        n_clusters: int | None = None,
        log_features: Sequence[str] | None = None,
        random_state: int = 0,
    ) -> ClusterFitResponse:
        """``POST /cluster/fit``: segment the given feature rows (nothing is stored). Deterministic for a seed, so
        retried like an idempotent call."""
        body: dict[str, Any] = {
            "features": {k: [float(x) for x in v] for k, v in features.items()},
            "ids": None if ids is None else list(ids),
            "method": method,
            "n_clusters": n_clusters,
            "log_features": None if log_features is None else list(log_features),
            "random_state": random_state,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return ClusterFitResponse.model_validate(self._request("POST", "/cluster/fit", json=body, idempotent=True))

    def predict_segment(
        self, user_ids: Sequence[int] | None = None, *, features: Mapping[str, Sequence[float]] | None = None
    ) -> ClusterPredictResponse:
        """``POST /cluster/predict``: the stored segment of students (``user_ids``) or the latest model's segment of
        feature rows (``features``); pass exactly one. A pure read: retried like an idempotent call."""
        body: dict[str, Any] = {
            "user_ids": None if user_ids is None else [int(u) for u in user_ids],
            "features": None if features is None else {k: [float(x) for x in v] for k, v in features.items()},
        }
        body = {k: v for k, v in body.items() if v is not None}
        return ClusterPredictResponse.model_validate(
            self._request("POST", "/cluster/predict", json=body, idempotent=True)
        )

    def segments(self) -> SegmentsResponse:
        """``GET /segments``: the latest run's segment profiles and sizes."""
        return SegmentsResponse.model_validate(self._request("GET", "/segments"))

    def user_segment(self, user_id: int) -> UserSegment:
        """``GET /users/{user_id}/segment``: the student's current segment."""
        return UserSegment.model_validate(self._request("GET", f"/users/{int(user_id)}/segment"))

    def fit_prophet(
        self,
        ds: Sequence[date | str],
        y: Sequence[float],
        y_sd: Sequence[float | None] | None = None,
        *,
        engine: Literal["batch", "prophet"] = "batch",
        **options: Any,
    ) -> ProphetFitResponse:
        """``POST /prophet/fit``: fit one weekly series (``ds``, ``y``, optional measurement SDs ``y_sd``) and get
        its forecast, anomalies and parameters (nothing is stored). ``options`` are ``ProphetOptions`` fields
        (horizon, changepoint_prior_scale, anomaly_threshold, ...). Deterministic: retried like an idempotent call."""
        body: dict[str, Any] = {
            "ds": [_date_param(d) for d in ds],
            "y": [float(v) for v in y],
            "y_sd": None if y_sd is None else [None if v is None else float(v) for v in y_sd],
            "engine": engine,
            "options": options,
        }
        body = {k: v for k, v in body.items() if v is not None}
        return ProphetFitResponse.model_validate(self._request("POST", "/prophet/fit", json=body, idempotent=True))

    def predict_prophet(self, user_ids: Sequence[int]) -> ProphetPredictResponse:
        """``POST /prophet/predict``: the stored forecast of the latest forecast-prophet run for each student."""
        body = {"user_ids": [int(u) for u in user_ids]}
        return ProphetPredictResponse.model_validate(
            self._request("POST", "/prophet/predict", json=body, idempotent=True)
        )

    def anomalies(
        self,
        week: date | str | None = None,
        direction: Literal["drop", "jump"] | None = None,
        *,
        run_id: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[AnomalyRow]:
        """``GET /anomalies``: one page of a forecast-prophet run's anomalous weeks (default: the latest run),
        strongest first."""
        params = {"week": _date_param(week), "direction": direction, "run_id": run_id, "limit": limit, "cursor": cursor}
        return Page[AnomalyRow].model_validate(self._request("GET", "/anomalies", params=params))

    def iter_anomalies(
        self, week: date | str | None = None, direction: Literal["drop", "jump"] | None = None, *, limit: int = 100
    ) -> Iterator[AnomalyRow]:
        """Every anomaly matching the filters, strongest first, following the cursors."""
        return _follow(lambda cursor: self.anomalies(week, direction, limit=limit, cursor=cursor))

    def alerts(
        self,
        date: date | str | None = None,
        tier: AlertTier | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[InactivityAlert]:
        """``GET /alerts``: one page of a day's inactivity alerts (default: the latest day), riskiest first."""
        params = {"date": _date_param(date), "tier": tier, "limit": limit, "cursor": cursor}
        return Page[InactivityAlert].model_validate(self._request("GET", "/alerts", params=params))

    def iter_alerts(
        self, date: date | str | None = None, tier: AlertTier | None = None, *, limit: int = 100
    ) -> Iterator[InactivityAlert]:
        """Every alert of the day matching the filters, riskiest first, following the cursors."""
        return _follow(lambda cursor: self.alerts(date, tier, limit=limit, cursor=cursor))
