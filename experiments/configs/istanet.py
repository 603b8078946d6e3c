"""ISTA-Net (public config ``ISTANet.py``): 8 stages of 32 channels, symmetry-loss weight 0.01; Adam 1e-4, L2 1e-5,
100 epochs. ``:smoke``: 2 stages of 4 channels.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "istanet"
    config.model.trainable = True
    config.model.num_stages = 8
    config.model.channels = 32
    config.loss.gamma = 0.01
    variant = arg or ""
    if variant == "smoke":
        config.model.num_stages = 2
        config.model.channels = 4
    return common.apply_variant(config, variant)
