"""Checks of request bodies that pydantic cannot express on its own, shared by the routes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from learnpulse.errors import InvalidInputError


def model_columns(given: Mapping[str, Sequence[float]], names: Sequence[str], *, field: str, noun: str) -> pd.DataFrame:
    """The columns ``given`` as a frame in the model's order ``names``, which they must match exactly; otherwise a
    422 naming each missing or unknown column at ``body.<field>.<name>`` (``noun``: "feature", "covariate")."""
    missing = [n for n in names if n not in given]
    extra = [n for n in given if n not in names]
    if missing or extra:
        parts = [f"missing {', '.join(missing)}" if missing else "", f"unknown {', '.join(extra)}" if extra else ""]
        raise InvalidInputError(
            f"the {field} must be exactly the model's ({', '.join(names)}): {'; '.join(p for p in parts if p)}",
            {
                "problems": [
                    *({"location": f"body.{field}.{n}", "problem": "missing", "type": "missing"} for n in missing),
                    *(
                        {"location": f"body.{field}.{n}", "problem": f"not a {noun} of the model", "type": "extra"}
                        for n in extra
                    ),
                ],
                field: list(names),
            },
        )
    return pd.DataFrame({n: np.asarray(given[n], dtype=np.float64) for n in names})
