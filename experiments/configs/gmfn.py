"""GMFN (public config ``GMFNNet.py``): 32 features, 4 feedback steps, 8 dense blocks; the public detector scores
the first step's maps (``model.output_step = 0``; ``-1`` for the last step). Adam 1e-4 *without* weight decay
(the public config sets none), 100 epochs. ``:smoke``: 4 features, 2 steps, 1 block.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "gmfn"
    config.model.trainable = True
    config.model.features = 32
    config.model.num_steps = 4
    config.model.num_blocks = 8
    config.model.num_reroute = 8
    config.model.num_refine = 16
    config.model.output_step = 0
    config.optimizer.weight_decay = 0.0
    variant = arg or ""
    if variant == "smoke":
        config.model.features = 4
        config.model.num_steps = 2
        config.model.num_blocks = 1
        config.model.num_reroute = 1
    return common.apply_variant(config, variant)
