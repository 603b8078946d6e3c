"""LIHT (public config ``LIHT.py``): 16 layers, λ = 0.4; Adam 1e-4, L2 1e-5, 100 epochs. ``:smoke`` keeps 2 layers.

``model.shared_storage=True`` reproduces the public CPU behaviour of one storage shared by the 16 layers (see
:mod:`seqcsist_jax.baselines.unfolded`); ``loss.public_broadcast=True`` gives the public (broadcast) loss.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "liht"
    config.model.trainable = True
    config.model.num_layers = 16
    config.model.lam = 0.4
    config.model.shared_storage = False
    config.loss.public_broadcast = False
    variant = arg or ""
    if variant == "smoke":
        config.model.num_layers = 2
    return common.apply_variant(config, variant)
