"""learnpulse.client.Client against live servers on loopback (uvicorn in a background thread): the real app on
SQLite, and tiny ASGI apps that fail on purpose to check retries."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

from learnpulse.api.app import create_app
from learnpulse.api.schemas import JobRun, KpiWeek, Page
from learnpulse.client import (
    ApiError,
    Client,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from learnpulse.errors import LearnpulseError
from learnpulse.settings import Settings, load_settings
from learnpulse.store.db import make_engine
from learnpulse.store.schema import upgrade
from tests.helpers import attempts_frame, build_kpi, load_batch, read_table

TOKEN = "client-test-token-5f3a9c"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live(app: ASGIApp, *, lifespan: Literal["on", "off"] = "on") -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan=lifespan, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# --- the real app --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A live API over a small SQLite store built by the real pipeline (attempts -> build-kpi)."""
    path = tmp_path_factory.mktemp("client") / "learnpulse.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    rows: list[tuple[int, int, bool, str, float | None]] = []
    for week in range(4):  # user 7: attempts on the Monday and Wednesday of four weeks; user 8: one attempt
        for day, correct in ((0, True), (2, week % 2 == 0)):
            when = date(2026, 3, 2) + timedelta(weeks=week, days=day)
            rows.append((7, 1 + week % 3, correct, f"{when}T10:00:00+09:00", 30.0))
    rows.append((8, 1, True, "2026-03-03T10:00:00+09:00", None))
    load_batch(engine, attempts_frame(rows))
    build_kpi(engine, as_of=date(2026, 3, 31))
    settings = load_settings(database_url=f"sqlite:///{path}", learnpulse_api_token=TOKEN)
    with live(create_app(settings)) as url:
        yield {"url": url, "engine": engine}
    engine.dispose()


@pytest.fixture
def api(world: dict[str, Any]) -> Iterator[Client]:
    with Client(world["url"], TOKEN, timeout=5, retries=1, backoff=0.01) as client:
        yield client


def test_health_and_readiness(api: Client) -> None:
    assert api.health().status == "ok"
    ready = api.ready()
    assert ready.status == "ready" and ready.schema_revision


def test_user_kpi_is_typed_and_matches_the_table(api: Client, world: dict[str, Any]) -> None:
    engine: Engine = world["engine"]
    table = read_table(engine, "weekly_kpi", ["user_id", "week_start"])
    expected = table[table["user_id"] == 7]
    page = api.user_kpi(7)
    assert isinstance(page, Page) and page.next_cursor is None
    assert all(isinstance(week, KpiWeek) for week in page.items)
    assert [w.week_start for w in page.items] == list(expected["week_start"])
    assert isinstance(page.items[0].week_start, date)
    assert [w.attempts for w in page.items] == list(expected["attempts"])
    assert [w.i_t for w in page.items] == pytest.approx(list(expected["i_t"]))
    assert page.items[0].i_t_source == "accuracy" and page.items[0].p is None and page.items[0].s is None
    # The model keeps the original names in its JSON form.
    assert {"I_t", "P", "sigma", "S"} <= set(page.items[0].model_dump())

    march_9 = api.user_kpi(7, date(2026, 3, 9), "2026-03-22")
    assert [w.week_start for w in march_9.items] == [date(2026, 3, 9), date(2026, 3, 16)]


def test_iteration_follows_cursors(api: Client) -> None:
    all_weeks = api.user_kpi(7).items
    first = api.user_kpi(7, limit=2)
    assert len(first.items) == 2 and first.next_cursor is not None
    assert list(api.iter_user_kpi(7, limit=2)) == all_weeks
    assert list(api.iter_user_kpi(7, limit=1)) == all_weeks
    assert [w.week_start for w in api.iter_user_kpi(7, date_from="2026-03-16", limit=1)] == [
        w.week_start for w in all_weeks if w.week_start >= date(2026, 3, 16)
    ]


