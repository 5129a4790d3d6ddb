"""Write the input datasets of the R golden files (``rossi.csv``, ``synthetic.csv``) into this directory.

Run from the repository root: ``.venv/bin/python tests/data/survival/make_inputs.py`` (then ``make_golden.R``).
The CSVs are committed; this script documents how they were made (lifelines' rossi; a seeded simulation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def synthetic(n: int = 2000, seed: int = 20240611) -> pd.DataFrame:
    """A Cox model with covariates on very different scales and heavy ties (whole days, at most 60)."""
    rng = np.random.default_rng(seed)
    x1 = rng.binomial(1, 0.4, n).astype(float)  # binary
    x2 = np.round(rng.normal(50.0, 10.0, n), 1)  # age-like
    x3 = rng.poisson(2.0, n).astype(float)  # count
    x4 = np.round(rng.normal(5000.0, 1000.0, n), 0)  # large scale
    lp = 0.5 * x1 - 0.03 * (x2 - 50.0) + 0.2 * (x3 - 2.0) + 0.0003 * (x4 - 5000.0)
    event_time = np.ceil(rng.exponential(1.0, n) / (0.04 * np.exp(lp)))
    censor_time = rng.integers(1, 61, n).astype(float)
    time = np.minimum(event_time, censor_time)
    status = (event_time <= censor_time).astype(int)
    return pd.DataFrame({"time": time, "status": status, "x1": x1, "x2": x2, "x3": x3, "x4": x4})


def main() -> None:
    from lifelines.datasets import load_rossi

    load_rossi().to_csv(HERE / "rossi.csv", index=False)
    synthetic().to_csv(HERE / "synthetic.csv", index=False)


if __name__ == "__main__":
    main()
