"""USRNet (public config ``USRNet.py``): 8 unfolded iterations, ResUNet 16/32/64/128 with 2 residual blocks,
HyPaNet 64, fixed 3×3 Gaussian blur (σ 0.5), noise level 0; Adam 1e-4, L2 1e-5, 100 epochs.
``:smoke``: 2 iterations, ResUNet 2/4/4/4 with 1 block, HyPaNet 4.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "usrnet"
    config.model.trainable = True
    config.model.num_iters = 8
    config.model.hyper_channels = 64
    config.model.channels = (16, 32, 64, 128)
    config.model.num_res = 2
    config.model.kernel_size = 3
    config.model.kernel_sigma = 0.5
    config.model.noise_sigma = 0.0
    variant = arg or ""
    if variant == "smoke":
        config.model.num_iters = 2
        config.model.hyper_channels = 4
        config.model.channels = (2, 4, 4, 4)
        config.model.num_res = 1
    return common.apply_variant(config, variant)
