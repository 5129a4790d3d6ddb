"""Benchmark: the 2PL IRT engine (MML by EM on the sparse answer list) against girth's ``twopl_mml``.

Engine part (issue 8): ``--responses`` answers (default 10,000,000) of ``--students`` students (50,000) to ``--items``
items (2,000), simulated from a 2PL in this script (not from the database): ``a ~ LN(0, 0.3)``, ``b ~ N(0, 1)``,
``theta ~ N(0, 1)``; each answer is a uniformly random (student, item) pair, so some pairs repeat (each answer
counts). Timed: ``IRT2PL().fit`` (calibration, standard errors included) and ``IRT2PL.score`` (EAP and SD of every
student from all their answers). Reported: seconds, EM iterations, peak RSS of the process (data included; the RSS
after simulating the data in parentheses), and the recovery of the true parameters.

Reference part: girth's ``twopl_mml`` needs a dense items x persons matrix and runs in pure Python/NumPy loops per
item, so both run on a subset both can handle: ``--subset-items`` (200) x ``--subset-persons`` (5,000), complete
(every person answers every item), with girth's default options, each in its own process. Reported: both times,
the speed ratio (target >= 10x), both peak memories, and the largest differences between the two estimates.

    .venv/bin/python bench/irt.py [--responses 10000000] [--items 2000] [--students 50000]
                                  [--subset-items 200] [--subset-persons 5000] [--skip-girth] [--skip-engine]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import phase, row
from learnpulse.engines.irt import IRT2PL

SEED = 20261122
TARGET_SECONDS = 120.0
TARGET_RATIO = 10.0


def true_items(items: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 0])
    return np.exp(rng.normal(0.0, 0.3, items)), rng.normal(0.0, 1.0, items)


def simulate_answers(
    responses: int, items: int, students: int, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random (student, item) pairs and 2PL answers; returns student, item, correct and the true abilities."""
    a, b = true_items(items, seed)
    rng = np.random.default_rng([seed, 1])
    theta = rng.normal(0.0, 1.0, students)
    student = rng.integers(0, students, responses)
    item = rng.integers(0, items, responses)
    logit = a[item] * (theta[student] - b[item])
    correct = rng.random(responses) < 1.0 / (1.0 + np.exp(-logit))
    return student, item, correct, theta


def simulate_dense(items: int, persons: int, seed: int = SEED) -> np.ndarray:
    """Complete answers (items x persons, bool) of new persons to the first ``items`` items of the bank."""
    a, b = true_items(items, seed)
    rng = np.random.default_rng([seed, 2])
    theta = rng.normal(0.0, 1.0, persons)
    dense: np.ndarray = rng.random((items, persons)) < 1.0 / (1.0 + np.exp(-a[:, None] * (theta[None, :] - b[:, None])))
    return dense


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def engine_full(responses: int, items: int, students: int) -> dict[str, Any]:
    student, item, correct, theta = simulate_answers(responses, items, students)
    data_mib = _rss_mib()
    start = time.perf_counter()
    model = IRT2PL().fit(student, item, correct)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = model.score(student, item, correct)
    score_s = time.perf_counter() - start
    a, b = true_items(items)
    assert model.a_ is not None and model.b_ is not None and model.se_a_ is not None and model.se_b_ is not None
    ok = np.isfinite(model.a_)
    eap = scores["theta"].to_numpy()
    return {
        "fit_s": fit_s,
        "score_s": score_s,
        "data_mib": data_mib,
        "n_iter": model.n_iter_,
        "converged": model.converged_,
        "calibrated": int(ok.sum()),
        "corr_a": float(np.corrcoef(model.a_[ok], a[ok])[0, 1]),
        "corr_b": float(np.corrcoef(model.b_[ok], b[ok])[0, 1]),
        "max_err_a": float(np.max(np.abs(model.a_[ok] - a[ok]))),
        "max_err_b": float(np.max(np.abs(model.b_[ok] - b[ok]))),
        "z_sd_a": float(np.std((model.a_[ok] - a[ok]) / model.se_a_[ok])),
        "z_sd_b": float(np.std((model.b_[ok] - b[ok]) / model.se_b_[ok])),
        "corr_theta": float(np.corrcoef(eap, theta[scores["person"].to_numpy()])[0, 1]),
    }


def engine_subset(items: int, persons: int) -> dict[str, Any]:
    dense = simulate_dense(items, persons)
    item, person = np.nonzero(np.ones_like(dense))  # the long list of every answer
    correct = dense[item, person]
    data_mib = _rss_mib()
    start = time.perf_counter()
    model = IRT2PL().fit(person, item, correct)
    seconds = time.perf_counter() - start
    assert model.a_ is not None and model.b_ is not None
    return {"seconds": seconds, "data_mib": data_mib, "a": model.a_.copy(), "b": model.b_.copy()}


