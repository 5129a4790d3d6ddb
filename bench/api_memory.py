"""Benchmark: the API process's peak memory and time for each route that fits a model on the request's data, at a
typical size and at the largest body the route accepts (the body limit, ``LEARNPULSE_API_MAX_BODY_BYTES``, 10 MB by
default, and the route's own row cap), to size the API pod (``deploy.API_RESOURCES``).

Each case runs in a fresh process: the app (``create_app``, SQLite, token auth on) built, the body generated and
serialised, then one ``POST`` through Starlette's TestClient in the same process, so the peak RSS is the server's
(parsing, validation, the fit, the answer) plus the client's copy of the body (at most the body limit). Reported:
the body's size and rows, the status, seconds, RSS before the request, the process's peak RSS and the largest
peak RSS of its child processes (``engine=prophet`` runs Stan in one; the pod holds both). The data are
simulated (seeded): growth by ``bench/growth.py``'s ``simulate`` (12 weeks, 5-40 attempts a week), clustering
four Gaussian blobs over four features, survival exponential times with three covariates, IRT 2PL answers over
200 items, forecasts a weekly series with trend, yearly cycle and noise.

There is no naive baseline to compare with: the figures size the deployment, they are not a speed claim.

    .venv/bin/python bench/api_memory.py [--cases growth-gaussian,...] [--max-body 10485760]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row
from growth import simulate

TOKEN = "bench-api-memory-token-0123456789abcdef"
WEEKS = 12


def _growth(family: str) -> Callable[[int], tuple[str, dict[str, Any]]]:
    def body(students: int) -> tuple[str, dict[str, Any]]:
        frame = simulate(students, WEEKS)
        out: dict[str, Any] = {"family": family, "unit": frame["unit"].tolist(), "time": frame["time"].tolist()}
        if family == "binomial":
            out |= {"y": frame["correct"].tolist(), "trials": frame["trials"].tolist()}
        else:
            out["y"] = frame["acc"].round(4).tolist()
        return "/growth/fit", out

    return body


def _cluster(rows: int) -> tuple[str, dict[str, Any]]:
    rng = np.random.default_rng(5)
    centre = rng.normal(0, 3, (4, 4))[rng.integers(0, 4, rows)]
    x = np.round(centre + rng.normal(0, 1, (rows, 4)), 3)
    return "/cluster/fit", {"features": {f"f{j}": x[:, j].tolist() for j in range(4)}}


def _survival(rows: int) -> tuple[str, dict[str, Any]]:
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(0, 1, (rows, 3)), 3)
    hazard = np.exp(x @ np.array([0.5, -0.3, 0.2]))
    durations = np.round(rng.exponential(1 / hazard) * 10 + 0.01, 2)
    censor = rng.uniform(0, 15, rows)
    events = (durations <= censor).astype(int)
    covariates = {f"x{j}": x[:, j].tolist() for j in range(3)}
    observed = np.minimum(durations, censor + 0.01).round(2)
    return "/survival/fit", {"durations": observed.tolist(), "events": events.tolist(), "covariates": covariates}


def _irt(answers: int) -> tuple[str, dict[str, Any]]:
    rng = np.random.default_rng(5)
    persons = max(answers // 40, 2)
    person = rng.integers(0, persons, answers)
    item = rng.integers(0, 200, answers)
    a, b = rng.lognormal(0, 0.3, 200), rng.normal(0, 1, 200)
    theta = rng.normal(0, 1, persons)
    p = 1 / (1 + np.exp(-a[item] * (theta[person] - b[item])))
    correct = (rng.random(answers) < p).astype(int)
    return "/irt/calibrate", {"person": person.tolist(), "item": item.tolist(), "correct": correct.tolist()}


def _prophet(engine: str, options: dict[str, Any]) -> Callable[[int], tuple[str, dict[str, Any]]]:
    def body(points: int) -> tuple[str, dict[str, Any]]:
        rng = np.random.default_rng(5)
        ds = np.datetime64("2000-01-03") + 7 * np.arange(points)
        week = np.arange(points)
        y = 50 + 0.01 * week + 3 * np.sin(2 * np.pi * week / 52.18) + rng.normal(0, 1, points)
        out = {"ds": [str(d) for d in ds], "y": np.round(y, 3).tolist(), "engine": engine, "options": options}
        return "/prophet/fit", out

    return body


def _import(module: str, name: str) -> int:
    import importlib

    return int(getattr(importlib.import_module(module), name))


def _growth_cap() -> int:
    """Students at the route's caps (rows and units), 12 weeks each."""
    rows = _import("learnpulse.api.growth_schemas", "MAX_FIT_ROWS")
    return min(rows // WEEKS, _import("learnpulse.api.growth_schemas", "MAX_FIT_UNITS"))


def _prophet_cap() -> int:
    return _import("learnpulse.api.forecast_schemas", "MAX_SERIES_POINTS")


# case -> (body builder of a size, typical size, the route's own cap on that size or None, what the size counts)
CASES: dict[str, tuple[Callable[[int], tuple[str, dict[str, Any]]], int, Callable[[], int | None], str]] = {
    "growth-gaussian": (_growth("gaussian"), 1_000, _growth_cap, "students x 12 weeks"),
    "growth-binomial": (_growth("binomial"), 1_000, _growth_cap, "students x 12 weeks"),
    "cluster": (_cluster, 10_000, lambda: _import("learnpulse.api.segment_schemas", "MAX_FIT_ROWS"), "rows"),
    "survival": (_survival, 10_000, lambda: _import("learnpulse.api.survival_schemas", "MAX_FIT_ROWS"), "rows"),
    "irt": (_irt, 100_000, lambda: None, "answers"),
    # A weekly series: two years typical; the cap is the route's MAX_SERIES_POINTS. "-widest": the options that
    # make the forecast simulation largest (the longest horizon and the most draws the route allows).
    "prophet-batch": (_prophet("batch", {}), 104, _prophet_cap, "weekly points"),
    "prophet-batch-widest": (
        _prophet("batch", {"horizon": 520, "uncertainty_samples": 20_000}),
        104,
        _prophet_cap,
        "weekly points",
    ),
    "prophet-prophet": (_prophet("prophet", {}), 104, _prophet_cap, "weekly points"),
}


def _size(builder: Callable[[int], tuple[str, dict[str, Any]]], cap: int | None, max_body: int) -> int:
    """The largest size whose body fits ``max_body`` bytes and the route's cap (bytes grow linearly with size)."""
    probe = 2_000
    per = len(json.dumps(builder(probe)[1])) / probe
    size = int(max_body / per)
    if cap is not None:
        size = min(size, cap)
    while len(json.dumps(builder(size)[1])) > max_body:
        size = int(size * 0.98)
    return size


def _rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def _one(case: str, size: int, max_body: int) -> dict[str, Any]:
    """Runs in the child: build the app and the body, post it once, report."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from learnpulse.api.app import create_app
    from learnpulse.settings import load_settings

    settings = load_settings(
        database_url="sqlite:///:memory:", learnpulse_api_token=TOKEN, learnpulse_api_max_body_bytes=max_body
    )
    app = create_app(settings)
    path, body = CASES[case][0](size)
    raw = json.dumps(body).encode()
    del body
    before = _rss_mib()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    with TestClient(app) as client:
        start = time.perf_counter()
        response = client.post(path, content=raw, headers=headers)
        seconds = time.perf_counter() - start
    return {
        "status": response.status_code,
        "detail": "" if response.status_code == 200 else response.text[:200],
        "seconds": seconds,
        "body_mb": len(raw) / 1e6,
        "rss_before": before,
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--max-body", type=int, default=10 * 1024 * 1024, help="the body limit measured against")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one[0], int(args.one[1]), args.max_body)))
        return
    print(row("case", "size", "body MB", "status", "seconds", "RSS before MiB", "peak RSS MiB", "child peak MiB"))
    print(row(*["---"] * 8))
    for case in args.cases.split(","):
        builder, typical, cap, unit = CASES[case]
        for size in (typical, _size(builder, cap(), args.max_body)):
            cmd = [sys.executable, __file__, "--one", case, str(size), "--max-body", str(args.max_body)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(row(case, f"{size:,} {unit}", "", "crashed", "", "", done.stderr.strip().splitlines()[-1:]))
                continue
            out = json.loads(done.stdout.strip().splitlines()[-1])
            status = out["status"] if not out["detail"] else f"{out['status']}: {out['detail']}"
            print(
                row(
                    case,
                    f"{size:,} {unit}",
                    f"{out['body_mb']:.2f}",
                    status,
                    f"{out['seconds']:.1f}",
                    f"{out['rss_before']:,.0f}",
                    f"{out['peak']:,.0f}",
                    f"{out['children_peak']:,.0f}" if out["children_peak"] else "",
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
