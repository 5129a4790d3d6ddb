"""Conversions of computed values for JSON responses, shared by the routes."""

from __future__ import annotations

import math
from typing import Any


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not finite (JSON has no NaN or infinity)."""
    return float(value) if value is not None and math.isfinite(float(value)) else None
