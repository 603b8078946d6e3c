"""SRGAN, BSRGAN, ESRGAN: parameter counts (generator, discriminator, frozen VGG19), the adversarial losses'
documented form, one pure train step whose D and G updates each change only their own params, the VGG19 and
pretrained-generator loaders (random files of the right layout; nothing is downloaded), and an end-to-end run."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import configs
from seqcsist_jax.model_stats import count_params
from seqcsist_jax.testing.smoke import smoke_batch
from seqcsist_jax import methods
from seqcsist_jax import train as train_lib
from seqcsist_jax.baselines import gan, vgg19

GANS = ["srgan", "bsrgan", "esrgan"]


def conv(k, c, o, bias=True):
    return k * k * c * o + (o if bias else 0)


def _bn(c):
    return 2 * c


MSRRESNET = conv(3, 1, 64) + 16 * 2 * conv(3, 64, 64) + conv(3, 64, 576) + conv(3, 64, 64) + conv(3, 64, 1)
_RDB5 = conv(3, 64, 32) + conv(3, 96, 32) + conv(3, 128, 32) + conv(3, 160, 32) + conv(3, 192, 64)


def rrdbnet(blocks):
    return conv(3, 1, 64) + blocks * 3 * _RDB5 + 4 * conv(3, 64, 64) + conv(3, 64, 1)


MODIFIED_VGG = (
    conv(3, 1, 64) + conv(4, 64, 64, False) + _bn(64)
    + conv(3, 64, 128, False) + _bn(128) + conv(4, 128, 128, False) + _bn(128)
    + conv(3, 128, 256, False) + _bn(256) + conv(4, 256, 256, False) + _bn(256)
    + conv(3, 256, 512, False) + _bn(512) + conv(4, 512, 512, False) + _bn(512)
    + conv(3, 512, 512, False) + _bn(512) + conv(4, 512, 512, False) + _bn(512)
    + (512 * 100 + 100) + (100 + 1)
)
UNET_D = (
    conv(3, 1, 64) + conv(4, 64, 128, False) + conv(4, 128, 256, False) + conv(4, 256, 512, False)
    + conv(3, 512, 256, False) + conv(3, 256, 128, False) + conv(3, 128, 64, False) + 2 * conv(3, 64, 64, False)
    + conv(3, 64, 1)
)
_VGG_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
VGG19_TO_34 = sum(conv(3, c, o) for c, o in zip([3] + _VGG_WIDTHS[:-1], _VGG_WIDTHS))
EXPECTED = {  # (generator, discriminator, paper total in millions incl. frozen VGG19)
    "srgan": (MSRRESNET, MODIFIED_VGG, 35.3),
    "bsrgan": (rrdbnet(16), UNET_D, 36.1),
    "esrgan": (rrdbnet(23), MODIFIED_VGG, 50.5),
}


_count = count_params


@pytest.fixture(scope="module")
def smoke_data():
    return smoke_batch("srgan:smoke", 1)


@pytest.mark.parametrize("name", GANS)
def test_parameter_counts(name):
    config = configs.get_config(name)
    method = methods.build_method(config.model, config.loss)
    args = (
        jax.ShapeDtypeStruct((1, 2, 11, 11), jnp.float32),
        jax.ShapeDtypeStruct((121, 1089), jnp.float32),
        jax.ShapeDtypeStruct((1089, 121), jnp.float32),
    )
    params = jax.eval_shape(method.model.init, jax.random.PRNGKey(0), *args)["params"]
    g, d, paper = EXPECTED[name]
    assert _count(params["generator"]) == g
    assert _count(params["discriminator"]) == d
    assert sum(int(np.prod(s)) for s in vgg19.vgg19_shapes().values()) == VGG19_TO_34 == 20_024_384
    assert (g + d + VGG19_TO_34) / 1e6 == pytest.approx(paper, abs=0.06)


def _bce_np(z, t):
    z = np.asarray(z, np.float64)
    return np.mean(-(t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-z)))))


def test_adversarial_losses_have_the_documented_form():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(6, 1)).astype(np.float32) * 2
    fake = rng.normal(size=(6, 1)).astype(np.float32) * 2 - 1
    # standard GAN (SRGAN)
    assert float(gan.discriminator_loss(real, fake, False)) == pytest.approx(_bce_np(real, 1) + _bce_np(fake, 0), 1e-5)
    assert float(gan.generator_adversarial_loss(fake, real, False)) == pytest.approx(_bce_np(fake, 1), 1e-5)
    # relativistic average (ESRGAN, BSRGAN)
    d_expected = 0.5 * _bce_np(real - fake.mean(), 1) + 0.5 * _bce_np(fake - real.mean(), 0)
    g_expected = 0.5 * (_bce_np(fake - real.mean(), 1) + _bce_np(real - fake.mean(), 0))
    assert float(gan.discriminator_loss(real, fake, True)) == pytest.approx(d_expected, 1e-5)
    assert float(gan.generator_adversarial_loss(fake, real, True)) == pytest.approx(g_expected, 1e-5)
    # large logits stay finite (log-sum-exp form)
    assert np.isfinite(float(gan.bce_with_logits(jnp.asarray([1e4, -1e4]), 1.0)))
    # the generator's relativistic loss does not push the real logits (they are detached)
    g_real = jax.grad(lambda r: gan.generator_adversarial_loss(jnp.asarray(fake), r, True))(jnp.asarray(real))
    np.testing.assert_array_equal(np.asarray(g_real), 0.0)
    # the discriminator's relativistic loss: the centring means are detached, so d/d(real) is the real term only
    g_d = jax.grad(lambda r: gan.discriminator_loss(r, jnp.asarray(fake), True))(jnp.asarray(real))
    expected = 0.5 * (1 / (1 + np.exp(-(real - fake.mean()))) - 1) / real.size
    np.testing.assert_allclose(np.asarray(g_d), expected, rtol=1e-4, atol=1e-7)


def _setup(name, smoke_data, **overrides):
    batch, phi, q = smoke_data
    config = configs.get_config(f"{name}:smoke")
    for key, value in overrides.items():
        (config.optimizer if key == "learning_rate" else config.model)[key] = value
    method = methods.build_method(config.model, config.loss)
    optimizer = method.make_optimizer(config.optimizer)
    state = jax.jit(lambda rng: train_lib.create_train_state(rng, method.model, optimizer, batch["frames"], phi, q))(
        jax.random.PRNGKey(0)
    )
    step = jax.jit(method.make_train_step(method.model, method.loss_fn, optimizer, phi, q))
    return config, method, optimizer, state, step


@pytest.mark.slow
def test_each_update_changes_only_its_own_network(smoke_data):
    """With plain gradient descent (lr 1) as each player's optimiser, the step's D update is exactly -∂(D loss)/∂D
    and its G update -∂(G loss)/∂G, both taken at the step's starting params (the public order) and computed
    here separately; ``"d_then_g"`` gives the same D update and a G update against the new D."""
    batch, phi, q = smoke_data
    config = configs.get_config("esrgan:smoke")
    method = methods.build_method(config.model, config.loss)
    sgd = gan.per_player_optimizer({k: optax.sgd(1.0) for k in gan.PLAYERS})
    state = jax.jit(lambda rng: train_lib.create_train_state(rng, method.model, sgd, batch["frames"], phi, q))(
        jax.random.PRNGKey(0)
    )
    model, p = method.model, state.params
    make = lambda order: jax.jit(gan.make_gan_train_step(  # noqa: E731
        model, method.loss_fn, sgd, phi, q, relativistic=True, gan_weight=config.loss.gan_weight, update_order=order
    ))
    new_state, metrics = make("public")(state, batch)

    fake = jax.jit(model.apply)({"params": p}, batch["frames"], phi, q)["output"]
    disc = lambda pd, maps: model.apply(  # noqa: E731
        {"params": {**p, "discriminator": pd}}, maps, method=gan.GANModel.discriminate
    )
    d_loss = lambda pd: gan.discriminator_loss(disc(pd, batch["labels"]), disc(pd, fake), True)  # noqa: E731

    def g_loss(pg, pd):
        out = model.apply({"params": {**p, "generator": pg}}, batch["frames"], phi, q)
        total, _ = method.loss_fn(out, batch["labels"])
        adv = gan.generator_adversarial_loss(disc(pd, out["output"]), disc(pd, batch["labels"]), True)
        return total + config.loss.gan_weight * adv

    # one compile for the reference gradients (g_loss takes the discriminator params as an argument)
    d_value_and_grad = jax.jit(jax.value_and_grad(d_loss))
    g_grad = jax.jit(jax.grad(g_loss))
    loss_d, grads_d = d_value_and_grad(p["discriminator"])
    grads_g = g_grad(p["generator"], p["discriminator"])
    assert float(metrics["loss_d"]) == pytest.approx(float(loss_d), rel=1e-5)
    assert all(np.isfinite(float(v)) for v in metrics.values())

    def check(new, old, grads):
        # float32 gradients summed over ~10⁴ pixels in a different order (jitted step vs op-by-op here): allow
        # 1e-3 of the largest gradient entry; using the wrong D (or no adversarial term) is off by far more.
        scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads))
        jax.tree_util.tree_map(
            lambda n, o, g: np.testing.assert_allclose(np.asarray(o - n), np.asarray(g), atol=1e-3 * scale),
            new, old, grads,
        )

    check(new_state.params["discriminator"], p["discriminator"], grads_d)
    check(new_state.params["generator"], p["generator"], grads_g)

    # an optimiser update with only D's gradients leaves the generator's optimiser state untouched
    # (on a small two-player tree: the property is the per-player split, not the networks' size)
    adam = gan.make_gan_optimizer(config.optimizer)
    small = {k: {"w": jnp.arange(3.0) + i} for i, k in enumerate(gan.PLAYERS)}
    adam_state = adam.init(small)
    upd, st = adam.update({"discriminator": {"w": jnp.ones(3)}}, adam_state, small)
    assert set(upd) == {"discriminator"} and st["generator"] is adam_state["generator"]

    new2, _ = make("d_then_g")(state, batch)
    check(new2.params["discriminator"], p["discriminator"], grads_d)
    # the G step of "d_then_g" is the gradient against the step's updated discriminator
    check(new2.params["generator"], p["generator"], g_grad(p["generator"], new2.params["discriminator"]))
    with pytest.raises(ValueError, match="update_order"):
        gan.make_gan_train_step(model, method.loss_fn, sgd, phi, q, relativistic=True, gan_weight=0.0,
                                update_order="g_first")


@pytest.mark.slow
def test_smoke_training_is_finite_and_fits_pixels(smoke_data):
    """BSRGAN on :smoke data (SRGAN runs end to end below, ESRGAN's step is checked above). The labels get a
    constant offset so that the pixel term has something a few steps can fit (an RRDBNet starts near 0, already
    the L1 optimum off the sparse targets)."""
    batch, phi, q = smoke_data
    batch = {**batch, "labels": batch["labels"] + 5.0}
    _, method, _, state, step = _setup("bsrgan", smoke_data, learning_rate=3e-3)
    out = jax.eval_shape(lambda p: method.model.apply({"params": p}, batch["frames"], phi, q), state.params)
    assert out["output"].shape == batch["labels"].shape
    history = []
    for _ in range(5):
        state, metrics = step(state, batch)
        history.append({k: float(v) for k, v in metrics.items()})
    for key in ("loss", "loss_d", "pix", "gan", "grad_norm", "grad_norm_d"):
        assert all(np.isfinite(h[key]) for h in history), (key, history)
    assert history[-1]["pix"] < history[0]["pix"], [h["pix"] for h in history]
    assert int(state.bad_step) == -1


def _numpy_features(sd, x, last_layer):
    """VGG19 features written with numpy loops over the 3×3 taps (independent of the JAX code)."""
    h = (np.repeat(x, 3, axis=-1) - vgg19.IMAGENET_MEAN) / vgg19.IMAGENET_STD
    for idx in range(last_layer + 1):
        key = f"features.{idx}.weight"
        if key in sd:
            w, b = sd[key], sd[f"features.{idx}.bias"]  # (O, I, 3, 3)
            n, hh, ww, _ = h.shape
            padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
            out = np.zeros((n, hh, ww, w.shape[0])) + b
            for dy in range(3):
                for dx in range(3):
                    out += np.einsum("nhwi,oi->nhwo", padded[:, dy:dy + hh, dx:dx + ww], w[:, :, dy, dx])
            h = out
            if idx == last_layer:
                return h
        elif idx in vgg19.POOL_INDICES:
            n, hh, ww, c = h.shape
            h = h[:, :hh // 2 * 2, :ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))
        else:
            h = np.maximum(h, 0)
    return h


def test_vgg19_loader_and_features(tmp_path):
    sd = vgg19.random_vgg19_state_dict(seed=1)
    sd["classifier.0.weight"] = np.zeros((4, 4), np.float32)  # other keys are ignored
    path = tmp_path / "vgg19.npz"
    np.savez(path, **sd)
    params = vgg19.load_vgg19_features(path)
    assert sorted(params) == list(vgg19.CONV_INDICES)
    x = np.random.default_rng(2).uniform(0, 1, size=(2, 12, 12, 1)).astype(np.float32)
    params7 = vgg19.load_vgg19_features(path, last_layer=7)
    ours = np.asarray(vgg19.vgg19_features(params7, jnp.asarray(x), last_layer=7))
    ref = _numpy_features({k: v.astype(np.float64) for k, v in sd.items()}, x.astype(np.float64), 7)
    assert ours.shape == ref.shape == (2, 6, 6, 128)
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    # bad files: one clear error naming the key or file
    bad = dict(sd)
    bad["features.2.weight"] = np.zeros((64, 3, 3, 3), np.float32)
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match=r"features\.2\.weight.*shape"):
        vgg19.load_vgg19_features(tmp_path / "bad.npz")
    missing = {k: v for k, v in sd.items() if k != "features.34.bias"}
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match=r"features\.34\.bias.*missing"):
        vgg19.load_vgg19_features(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="vgg19_weights"):
        vgg19.load_vgg19_features(tmp_path / "none.pth")


def test_perceptual_term_from_a_local_vgg19_file(tmp_path):
    path = tmp_path / "vgg19.npz"
    np.savez(path, **vgg19.random_vgg19_state_dict(seed=3))
    config = configs.get_config("srgan:smoke")
    loss_plain = methods.build_method(config.model, config.loss).loss_fn
    config.loss.vgg19_weights = str(path)
    loss_vgg = methods.build_method(config.model, config.loss).loss_fn
    rng = np.random.default_rng(4)
    pred, labels = (jnp.asarray(rng.uniform(0, 100, size=(1, 2, 33, 33)), jnp.float32) for _ in range(2))
    total_plain, terms_plain = jax.jit(loss_plain)({"output": pred}, labels)
    total, terms = jax.jit(loss_vgg)({"output": pred}, labels)
    assert "perceptual" not in terms_plain
    params = vgg19.load_vgg19_features(path)
    feats = lambda m: vgg19.vgg19_features(params, m.reshape(-1, 33, 33, 1))  # noqa: E731
    expected = float(jnp.mean(jnp.abs(feats(pred) - feats(labels))))
    assert float(terms["perceptual"]) == pytest.approx(expected, rel=1e-4)
    assert float(total) == pytest.approx(float(total_plain) + config.loss.perceptual_weight * expected, rel=1e-4)


def _torch_key(path: tuple[str, ...]) -> str:
    """Our param path → mmagic key (``body_0/rdb1/conv1/kernel`` → ``body.0.rdb1.conv1.weight``)."""
    parts = []
    for p in path:
        head, _, tail = p.rpartition("_")
        parts.extend([head, tail] if tail.isdigit() and head else [p])
    parts[-1] = {"kernel": "weight"}.get(parts[-1], parts[-1])
    return ".".join(parts)


def test_pretrained_generator_loader(tmp_path, smoke_data):
    from flax.traverse_util import flatten_dict

    batch, phi, q = smoke_data
    config = configs.get_config("esrgan:smoke")
    model = methods.build_method(config.model, config.loss).model
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch["frames"], phi, q)["params"]
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes)  # the loader needs no init
    flat = flatten_dict(params["generator"])
    rng = np.random.default_rng(5)
    state, expected = {}, {}
    for path, value in flat.items():
        new = rng.normal(size=value.shape).astype(np.float32)
        expected[path] = new
        state["generator." + _torch_key(path)] = new.transpose(3, 2, 0, 1) if new.ndim == 4 else new
    # an RGB first conv (does not fit the 1-channel generator) and a discriminator tensor: skipped
    state["generator.conv_first.weight"] = np.zeros((4, 3, 3, 3), np.float32)
    expected[("conv_first", "kernel")] = flat[("conv_first", "kernel")]
    state["discriminator.conv0_0.weight"] = np.zeros((4, 1, 3, 3), np.float32)
    np.savez(tmp_path / "esrgan.npz", **state)
    loaded = flatten_dict(jax.device_get(gan.load_pretrained_generator(params["generator"], tmp_path / "esrgan.npz")))
    assert set(loaded) == set(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(loaded[path], value, err_msg=str(path))
    # the same inside jit (the Trainer's initialisation is jitted)
    jitted = jax.jit(lambda g: gan.load_pretrained_generator(g, tmp_path / "esrgan.npz"))(params["generator"])
    for path, value in flatten_dict(jax.device_get(jitted)).items():
        np.testing.assert_array_equal(value, expected[path], err_msg=str(path))
    np.savez(tmp_path / "other.npz", **{"generator.nothing.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="no tensor matches"):
        gan.load_pretrained_generator(params["generator"], tmp_path / "other.npz")
    config.model.pretrained_generator = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="pretrained_generator"):
        methods.build_method(config.model, config.loss)


@pytest.mark.slow
def test_train_and_evaluate_srgan_smoke(tmp_path):
    result = train_lib.train_and_evaluate(configs.get_config("srgan:smoke"), tmp_path)
    assert result["step"] == 6
    assert 0.0 <= result["test"]["mAP"] <= 1.0
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in lines if "loss_d" in json.dumps(row)]
    assert train_rows, lines[:2]


def test_registered():
    assert set(GANS) <= set(methods.available_methods())


def test_create_train_state_applies_init_params():
    """The ``Method.init_params`` hook: the Trainer's state starts from the transformed params."""
    from seqcsist_jax.baselines.srnets import ESPCN

    model = ESPCN(channels=(2, 2))
    frames = jnp.zeros((1, 2, 11, 11))
    phi = np.zeros((121, 1089), np.float32)
    optimizer = optax.adam(1e-3)
    shift = lambda params: jax.tree_util.tree_map(lambda x: x + 1.0, params)  # noqa: E731
    plain = train_lib.create_train_state(jax.random.PRNGKey(0), model, optimizer, frames, phi, None)
    hooked = train_lib.create_train_state(jax.random.PRNGKey(0), model, optimizer, frames, phi, None, shift)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(np.asarray(b), np.asarray(a) + 1.0, rtol=1e-6), plain.params,
        hooked.params,
    )
