"""The HTTP API through the real app (FastAPI TestClient) on SQLite and PostgreSQL: auth, health, the one error
shape, pagination, filters, body limits, an unreachable database, metrics, and serve()'s refusal without a token."""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, insert

from learnpulse.api import server
from learnpulse.api.app import create_app
from learnpulse.errors import ConfigError
from learnpulse.settings import Settings, load_settings
from learnpulse.store.db import make_engine, transaction
from learnpulse.store.runs import finish_run, start_run
from learnpulse.store.schema import head_revision
from learnpulse.store.tables import attempt, ingest_batch, user_goal, weekly_kpi

with warnings.catch_warnings():  # "Using httpx with starlette.testclient is deprecated" (Starlette 1.x)
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient


TOKEN = f"tok-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 4096
MONDAY = date(2026, 3, 2)
WEEKS = 10


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv(server.INSECURE_DEV_ENV, raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": url, "learnpulse_api_max_body_bytes": MAX_BODY}
    values.setdefault("learnpulse_api_token", TOKEN)
    values.update(overrides)
    return load_settings(**{k: v for k, v in values.items() if v is not None})


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def app(engine: Engine) -> FastAPI:
    return create_app(settings_for(url_of(engine)))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def kpi_row(user_id: int, week: int, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "user_id": user_id,
        "week_start": MONDAY + timedelta(weeks=week),
        "attempts": 10 + week,
        "correct": 5 + week,
        "accuracy": (5 + week) / (10 + week),
        "active_days": 1 + week % 7,
        "study_minutes": 12.5 * (week + 1),
        "topics": 1 + week % 3,
        "i_t": 40.0 + week,
        "i_t_source": "accuracy",
        "p": 0.5 + week / 100,
        "sigma": 0.1,
        "s": 0.2 + week / 100,
        "kpi_run_id": None,
    }
    row.update(extra)
    return row


@pytest.fixture
def data(engine: Engine) -> dict[str, Any]:
    """User 1: WEEKS weeks of KPIs. User 2: a goal, no KPIs. User 3: one attempt, no KPIs. User 4: nothing."""
    rows = [kpi_row(1, w) for w in range(WEEKS)] + [kpi_row(5, 0)]
    with transaction(engine) as conn:
        conn.execute(insert(weekly_kpi), rows)
        conn.execute(insert(user_goal).values(user_id=2, target=0.8, deadline=date(2026, 6, 1), batch_id=1))
        batch = conn.execute(
            insert(ingest_batch)
            .values(kind="attempts", source="test", rows_in=1, rows_added=1, loaded_at=_now())
            .returning(ingest_batch.c.batch_id)
        ).scalar_one()
        conn.execute(
            insert(attempt).values(
                attempt_id=1, user_id=3, item_id=1, topic_id=1, is_correct=True, answered_at=_now(), batch_id=batch
            )
        )
    return {"rows": rows}


def _now() -> Any:
    from learnpulse.store.runs import now_utc

    return now_utc()


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The one error shape, exactly; returns the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    assert body["error"]["code"] == code
    assert TOKEN not in response.text
    error: dict[str, Any] = body["error"]
    return error


def locations(error: dict[str, Any]) -> set[str]:
    return {p["location"] for p in error["details"]["problems"]}


# --- health --------------------------------------------------------------------------------------------------


def test_health_and_readiness_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "schema_revision": head_revision()}


def test_readyz_is_503_on_an_unmigrated_database(db_url: str) -> None:
    with TestClient(create_app(settings_for(db_url)), raise_server_exceptions=False) as c:
        assert c.get("/healthz").status_code == 200
        error = assert_error(c.get("/readyz"), 503, "schema_out_of_date")
        assert error["details"] == {"current": None, "head": head_revision()}


