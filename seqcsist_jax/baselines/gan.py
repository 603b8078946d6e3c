"""SRGAN, BSRGAN and ESRGAN trained adversarially as the public toolkit's configs do (``SRGAN.py``, ``BSRGAN.py``,
``ESRGAN.py``; mmagic's ``SRGAN``/``ESRGAN`` models with the toolkit's ``SRGAN_gai`` train step).

=========  =====================  ======================  =====================================================
method     generator              discriminator           adversarial loss (``gan_type='vanilla'``, BCE logits)
=========  =====================  ======================  =====================================================
srgan      MSRResNet 64 ch, 16 b  ModifiedVGG 64 ch       standard: D ``bce(D(y), 1) + bce(D(ŷ), 0)``,
                                                          G ``bce(D(ŷ), 1)``
bsrgan     RRDBNet 64 ch, 16 b    U-Net with spectral     relativistic average (ESRGAN's RaGAN), below
                                  norm 64 ch
esrgan     RRDBNet 64 ch, 23 b    ModifiedVGG 64 ch       relativistic average
=========  =====================  ======================  =====================================================

Relativistic average (mmagic ``ESRGAN``; ``sg`` = stop-gradient, means over the whole batch):
D ``½·bce(D(y) - mean(sg D(ŷ)), 1) + ½·bce(D(ŷ) - sg mean(D(y)), 0)``; G ``½·[bce(D(ŷ) - mean(sg D(y)), 1) +
bce(sg D(y) - mean(D(ŷ)), 0)]``, where ``bce(z, t) = mean(max(z, 0) - z·t + log(1 + e^{-|z|}))``.

Generator loss: ``pixel_weight · mean|ŷ - y|`` (L1, 1e-2) ``+ perceptual_weight · mean|φ(ŷ) - φ(y)|`` (VGG19
conv5_4, 1.0) ``+ gan_weight ·`` G adversarial loss (5e-3). Discriminator loss: the D adversarial loss (weight 1).
Both are computed on every frame of the trajectory (the public train step uses all 20); the maps are scored on
frames 2..T-3 like every method. Adam 1e-4, β = (0.9, 0.999), no weight decay, one optimiser per network.

**One pure train step** (:func:`make_gan_train_step`) holds both optimiser states (``opt_state = {"generator":
…, "discriminator": …}``): a D step that changes only the discriminator's params, then a G step that changes only
the generator's. ``model.update_order = "public"`` (default) reproduces the public step exactly: the generator's
output and both losses use the step's starting params (the public code runs the G update first with the old D,
then the D update on the *detached outputs of the old G*, so neither update sees the other);
``"d_then_g"`` lets the G step use the freshly updated discriminator.

**Deviations, all documented defaults:**

* No perceptual term unless ``loss.vgg19_weights`` names a local VGG19 file (torchvision ``vgg19-dcbbe12e.pth``
  or an ``.npz`` of its keys; :mod:`seqcsist_jax.baselines.vgg19`) — nothing is downloaded. The public configs
  use ImageNet VGG19 features.
* ESRGAN's public config starts the generator from mmagic's pretrained ×4 RGB ESRGAN (PSNR-oriented) checkpoint;
  here ``model.pretrained_generator`` (default ``None``: random init) may name a local ``.pth``/``.npz`` with
  mmagic keys (``generator.conv_first.weight``, ``generator.body.0.rdb1.conv1.weight``…); tensors whose shapes do
  not fit (the RGB first/last convs) are skipped with a warning, as mmengine's non-strict loading does.
* Architecture deviations of the ×3 RRDBNet, the stateless spectral norm and the batch norm without running
  averages: :mod:`seqcsist_jax.baselines.gan_nets`, :mod:`seqcsist_jax.baselines.sr_layers`.

The params pytree is ``{"generator": …, "discriminator": …}`` and ``model.apply({"params": params}, frames, phi,
q)`` runs the generator only, so prediction and evaluation are those of every other method. The VGG19 weights are
constants of the loss, not params.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from seqcsist_jax import methods
from seqcsist_jax.baselines.common import check_inputs, reduce_terms
from seqcsist_jax.baselines.gan_nets import ModifiedVGG, MSRResNet, RRDBNet, UNetDiscriminator

log = logging.getLogger(__name__)

PLAYERS = ("generator", "discriminator")
UPDATE_ORDERS = ("public", "d_then_g")


class GANModel(nn.Module):
    """A generator (``(N, 11, 11, 1) → (N, 33, 33, 1)``) and its discriminator; ``__call__`` is the generator."""

    generator: nn.Module
    discriminator: nn.Module

    @nn.compact
    def __call__(self, frames: jax.Array, phi: jax.Array, q: jax.Array | None = None) -> dict:
        """``frames (B, T, 11, 11)`` → ``output (B, T, 33, 33)`` and ``frame_index (T,)``; Φ, Q unused.
        At init it also runs the discriminator once so that both networks' params are created."""
        _, _, _, side = check_inputs(frames, phi, None)
        b, t, h, w = frames.shape
        sr = self.generator(frames.reshape(b * t, h, w, 1).astype(jnp.float32))
        if self.is_initializing():
            self.discriminator(sr)
        return {"output": sr.reshape(b, t, side, side), "frame_index": np.arange(t)}

    def discriminate(self, maps: jax.Array) -> jax.Array:
        """``maps (B, T, 33, 33)`` → the discriminator's logits (``(B·T, 1)`` or ``(B·T, 33, 33, 1)``)."""
        side = maps.shape[-1]
        return self.discriminator(maps.reshape(-1, side, side, 1).astype(jnp.float32))


