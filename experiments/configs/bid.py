"""BID as the public ``tools/BID.py`` runs it: bilinear 11→33 start, 3×3 off-centre Gaussian PSF (σ 0.5),
step α = 0.001, ≤ 1,000 iterations, stop when max|residual| < 0.1. Not trained (``model.trainable = False``).

``model.input_mode``: ``"frame"`` (default, the 11×11 frame) or ``"public_column"`` (what the public script
feeds: its resize of the 121×1 vector, i.e. the frame's centre column copied across; the paper's row).
``:smoke`` caps the iterations for tests.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "bid"
    config.model.trainable = False
    config.model.input_mode = "frame"
    config.model.max_iter = 1000
    config.model.alpha = 0.001
    config.model.tol = 0.1
    config.model.psf_size = 3
    config.model.sigma = 0.5
    variant = arg or ""
    if variant == "smoke":
        config.model.max_iter = 20
    return common.apply_variant(config, variant)
