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

**brms in the same run** (``--brms auto``, the default: when ``Rscript`` is on the PATH and ``library(brms)``
loads): brms fits the *same* data (the simulated sets up to ``--brms-max-students``, 1,000 by default, and the
reference set) with ``iter=1000, chains=2, cores=2`` and its default priors, each in its own ``Rscript`` process;
printed are its wall time (model compilation included, as a brms user waits for it) and its sampling time alone,
its max R-hat and min ESS, our time against its, and how far our posterior means lie from brms's in brms posterior
SDs. On Debian: ``apt-get install r-cran-brms r-base-dev`` and, because Debian's ``r-cran-bh`` keeps Boost in
``/usr/include``, ``mkdir -p /usr/lib/R/site-library/BH/include && ln -s /usr/include/boost
/usr/lib/R/site-library/BH/include/boost`` (rstan looks for it there). Without R, the figures published in issue 5
(169 s for the reference set, about 15 minutes for 1,000 students x 12 weeks) are printed instead, labelled as such.
With ``--reference`` (default: on when the file exists) the engine is also timed on the brms reference set itself
(``tests/data/growth_200/data.csv``, a copy of ``../shared/reference/growth_200``).

The binomial family samples every unit's two coefficients with NUTS (in per-unit Laplace coordinates, see
``engines/growth.py``): at 100,000 students that is 200,000 parameters and about 3 GB of draws. A binomial fit is
therefore only started when the time extrapolated linearly from the largest smaller binomial fit of this run (run a
1,000-student pilot first if there is none) is within ``--max-seconds``, or with ``--force-binomial``; a started fit
is stopped after ``--max-seconds``. Skipped or stopped fits print the extrapolation instead of a measurement. The
default sizes include 10,000 students so that 100,000 is extrapolated from a tenth of it, not a hundredth.

``--sampler gibbs`` fits the binomial family with the engine's NUTS-within-Gibbs sampler (``BRMS_SAMPLER=gibbs``:
NUTS on the population, Metropolis-Hastings on the units; ``engines/growth_gibbs.py``) instead of joint NUTS.

    .venv/bin/python bench/growth.py [--students 1000,10000,100000] [--families gaussian,binomial] [--weeks 12]
                                     [--sampler nuts|gibbs] [--max-seconds 900] [--force-binomial] [--no-reference]
                                     [--brms auto|on|off] [--brms-max-students 1000] [--brms-max-seconds 3600]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue as queue_mod
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, row

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


BRMS_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
data_path <- args[1]; family <- args[2]; iter <- as.integer(args[3]); chains <- as.integer(args[4])
seed <- as.integer(args[5]); out <- args[6]
suppressPackageStartupMessages(library(brms))
d <- read.csv(data_path)
started <- proc.time()[["elapsed"]]
if (family == "gaussian") {
  fit <- brm(acc ~ time + (time | unit), data = d, family = gaussian(), iter = iter, chains = chains,
             cores = chains, seed = seed, refresh = 0, silent = 2)
} else {
  fit <- brm(correct | trials(trials) ~ time + (time | unit), data = d, family = binomial(), iter = iter,
             chains = chains, cores = chains, seed = seed, refresh = 0, silent = 2)
}
total <- proc.time()[["elapsed"]] - started
chain_s <- rstan::get_elapsed_time(fit$fit)
s <- summary(fit)
tab <- rbind(s$fixed, s$random$unit, if (!is.null(s$spec_pars) && nrow(s$spec_pars) > 0) s$spec_pars else NULL)
np <- nuts_params(fit)
rows <- vapply(rownames(tab), function(r) sprintf(
  '"%s": {"estimate": %.10g, "est_error": %.10g, "rhat": %.6g, "ess_bulk": %.6g, "ess_tail": %.6g}',
  r, tab[r, "Estimate"], tab[r, "Est.Error"], tab[r, "Rhat"], tab[r, "Bulk_ESS"], tab[r, "Tail_ESS"]), "")
writeLines(sprintf(
  '{"seconds": %.3f, "sampling_seconds": %.3f, "divergences": %d, "brms": "%s", "parameters": {%s}}',
  total, max(chain_s[, "sample"] + chain_s[, "warmup"]), as.integer(sum(np$Value[np$Parameter == "divergent__"])),
  as.character(packageVersion("brms")), paste(rows, collapse = ", ")), out)
