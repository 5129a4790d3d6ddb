"""Benchmark: the binomial growth sampler's step-size probe (``engines/nuts_step_probe.py``) against plain NumPyro
NUTS, over sampler seeds, on the same simulated students (``bench/growth.py``'s data, 12 weeks).

Plain NUTS sometimes ends warm-up with a step size inside a U-turn resonance, where trees grow from 31 to
hundreds of leapfrog steps and the fit takes many times as long (at 20,000 students: 390 s instead of ~45-80 s).
Each seed is fitted once per sampler chosen (both by default), each fit in its own process: with the probe (the
engine as shipped) and with ``probe_draws=0`` (plain NUTS, adaptation over the whole warm-up). Printed per fit:
seconds, mean leapfrog steps per kept draw, each chain's step size (``*``: nudged by the probe), max R-hat,
divergences; then the mean and worst time of each.

    .venv/bin/python bench/growth_step_probe.py [--students 20000] [--seeds 0,1,2,3] [--samplers probe,plain]
                                                [--max-seconds 900]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row
from growth import run_limited

# (--samplers key, label, probe_draws for bench/growth.py's fit_one: None = the engine's default, 0 = none)
SAMPLERS = (("probe", "probe", None), ("plain", "plain NUTS", 0))


def _steps(diag: dict[str, Any]) -> str:
    nudged = diag.get("step_size_nudged") or [False] * len(diag["step_size"])
    return ", ".join(f"{s:.4f}{'*' if n else ''}" for s, n in zip(diag["step_size"], nudged, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--students", type=int, default=20_000)
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated sampler seeds")
    parser.add_argument("--samplers", default="probe,plain", help="probe (the engine's), plain (NUTS) or both")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop a fit that runs longer")
    args = parser.parse_args(argv)
    chosen = args.samplers.split(",")
    unknown = set(chosen) - {key for key, _, _ in SAMPLERS}
    if unknown:
        raise SystemExit(f"--samplers: unknown {', '.join(sorted(unknown))} (probe, plain)")
    samplers = [(label, probe) for key, label, probe in SAMPLERS if key in chosen]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    print(f"binomial family, {args.students:,} students x 12 weeks, iter=1000, chains=2\n")
    print(row("seed", "sampler", "fit s", "leapfrog steps / draw", "step size per chain", "max R-hat", "divergences"))
    print(row(*["---"] * 7))
    times: dict[str, list[float]] = {"probe": [], "plain NUTS": []}
    for seed in seeds:
        for label, probe in samplers:
            status, result, wall, _ = run_limited(
                args.max_seconds, "binomial", args.students, 12, None, seed, probe_draws=probe
            )
            if status != "ok":
                print(row(seed, label, f"{wall:.0f}", status, str(result), "", ""), flush=True)
                times[label].append(wall)
                continue
            diag = result["diagnostics"]
            times[label].append(result["seconds"])
            print(
                row(
                    seed,
                    label,
                    f"{result['seconds']:.1f}",
                    f"{diag['mean_leapfrog_steps']:.1f}",
                    _steps(diag),
                    f"{diag['max_rhat']:.4f}",
                    diag["divergences"],
                ),
                flush=True,
            )
    print()
    for label, values in times.items():
        if values:
            mean = sum(values) / len(values)
            print(f"- {label}: mean {mean:.0f} s, worst {max(values):.0f} s over {len(values)} fits")


if __name__ == "__main__":
    main()
