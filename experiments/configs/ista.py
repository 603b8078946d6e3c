"""ISTA as the public ``tools/ista.py`` runs it (SPEC §7): Φ⁺y start, step 1/‖Φ‖₂², λ = 1, ≤ 3,000 iterations,
tolerance 1e-4. Not trained (``model.trainable = False``): ``python -m experiments.compare --methods=ista``
evaluates it directly with the batched, jitted solver. ``:smoke`` caps the iterations for tests.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "ista"
    config.model.trainable = False
    config.model.lam = 1.0
    config.model.max_iter = 3000
    config.model.tol = 1e-4
    variant = arg or ""
    if variant == "smoke":
        config.model.max_iter = 50
    return common.apply_variant(config, variant)
