"""FISTA-Net (public config ``fistanet.py``): 7 layers sharing one 32-channel block; loss weights 0.1 (L1),
0.01 (symmetry), 0.001 (sparsity); Adam 1e-4, L2 1e-5, 100 epochs. ``:smoke``: 2 layers of 4 channels.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "fistanet"
    config.model.trainable = True
    config.model.num_layers = 7
    config.model.channels = 32
    config.model.keep_unused_params = True  # the public block's unused convs (counted in its 74.6 K params)
    config.loss.l1 = 0.1
    config.loss.constraint = 0.01
    config.loss.sparsity = 0.001
    variant = arg or ""
    if variant == "smoke":
        config.model.num_layers = 2
        config.model.channels = 4
    return common.apply_variant(config, variant)
