"""What every engine shares: the "is it fitted?" check and the JSON envelope of a fitted model.

A fitted model serialises to ``{"engine": <name>, "version": <int>, ...engine fields}``: plain JSON types only
(floats are written with ``repr`` precision by :mod:`json`, so a round trip is exact). ``version`` is the engine's
format version; ``from_json`` refuses an envelope of another engine or of a version it cannot read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from learnpulse.errors import InvalidInputError, NotFittedError


def check_fitted(estimator: object, attr: str) -> None:
    """Raise :class:`NotFittedError` unless ``estimator`` has the learned attribute ``attr`` (set by ``fit``)."""
    if getattr(estimator, attr, None) is None:
        name = type(estimator).__name__
        raise NotFittedError(
            f"this {name} is not fitted yet: call fit(...) (or {name}.from_json(...)) first",
            {"estimator": name},
        )


def envelope(engine: str, version: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of a fitted model: the engine's name and format version, then its own fields."""
    return {"engine": engine, "version": version, **body}


def open_envelope(data: Mapping[str, Any], engine: str, versions: Collection[int]) -> Mapping[str, Any]:
    """Check that ``data`` is an envelope of ``engine`` in one of ``versions``; return it."""
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"a serialised {engine} model must be a JSON object", {"engine": engine})
    if data.get("engine") != engine:
        raise InvalidInputError(
            f"not a serialised {engine} model (engine={data.get('engine')!r})",
            {"engine": engine, "found": data.get("engine")},
        )
    if data.get("version") not in versions:
        raise InvalidInputError(
            f"unsupported {engine} model version {data.get('version')!r} (this build reads {sorted(versions)})",
            {"engine": engine, "found": data.get("version"), "supported": sorted(versions)},
        )
    return data


def float_vector(values: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    """``values`` as a finite 1-D float vector; otherwise :class:`InvalidInputError` naming ``name`` (the column)
    and the first bad row."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{name} must be numeric", {"problems": [{"column": name, "reason": "not numeric"}]}
        ) from exc
    if arr.ndim != 1:
        raise InvalidInputError(
            f"{name} must be one-dimensional", {"problems": [{"column": name, "reason": f"shape {arr.shape}"}]}
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InvalidInputError(
            f"{name} has {len(rows)} missing or non-finite value(s) (first at row {int(rows[0])})",
            {
                "problems": [
                    {"column": name, "row": int(rows[0]), "reason": "missing or non-finite", "count": len(rows)}
                ]
            },
        )
    return arr
