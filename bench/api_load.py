"""Benchmark: ``GET /users/{id}/kpi`` under load, against the naive use of the library.

On a 50,000-student x 16-week world (built once, then reused through a marker file in bench/out), the API runs as
``learnpulse.api.server.serve(workers=2)`` in a subprocess (token auth on, Prometheus multiprocess metrics on,
access log off). A second process generates load on loopback for ``--seconds``: ``--concurrency`` threads, each
with its own keep-alive httpx connection, each asking for a random student (1..students) in a closed loop. It
reports requests/s, p50/p90/p99 latency and errors (any answer other than 200).

For comparison, in the same run:
- ``GET /healthz`` on the same server: the ceiling of this load generator and of the HTTP stack on this machine;
- the naive baseline: a minimal FastAPI app, 1 uvicorn worker, running ``pandas.read_sql`` of the student's
  ``weekly_kpi`` rows on every request and returning ``DataFrame.to_json`` (no auth, no metrics).

Target (issue): >= 1,000 requests/s with p99 < 25 ms on PostgreSQL.

    .venv/bin/python bench/api_load.py [--backend postgres|sqlite] [--seconds 30] [--students 50000]
                                       [--concurrency 8] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, fresh_database, phase, row, school_database
from learnpulse.synthetic import WorldParams

TOKEN = "bench-api-load-token"
SEED = 7
WARMUP_SECONDS = 2.0
SERVER_START_TIMEOUT = 120.0

NAIVE_APP = """
import sys
import pandas as pd
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from sqlalchemy import create_engine, text

engine = create_engine(sys.argv[1])
app = FastAPI()

@app.get("/healthz")
def healthz():
    return {"status": "ok"}

@app.get("/users/{user_id}/kpi")
def user_kpi(user_id: int):
    frame = pd.read_sql(
        text("SELECT * FROM weekly_kpi WHERE user_id = :user_id ORDER BY week_start"), engine,
        params={"user_id": user_id},
    )
    return Response(frame.to_json(orient="records", date_format="iso"), media_type="application/json")

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), workers=1, log_level="warning")
"""

SERVE = (
    "import sys; from learnpulse.api.server import serve; from learnpulse.settings import load_settings; "
    "serve(load_settings(), host='127.0.0.1', port=int(sys.argv[1]), workers=int(sys.argv[2]), "
    "insecure_dev=False, log_level='warning')"
)


# --- the world -----------------------------------------------------------------------------------------------


def _marker(backend: str, students: int, weeks: int) -> Path:
    return OUT / f"api_load-{backend}-{students}x{weeks}.json"


def phase_build(url: str, students: int, weeks: int) -> dict[str, Any]:
    """Generate the world, store it, run build-kpi (in a child process, so its memory is returned)."""
    from sqlalchemy import func, select

    from learnpulse.store.tables import weekly_kpi

    engine, _, _ = school_database(url, WorldParams(students=students, weeks=weeks, seed=SEED))
    with engine.connect() as conn:
        kpi_rows = int(conn.execute(select(func.count()).select_from(weekly_kpi)).scalar_one())
    engine.dispose()
    return {"kpi_rows": kpi_rows}


def _still_there(url: str, students: int, weeks: int, kpi_rows: int) -> bool:
    from sqlalchemy import func, select

    from learnpulse.store.db import make_engine
    from learnpulse.store.schema import require_current
    from learnpulse.store.tables import weekly_kpi
    from learnpulse.store.world import world_is_present

    try:
        engine = make_engine(url)
        try:
            require_current(engine)
            if not world_is_present(engine, WorldParams(students=students, weeks=weeks, seed=SEED)):
                return False
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(weekly_kpi)).scalar_one()) == kpi_rows
        finally:
            engine.dispose()
    except Exception:
        return False


def world_url(backend: str, students: int, weeks: int, rebuild: bool) -> tuple[str, int]:
    """URL of a database holding the world and its KPIs: reused when the marker says it is there, else built."""
    marker = _marker(backend, students, weeks)
    if marker.exists() and not rebuild:
        saved = json.loads(marker.read_text())
        if _still_there(saved["url"], students, weeks, saved["kpi_rows"]):
            print(f"reusing the {backend} world of {marker.name}", flush=True)
            return str(saved["url"]), int(saved["kpi_rows"])
    marker.unlink(missing_ok=True)
    url = fresh_database(backend, f"api_{students}x{weeks}")
    print(f"building a {students:,} x {weeks}-week world on {backend} (generate, store, build-kpi) ...", flush=True)
    result, seconds, _ = phase(phase_build, url, students, weeks)
    print(f"  built in {seconds:.0f} s: {result['kpi_rows']:,} weekly_kpi rows", flush=True)
    marker.write_text(json.dumps({"url": url, "kpi_rows": result["kpi_rows"]}))
    return url, int(result["kpi_rows"])


# --- servers -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server and its worker processes (its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


@contextmanager
def server(args: list[str], env: dict[str, str], port: int, headers: dict[str, str]) -> Iterator[str]:
    """Start a server subprocess, wait until it answers, yield its URL; always stop it."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so the workers are stopped with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server {args[:2]} exited with status {proc.returncode}")
            try:
                if httpx.get(f"{url}/healthz", headers=headers, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.2)
        yield url
    finally:
        _stop(proc)


