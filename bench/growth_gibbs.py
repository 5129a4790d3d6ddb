"""Benchmark (issue 5): the binomial growth family's two samplers on the same data, the gibbs sampler
(``BRMS_SAMPLER=gibbs``: NumPyro NUTS on the population, BlackJAX independence Metropolis-Hastings on the units,
``engines/growth_gibbs.py``) against joint NUTS (the default): time, diagnostics, and how far apart their posteriors
are.

Data: ``bench/growth.py``'s simulation (trials 5-40 a week, known truth), ``iter=1000, chains=2``, the same sampler
seed for both. Printed per size and sampler: ``GrowthModel.fit`` seconds, the hyper-parameters' max R-hat and min
bulk / tail ESS, the units' (every coefficient of every unit) max R-hat, share above 1.01 and min bulk / tail ESS,
divergences, the population NUTS's leapfrog steps per iteration, the units' acceptance rate (gibbs) and the posterior
means; then how far apart the two posteriors are: hyper-parameter means in joint-NUTS posterior SDs, every unit's
coefficient means in its posterior SD (rms and max), and the ratio of the units' posterior SDs. Two independent runs
of the same sampler differ by ~0.05 SD (rms) and ~1.00 +- 0.1 in SD ratio at 1,000 draws.

    .venv/bin/python bench/growth_gibbs.py [--students 2000,20000] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row
from growth import CHAINS, ITER, TRUTH, simulate
from learnpulse.engines.growth import GrowthModel

HYPER = list(TRUTH)


def fit(d: Any, sampler: str, seed: int) -> dict[str, Any]:
    model = GrowthModel("binomial", iter=ITER, chains=CHAINS, seed=seed, sampler=sampler)
    model.fit(d["unit"], d["time"], d["correct"], d["trials"])
    assert model.diagnostics_ is not None and model.coef_mean_ is not None and model.coef_cov_ is not None
    fixed = model.fixed_effects().loc[HYPER]
    return {
        "diag": model.diagnostics_,
        "worst": str(fixed["rhat"].idxmax()),
        "means": fixed["estimate"].to_numpy(),
        "sds": fixed["est_error"].to_numpy(),
        "unit_mean": model.coef_mean_,
        "unit_sd": np.sqrt(np.stack([model.coef_cov_[:, 0, 0], model.coef_cov_[:, 1, 1]], axis=1)),
    }


def line(sampler: str, students: int, r: dict[str, Any]) -> str:
    d = r["diag"]
    return row(
        sampler,
        f"{students:,}",
        f"{d['seconds']:.1f}",
        f"{d['max_rhat']:.4f} ({r['worst']})",
        f"{d['min_ess_bulk']:.0f} / {d['min_ess_tail']:.0f}",
        f"{d['units_max_rhat']:.4f}, {d['units_share_rhat_above_1_01']:.1%} > 1.01",
        f"{d['units_min_ess_bulk']:.0f} / {d['units_min_ess_tail']:.0f}",
        str(d["divergences"]),
        f"{d['mean_leapfrog_steps']:.1f}",
        f"{d['units_acceptance']:.3f}" if "units_acceptance" in d else "",
        ", ".join(f"{m:.4f}" for m in r["means"]),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--students", default="2000,20000", help="comma-separated sizes")
    parser.add_argument("--seed", type=int, default=1, help="both samplers' seed")
    args = parser.parse_args(argv)
    print(f"truth: {', '.join(f'{k} {v}' for k, v in TRUTH.items())}; iter {ITER}, chains {CHAINS}\n")
    print(
        row(
            "sampler",
            "students",
            "fit s",
            "max R-hat",
            "min ESS bulk / tail",
            "units max R-hat",
            "units min ESS bulk / tail",
            "divergences",
            "population steps / iteration",
            "units acceptance",
            "means (" + ", ".join(HYPER) + ")",
        )
    )
    print(row(*["---"] * 11))
    gaps = []
    for students in (int(s) for s in args.students.split(",")):
        d = simulate(students, 12)
        ours = fit(d, "gibbs", args.seed)
        print(line("gibbs", students, ours), flush=True)
        theirs = fit(d, "nuts", args.seed)
        print(line("nuts (joint)", students, theirs), flush=True)
        hyper_gap = np.abs(ours["means"] - theirs["means"]) / theirs["sds"]
        unit_gap = (ours["unit_mean"] - theirs["unit_mean"]) / theirs["unit_sd"]
        ratio = ours["unit_sd"] / theirs["unit_sd"]
        gaps.append(
            f"- {students:,} students: gibbs {theirs['diag']['seconds'] / ours['diag']['seconds']:.1f}x faster; "
            f"hyper-parameter means at most {hyper_gap.max():.3f} joint-NUTS SDs apart; unit means rms "
            f"{np.sqrt(np.mean(unit_gap**2)):.3f} / max {np.abs(unit_gap).max():.3f} SDs apart; unit SD ratio mean "
            f"{ratio.mean():.4f} (1-99%: {np.quantile(ratio, 0.01):.3f}-{np.quantile(ratio, 0.99):.3f})"
        )
    print("\n" + "\n".join(gaps))


if __name__ == "__main__":
    main()
