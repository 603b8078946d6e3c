"""ISTA-Net⁺⁺ (public config ``ISTA_Net_pp.py``): 20 stages of 32 channels, condition input 0.005; Adam 1e-4
*without* weight decay (the public config sets none), 100 epochs. ``:smoke``: 2 stages of 4 channels.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "istanet_pp"
    config.model.trainable = True
    config.model.num_stages = 20
    config.model.channels = 32
    config.model.condition = 0.005
    config.optimizer.weight_decay = 0.0
    variant = arg or ""
    if variant == "smoke":
        config.model.num_stages = 2
        config.model.channels = 4
    return common.apply_variant(config, variant)
