"""Study: how often the growth job's diagnostics gate (max R-hat of the population parameters above 1.01) stops a
sound gaussian fit, by ``BRMS_ITER`` (issue 5; a reliability figure, not a speed benchmark).

Fits ``bench/growth.py``'s simulated data (known truth, so every fit is of a well-specified model) with seeds
0..n-1 at each ``iter``, two chains, and reports the share of fits over the gate, the median of the smallest bulk
and tail ESS and the median fit seconds. Beside it, the same share for independent normal draws of the same
shape (chains x draws x 6 parameters) under the same R-hat (rank-normalised split R-hat with its folded version,
as ArviZ): what a perfectly mixing sampler would show.

    .venv/bin/python bench/growth_gate.py [--students 1000] [--seeds 36] [--iters 1000 2000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

GATE = 1.01


def independent_share(chains: int, draws: int, params: int, reps: int = 2000, seed: int = 0) -> float:
    """Share of ``reps`` sets of independent standard normal draws (chains, draws, params) whose max R-hat > GATE."""
    from learnpulse.engines.mcmc_diagnostics import chain_diagnostics

    rng = np.random.default_rng(seed)
    over = [chain_diagnostics(rng.standard_normal((chains, draws, params)))["rhat"].max() > GATE for _ in range(reps)]
    return float(np.mean(over))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=1_000)
    parser.add_argument("--seeds", type=int, default=36)
    parser.add_argument("--iters", type=int, nargs="+", default=[1000, 2000])
    args = parser.parse_args(argv)

    from growth import simulate  # bench/growth.py
    from learnpulse.engines.growth import GrowthModel

    frame = simulate(args.students, 12)
    print(f"## Gaussian growth fits over the R-hat gate ({args.students:,} students x 12 weeks, 2 chains)\n")
    print("| iter | fits | over 1.01 | median min ESS bulk / tail | median fit s | independent draws over 1.01 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for iter_ in args.iters:
        over, bulk, tail, seconds = 0, [], [], []
        for seed in range(args.seeds):
            model = GrowthModel("gaussian", iter=iter_, chains=2, seed=seed)
            model.fit(frame["unit"], frame["time"], frame["acc"])
            d = model.diagnostics_
            assert d is not None
            over += d["max_rhat"] > GATE
            bulk.append(d["min_ess_bulk"])
            tail.append(d["min_ess_tail"])
            seconds.append(d["seconds"])
        null = independent_share(2, iter_ // 2, 6)
        print(
            f"| {iter_} | {args.seeds} | {over} ({over / args.seeds:.0%}) | {np.median(bulk):.0f} / "
            f"{np.median(tail):.0f} | {np.median(seconds):.1f} | {null:.1%} |"
        )


if __name__ == "__main__":
    main()
