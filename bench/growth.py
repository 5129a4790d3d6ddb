"""Benchmark: the hierarchical growth engine (``y ~ time + (time | unit)``, NumPyro NUTS) at 1,000 and 100,000
students x 12 weeks, gaussian and binomial families (issue 5).

Data (simulated here, seeded, from a known hierarchical model): student ``i`` has logit-scale ability
``(b0 + u0_i) + (b1 + u1_i) * week`` with ``b = (0.2, 0.06)``, SDs ``(0.6, 0.05)``, correlation 0.3; each week
``trials ~ U{5..40}`` attempts and ``correct ~ Binomial(trials, logistic(ability))``. The gaussian family is fitted to
the weekly accuracy ``correct / trials`` (what brms was run on: ``BRMS_FAMILY=gaussian``), the binomial family to
``correct | trials(attempts)``. Every fit is ``iter=1000, chains=2`` (brms's ``BRMS_ITER`` / ``BRMS_CHAINS``) and runs
in its own process (its peak RSS is its own, with the simulated data). Reported: fit seconds (``GrowthModel.fit``,
JAX compilation, warm-up and the per-unit summaries included), max R-hat and min bulk/tail ESS of the
hyper-parameters (and the binomial family's over all units' coefficients), min bulk ESS per second, divergences,
peak RSS.

brms is not installed here (no R), so brms is **not** run in the same benchmark: its figures printed beside ours
are those published in issue 5 (169 s for the 200-student reference set, about 15 minutes for 1,000 students x 12
weeks on this kind of machine), labelled as such. With ``--reference`` (default: on when the file exists) the
engine is also timed on the brms reference set itself (``tests/data/growth_200/data.csv``, a copy of
``../shared/reference/growth_200``).

The binomial family samples every unit's two coefficients with NUTS: at 100,000 students that is 200,000
parameters and about 5 GB of draws. A binomial fit is therefore only started when the time extrapolated linearly
from the largest smaller binomial fit of this run (run a 1,000-student pilot first if there is none) is within
``--max-seconds``, or with ``--force-binomial``; a started fit is stopped after ``--max-seconds``. Skipped or stopped
fits print the extrapolation instead of a measurement.

    .venv/bin/python bench/growth.py [--students 1000,100000] [--families gaussian,binomial] [--weeks 12]
                                     [--max-seconds 900] [--force-binomial] [--no-reference]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_mod
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row

SEED = 20240605
ITER, CHAINS = 1000, 2
TRUTH = {"Intercept": 0.2, "time": 0.06, "sd(Intercept)": 0.6, "sd(time)": 0.05, "cor(Intercept,time)": 0.3}
REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "growth_200" / "data.csv"
# brms's figures as published in issue 5 (brms 2.18.0, 2 cores): NOT measured in this run.
BRMS_PUBLISHED_S = {"growth_200": 169.0, 1_000: 900.0}
TARGET_1000_RATIO = 20.0  # >= 20x faster than brms at 1,000 students
TARGET_LARGE_S = 300.0  # 100,000 students in <= 5 minutes with max R-hat <= 1.01


def simulate(students: int, weeks: int, seed: int = SEED) -> pd.DataFrame:
    """Long format: unit, time (week 0..weeks-1), trials, correct, acc (= correct / trials)."""
    rng = np.random.default_rng(seed)
    t0, t1, rho = TRUTH["sd(Intercept)"], TRUTH["sd(time)"], TRUTH["cor(Intercept,time)"]
    cov = np.array([[t0 * t0, rho * t0 * t1], [rho * t0 * t1, t1 * t1]])
    coef = np.array([TRUTH["Intercept"], TRUTH["time"]]) + rng.multivariate_normal([0.0, 0.0], cov, students)
    unit = np.repeat(np.arange(students), weeks)
    week = np.tile(np.arange(weeks, dtype=np.float64), students)
    trials = rng.integers(5, 41, students * weeks)
    correct = rng.binomial(trials, 1.0 / (1.0 + np.exp(-(coef[unit, 0] + coef[unit, 1] * week))))
    return pd.DataFrame({"unit": unit, "time": week, "trials": trials, "correct": correct, "acc": correct / trials})


def fit_one(family: str, students: int, weeks: int, reference: str | None, seed: int = 1) -> dict[str, Any]:
    """One fit in this (child) process: simulate (or read the reference set), fit, return figures."""
    from learnpulse.engines.growth import GrowthModel

    if reference is not None:
        ref = pd.read_csv(reference)
        d = pd.DataFrame({"unit": ref["user"], "time": ref["week"], "acc": ref["acc"]})
    else:
        d = simulate(students, weeks)
    model = GrowthModel(family, iter=ITER, chains=CHAINS, seed=seed)
    start = time.perf_counter()
    if family == "binomial":
        model.fit(d["unit"], d["time"], d["correct"], d["trials"])
    else:
        model.fit(d["unit"], d["time"], d["acc"])
    seconds = time.perf_counter() - start
    assert model.diagnostics_ is not None
    summary = model.fixed_effects()
    return {
        "seconds": seconds,
        "diagnostics": dict(model.diagnostics_),
        "estimates": summary["estimate"].to_dict(),
        "q2.5": summary["q2.5"].to_dict(),
        "q97.5": summary["q97.5"].to_dict(),
        "worst_rhat": str(summary["rhat"].idxmax()),
        "units": int(d["unit"].nunique()),
        "rows": len(d),
    }


def _child(args: tuple[Any, ...], out: Any) -> None:
    try:
        result = fit_one(*args)
        out.put(("ok", result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    except BaseException as exc:
        out.put(("error", repr(exc), 0.0))
        raise


def run_limited(limit_s: float | None, *args: Any) -> tuple[str, Any, float, float]:
    """``fit_one(*args)`` in a fresh process, stopped after ``limit_s`` seconds. Returns (status, result or
    message, wall seconds, peak RSS MiB); status is ok, error or stopped."""
    ctx = mp.get_context("fork")  # the parent never imports JAX, so forking is safe
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(args, out))
    start = time.perf_counter()
    proc.start()
    while True:
        try:
            status, result, peak = out.get(timeout=1.0)
            break
        except queue_mod.Empty:
            wall = time.perf_counter() - start
            if not proc.is_alive():  # died without a word (e.g. killed for memory)
                return "error", f"the fitting process died (exit code {proc.exitcode}) after {wall:.0f} s", wall, 0.0
            if limit_s is not None and wall > limit_s:
                proc.terminate()  # only the process this function started
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                proc.join()
                return "stopped", f"stopped after {wall:.0f} s (--max-seconds)", wall, 0.0
    proc.join()
    return status, result, time.perf_counter() - start, peak


def _fmt_rhat(diag: dict[str, Any], worst: str) -> str:
    text = f"{diag['max_rhat']:.4f} ({worst})"
    if "units_max_rhat" in diag:
        text += f" (units: {diag['units_max_rhat']:.4f}, {diag['units_share_rhat_above_1_01']:.1%} > 1.01)"
    return text


def _fmt_ess(diag: dict[str, Any]) -> str:
    text = f"{diag['min_ess_bulk']:.0f} / {diag['min_ess_tail']:.0f}"
    if "units_min_ess_bulk" in diag:
        text += f" (units: {diag['units_min_ess_bulk']:.0f} / {diag['units_min_ess_tail']:.0f})"
    return text


def _brms_note(family: str, key: Any, seconds: float) -> str:
    published = BRMS_PUBLISHED_S.get(key)
    if published is None:
        return ""
    # brms's published figures are for its gaussian fit (BRMS_FAMILY=gaussian); none exist for the binomial one.
    return f"{published:.0f} s{'' if family == 'gaussian' else ' (its gaussian fit)'} / {published / seconds:.1f}x"


def _target_note(family: str, students: int, seconds: float, diag: dict[str, Any]) -> str:
    notes = []
    if students == 1_000:
        ratio = BRMS_PUBLISHED_S[1_000] / seconds
        against = "brms" if family == "gaussian" else "brms's gaussian figure"
        notes.append(f">= {TARGET_1000_RATIO:.0f}x {against}: {'met' if ratio >= TARGET_1000_RATIO else 'missed'}")
    if students >= 100_000:
        ok = seconds <= TARGET_LARGE_S and diag["max_rhat"] <= 1.01
        notes.append(f"<= {TARGET_LARGE_S:.0f} s and R-hat <= 1.01: {'met' if ok else 'missed'}")
    if diag["max_rhat"] > 1.01:
        notes.append("R-hat above 1.01")
    if diag["divergences"]:
        notes.append(f"{diag['divergences']} divergences")
    return "; ".join(notes)


def _truth_line(label: str, result: dict[str, Any]) -> str:
    parts = []
    for name, value in TRUTH.items():
        lo, hi, est = result["q2.5"][name], result["q97.5"][name], result["estimates"][name]
        parts.append(f"{name} {est:.3f} [{lo:.3f}, {hi:.3f}] truth {value:g}{'' if lo <= value <= hi else ' MISSED'}")
    return f"- {label}: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--students", default="1000,100000", help="comma-separated sizes")
    parser.add_argument("--families", default="gaussian,binomial", help="gaussian, binomial or both")
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="skip a binomial fit whose extrapolated time exceeds this; stop any fit that runs longer",
    )
    parser.add_argument("--force-binomial", action="store_true", help="start binomial fits whatever the estimate")
    parser.add_argument("--no-reference", action="store_true", help="do not time the brms reference set")
    parser.add_argument("--seed", type=int, default=1, help="the sampler's seed (the data's is fixed)")
    args = parser.parse_args(argv)
    sizes = sorted({int(s.replace("_", "")) for s in args.students.split(",") if s})
    families = [f for f in ("gaussian", "binomial") if f in args.families.split(",")]
    if not sizes or not families:
        raise SystemExit("nothing to do: give --students and --families")

    header = [
        row(
            "family",
            "data",
            "units x weeks",
            "fit s",
            "max R-hat",
            "min ESS bulk / tail",
            "min bulk ESS / s",
            "divergences",
            "peak RSS MiB",
            "brms published s / ratio (not measured here)",
            "target",
        ),
        row(*["---"] * 11),
    ]
    lines: list[str] = []
    notes: list[str] = []
    measured: dict[str, list[tuple[int, float]]] = {f: [] for f in families}

    def report(family: str, label: str, students: int, result: dict[str, Any], peak: float) -> None:
        weeks = 12 if label == "brms reference set" else args.weeks
        diag, seconds = result["diagnostics"], result["seconds"]
        key: Any = "growth_200" if label == "brms reference set" else (students if weeks == 12 else None)
        line = row(
            family,
            label,
            f"{result['units']:,} x {weeks}",
            f"{seconds:.1f}",
            _fmt_rhat(diag, result["worst_rhat"]),
            _fmt_ess(diag),
            f"{diag['min_ess_bulk'] / seconds:.1f}",
            diag["divergences"],
            f"{peak:,.0f}",
            _brms_note(family, key, seconds),
            _target_note(family, students, seconds, diag) if label == "simulated" and weeks == 12 else "",
        )
        lines.append(line)
        print(line, flush=True)

    print(f"## Growth engine: NUTS, iter={ITER}, chains={CHAINS}\n", flush=True)
    if "gaussian" in families and not args.no_reference and REFERENCE.exists():
        status, result, _, peak = run_limited(args.max_seconds, "gaussian", 200, 12, str(REFERENCE), args.seed)
        if status == "ok":
            report("gaussian", "brms reference set", 200, result, peak)
        else:
            notes.append(f"- gaussian, brms reference set: {result}")

    for family in families:
        for students in sizes:
            if family == "binomial" and not args.force_binomial:
                base = measured[family][-1] if measured[family] else None
                if base is None and students > 1_000:
                    print("(binomial: running a 1,000-student pilot to extrapolate from)", flush=True)
                    status, result, _, peak = run_limited(args.max_seconds, family, 1_000, args.weeks, None, args.seed)
                    if status == "ok":
                        measured[family].append((1_000, result["seconds"]))
                        report(family, "simulated (pilot)", 1_000, result, peak)
                        base = measured[family][-1]
                if base is not None and students > base[0]:
                    estimate = base[1] * students / base[0]
                    if estimate > args.max_seconds:
                        draws_gb = 3 * CHAINS * (ITER // 2) * students * 2 * 8 / 1e9
                        notes.append(
                            f"- binomial, {students:,} x {args.weeks}: **skipped**, not measured. Extrapolated "
                            f"linearly from {base[0]:,} students ({base[1]:.0f} s): about {estimate:,.0f} s "
                            f"({estimate / 60:,.0f} min), a rough figure: the cost of a gradient grows with the "
                            f"observations, but deeper NUTS trees with {2 * students:,} unit coefficients would make "
                            f"it longer and the fixed compilation time shorter; the draws and their diagnostics "
                            f"need about {draws_gb:.1f} GB. "
                            f"Above --max-seconds {args.max_seconds:.0f}; --force-binomial runs it."
                        )
                        print(notes[-1], flush=True)
                        continue
            status, result, _, peak = run_limited(args.max_seconds, family, students, args.weeks, None, args.seed)
            if status != "ok":
                notes.append(f"- {family}, {students:,} x {args.weeks}: {result}")
                print(notes[-1], flush=True)
                continue
            measured[family].append((students, result["seconds"]))
            report(family, "simulated", students, result, peak)
            if family == "binomial":
                notes.append(_truth_line(f"binomial, {students:,} students (posterior mean [95%])", result))

    print()
    print("\n".join(header + lines))
    print(
        "\nfit s: GrowthModel.fit (JAX compilation, warm-up, sampling, per-unit moments, diagnostics); max R-hat and "
        "ESS: the hyper-parameters (binomial: all units' coefficients in parentheses); min bulk ESS / s: the "
        "smallest hyper-parameter bulk ESS per fit second; peak RSS: the fitting process, simulated data included."
        "\nbrms: figures published in issue 5 (brms 2.18.0 on a 2-core machine: 169 s for the 200-student reference "
        "set, about 15 min = 900 s for 1,000 students x 12 weeks, gaussian), NOT measured in this run or on this "
        "data (R is not installed); the ratio is brms published s / ours."
    )
    if notes:
        print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
