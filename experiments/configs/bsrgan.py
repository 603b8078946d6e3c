"""BSRGAN (public config ``BSRGAN.py``): RRDBNet (64 ch, 16 RRDBs, growth 32) + spectral-norm U-Net
discriminator, relativistic average GAN loss; 10,000 epochs, validation every 100 (see ``_gan``).
``:smoke``: tiny networks.
"""

import ml_collections

from experiments.configs import _gan


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = _gan.gan_config("bsrgan", num_blocks=16, epochs=10000, eval_every_epochs=100)
    config.model.growth = 32
    return _gan.apply_gan_variant(config, arg or "")
