"""ISTA-Net⁺ (public config ``istanet_plus.py``): 9 stages of 32 channels, symmetry-loss weight 0.01; Adam 1e-4,
L2 1e-5, 100 epochs. ``:smoke``: 2 stages of 4 channels.

Deviation (DECISION, configurable): the step size starts at λ = 0.5/‖Φ‖₂² instead of the public 0.5, which makes
the unfolded gradient steps expansive on SeqCSIST's Φ and the first training steps diverge (see
:mod:`seqcsist_jax.baselines.istanet`); ``--config.model.lambda_init_relative=False`` restores the public init.
"""

import ml_collections

from experiments.configs import istanet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = istanet.get_config(arg)  # ISTA-Net's settings and smoke variant, with the plus stage
    config.model.name = "istanet_plus"
    config.model.lambda_init = 0.5
    config.model.lambda_init_relative = True  # λ⁰ = 0.5/‖Φ‖₂²; False: the public λ⁰ = 0.5
    if (arg or "") != "smoke":
        config.model.num_stages = 9
    return config
