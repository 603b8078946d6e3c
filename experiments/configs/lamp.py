"""LAMP (public config ``LAMP.py``): 16 layers, λ = 0.4; Adam 1e-4, L2 1e-5, 100 epochs. ``:smoke`` keeps 2 layers.
``loss.public_broadcast=True`` gives the public (broadcast) loss.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "lamp"
    config.model.trainable = True
    config.model.num_layers = 16
    config.model.lam = 0.4
    config.loss.public_broadcast = False
    variant = arg or ""
    if variant == "smoke":
        config.model.num_layers = 2
    return common.apply_variant(config, variant)
