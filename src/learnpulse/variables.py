"""A documented model input: its name, unit and meaning (churn covariates, segment features)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variable:
    name: str
    unit: str
    description: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "unit": self.unit, "description": self.description}
