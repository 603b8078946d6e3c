"""TDAN (public config ``tdan.py``): 32 channels, 5 + 10 residual blocks, 8 deformable groups, 5-frame window,
alignment-loss weight 0.01; Adam 1e-4, L2 1e-5, 100 epochs. Predicts centre frames 2..T-3 like DeRefNet.
``model.reference``: ``"centre"`` (TDAN's paper, default) or ``"sequence_middle"`` (the public code's
``x[T//2]`` reference channel). ``:smoke``: 4 channels, 1 + 1 blocks, 2 deformable groups.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "tdan"
    config.model.trainable = True
    config.model.channels = 32
    config.model.num_blocks_before_align = 5
    config.model.num_blocks_after_align = 10
    config.model.deform_groups = 8
    config.model.window = 5
    config.model.reference = "centre"
    config.loss.align = 0.01
    variant = arg or ""
    if variant == "smoke":
        config.model.channels = 4
        config.model.num_blocks_before_align = 1
        config.model.num_blocks_after_align = 1
        config.model.deform_groups = 2
    return common.apply_variant(config, variant)