def test_job_runs(api: Client, world: dict[str, Any]) -> None:
    build_kpi(world["engine"], as_of=date(2026, 3, 31))  # a second run: nothing new, still recorded
    runs = api.job_runs(job="build-kpi")
    assert len(runs.items) == 2 and all(isinstance(r, JobRun) for r in runs.items)
    newest = runs.items[0]
    assert newest.run_id > runs.items[1].run_id
    assert newest.status == "succeeded" and newest.as_of == date(2026, 3, 31)
    assert isinstance(newest.started_at, datetime) and newest.started_at.tzinfo is not None
    assert [r.run_id for r in api.iter_job_runs("build-kpi", "succeeded", limit=1)] == [r.run_id for r in runs.items]
    assert api.job_runs(status="failed").items == []


def test_typed_errors(world: dict[str, Any], api: Client) -> None:
    with Client(world["url"], "wrong-" + TOKEN, retries=0) as wrong, pytest.raises(Unauthorized) as unauthorized:
        wrong.user_kpi(7)
    assert unauthorized.value.status == 401 and unauthorized.value.code == "unauthorized"
    assert isinstance(unauthorized.value, ApiError) and isinstance(unauthorized.value, LearnpulseError)
    with Client(world["url"], retries=0) as anonymous, pytest.raises(Unauthorized):
        anonymous.job_runs()

    with pytest.raises(NotFound) as not_found:
        api.user_kpi(99)
    assert not_found.value.details == {"user_id": 99} and not_found.value.http_status == 404

    with pytest.raises(InvalidRequest) as invalid:
        api.user_kpi(7, "not-a-date")
    assert invalid.value.status == 422 and invalid.value.code == "invalid_input"
    assert [p["location"] for p in invalid.value.details["problems"]] == ["query.from"]
    with pytest.raises(InvalidRequest):
        api.user_kpi(7, cursor="bogus")

    for exc in (unauthorized.value, not_found.value, invalid.value):
        assert TOKEN not in str(exc) and TOKEN not in repr(exc)
    assert TOKEN not in repr(api)


