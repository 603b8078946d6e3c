"""VGG19 feature extractor for the GAN configs' perceptual loss, and a loader for a local weight file.

The public configs use mmagic's ``PerceptualLoss(layer_weights={'34': 1.0}, vgg_type='vgg19',
perceptual_weight=1.0, style_weight=0, norm_img=False)``: the output of ``vgg19.features[34]`` (conv5_4, before
its ReLU) on ImageNet-normalised inputs (``use_input_norm=True``), compared with an L1 criterion. Nothing here
downloads weights: :func:`load_vgg19_features` reads a file the user already has — torchvision's
``vgg19-dcbbe12e.pth`` (loaded with ``torch.load(weights_only=True)``, no arbitrary unpickling) or an ``.npz`` with
the same keys (``features.{i}.weight`` ``(O, I, 3, 3)``, ``features.{i}.bias``; ``classifier.*`` is ignored).

The maps are single-channel: they are repeated to 3 channels before the ImageNet normalisation (an assumption —
the public code feeds 1-channel maps into mmagic's 3-channel VGG and the adaptation it used is not published).
Features are returned NHWC. The 16 conv layers up to ``features.34`` hold 20,024,384 parameters (frozen).
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax.models.layers import conv2d

# torchvision vgg19.features: indices of the 3×3 convs (each followed by ReLU) and of the 2×2 max pools.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
POOL_INDICES = (4, 9, 18, 27, 36)
CONV_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

VGGParams = dict  # {conv index: (kernel HWIO, bias)}


def vgg19_shapes(last_layer: int = 34) -> dict[str, tuple[int, ...]]:
    """PyTorch keys and shapes of ``features.0`` … ``features.{last_layer}``."""
    shapes, c_in = {}, 3
    for idx, width in zip(CONV_INDICES, CONV_WIDTHS):
        if idx > last_layer:
            break
        shapes[f"features.{idx}.weight"] = (width, c_in, 3, 3)
        shapes[f"features.{idx}.bias"] = (width,)
        c_in = width
    return shapes


def vgg19_from_state_dict(state_dict: Mapping[str, np.ndarray], last_layer: int = 34) -> VGGParams:
    """Torch-layout arrays → ``{index: (kernel (3, 3, I, O), bias (O,))}`` for the convs up to ``last_layer``.

    Raises:
      ValueError: a key is missing or has the wrong shape (the message names it).
    """
    params = {}
    for key, shape in vgg19_shapes(last_layer).items():
        if key not in state_dict:
            raise ValueError(f"VGG19 weights: key {key!r} missing (expected torchvision's vgg19 layout)")
        value = np.asarray(state_dict[key], np.float32)
        if value.shape != shape:
            raise ValueError(f"VGG19 weights: {key!r} has shape {value.shape}, expected {shape}")
        idx = int(key.split(".")[1])
        kernel, bias = params.get(idx, (None, None))
        if key.endswith("weight"):
            kernel = jnp.asarray(value.transpose(2, 3, 1, 0))
        else:
            bias = jnp.asarray(value)
        params[idx] = (kernel, bias)
    return params


def load_vgg19_features(path: str | os.PathLike, last_layer: int = 34) -> VGGParams:
    """Reads a local VGG19 weight file (``.pth`` or ``.npz``, torchvision key layout); see the module docstring.

    Raises:
      FileNotFoundError: no such file. ValueError: wrong keys or shapes.
    """
    from seqcsist_jax.interop.torch_checkpoint import read_state_dict

    if not os.path.exists(path):
        raise FileNotFoundError(f"loss.vgg19_weights: no file {os.fspath(path)!r}")
    return vgg19_from_state_dict(read_state_dict(path), last_layer)


def random_vgg19_state_dict(seed: int = 0, last_layer: int = 34, scale: float = 0.05) -> dict[str, np.ndarray]:
    """A state dict of the right layout with random values (tests; no download)."""
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in vgg19_shapes(last_layer).items()}


def vgg19_features(params: VGGParams, x: jax.Array, last_layer: int = 34) -> jax.Array:
    """``features[:last_layer + 1]`` of ``x (N, H, W, 1 or 3)`` in [0, 1]-scale units, after ImageNet
    normalisation; the output of the last conv is taken before its ReLU. Returns NHWC features."""
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    h = (x - IMAGENET_MEAN) / IMAGENET_STD
    for idx in range(last_layer + 1):
        if idx in params:
            kernel, bias = params[idx]
            h = conv2d(h, kernel.astype(h.dtype)) + bias.astype(h.dtype)
            if idx == last_layer:
                return h
        elif idx in POOL_INDICES:
            n, hh, ww, c = h.shape
            h = h[:, : hh // 2 * 2, : ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))
        else:
            h = jax.nn.relu(h)
    return h
