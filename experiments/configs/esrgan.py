"""ESRGAN (public config ``ESRGAN.py``): RRDBNet (64 ch, 23 RRDBs, growth 32) + ModifiedVGG discriminator,
relativistic average GAN loss; 1,000 epochs, validation every 10 (see ``_gan``). The public config starts
the generator from mmagic's pretrained ESRGAN checkpoint (a download); here ``model.pretrained_generator`` may
name a local ``.pth``/``.npz`` with mmagic keys, default ``None`` (random init). ``:smoke``: tiny networks.
"""

import ml_collections

from experiments.configs import _gan


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = _gan.gan_config("esrgan", num_blocks=23, epochs=1000, eval_every_epochs=10)
    config.model.growth = 32
    return _gan.apply_gan_variant(config, arg or "")
