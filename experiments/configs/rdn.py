"""RDN (public config ``RDN.py``, model ``RDN_bb(num_features=64, num_blocks=16, num_layers=8)``): 22.3 M
parameters; Adam 1e-4, L2 1e-5, 100 epochs. ``:smoke``: 4 features, 1 block of 2 layers.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "rdn"
    config.model.trainable = True
    config.model.features = 64
    config.model.num_blocks = 16
    config.model.num_layers = 8
    variant = arg or ""
    if variant == "smoke":
        config.model.features = 4
        config.model.num_blocks = 1
        config.model.num_layers = 2
    return common.apply_variant(config, variant)