def girth_subset(items: int, persons: int) -> dict[str, Any]:
    from girth import twopl_mml

    dense = simulate_dense(items, persons).astype(int)
    data_mib = _rss_mib()
    start = time.perf_counter()
    result = twopl_mml(dense)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "data_mib": data_mib,
        "a": np.asarray(result["Discrimination"], dtype=float),
        "b": np.asarray(result["Difficulty"], dtype=float),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--responses", type=int, default=10_000_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--students", type=int, default=50_000)
    parser.add_argument("--subset-items", type=int, default=200)
    parser.add_argument("--subset-persons", type=int, default=5_000)
    parser.add_argument("--skip-girth", action="store_true")
    parser.add_argument("--skip-engine", action="store_true")
    args = parser.parse_args(argv)

    if not args.skip_engine:
        n, j, p = args.responses, args.items, args.students
        print(f"## IRT engine: 2PL calibration, {n:,} answers, {j:,} items, {p:,} students\n", flush=True)
        ours, _wall, peak = phase(engine_full, n, j, p)
        met = "met" if ours["fit_s"] <= TARGET_SECONDS else "missed"
        print(
            "\n".join(
                [
                    row("phase", "answers", "seconds", "peak RSS MiB (after data)", "EM iterations", "note"),
                    row(*["---"] * 6),
                    row(
                        "IRT2PL.fit (calibration + SEs)",
                        f"{n:,}",
                        f"{ours['fit_s']:.1f}",
                        f"{peak:,.0f} ({ours['data_mib']:,.0f})",
                        ours["n_iter"],
                        f"target <= {TARGET_SECONDS:.0f} s: {met}; converged: {ours['converged']}",
                    ),
                    row(
                        f"IRT2PL.score (EAP + SD, {p:,} students)",
                        f"{n:,}",
                        f"{ours['score_s']:.1f}",
                        "",
                        "",
                        "",
                    ),
                ]
            )
        )
        print(
            f"\nrecovery: {ours['calibrated']:,} items calibrated; corr(a) {ours['corr_a']:.4f}, corr(b) "
            f"{ours['corr_b']:.4f}; max |a - true| {ours['max_err_a']:.3f}, max |b - true| {ours['max_err_b']:.3f}; "
            f"SD of (estimate - true) / SE: a {ours['z_sd_a']:.2f}, b {ours['z_sd_b']:.2f} (1 = honest SEs); "
            f"corr(EAP, true theta) {ours['corr_theta']:.4f}\n",
            flush=True,
        )

    if not args.skip_girth:
        j, p = args.subset_items, args.subset_persons
        print(f"## Against girth twopl_mml: {j:,} items x {p:,} persons, complete ({j * p:,} answers)\n", flush=True)
        sub, _wall, sub_peak = phase(engine_subset, j, p)
        ref, _wall, ref_peak = phase(girth_subset, j, p)
        ratio = ref["seconds"] / sub["seconds"]
        met = "met" if ratio >= TARGET_RATIO else "missed"
        a, b = true_items(j)
        print(
            "\n".join(
                [
                    row(
                        "fit",
                        "seconds",
                        "peak RSS MiB (after data)",
                        "speed ratio",
                        "max abs(a - true)",
                        "max abs(b - true)",
                        "note",
                    ),
                    row(*["---"] * 7),
                    row(
                        "learnpulse IRT2PL (sparse list)",
                        f"{sub['seconds']:.2f}",
                        f"{sub_peak:,.0f} ({sub['data_mib']:,.0f})",
                        f"{ratio:.1f}x",
                        f"{np.max(np.abs(sub['a'] - a)):.3f}",
                        f"{np.max(np.abs(sub['b'] - b)):.3f}",
                        f"target >= {TARGET_RATIO:.0f}x: {met}",
                    ),
                    row(
                        "girth twopl_mml (dense, defaults)",
                        f"{ref['seconds']:.2f}",
                        f"{ref_peak:,.0f} ({ref['data_mib']:,.0f})",
                        "1.0x",
                        f"{np.max(np.abs(ref['a'] - a)):.3f}",
                        f"{np.max(np.abs(ref['b'] - b)):.3f}",
                        "",
                    ),
                ]
            )
        )
        print(
            f"\nours - girth: max |a| {np.max(np.abs(sub['a'] - ref['a'])):.4f}, max |b| "
            f"{np.max(np.abs(sub['b'] - ref['b'])):.4f}; corr(a) {np.corrcoef(sub['a'], ref['a'])[0, 1]:.6f}, "
            f"corr(b) {np.corrcoef(sub['b'], ref['b'])[0, 1]:.6f}"
        )
    print(
        "\nseconds: the fit (or scoring) call only; peak RSS: the process that simulated the data and ran it (RSS "
        "after simulating, before fitting, in parentheses)."
    )


if __name__ == "__main__":
    main()
