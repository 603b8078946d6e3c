"""LISTA (public config ``LISTA.py``): 16 layers, initial threshold λ = 0.4 / (1.001‖Φ‖₂²); Adam 1e-4, L2 1e-5,
100 epochs. ``:smoke`` keeps 2 layers. ``loss.public_broadcast=True`` gives the public (broadcast) loss.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "lista"
    config.model.trainable = True
    config.model.num_layers = 16
    config.model.lam = 0.4
    # True: the public loss's (T,1,1089)-vs-(T,1089) broadcast (every output against the trajectory's mean label)
    config.loss.public_broadcast = False
    variant = arg or ""
    if variant == "smoke":
        config.model.num_layers = 2
    return common.apply_variant(config, variant)
