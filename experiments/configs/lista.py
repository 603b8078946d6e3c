"""LISTA (public config ``LISTA.py``): 16 layers, initial threshold λ = 0.4 / (1.001‖Φ‖₂²); Adam 1e-4, L2 1e-5,
100 epochs. ``:smoke`` keeps 2 layers.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "lista"
    config.model.trainable = True
    config.model.num_layers = 16
    config.model.lam = 0.4
    variant = arg or ""
    if variant == "smoke":
        config.model.num_layers = 2
    return common.apply_variant(config, variant)
