"""FISTA (Beck & Teboulle 2009) with the public ISTA's settings (SPEC §7): Φ⁺y start, step 1/‖Φ‖₂², λ = 1,
≤ 3,000 iterations, tolerance 1e-4. Not trained (``model.trainable = False``): ``python -m experiments.compare
--methods=fista`` evaluates it directly with the batched, jitted solver. ``:smoke`` caps the iterations for tests.
"""

import ml_collections

from experiments.configs import ista


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ista.get_config(arg)  # the same solver settings; only the algorithm differs
    config.model.name = "fista"
    return config
