"""Registry of trainable methods: config → (Flax module, loss function).

Every method's module is called as ``module.apply(variables, frames, phi, q)`` with ``frames (B, T, 11, 11)``
raw grey values, Φ ``(121, 1089)`` and Q ``(1089, 121)``, and returns a dict holding at least
``"output"`` ``(B, T', 33, 33)`` and ``"frame_index"`` ``(T',)`` (which input frames the outputs are for).
Its loss is ``loss_fn(outputs, labels (B, T, 33, 33)) -> (total scalar, dict of named scalars)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import ml_collections
import numpy as np

LossFn = Callable[[dict, Any], tuple[Any, dict]]


def all_frames(num_frames: int) -> np.ndarray:
    """Output frame indices of a method that predicts every input frame."""
    return np.arange(num_frames)


@dataclasses.dataclass(frozen=True)
class Method:
    """A trainable method. ``frame_index(T)`` gives the input frames its ``(B, T', 33, 33)`` output covers."""

    name: str
    model: nn.Module
    loss_fn: LossFn
    frame_index: Callable[[int], np.ndarray] = all_frames


_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, ml_collections.ConfigDict], Method]] = {}


def register(name: str):
    """Decorator registering ``builder(model_config, loss_config) -> Method`` under ``name``."""

    def wrap(builder):
        _BUILDERS[name] = builder
        return builder

    return wrap


def available_methods() -> list[str]:
    _import_all()
    return sorted(_BUILDERS)


def build_method(model_config: ml_collections.ConfigDict, loss_config: ml_collections.ConfigDict) -> Method:
    """Instantiates the method named ``model_config.name``."""
    _import_all()
    name = model_config.name
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name](model_config, loss_config)


def _options(model_config: ml_collections.ConfigDict) -> dict:
    options = model_config.to_dict()
    options.pop("name", None)
    return options


@register("derefnet")
def _derefnet(model_config, loss_config) -> Method:
    from seqcsist_jax.losses import derefnet_loss
    from seqcsist_jax.models import DeRefNet

    model = DeRefNet(**_options(model_config))
    loss = functools.partial(derefnet_loss, preset=loss_config.get("preset", "code"))
    half = model.window // 2

    def frame_index(num_frames: int) -> np.ndarray:
        # Centre frames with a full window (the paper protocol) unless edge frames are predicted too.
        return np.arange(num_frames) if model.predict_edges else np.arange(half, num_frames - half)

    return Method("derefnet", model, loss, frame_index)


def _import_all() -> None:
    """Imports modules that register further methods (the comparison baselines)."""
    try:
        import seqcsist_jax.baselines  # noqa: F401  (registers its methods on import)
    except ImportError as e:  # the baselines package is optional until it lands
        if "seqcsist_jax.baselines" not in str(e):
            raise