def test_a_chunked_body_over_the_limit_is_refused_by_the_live_server(world: dict[str, Any]) -> None:
    limit = 10 * 1024 * 1024  # the default LEARNPULSE_API_MAX_BODY_BYTES

    def body() -> Iterator[bytes]:
        chunk = b"z" * 65536
        for _ in range(limit // len(chunk) + 2):
            yield chunk

    with httpx.Client(base_url=world["url"], timeout=10) as http:
        response = http.post("/users/7/kpi", content=body(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


# --- retries -------------------------------------------------------------------------------------------------


class Scripted:
    """An ASGI app answering each request with the next (status, headers) of a script (the last one repeats)."""

    def __init__(self, *script: int | tuple[int, dict[str, str]]) -> None:
        self.script = [s if isinstance(s, tuple) else (s, {}) for s in script]
        self.seen: list[tuple[str, str, float]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        while (await receive()).get("more_body"):
            pass
        self.seen.append((scope["method"], scope["path"], time.monotonic()))
        status, headers = self.script[min(len(self.seen), len(self.script)) - 1]
        if status == 200:
            body: dict[str, Any] = {"status": "ok"}
        else:
            body = {"error": {"code": f"code_{status}", "message": f"scripted {status}", "details": {"n": 1}}}
        raw = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")]
                + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": raw})


@contextmanager
def scripted(*script: int | tuple[int, dict[str, str]]) -> Iterator[tuple[Scripted, Client]]:
    app = Scripted(*script)
    with live(app, lifespan="off") as url, Client(url, TOKEN, retries=3, backoff=0.01, timeout=5) as client:
        yield app, client


def test_503_is_retried_until_success() -> None:
    with scripted(503, 503, 200) as (app, client):
        assert client.health().status == "ok"
    assert len(app.seen) == 3


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_are_retried(status: int) -> None:
    with scripted(status, 200) as (app, client):
        client.health()
    assert len(app.seen) == 2


def test_retries_give_up_with_the_servers_error() -> None:
    with scripted(503) as (app, client), pytest.raises(ServiceUnavailable) as info:
        client.ready()
    assert len(app.seen) == 4  # the first try and 3 retries
    assert (info.value.status, info.value.code, info.value.message) == (503, "code_503", "scripted 503")
    assert info.value.details == {"n": 1}


@pytest.mark.parametrize(("status", "exc"), [(400, InvalidRequest), (401, Unauthorized), (404, NotFound),
                                             (409, ApiError), (422, InvalidRequest), (429, ApiError)])  # fmt: skip
def test_a_4xx_is_never_retried(status: int, exc: type[ApiError]) -> None:
    with scripted(status, 200) as (app, client), pytest.raises(exc) as info:
        client.health()
    assert len(app.seen) == 1
    assert info.value.status == status and info.value.code == f"code_{status}"


def test_a_post_is_not_retried_unless_idempotent() -> None:
    with scripted(503, 200) as (app, client), pytest.raises(ServiceUnavailable):
        client._request("POST", "/models/fit", json={"x": 1}, idempotent=False)
    assert [m for m, _, _ in app.seen] == ["POST"]
    with scripted(503, 200) as (app, client), pytest.raises(ServiceUnavailable):
        client._request("POST", "/models/fit", json={"x": 1})  # POST defaults to not idempotent
    assert len(app.seen) == 1
    with scripted(503, 503, 200) as (app, client):
        assert client._request("POST", "/models/fit", json={"x": 1}, idempotent=True) == {"status": "ok"}
    assert len(app.seen) == 3


def test_retry_after_is_honoured() -> None:
    with scripted((503, {"Retry-After": "1"}), 200) as (app, client):
        client.health()
    assert len(app.seen) == 2
    assert app.seen[1][2] - app.seen[0][2] >= 0.9  # backoff alone would have waited ~10 ms


def test_connection_failed_when_nothing_listens() -> None:
    port = free_port()  # bound then released: nothing listens there
    start = time.monotonic()
    with Client(f"http://127.0.0.1:{port}", TOKEN, retries=2, backoff=0.01) as client:
        with pytest.raises(ConnectionFailed) as info:
            client.user_kpi(1)
        assert time.monotonic() - start < 5
    assert info.value.status is None and info.value.details == {"attempts": 3}
    assert isinstance(info.value, ApiError)
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)


# --- several workers -----------------------------------------------------------------------------------------


def test_serve_with_two_workers_shares_metrics(tmp_path: Path) -> None:
    """serve(workers=2) really starts (the app factory path), and /metrics sums both workers' counters."""
    path = tmp_path / "learnpulse.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{path}",
        "LEARNPULSE_API_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
    }
    code = (
        "from learnpulse.api.server import serve; from learnpulse.settings import load_settings; "
        f"serve(load_settings(), host='127.0.0.1', port={port}, workers=2, insecure_dev=False, log_level='warning')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path)
    try:
        with Client(f"http://127.0.0.1:{port}", TOKEN, retries=0) as client:
            deadline = time.monotonic() + 60
            while True:  # wait for the workers to start
                try:
                    client.ready()
                    break
                except ConnectionFailed:
                    assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                    time.sleep(0.1)
            for _ in range(30):
                assert client.job_runs().items == []
            # New connections spread over the workers; every /metrics answer counts all 30 requests.
            for _ in range(4):
                with httpx.Client(base_url=f"http://127.0.0.1:{port}") as fresh:
                    text = fresh.get("/metrics").text
                total = sum(
                    s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                    if s.name == "learnpulse_http_requests_total" and s.labels["route"] == "/jobs/runs"
                )
                assert total == 30
    finally:
        proc.terminate()
        proc.wait(15)
