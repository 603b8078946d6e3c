"""EDSR (public config ``EDSRNet.py``): 32 channels, 16 residual blocks, ×3 PixelShuffle, img_range 255; Adam 1e-4
*without* weight decay (the public config sets none), 100 epochs. ``:smoke``: 4 channels, 1 block.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "edsr"
    config.model.trainable = True
    config.model.channels = 32
    config.model.num_blocks = 16
    config.model.res_scale = 1.0
    config.model.img_range = 255.0
    config.optimizer.weight_decay = 0.0
    variant = arg or ""
    if variant == "smoke":
        config.model.channels = 4
        config.model.num_blocks = 1
    return common.apply_variant(config, variant)
