"""RPCANet (public config ``RPCANet.py``): 6 stages, 32 channels, 6 sparse / 3 low-rank / 3 merge layers; loss
0.9·MSE(T, label) + 0.1·0.9·MSE(D̂, D) on frames [2:T-2]; Adam 1e-4, L2 1e-5, 100 epochs.
``:smoke``: 1 stage of 4 channels, 1 layer per module.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "rpcanet"
    config.model.trainable = True
    config.model.num_stages = 6
    config.model.channels = 32
    config.model.sparse_layers = 6
    config.model.lowrank_layers = 3
    config.model.merge_layers = 3
    config.loss.alpha = 0.9
    config.loss.gamma = 0.1
    variant = arg or ""
    if variant == "smoke":
        config.model.num_stages = 1
        config.model.channels = 4
        config.model.sparse_layers = 1
        config.model.lowrank_layers = 1
        config.model.merge_layers = 1
    return common.apply_variant(config, variant)
