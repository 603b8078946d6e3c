"""ISTA-Net⁺ (public config ``istanet_plus.py``): 9 stages of 32 channels, symmetry-loss weight 0.01; Adam 1e-4,
L2 1e-5, 100 epochs. ``:smoke``: 2 stages of 4 channels.
"""

import ml_collections

from experiments.configs import istanet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = istanet.get_config(arg)  # ISTA-Net's settings and smoke variant, with the plus stage
    config.model.name = "istanet_plus"
    if (arg or "") != "smoke":
        config.model.num_stages = 9
    return config
