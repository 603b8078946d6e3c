"""Settings shared by the three GAN configs (public ``SRGAN.py``, ``BSRGAN.py``, ``ESRGAN.py``).

Loss weights: pixel L1 1e-2, perceptual (VGG19 conv5_4) 1.0, adversarial 5e-3. The perceptual term is active
only when ``loss.vgg19_weights`` names a local VGG19 file (torchvision ``vgg19-dcbbe12e.pth`` or an ``.npz``);
the default ``None`` trains without it (nothing is downloaded). Two Adams (lr 1e-4, β 0.9/0.999, no weight decay).
``model.update_order``: ``"public"`` (both updates from the step's starting params) or ``"d_then_g"``.
"""

import ml_collections

from experiments.configs import common


def gan_config(name: str, num_blocks: int, epochs: float, eval_every_epochs: int) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = name
    config.model.trainable = True
    config.model.channels = 64
    config.model.num_blocks = num_blocks
    config.model.d_channels = 64
    config.model.update_order = "public"
    config.model.pretrained_generator = ml_collections.FieldReference(None, field_type=str)
    config.loss.pixel_weight = 1e-2
    config.loss.perceptual_weight = 1.0
    config.loss.gan_weight = 5e-3
    config.loss.vgg19_weights = ml_collections.FieldReference(None, field_type=str)
    config.optimizer.weight_decay = 0.0
    config.num_epochs = float(epochs)
    config.eval_every_epochs = eval_every_epochs
    return config


def apply_gan_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """``smoke``: 4-channel generator with 1 block and a 4-channel discriminator, then the common variant."""
    if variant == "smoke":
        config.model.channels = 4
        config.model.num_blocks = 1
        config.model.d_channels = 4
        if "growth" in config.model:
            config.model.growth = 4
    config = common.apply_variant(config, variant)
    if variant == "quick":
        # Chosen, not tuned: adversarial training is more fragile than regression; stay below the common 3e-3.
        config.optimizer.learning_rate = 1e-3
    return config
