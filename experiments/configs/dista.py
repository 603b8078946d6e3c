"""DISTA-Net (SPEC §9; public GrokCSO ``configs/c_3/dista.py`` on ``_base_/datasets/img_dataset.py``).

Public settings: CSIST-100K (``csist100k/default``), c = 3, 6 stages of 64 channels, dynamic-branch weight
``lambda_weight`` 0.7, symmetry-loss weight 0.01; batch 64 (one GPU), shuffled, Adam 1e-4 constant with **no**
weight decay, 250 epochs, validation every epoch, best checkpoint by CSO-mAP, brightness threshold 50.

Args (``--config=dista:<arg>``):

* ``""``: the public c = 3 run.  ``c5`` / ``c7``: the public ``configs/c_5`` (6 stages) and ``configs/c_7``
  (**4** stages) runs, 11c × 11c maps.
* ``quick``: ``csist100k/mini``, 3 stages of 16 channels, 2 epochs at Adam 1e-3 with cosine decay (CPU).
* ``smoke``: tiny in-memory CSIST-100K images (``simulated_csist100k``), 2 stages of 4 channels, a few steps
  (tests).

Every image is scored (``eval.scored_margin = 0``) at threshold 50, and the evaluation also reports the maps'
PSNR/SSIM. ``config.dataset.c`` sets the sub-pixel division of the labels, Φ
(``imaging.measurement_matrix(c)``) and Q; ``config.model.c`` refers to the same value.
``model.dynamic_mixing`` is ``"image"`` (every image independent; ``"batch"`` is the public block's mixing of
the 64 images of a batch — see :mod:`seqcsist_jax.models.dista_net`).
"""

import ml_collections

from experiments.configs import common

_SUBPIXEL = {"c5": (5, 6), "c7": (7, 4)}  # arg → (c, stages) of the public configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "dista"
    config.model.num_stages = 6
    config.model.channels = 64
    config.model.lambda_weight = 0.7
    config.dataset.c = 3
    config.model.c = config.dataset.get_ref("c")  # one value: the labels', Φ's and the model's c
    config.model.kernel_hidden = 256
    config.model.dynamic_mixing = "image"
    config.model.detach_dynamic_kernels = True  # the public block never trains its kernel predictor
    config.loss.gamma = 0.01

    common.set_dataset(config, "csist100k/default")  # threshold 50, every image scored
    config.per_device_batch_size = 64
    config.shuffle = True
    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 0.0
    config.num_epochs = 250.0
    config.eval_every_epochs = 1
    config.eval.batch_size = 64

    variant = arg or ""
    if variant in _SUBPIXEL:
        config.dataset.c, config.model.num_stages = _SUBPIXEL[variant]
        variant = ""
    config = common.apply_variant(config, variant)
    if variant == "quick":
        common.set_dataset(config, "csist100k/mini")
        config.model.num_stages = 3
        config.model.channels = 16
        config.optimizer.learning_rate = 1e-3
        config.dataset.max_eval_trajectories = None
    elif variant == "smoke":
        common.set_dataset(config, "simulated_csist100k")
        config.dataset.num_train, config.dataset.num_eval, config.dataset.num_test = 8, 4, 4
        config.model.num_stages = 2
        config.model.channels = 4
        config.per_device_batch_size = 2
    return config