# --- load ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    url: str
    path_template: str  # e.g. "/users/{user_id}/kpi"
    students: int
    seconds: float
    concurrency: int
    headers: dict[str, str]


def phase_load(load: Load) -> dict[str, Any]:
    """Closed-loop load from ``concurrency`` threads (keep-alive connection each); runs in its own process."""
    url, path_template, students, seconds = load.url, load.path_template, load.students, load.seconds
    concurrency, headers = load.concurrency, load.headers
    start_at = time.monotonic() + WARMUP_SECONDS
    stop_at = start_at + seconds
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def worker(i: int) -> None:
        rng = random.Random(SEED * 1000 + i)
        mine = latencies[i]
        with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
            while True:
                path = path_template.format(user_id=rng.randint(1, students))
                t0 = time.monotonic()
                if t0 >= stop_at:
                    return
                try:
                    response = http.get(path)
                    ok = response.status_code == 200
                    status = response.status_code
                except httpx.HTTPError:
                    ok, status = False, -1
                t1 = time.monotonic()
                if t0 >= start_at:  # requests started during the warm-up are not counted
                    mine.append(t1 - t0)
                    if not ok:
                        errors[i] += 1
                        with lock:
                            statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_latencies = np.fromiter((x for per in latencies for x in per), dtype=np.float64)
    n = len(all_latencies)
    p50, p90, p99 = (np.percentile(all_latencies, [50, 90, 99]) * 1000).tolist() if n else (0.0, 0.0, 0.0)
    return {
        "requests": n,
        "rps": n / seconds,
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "errors": sum(errors),
        "statuses": statuses,
    }


def report(name: str, backend: str, workers: int, result: dict[str, Any], note: str = "") -> str:
    errors = f"{result['errors']:,}" + (f" {result['statuses']}" if result["errors"] else "")
    return row(
        name,
        backend,
        workers,
        f"{result['requests']:,}",
        f"{result['rps']:,.0f}",
        f"{result['p50']:.1f}",
        f"{result['p90']:.1f}",
        f"{result['p99']:.1f}",
        errors,
        note,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per configuration")
    parser.add_argument("--students", type=int, default=50_000)
    parser.add_argument("--weeks", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of the learnpulse API")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the naive baseline")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the world even if the marker is valid")
    args = parser.parse_args()

    url, kpi_rows = world_url(args.backend, args.students, args.weeks, args.rebuild)
    print(
        f"{args.students:,} students, {kpi_rows:,} weekly_kpi rows on {args.backend}; {args.seconds:g} s per run "
        f"after {WARMUP_SECONDS:g} s warm-up, {args.concurrency} connections, {os.cpu_count()} CPUs",
        flush=True,
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    lines = [
        row("configuration", "backend", "workers", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "note")
    ]
    lines.append(row(*["---"] * 10))
    print("\n".join(lines), flush=True)

    prom_dir = OUT / "api_load_prometheus"
    env = {
        "DATABASE_URL": url,
        "LEARNPULSE_API_TOKEN": TOKEN,
        "LEARNPULSE_API_TOKEN_FILE": "",
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
    }
    port = free_port()
    with server(["-c", SERVE, str(port), str(args.workers)], env, port, auth) as base:
        kpi, _, _ = phase(
            phase_load, Load(base, "/users/{user_id}/kpi", args.students, args.seconds, args.concurrency, auth)
        )
        met = kpi["rps"] >= 1000 and kpi["p99"] < 25 and kpi["errors"] == 0
        target = "target >= 1,000 req/s, p99 < 25 ms: " + ("met" if met else "NOT met")
        lines.append(report("learnpulse API: GET /users/{id}/kpi", args.backend, args.workers, kpi, target))
        print(lines[-1], flush=True)
        ceiling, _, _ = phase(
            phase_load, Load(base, "/healthz", args.students, min(args.seconds, 10), args.concurrency, {})
        )
        lines.append(
            report("learnpulse API: GET /healthz", args.backend, args.workers, ceiling, "HTTP stack + load generator")
        )
        print(lines[-1], flush=True)

    if not args.skip_naive:
        port = free_port()
        with server(["-c", NAIVE_APP, url, str(port)], {}, port, {}) as base:
            naive, _, _ = phase(
                phase_load, Load(base, "/users/{user_id}/kpi", args.students, args.seconds, args.concurrency, {})
            )
            ratio = kpi["rps"] / naive["rps"] if naive["rps"] else float("inf")
            lines.append(
                report("naive: pandas.read_sql per request", args.backend, 1, naive, f"API is {ratio:.1f}x the req/s")
            )
            print(lines[-1], flush=True)

    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
