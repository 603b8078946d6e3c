"""SRCNN (public config ``SRCNN.py``): on the Q-initialised 33×33 map, 9-5-5 convs with 32/16 channels; Adam 1e-4,
L2 1e-5, **200** epochs. ``:smoke``: 4/4 channels.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "srcnn"
    config.model.trainable = True
    config.model.channels = (32, 16)
    config.model.kernels = (9, 5, 5)
    config.num_epochs = 200
    variant = arg or ""
    if variant == "smoke":
        config.model.channels = (4, 4)
    return common.apply_variant(config, variant)
