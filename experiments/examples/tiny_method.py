"""A method that is not part of the package, in one file: model, loss, builder and config.

The README's "Adding a method" walks through it. Train, evaluate and compare it like a built-in method::

    python -m experiments.train --config=experiments/examples/tiny_method.py:smoke --workdir=workdirs/tiny
    python -m experiments.evaluate --workdir=workdirs/tiny
    python -m experiments.compare --methods=srcnn,experiments/examples/tiny_method.py --variant=smoke \
        --budget_steps=6 --workdir=workdirs/cmp

The model: the Q-initialised 33×33 map ``Q y`` refined by two small 3×3 convolutions (a residual), i.e. the
smallest learned method of the table's kind.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.configs import common
from seqcsist_jax import methods


class TinyRefiner(nn.Module):
    """``frames (B, T, 11, 11)``, Φ ``(121, 1089)``, Q ``(1089, 121)`` → ``output (B, T, 33, 33)`` (every frame)."""

    channels: int = 8

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array) -> dict:
        del phi  # the contract passes Φ to every method; this one only needs Q
        b, t, h, w = frames.shape
        side = int(round(np.sqrt(q.shape[0])))  # 33 for c = 3
        y = frames.reshape(b * t, h * w).astype(jnp.float32)
        x0 = (y @ jnp.asarray(q, jnp.float32).T).reshape(b * t, side, side, 1)  # Q y, the initial estimate
        hidden = jax.nn.relu(nn.Conv(self.channels, (3, 3), padding="SAME")(x0))
        x = x0 + nn.Conv(1, (3, 3), padding="SAME")(hidden)
        return {"output": x.reshape(b, t, side, side), "frame_index": np.arange(t)}


def mse_loss(outputs: dict, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Mean squared error between the maps and the ``(B, T, 33, 33)`` labels: ``(total, {"mse": total})``."""
    mse = jnp.mean((outputs["output"] - labels) ** 2)
    return mse, {"mse": mse}


def build_tiny(model_config: ml_collections.ConfigDict, loss_config: ml_collections.ConfigDict) -> methods.Method:
    """The builder that ``config.model.name`` names: ``(model config, loss config) -> Method``."""
    del loss_config
    return methods.Method("tiny", TinyRefiner(channels=int(model_config.get("channels", 8))), mse_loss)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper protocol (``common.base_config``) with this file's builder; ``:quick`` and ``:smoke`` as for every
    config."""
    config = common.base_config()
    # "path/to/file.py:builder" imports the builder from this file (an installed module works too:
    # "mypackage.models:build_tiny"). The absolute path is saved in the run's config.json, so
    # `experiments.evaluate --workdir=...` finds the model later as long as this file stays where it is.
    config.model.name = f"{__file__}:build_tiny"
    config.model.trainable = True
    config.model.channels = 8
    config.num_epochs = 100
    variant = arg or ""
    if variant == "smoke":
        config.model.channels = 4
    return common.apply_variant(config, variant)