"""


def brms_available() -> str | None:
    """brms's version when ``Rscript`` runs and ``library(brms)`` loads, else None."""
    if shutil.which("Rscript") is None:
        return None
    probe = subprocess.run(
        ["Rscript", "-e", 'suppressPackageStartupMessages(library(brms)); cat(as.character(packageVersion("brms")))'],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return probe.stdout.strip() or None if probe.returncode == 0 else None


def bench_data(family: str, students: int, weeks: int, reference: str | None) -> pd.DataFrame:
    """The data both engines fit: the reference set (gaussian) or a simulated one, in the columns the brms
    formulas name (unit, time, acc; binomial: unit, time, trials, correct)."""
    if reference is not None:
        ref = pd.read_csv(reference)
        return pd.DataFrame({"unit": ref["user"], "time": ref["week"], "acc": ref["acc"]})
    d = simulate(students, weeks)
    return d[["unit", "time", "acc"]] if family == "gaussian" else d[["unit", "time", "trials", "correct"]]


def fit_brms(
    family: str, students: int, weeks: int, reference: str | None, *, seed: int, limit_s: float
) -> tuple[str, Any]:
    """brms on the same data in an ``Rscript`` process: ("ok", figures) or ("error" | "stopped", message)."""
    OUT.mkdir(exist_ok=True)
    tag = f"brms_{family}_{'reference' if reference else students}"
    data_path, out_path, script = OUT / f"{tag}.csv", OUT / f"{tag}.json", OUT / "brms_fit.R"
    script.write_text(BRMS_SCRIPT)
    bench_data(family, students, weeks, reference).to_csv(data_path, index=False)
    out_path.unlink(missing_ok=True)
    command = ["Rscript", str(script), str(data_path), family, str(ITER), str(CHAINS), str(seed), str(out_path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return "stopped", f"brms stopped after {limit_s:.0f} s (--brms-max-seconds)"
    if done.returncode != 0 or not out_path.exists():
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        return "error", f"brms failed (exit {done.returncode}): {tail}"
    figures: dict[str, Any] = json.loads(out_path.read_text())
    return "ok", figures


def brms_line(family: str, label: str, ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """One row of the same-run comparison: brms's time and diagnostics, ours, the ratio and the agreement."""
    params = theirs["parameters"]
    rhat = max(p["rhat"] for p in params.values())
    ess_bulk = min(p["ess_bulk"] for p in params.values())
    ess_tail = min(p["ess_tail"] for p in params.values())
    # brms and the engine name the hyper-parameters alike (engines.growth.PARAMETERS)
    gaps = [
        abs(ours["estimates"][n] - p["estimate"]) / p["est_error"] for n, p in params.items() if n in ours["estimates"]
    ]
    return row(
        family,
        label,
        f"{ours['units']:,}",
        f"{theirs['seconds']:.1f}",
        f"{theirs['sampling_seconds']:.1f}",
        f"{rhat:.4f}",
        f"{ess_bulk:.0f} / {ess_tail:.0f}",
        theirs["divergences"],
        f"{ours['seconds']:.1f}",
        f"{theirs['seconds'] / ours['seconds']:.1f}x ({theirs['sampling_seconds'] / ours['seconds']:.1f}x)",
        f"{max(gaps):.2f}",
    )


def fit_one(
    family: str,
    students: int,
    weeks: int,
    reference: str | None,
    seed: int = 1,
    *,
    probe_draws: int | None = None,
    sampler: str = "nuts",
) -> dict[str, Any]:
    """One fit in this (child) process: simulate (or read the reference set), fit, return figures. ``probe_draws``:
    the binomial sampler's step-size probe (``engines/nuts_step_probe.py``; 0 = plain NUTS), default the engine's;
    ``sampler``: the binomial family's (``nuts`` or ``gibbs``; the gaussian family's is NUTS)."""
    from learnpulse.engines import nuts_step_probe
    from learnpulse.engines.growth import GrowthModel

    if probe_draws is not None:
        nuts_step_probe.PROBE_DRAWS = probe_draws

    d = bench_data(family, students, weeks, reference)
    sampler = sampler if family == "binomial" else "nuts"
    model = GrowthModel(family, iter=ITER, chains=CHAINS, seed=seed, sampler=sampler)
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


def _child(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
    try:
        result = fit_one(*args, **kwargs)
        out.put(("ok", result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    except BaseException as exc:
        out.put(("error", repr(exc), 0.0))
        raise


def run_limited(limit_s: float | None, *args: Any, **kwargs: Any) -> tuple[str, Any, float, float]:
    """``fit_one(*args, **kwargs)`` in a fresh process, stopped after ``limit_s`` seconds. Returns (status, result or
    message, wall seconds, peak RSS MiB); status is ok, error or stopped."""
    ctx = mp.get_context("fork")  # the parent never imports JAX, so forking is safe
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(args, kwargs, out))
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
    parser.add_argument("--students", default="1000,10000,100000", help="comma-separated sizes")
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
    parser.add_argument(
        "--sampler", choices=("nuts", "gibbs"), default="nuts", help="the binomial family's (BRMS_SAMPLER)"
    )
    parser.add_argument(
        "--brms", choices=("auto", "on", "off"), default="auto", help="fit brms on the same data (auto: if R has it)"
    )
    parser.add_argument("--brms-max-students", type=int, default=1_000, help="largest simulated set brms fits")
    parser.add_argument("--brms-max-seconds", type=float, default=3_600.0, help="stop a brms fit after this")
    args = parser.parse_args(argv)
    brms_version = None if args.brms == "off" else brms_available()
    if args.brms == "on" and brms_version is None:
        raise SystemExit("--brms on: Rscript with library(brms) is not available (see this script's docstring)")
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
            "brms published s / ratio (issue 5, not this run)",
            "target",
        ),
        row(*["---"] * 11),
    ]
    lines: list[str] = []
    notes: list[str] = []
    measured: dict[str, list[tuple[int, float]]] = {f: [] for f in families}
    fitted: list[tuple[str, str, int, dict[str, Any]]] = []  # what brms fits too: family, label, students, ours

    def report(family: str, label: str, students: int, result: dict[str, Any], peak: float) -> None:
        weeks = 12 if label == "brms reference set" else args.weeks
        diag, seconds = result["diagnostics"], result["seconds"]
        key: Any = "growth_200" if label == "brms reference set" else (students if weeks == 12 else None)
        line = row(
            f"{family} ({args.sampler})" if family == "binomial" else family,
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
        fitted.append((family, label, students, result))

    print(f"## Growth engine: iter={ITER}, chains={CHAINS}, binomial sampler {args.sampler}\n", flush=True)
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
                    status, result, _, peak = run_limited(
                        args.max_seconds, family, 1_000, args.weeks, None, args.seed, sampler=args.sampler
                    )
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
            status, result, _, peak = run_limited(
                args.max_seconds, family, students, args.weeks, None, args.seed, sampler=args.sampler
            )
            if status != "ok":
                notes.append(f"- {family}, {students:,} x {args.weeks}: {result}")
                print(notes[-1], flush=True)
                continue
            measured[family].append((students, result["seconds"]))
            report(family, "simulated", students, result, peak)
            if family == "binomial":
                notes.append(_truth_line(f"binomial, {students:,} students (posterior mean [95%])", result))

    brms_lines = run_brms(fitted, args, brms_version, notes) if brms_version else []

    print()
    print("\n".join(header + lines))
    print(
        "\nfit s: GrowthModel.fit (JAX compilation, warm-up, sampling, per-unit moments, diagnostics); max R-hat and "
        "ESS: the hyper-parameters (binomial: all units' coefficients in parentheses); min bulk ESS / s: the "
        "smallest hyper-parameter bulk ESS per fit second; peak RSS: the fitting process, simulated data included."
        "\nbrms published: the figures in issue 5 (brms 2.18.0 on a 2-core machine: 169 s for the 200-student "
        "reference set, about 15 min = 900 s for 1,000 students x 12 weeks, gaussian); the ratio is those s / ours."
    )
    if brms_lines:
        print(f"\n## brms {brms_version} on the same data in this run (iter={ITER}, chains={CHAINS}, cores=2)\n")
        print("\n".join(BRMS_HEADER + brms_lines))
        print(
            "\nbrms s: brm() wall time, Stan's C++ compilation included (a brms user waits for it); sampling s: the "
            "slowest chain's warm-up + sampling (rstan::get_elapsed_time). max R-hat, ESS: brms's summary (fixed "
            "effects, group-level SDs and correlation, sigma). ratio: brms s / our fit s (brms sampling s / our fit "
            "s). gap: the largest |our posterior mean - brms's| in brms posterior SDs over those parameters."
        )
    elif brms_version is None:
        print("\nbrms was not run: Rscript with library(brms) is not available here (--brms off or not installed).")
    if notes:
        print("\n" + "\n".join(notes))


BRMS_HEADER = [
    row(
        "family",
        "data",
        "units",
        "brms s",
        "brms sampling s",
        "brms max R-hat",
        "brms min ESS bulk / tail",
        "brms divergences",
        "our fit s",
        "ratio",
        "gap (brms SDs)",
    ),
    row(*["---"] * 11),
]


def run_brms(
    fitted: list[tuple[str, str, int, dict[str, Any]]], args: argparse.Namespace, version: str, notes: list[str]
) -> list[str]:
    """brms on each set our engine fitted (up to --brms-max-students units): one comparison row per set."""
    lines = []
    for family, label, students, ours in fitted:
        reference = str(REFERENCE) if label == "brms reference set" else None
        if reference is None and students > args.brms_max_students:
            continue
        print(f"(brms {version}: {family}, {label}, {ours['units']:,} units ...)", flush=True)
        status, result = fit_brms(
            family, students, args.weeks, reference, seed=args.seed, limit_s=args.brms_max_seconds
        )
        if status != "ok":
            notes.append(f"- brms, {family}, {label}, {ours['units']:,} units: {result}")
            print(notes[-1], flush=True)
            continue
        lines.append(brms_line(family, label, ours, result))
        print(lines[-1], flush=True)
        if label.startswith("simulated") and students == 1_000:
            ratio = result["seconds"] / ours["seconds"]
            verdict = "met" if ratio >= TARGET_1000_RATIO else "missed"
            notes.append(f"- {family}, 1,000 students: {ratio:.1f}x brms in this run (target >= 20x: {verdict})")
    return lines


if __name__ == "__main__":
    main()
