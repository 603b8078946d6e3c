"""SRGAN (public config ``SRGAN.py``): MSRResNet (64 ch, 16 blocks) + ModifiedVGG discriminator, standard GAN
loss; 1,000 epochs, validation every 10 (see ``_gan`` for losses and options). ``:smoke``: tiny networks.
"""

import ml_collections

from experiments.configs import _gan


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = _gan.gan_config("srgan", num_blocks=16, epochs=1000, eval_every_epochs=10)
    return _gan.apply_gan_variant(config, arg or "")