# ------------------------------------------------------------------------------------------- losses


def bce_with_logits(logits: jax.Array, target: float) -> jax.Array:
    """``nn.BCEWithLogitsLoss()(logits, full_like(logits, target))``: mean over all elements."""
    return jnp.mean(jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def discriminator_loss(real: jax.Array, fake: jax.Array, relativistic: bool) -> jax.Array:
    """The discriminator's adversarial loss from its logits on real maps and on (detached) generated maps."""
    if not relativistic:
        return bce_with_logits(real, 1.0) + bce_with_logits(fake, 0.0)
    sg = jax.lax.stop_gradient
    return 0.5 * bce_with_logits(real - jnp.mean(sg(fake)), 1.0) + 0.5 * bce_with_logits(
        fake - sg(jnp.mean(real)), 0.0
    )


def generator_adversarial_loss(fake: jax.Array, real: jax.Array, relativistic: bool) -> jax.Array:
    """The generator's (unweighted) adversarial loss from the discriminator's logits on generated and real maps."""
    if not relativistic:
        return bce_with_logits(fake, 1.0)
    real = jax.lax.stop_gradient(real)
    return 0.5 * (bce_with_logits(fake - jnp.mean(real), 1.0) + bce_with_logits(real - jnp.mean(fake), 0.0))


def make_content_loss(
    pixel_weight: float, perceptual_weight: float = 0.0, vgg_params: Any = None
) -> Callable[[dict, jax.Array], tuple[jax.Array, dict]]:
    """The generator's non-adversarial loss ``(outputs, labels (B, T, 33, 33)) -> (total, terms)``: weighted L1
    on every frame, plus the VGG19 perceptual L1 when ``vgg_params`` is given."""
    from seqcsist_jax.baselines.vgg19 import vgg19_features

    def loss(outputs: dict, labels: jax.Array) -> tuple[jax.Array, dict]:
        pred = outputs["output"]
        b = pred.shape[0]
        terms = {"pix": jnp.mean(jnp.abs(pred - labels).reshape(b, -1), axis=1)}
        weights = {"pix": pixel_weight}
        if vgg_params is not None and perceptual_weight:
            side = pred.shape[-1]
            feats = lambda m: vgg19_features(vgg_params, m.reshape(-1, side, side, 1))  # noqa: E731
            diff = jnp.abs(feats(pred) - jax.lax.stop_gradient(feats(labels)))
            terms["perceptual"] = jnp.mean(diff.reshape(b, -1), axis=1)
            weights["perceptual"] = perceptual_weight
        return reduce_terms(terms, weights)

    return loss


# ------------------------------------------------------------------------------------------- training


def per_player_optimizer(optimizers: dict[str, optax.GradientTransformation]) -> optax.GradientTransformation:
    """One optimiser per top-level params key. ``update(grads, state, params)`` updates only the keys present in
    ``grads`` and leaves the other players' states untouched (so a D step cannot move the generator)."""

    def init(params):
        return {k: opt.init(params[k]) for k, opt in optimizers.items()}

    def update(grads, state, params=None):
        updates, new_state = {}, dict(state)
        for k, g in grads.items():
            updates[k], new_state[k] = optimizers[k].update(g, state[k], None if params is None else params[k])
        return updates, new_state

    return optax.GradientTransformation(init, update)


def make_gan_optimizer(
    config: ml_collections.ConfigDict, num_steps: int | None = None
) -> optax.GradientTransformation:
    """Two Adams with the same ``config.optimizer`` settings (the public configs give both lr 1e-4)."""
    from seqcsist_jax.train import create_optimizer

    return per_player_optimizer({k: create_optimizer(config, num_steps) for k in PLAYERS})


def make_gan_train_step(
    model: GANModel,
    content_loss,
    optimizer: optax.GradientTransformation,
    phi,
    q,
    *,
    relativistic: bool,
    gan_weight: float,
    update_order: str = "public",
):
    """The pure ``train_step(state, batch) -> (state, metrics)`` of a GAN: D step, then G step (module docstring).

    ``state.params = {"generator", "discriminator"}``; ``state.opt_state`` is ``optimizer``'s (a
    :func:`per_player_optimizer`). Metrics: ``loss`` (generator total), ``loss_d``, the named terms, and both
    gradient norms. A non-finite loss or gradient of either network leaves the whole state unchanged.
    """
    if update_order not in UPDATE_ORDERS:
        raise ValueError(f"model.update_order must be one of {UPDATE_ORDERS}, got {update_order!r}")
    from seqcsist_jax.train import TrainState

    phi = jnp.asarray(phi, jnp.float32)
    q = jnp.asarray(q, jnp.float32)

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        params = state.params
        frames, labels = batch["frames"], batch["labels"]

        def generate(pg):
            return model.apply({"params": {**params, "generator": pg}}, frames, phi, q)

        def discriminate(pd, maps):
            return model.apply({"params": {**params, "discriminator": pd}}, maps, method=GANModel.discriminate)

        fake = jax.lax.stop_gradient(generate(params["generator"])["output"])

        def d_loss(pd):
            return discriminator_loss(discriminate(pd, labels), discriminate(pd, fake), relativistic)

        loss_d, grads_d = jax.value_and_grad(d_loss)(params["discriminator"])
        upd_d, opt_state = optimizer.update({"discriminator": grads_d}, state.opt_state, params)
        new_d = optax.apply_updates(params["discriminator"], upd_d["discriminator"])
        d_for_g = new_d if update_order == "d_then_g" else params["discriminator"]

        def g_loss(pg):
            outputs = generate(pg)
            total, terms = content_loss(outputs, labels)
            adv = generator_adversarial_loss(
                discriminate(d_for_g, outputs["output"]), discriminate(d_for_g, labels), relativistic
            )
            terms = {**terms, "gan": adv, "loss_gan": gan_weight * adv}
            return total + gan_weight * adv, terms

        (loss_g, terms), grads_g = jax.value_and_grad(g_loss, has_aux=True)(params["generator"])
        upd_g, opt_state = optimizer.update({"generator": grads_g}, opt_state, params)
        new_g = optax.apply_updates(params["generator"], upd_g["generator"])

        norm_g, norm_d = optax.tree.norm(grads_g), optax.tree.norm(grads_d)
        finite = jnp.isfinite(loss_g) & jnp.isfinite(loss_d) & jnp.isfinite(norm_g) & jnp.isfinite(norm_d)
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        rng, _ = jax.random.split(state.rng)
        new_state = TrainState(
            step=state.step + 1,
            params=keep({"generator": new_g, "discriminator": new_d}, params),
            opt_state=keep(opt_state, state.opt_state),
            rng=rng,
            bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step),
        )
        metrics = {"loss": loss_g, "loss_d": loss_d, "grad_norm": norm_g, "grad_norm_d": norm_d, **terms}
        return new_state, metrics

    return train_step


