"""DBPN (public config ``DBPN.py``): 32 features, 7 back-projection stages (kernel 7, stride 3, padding 2);
Adam 1e-4, L2 1e-5, 100 epochs. ``:smoke``: 4 features (stem 8), 2 stages.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "dbpn"
    config.model.trainable = True
    config.model.features = 32
    config.model.stem_features = 128
    config.model.bp_stages = 7
    variant = arg or ""
    if variant == "smoke":
        config.model.features = 4
        config.model.stem_features = 8
        config.model.bp_stages = 2
    return common.apply_variant(config, variant)
