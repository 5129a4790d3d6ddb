"""The growth model's family and sampler names, defined once for the engine, the settings, the API and the client.

A light module (no NumPy/JAX import) so that settings and the HTTP client can use the names without loading the
engine.
"""

from __future__ import annotations

from typing import Literal, get_args

# "gaussian": weekly accuracy, identity link; "binomial": correct | trials(attempts), logit link.
Family = Literal["gaussian", "binomial"]
# "nuts": NUTS over every parameter; "gibbs" (binomial family): NUTS on the population within a Gibbs sweep whose
# units take independence Metropolis-Hastings steps (learnpulse.engines.growth_gibbs).
Sampler = Literal["nuts", "gibbs"]
FAMILIES: tuple[str, ...] = get_args(Family)
SAMPLERS: tuple[str, ...] = get_args(Sampler)