# ------------------------------------------------------------------------------------------- pretrained G


def _flax_path(torch_key: str) -> tuple[str, ...]:
    """mmagic key (``body.0.rdb1.conv1.weight``) → our path (``body_0/rdb1/conv1/kernel``)."""
    parts: list[str] = []
    for part in torch_key.split("."):
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    parts[-1] = {"weight": "kernel"}.get(parts[-1], parts[-1])
    return tuple(parts)


def load_pretrained_generator(generator_params: Any, path: str | os.PathLike, prefix: str = "generator.") -> Any:
    """Generator params with every tensor of the checkpoint at ``path`` whose key and shape fit replaced.

    Keys are mmagic's (``prefix`` stripped; conv weights OIHW → HWIO). Tensors that do not fit are skipped and
    logged (mmengine's non-strict loading); a checkpoint where nothing fits is an error.

    Raises:
      FileNotFoundError: no file. ValueError: nothing in the file matches the generator.
    """
    from flax.traverse_util import flatten_dict, unflatten_dict

    from seqcsist_jax.interop.torch_checkpoint import read_state_dict

    if not os.path.exists(path):
        raise FileNotFoundError(f"model.pretrained_generator: no file {os.fspath(path)!r}")
    state = read_state_dict(path)
    flat = flatten_dict(generator_params)  # arrays or tracers: the Trainer calls this inside its jitted init
    loaded, skipped = 0, []
    for key, value in state.items():
        if prefix and not key.startswith(prefix):
            continue
        target = _flax_path(key[len(prefix):])
        value = np.asarray(value, np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        if target in flat and flat[target].shape == value.shape:
            flat[target] = jnp.asarray(value)
            loaded += 1
        else:
            skipped.append(key)
    if not loaded:
        raise ValueError(f"model.pretrained_generator {os.fspath(path)!r}: no tensor matches the generator")
    if skipped:
        log.warning("pretrained generator: skipped %d tensors that do not fit: %s", len(skipped), skipped[:8])
    return unflatten_dict(flat)


# ------------------------------------------------------------------------------------------- builders


def _build(name: str, generator: nn.Module, discriminator: nn.Module, relativistic: bool, model_config,
           loss_config) -> methods.Method:
    vgg_path = loss_config.get("vgg19_weights", None)
    vgg_params = None
    if vgg_path:
        from seqcsist_jax.baselines.vgg19 import load_vgg19_features

        vgg_params = load_vgg19_features(vgg_path)
    content = make_content_loss(
        float(loss_config.get("pixel_weight", 1e-2)), float(loss_config.get("perceptual_weight", 1.0)), vgg_params
    )
    gan_weight = float(loss_config.get("gan_weight", 5e-3))
    order = str(model_config.get("update_order", "public"))
    if order not in UPDATE_ORDERS:
        raise ValueError(f"model.update_order must be one of {UPDATE_ORDERS}, got {order!r}")

    def make_step(model, loss_fn, optimizer, phi, q):
        return make_gan_train_step(
            model, loss_fn, optimizer, phi, q, relativistic=relativistic, gan_weight=gan_weight, update_order=order
        )

    pretrained = model_config.get("pretrained_generator", None)
    if pretrained and not os.path.exists(pretrained):
        raise FileNotFoundError(f"model.pretrained_generator: no file {pretrained!r}")

    def with_pretrained_generator(params):
        return {**params, "generator": load_pretrained_generator(params["generator"], pretrained)}

    return methods.Method(
        name,
        GANModel(generator, discriminator),
        content,
        make_optimizer=make_gan_optimizer,
        make_train_step=make_step,
        init_params=with_pretrained_generator if pretrained else None,
    )


def build_srgan(model_config, loss_config) -> methods.Method:
    c = int(model_config.get("channels", 64))
    generator = MSRResNet(channels=c, num_blocks=int(model_config.get("num_blocks", 16)))
    discriminator = ModifiedVGG(channels=int(model_config.get("d_channels", 64)))
    return _build("srgan", generator, discriminator, False, model_config, loss_config)


def build_bsrgan(model_config, loss_config) -> methods.Method:
    generator = RRDBNet(
        channels=int(model_config.get("channels", 64)),
        num_blocks=int(model_config.get("num_blocks", 16)),
        growth=int(model_config.get("growth", 32)),
    )
    discriminator = UNetDiscriminator(channels=int(model_config.get("d_channels", 64)))
    return _build("bsrgan", generator, discriminator, True, model_config, loss_config)


def build_esrgan(model_config, loss_config) -> methods.Method:
    generator = RRDBNet(
        channels=int(model_config.get("channels", 64)),
        num_blocks=int(model_config.get("num_blocks", 23)),
        growth=int(model_config.get("growth", 32)),
    )
    discriminator = ModifiedVGG(channels=int(model_config.get("d_channels", 64)))
    return _build("esrgan", generator, discriminator, True, model_config, loss_config)