# --- auth ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "error_hint"),
    [
        ({}, False),
        ({"Authorization": "Bearer wrong-token"}, True),
        ({"Authorization": f"Bearer {TOKEN}x"}, True),  # the real token as a prefix is still wrong
        ({"Authorization": f"Bearer {TOKEN[:-1]}"}, True),
        ({"Authorization": f"Basic {TOKEN}"}, False),  # not a bearer token at all
        ({"Authorization": TOKEN}, False),
    ],
)
@pytest.mark.usefixtures("data")
def test_every_data_route_needs_the_right_token(client: TestClient, headers: dict[str, str], error_hint: bool) -> None:
    for path in ("/users/1/kpi", "/jobs/runs", "/openapi.json", "/docs"):
        response = client.get(path, headers=headers)
        assert_error(response, 401, "unauthorized")
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ")
        assert ('error="invalid_token"' in challenge) == error_hint
    for path in ("/users/1/kpi", "/jobs/runs", "/openapi.json", "/docs"):
        assert client.get(path, headers=AUTH).status_code == 200, path
    assert client.get("/users/1/kpi", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_probes_and_metrics_are_open(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path


def test_token_from_a_file(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret" / "token"
    secret.parent.mkdir()
    secret.write_text("file-token-123\n")  # as a mounted Kubernetes secret may end with a newline
    monkeypatch.setenv("LEARNPULSE_API_TOKEN_FILE", str(secret))
    monkeypatch.setenv("DATABASE_URL", url_of(engine))
    with TestClient(create_app(load_settings())) as c:
        assert c.get("/jobs/runs", headers={"Authorization": "Bearer file-token-123"}).status_code == 200
        assert_error(c.get("/jobs/runs", headers=AUTH), 401, "unauthorized")


def test_a_rotated_token_file_takes_effect_without_a_restart(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from learnpulse.api import deps

    monkeypatch.setattr(deps, "TOKEN_RECHECK_SECONDS", 0.0)
    secret = tmp_path / "token"
    secret.write_text("first-token-123\n")
    monkeypatch.setenv("LEARNPULSE_API_TOKEN_FILE", str(secret))
    monkeypatch.setenv("DATABASE_URL", url_of(engine))
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(load_settings())) as c:

        def status(token: str) -> int:
            return c.get("/jobs/runs", headers={"Authorization": f"Bearer {token}"}).status_code

        assert status("first-token-123") == 200
        rotated = tmp_path / "token.new"  # as Kubernetes does: a new file swapped in, not the old one rewritten
        rotated.write_text("second-token-456\n")
        rotated.replace(secret)
        assert status("first-token-123") == 401
        assert status("second-token-456") == 200
        secret.write_text("")  # a rotation caught halfway: the last good token stays
        os.utime(secret, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
        assert status("second-token-456") == 200
        secret.unlink()
        assert status("second-token-456") == 200
    assert "cannot be used, keeping the previous token" in caplog.text
    assert "first-token-123" not in caplog.text and "second-token-456" not in caplog.text


def test_the_token_is_never_logged(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"kaput while holding {TOKEN[:3]}")

    caplog.set_level(logging.DEBUG)
    with TestClient(app, raise_server_exceptions=False) as c:
        for headers in ({"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"}):
            assert c.get("/users/1/kpi", headers=headers).status_code == 401
        response = c.get("/boom", headers=AUTH)
        error_id = assert_error(response, 500, "internal_error")["details"]["error_id"]
    # The 500 was logged, with its traceback and the error id the client saw, but without the token.
    assert error_id in caplog.text and "RuntimeError" in caplog.text and "Traceback" in caplog.text
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in repr(record.__dict__)


# --- errors --------------------------------------------------------------------------------------------------


def test_a_crash_is_a_generic_500_without_trace(app: FastAPI) -> None:
    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("secret internal state at /srv/app/module.py")

    with TestClient(app, raise_server_exceptions=False) as c:
        response = c.get("/crash", headers=AUTH)
    error = assert_error(response, 500, "internal_error")
    assert set(error["details"]) == {"error_id"}
    for leak in ("RuntimeError", "secret internal", "Traceback", ".py", "File "):
        assert leak not in response.text


@pytest.mark.usefixtures("data")
def test_every_error_has_the_one_shape(client: TestClient) -> None:
    assert_error(client.get("/users/1/kpi"), 401, "unauthorized")
    assert_error(client.get("/no/such/route", headers=AUTH), 404, "not_found")
    assert_error(client.get("/users/4/kpi", headers=AUTH), 404, "not_found")
    assert_error(client.delete("/users/1/kpi", headers=AUTH), 405, "method_not_allowed")
    assert_error(client.get("/users/1/kpi?limit=0", headers=AUTH), 422, "invalid_input")
    assert_error(client.get("/users/1/kpi?cursor=zzz", headers=AUTH), 422, "invalid_input")
    assert_error(client.post("/users/1/kpi", content=b"x" * (MAX_BODY + 1), headers=AUTH), 413, "payload_too_large")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/users/1/kpi?from=not-a-date", {"query.from"}),
        ("/users/1/kpi?to=2026-13-01", {"query.to"}),
        ("/users/1/kpi?from=2026-04-01&to=2026-03-01", {"query.to"}),
        ("/users/abc/kpi", {"path.user_id"}),
        ("/users/0/kpi", {"path.user_id"}),
        ("/users/1/kpi?limit=0&from=x", {"query.limit", "query.from"}),
        ("/users/1/kpi?limit=1001", {"query.limit"}),
        ("/jobs/runs?status=exploded", {"query.status"}),
        ("/jobs/runs?limit=abc", {"query.limit"}),
    ],
)
@pytest.mark.usefixtures("data")
def test_invalid_parameters_are_422_with_field_paths(client: TestClient, path: str, expected: set[str]) -> None:
    error = assert_error(client.get(path, headers=AUTH), 422, "invalid_input")
    assert locations(error) == expected
    assert all(p["problem"] for p in error["details"]["problems"])


@pytest.mark.usefixtures("data")
def test_unknown_user_is_404_and_a_known_user_without_weeks_an_empty_page(client: TestClient) -> None:
    error = assert_error(client.get("/users/4/kpi", headers=AUTH), 404, "not_found")
    assert error["details"] == {"user_id": 4} and "4" in error["message"]
    for known in (2, 3):  # a goal only; an attempt only
        assert client.get(f"/users/{known}/kpi", headers=AUTH).json() == {"items": [], "next_cursor": None}
    # A known student with no week in the range: empty, not 404.
    assert client.get("/users/1/kpi?from=2030-01-01", headers=AUTH).json()["items"] == []


# --- KPI reads -----------------------------------------------------------------------------------------------


def test_kpi_rows_use_the_original_names(client: TestClient, data: dict[str, Any]) -> None:
    body = client.get("/users/1/kpi", headers=AUTH).json()
    assert body["next_cursor"] is None
    items = body["items"]
    assert len(items) == WEEKS
    first, expected = items[0], data["rows"][0]
    assert set(first) == {
        "user_id", "week_start", "attempts", "correct", "accuracy", "active_days", "study_minutes", "topics",
        "I_t", "i_t_source", "P", "sigma", "S", "kpi_run_id",
    }  # fmt: skip
    assert first["week_start"] == MONDAY.isoformat()
    assert (first["I_t"], first["P"], first["sigma"], first["S"]) == (
        expected["i_t"], expected["p"], expected["sigma"], expected["s"]
    )  # fmt: skip
    assert first["attempts"] == expected["attempts"] and first["accuracy"] == pytest.approx(expected["accuracy"])
    assert [i["week_start"] for i in items] == [(MONDAY + timedelta(weeks=w)).isoformat() for w in range(WEEKS)]
    assert all(i["user_id"] == 1 for i in items)


@pytest.mark.usefixtures("data")
def test_from_and_to_select_the_weeks_that_overlap_them(client: TestClient) -> None:
    def weeks(query: str) -> list[str]:
        return [i["week_start"] for i in client.get(f"/users/1/kpi?{query}", headers=AUTH).json()["items"]]

    week2, week4 = MONDAY + timedelta(weeks=2), MONDAY + timedelta(weeks=4)
    assert weeks(f"from={week2}&to={week4}") == [str(MONDAY + timedelta(weeks=w)) for w in (2, 3, 4)]
    # A Wednesday inside week 2 up to the Sunday ending week 3: weeks 2 and 3.
    assert weeks(f"from={week2 + timedelta(days=2)}&to={week2 + timedelta(days=13)}") == [
        str(week2), str(week2 + timedelta(weeks=1))
    ]  # fmt: skip
    assert weeks(f"to={MONDAY}") == [str(MONDAY)]
    assert weeks(f"from={MONDAY + timedelta(weeks=WEEKS - 1, days=6)}") == [str(MONDAY + timedelta(weeks=WEEKS - 1))]


@pytest.mark.parametrize("limit", [1, 3, 4, 10, 11])
@pytest.mark.usefixtures("data")
def test_kpi_pagination_returns_every_week_once(client: TestClient, limit: int) -> None:
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        body = client.get("/users/1/kpi", params=params, headers=AUTH).json()
        pages += 1
        assert 0 < len(body["items"]) <= limit
        seen += [i["week_start"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 50
    assert seen == [(MONDAY + timedelta(weeks=w)).isoformat() for w in range(WEEKS)]
    assert pages == -(-WEEKS // limit)


@pytest.mark.parametrize(
    "cursor", ["garbage!", "e30", "eyJrIjoicnVucyIsInYiOjV9", "eyJrIjoia3BpIiwidiI6MX0", "x" * 201]
)
@pytest.mark.usefixtures("data")
def test_a_bad_cursor_is_422(client: TestClient, cursor: str) -> None:
    # e30 = {}; the next two are a /jobs/runs cursor and a KPI cursor whose key is not a date.
    error = assert_error(client.get("/users/1/kpi", params={"cursor": cursor}, headers=AUTH), 422, "invalid_input")
    assert locations(error) == {"query.cursor"}


# --- job runs ------------------------------------------------------------------------------------------------


def make_runs(engine: Engine) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = {"a_ok": [], "b_failed": [], "a_running": []}
    with transaction(engine) as conn:
        for i in range(5):
            kind = ("a_ok", "b_failed", "a_ok", "b_failed", "a_ok")[i]
            job = "job-a" if kind.startswith("a") else "job-b"
            run_id = start_run(conn, job, {"i": i}, date(2026, 3, 1) + timedelta(days=i))
            if kind == "a_ok":
                finish_run(conn, run_id, rows_written=10 * i)
            else:
                finish_run(conn, run_id, rows_written=None, error="invalid_input: broken")
            ids[kind].append(run_id)
        ids["a_running"].append(start_run(conn, "job-a", {}, None))
    return ids


def test_job_runs_newest_first_with_filters(client: TestClient, engine: Engine) -> None:
    ids = make_runs(engine)

    def run_ids(query: str = "") -> list[int]:
        response = client.get(f"/jobs/runs{query}", headers=AUTH)
        assert response.status_code == 200, response.text
        return [r["run_id"] for r in response.json()["items"]]

    everything = sorted(itertools.chain(*ids.values()), reverse=True)
    assert run_ids() == everything
    assert run_ids("?job=job-a") == sorted(ids["a_ok"] + ids["a_running"], reverse=True)
    assert run_ids("?status=failed") == sorted(ids["b_failed"], reverse=True)
    assert run_ids("?job=job-a&status=succeeded") == sorted(ids["a_ok"], reverse=True)
    assert run_ids("?job=job-a&status=failed") == []
    assert run_ids("?job=no-such-job") == []

    runs = {r["run_id"]: r for r in client.get("/jobs/runs", headers=AUTH).json()["items"]}
    failed = runs[ids["b_failed"][0]]
    assert failed["status"] == "failed" and failed["error"] == "invalid_input: broken"
    assert failed["job"] == "job-b" and failed["parameters"] == {"i": 1} and failed["as_of"] == "2026-03-02"
    ok = runs[ids["a_ok"][1]]
    assert ok["rows_written"] == 20 and ok["finished_at"] is not None and ok["error"] is None
    assert ok["started_at"].endswith(("Z", "+00:00"))
    running = runs[ids["a_running"][0]]
    assert running["status"] == "running" and running["finished_at"] is None and running["as_of"] is None

    # Pagination follows the filters and returns every run once.
    seen: list[int] = []
    cursor = None
    while True:
        body = client.get(
            "/jobs/runs", params={"job": "job-a", "limit": 2, **({"cursor": cursor} if cursor else {})}, headers=AUTH
        ).json()
        seen += [r["run_id"] for r in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids["a_ok"] + ids["a_running"], reverse=True)
    kpi_cursor = "eyJrIjoia3BpIiwidiI6IjIwMjYtMDMtMDIifQ"  # a KPI cursor is not a job-runs cursor
    assert locations(assert_error(client.get(f"/jobs/runs?cursor={kpi_cursor}", headers=AUTH), 422, "invalid_input"))


# --- request bodies ------------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_before_routing(client: TestClient) -> None:
    big = b"x" * (MAX_BODY + 1)
    error = assert_error(client.post("/users/1/kpi", content=big, headers=AUTH), 413, "payload_too_large")
    assert error["details"] == {"limit_bytes": MAX_BODY}
    # Even before auth and on a route that takes no body at all.
    assert_error(client.post("/jobs/runs", content=big), 413, "payload_too_large")
    # At the limit the request goes on to routing, which refuses the method.
    assert_error(client.post("/users/1/kpi", content=b"x" * MAX_BODY, headers=AUTH), 405, "method_not_allowed")


def test_a_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks(total: int) -> Iterator[bytes]:
        for _ in range(total // 1000):
            yield b"y" * 1000

    response = client.post("/users/1/kpi", content=chunks(MAX_BODY + 1000), headers=AUTH)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_error(response, 413, "payload_too_large")
    small = client.post("/users/1/kpi", content=chunks(2000), headers=AUTH)
    assert_error(small, 405, "method_not_allowed")


# --- database down -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///{tmp}/missing-dir/learnpulse.db",
        "postgresql+psycopg://learnpulse:hunter2@127.0.0.1:1/learnpulse",
    ],
    ids=["sqlite-missing-dir", "postgres-closed-port"],
)
def test_an_unreachable_database_is_503(url: str, tmp_path: Path) -> None:
    url = url.format(tmp=tmp_path)
    with TestClient(create_app(settings_for(url)), raise_server_exceptions=False) as c:
        assert c.get("/healthz").status_code == 200  # alive, just not ready
        for path in ("/readyz", "/users/1/kpi", "/jobs/runs"):
            response = c.get(path, headers=AUTH)
            assert_error(response, 503, "database_unavailable")
            assert response.headers["Retry-After"].isdigit()
            for leak in ("hunter2", "127.0.0.1", "missing-dir", "OperationalError", "sqlite"):
                assert leak not in response.text
        metrics = c.get("/metrics")
        assert metrics.status_code == 200
        assert sample(metrics.text, "learnpulse_metrics_errors_total", {}) == 1.0


# --- metrics -------------------------------------------------------------------------------------------------


def sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.mark.usefixtures("data")
def test_metrics_count_requests_by_route_template_and_job_runs_by_status(client: TestClient, engine: Engine) -> None:
    make_runs(engine)
    for user in (1, 1, 5):
        assert client.get(f"/users/{user}/kpi", headers=AUTH).status_code == 200
    assert client.get("/users/1/kpi").status_code == 401
    assert client.get("/users/4/kpi", headers=AUTH).status_code == 404
    assert client.get("/nowhere/12345").status_code == 404
    text = client.get("/metrics").text

    route = "/users/{user_id}/kpi"
    requests = "learnpulse_http_requests_total"
    assert sample(text, requests, {"method": "GET", "route": route, "status": "200"}) == 3
    assert sample(text, requests, {"method": "GET", "route": route, "status": "401"}) == 1
    assert sample(text, requests, {"method": "GET", "route": route, "status": "404"}) == 1
    assert sample(text, requests, {"method": "GET", "route": "unmatched", "status": "404"}) == 1
    assert "/users/1/kpi" not in text and "12345" not in text  # templates, not raw paths
    count = sample(text, "learnpulse_http_request_duration_seconds_count", {"method": "GET", "route": route})
    assert count == 5
    assert sample(text, "learnpulse_http_request_duration_seconds_bucket", {"route": route, "le": "+Inf"}) == 5
    total = sample(text, "learnpulse_http_request_duration_seconds_sum", {"route": route})
    assert total is not None and total > 0

    assert sample(text, "learnpulse_job_runs", {"job": "job-a", "status": "succeeded"}) == 3
    assert sample(text, "learnpulse_job_runs", {"job": "job-a", "status": "running"}) == 1
    assert sample(text, "learnpulse_job_runs", {"job": "job-b", "status": "failed"}) == 2
    assert sample(text, "learnpulse_job_runs", {"job": "job-b", "status": "succeeded"}) is None
    last = sample(text, "learnpulse_job_last_finished_timestamp_seconds", {"job": "job-a", "status": "succeeded"})
    assert last is not None and last > 1.7e9
    assert sample(text, "learnpulse_metrics_errors_total", {}) == 0


# --- OpenAPI -------------------------------------------------------------------------------------------------


def test_openapi_documents_the_routes_and_the_original_names(client: TestClient) -> None:
    spec = client.get("/openapi.json", headers=AUTH).json()
    assert {"/healthz", "/readyz", "/metrics", "/users/{user_id}/kpi", "/jobs/runs"} <= set(spec["paths"])
    kpi = spec["components"]["schemas"]["KpiWeek"]["properties"]
    assert {"I_t", "P", "sigma", "S"} <= set(kpi) and not {"i_t", "p", "s"} & set(kpi)
    assert "i_t" in kpi["I_t"]["description"]
    params = {p["name"] for p in spec["paths"]["/users/{user_id}/kpi"]["get"]["parameters"]}
    assert {"from", "to", "limit", "cursor"} <= params
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# --- start-up ------------------------------------------------------------------------------------------------


def test_no_token_no_server_unless_insecure_dev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    no_token = load_settings(database_url=url)
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve() exports the settings for its workers

    for refuse in (
        lambda: server.serve(no_token, host="127.0.0.1", port=8000, workers=1, insecure_dev=False),
        lambda: create_app(no_token),
    ):
        with pytest.raises(ConfigError) as info:
            refuse()
        assert "LEARNPULSE_API_TOKEN" in info.value.message and "LEARNPULSE_API_TOKEN_FILE" in info.value.message
    assert calls == []

    caplog.set_level(logging.WARNING, logger="learnpulse.api")
    server.serve(no_token, host="0.0.0.0", port=8123, workers=2, insecure_dev=True)
    assert "INSECURE DEVELOPMENT MODE" in caplog.text and "0.0.0.0" in caplog.text
    [(target, options)] = calls
    assert target == server.APP_FACTORY and options["factory"] is True
    assert (options["host"], options["port"], options["workers"]) == ("0.0.0.0", 8123, 2)
    # What a worker builds: the same database, and every route open.
    assert os.environ["DATABASE_URL"] == url
    with TestClient(server.app_factory()) as c:
        # No token needed; the database is not migrated, which the data routes say as plainly as /readyz.
        assert_error(c.get("/jobs/runs"), 503, "schema_out_of_date")
        assert_error(c.get("/users/1/kpi"), 503, "schema_out_of_date")


def test_serve_exports_the_token_setting_for_its_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: None)
    monkeypatch.setattr(os, "environ", dict(os.environ))
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    from learnpulse.store.schema import upgrade

    upgrade(engine)
    server.serve(settings_for(url_of(engine)), host="127.0.0.1", port=8000, workers=2, insecure_dev=False)
    assert os.environ[server.INSECURE_DEV_ENV] == "0"
    with TestClient(server.app_factory()) as c:
        assert c.get("/jobs/runs").status_code == 401
        assert c.get("/jobs/runs", headers=AUTH).status_code == 200
    engine.dispose()
