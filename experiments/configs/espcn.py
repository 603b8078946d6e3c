"""ESPCN (public config ``ESPCN.py``): 5-3-3 convs with 64/32 channels and ×3 PixelShuffle on the raw 11×11 frame;
Adam 1e-4, L2 1e-5, 100 epochs. ``:smoke``: 4/4 channels.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "espcn"
    config.model.trainable = True
    config.model.channels = (64, 32)
    variant = arg or ""
    if variant == "smoke":
        config.model.channels = (4, 4)
    return common.apply_variant(config, variant)
