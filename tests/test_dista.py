"""DISTA-Net in Flax: shapes for c = 3/5/7, public parameter counts and state-dict layout, initialisation,
image independence, the public batch mixing, bad inputs, loss, config, a few training steps, and parity with
the PyTorch reference (``tests/fixtures/dista_parity.npz``, written by
``experiments/reference/make_dista_fixtures.py``)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs
from seqcsist_jax import interop, methods
from seqcsist_jax import train as train_lib
from seqcsist_jax.model_stats import count_params
from seqcsist_jax.models import dista_net
from seqcsist_jax.models.dista_net import DISTANet, dista_loss, params_from_state_dict, params_to_state_dict
from seqcsist_jax.testing import dista_parity_inputs as dpi

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "dista_parity.npz"
S = jax.ShapeDtypeStruct
TINY = dict(num_stages=2, channels=4)


def _abstract(model, b, t, c=3):
    """Parameter and output shapes without computing anything."""
    n = (11 * c) ** 2
    args = (S((b, t, 11, 11), jnp.float32), S((121, n), jnp.float32), S((n, 121), jnp.float32))
    variables = jax.eval_shape(model.init, jax.random.key(0), *args)
    return variables["params"], jax.eval_shape(model.apply, variables, *args)


def public_param_count(stages: int, c: int, channels: int = 64, hidden: int = 256) -> int:
    """Independent count from the public block's layer list (conv k×k C→O with bias = k²·C·O + O)."""
    n = (11 * c) ** 2
    ch, half = channels, channels // 2
    convs = 9 * ch + 9 * ch * ch + 9 * ch * ch + 9 * ch  # conv1/2_forward, conv1/2_backward, no bias
    predictor = (n * hidden + hidden) + (hidden * 9 + 9)  # w1, w2 (Linear)
    lsk = (9 * ch + ch) + 2 * (ch * half + half) + (9 * 2 * 2 + 2) + (half * ch + ch)  # depthwise, 2×1×1, 3×3, 1×1
    return stages * (1 + convs + predictor + lsk)


@pytest.mark.parametrize("c, stages, expected", [(3, 6, 2_179_104), (5, 6, 5_152_800), (7, 4, 6_408_896)])
def test_parameter_count_equals_the_public_models(c, stages, expected):
    params, out = _abstract(DISTANet(num_stages=stages, c=c), 2, 1, c)
    fx = np.load(FIXTURE)
    assert count_params(params) == public_param_count(stages, c) == expected
    assert count_params(params) == int(fx[f"param_count__c{c}_stages{stages}"])  # built with torch
    assert out["output"].shape == (2, 1, 11 * c, 11 * c)
    assert out["sym"].shape == (stages, 2, 1, 11 * c, 11 * c)


def test_state_dict_layout_matches_the_public_keys():
    fx = np.load(FIXTURE)
    shapes = dista_net.state_dict_shapes()
    assert list(shapes) == list(fx["state_dict_keys"])  # names and order of the torch model's state_dict
    assert [int(np.prod(s)) for s in shapes.values()] == fx["state_dict_sizes"].tolist()
    params, _ = _abstract(DISTANet(), 1, 1)
    converted = params_to_state_dict(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), params))
    assert {k: v.shape for k, v in converted.items()} == shapes


def test_state_dict_round_trip(tmp_path):
    shapes = dista_net.state_dict_shapes(**{"num_stages": 2, "channels": 4, "c": 5})
    state = dpi.dista_parity_state_dict(7, shapes)
    back = params_to_state_dict(params_from_state_dict({f"module.{k}": v for k, v in state.items()}))
    assert set(back) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value)
    # a public checkpoint saved as .npz (DDP "module." prefix) reads back through the interop reader
    interop.save_npz(tmp_path / "dista.npz", {f"module.{k}": v for k, v in state.items()})
    read = params_to_state_dict(params_from_state_dict(interop.read_state_dict(tmp_path / "dista.npz")))
    for key, value in state.items():
        np.testing.assert_array_equal(read[key], value)
    with pytest.raises(ValueError, match="not a DISTA-Net parameter"):
        params_from_state_dict({"TDDA.conv.weight": np.zeros(3)})


@pytest.mark.parametrize("t", [1, 3])
def test_every_image_is_independent(t):
    inputs = dpi.dista_parity_inputs(11, 2, t)
    model = DISTANet(**TINY)
    params = params_from_state_dict(dpi.dista_parity_state_dict(5, dista_net.state_dict_shapes(**TINY)))
    apply = jax.jit(lambda f: model.apply({"params": params}, f, inputs["phi"], inputs["q"]))
    out = apply(inputs["frames"])
    assert out["output"].shape == (2, t, 33, 33)
    np.testing.assert_array_equal(out["frame_index"], np.arange(t))
    # reversing the order of all B·T images reverses the outputs
    flipped = inputs["frames"].reshape(2 * t, 1, 11, 11)[::-1].reshape(2, t, 11, 11)
    out_f = apply(flipped)
    scale = float(np.abs(out["output"]).max())
    np.testing.assert_allclose(
        np.asarray(out_f["output"]).reshape(2 * t, 33, 33)[::-1],
        np.asarray(out["output"]).reshape(2 * t, 33, 33),
        rtol=0, atol=1e-5 * scale,
    )


def test_public_batch_mixing():
    """``"batch"`` equals ``"image"`` for a single image, mixes a batch of C images, and refuses other sizes."""
    one_stage = {**TINY, "num_stages": 1}
    params = params_from_state_dict(dpi.dista_parity_state_dict(5, dista_net.state_dict_shapes(**one_stage)))
    inputs = dpi.dista_parity_inputs(12, 4, 1)
    image, batch = DISTANet(**one_stage), DISTANet(**one_stage, dynamic_mixing="batch")

    def run(model, frames):
        apply = jax.jit(lambda f: model.apply({"params": params}, f, inputs["phi"], inputs["q"]))
        return np.asarray(apply(frames)["output"])

    one = inputs["frames"][:1]
    np.testing.assert_allclose(run(batch, one), run(image, one), rtol=0, atol=1e-5 * np.abs(run(image, one)).max())
    mixed, alone = run(batch, inputs["frames"]), run(image, inputs["frames"])  # B·T = 4 = channels
    assert np.abs(mixed - alone).max() > 1e-3 * np.abs(alone).max()  # other images' kernels change the result
    with pytest.raises(ValueError, match="dynamic_mixing='batch'"):
        run(batch, inputs["frames"][:3])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="c=5 needs 55"):
        _abstract_bad(DISTANet(c=5), c_phi=3)
    with pytest.raises(ValueError, match="channels must be even"):
        _abstract(DISTANet(num_stages=1, channels=5), 1, 1)
    with pytest.raises(ValueError, match="dynamic_mixing must be one of"):
        _abstract(DISTANet(num_stages=1, channels=4, dynamic_mixing="pairs"), 1, 1)
    with pytest.raises(ValueError, match="frames must be"):
        jax.eval_shape(DISTANet().init, jax.random.key(0), S((4, 11, 11), jnp.float32),
                       S((121, 1089), jnp.float32), S((1089, 121), jnp.float32))
    out = {"output": jnp.zeros((2, 1, 33, 33)), "sym": jnp.zeros((1, 2, 1, 33, 33))}
    with pytest.raises(ValueError, match="labels must have the output's shape"):
        dista_loss(out, jnp.zeros((2, 33, 33)))


def _abstract_bad(model, c_phi):
    n = (11 * c_phi) ** 2
    return jax.eval_shape(model.init, jax.random.key(0), S((1, 1, 11, 11), jnp.float32),
                          S((121, n), jnp.float32), S((n, 121), jnp.float32))


def test_initialisation_matches_public_code():
    frames, phi, q = S((1, 1, 11, 11), jnp.float32), S((121, 1089), jnp.float32), S((1089, 121), jnp.float32)
    params = DISTANet(num_stages=1).lazy_init(jax.random.key(1, impl="unsafe_rbg"), frames, phi, q)["params"]
    st = jax.tree_util.tree_map(np.asarray, params["stage_0"])
    assert st["lambda_step"].tolist() == [0.5]
    # Xavier-normal: std √(2/(fan_in+fan_out)) with receptive field 9
    assert np.std(st["conv2_forward"]) == pytest.approx(np.sqrt(2 / (9 * 128)), rel=0.05)
    assert np.std(st["conv1_backward"]) == pytest.approx(np.sqrt(2 / (9 * 128)), rel=0.05)
    # nn.Linear / nn.Conv2d defaults: U(±1/√fan_in) for weight and bias (depthwise 3×3: fan_in 9)
    for name, leaf, fan_in in [
        ("w1", "kernel", 1089), ("w1", "bias", 1089), ("w2", "kernel", 256), ("w2", "bias", 256),
    ]:
        value = st[name][leaf]
        assert np.abs(value).max() <= 1 / np.sqrt(fan_in)
        assert np.std(value) == pytest.approx(1 / np.sqrt(3 * fan_in), rel=0.2 if value.size < 300 else 0.05)
    att = st["att"]
    for name, fan_in in [("convl", 9), ("conv0_s", 64), ("conv1_s", 64), ("conv_squeeze", 18), ("conv_m", 32)]:
        assert np.abs(att[name]["kernel"]).max() <= 1 / np.sqrt(fan_in), name
        assert np.abs(att[name]["bias"]).max() <= 1 / np.sqrt(fan_in), name
        assert att[name]["bias"].any(), name
    assert att["convl"]["kernel"].shape == (3, 3, 1, 64)


def test_loss_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    out = {"output": rng.normal(size=(3, 2, 33, 33)), "sym": rng.normal(size=(4, 3, 2, 33, 33))}
    labels = rng.normal(size=(3, 2, 33, 33))
    total, terms = dista_loss(jax.tree_util.tree_map(jnp.asarray, out), jnp.asarray(labels), gamma=0.01)
    discrepancy = np.mean((out["output"] - labels) ** 2)
    constraint = sum(np.mean(s**2) for s in out["sym"])
    assert float(terms["discrepancy"]) == pytest.approx(discrepancy, rel=1e-5)
    assert float(terms["constraint"]) == pytest.approx(constraint, rel=1e-5)
    assert float(total) == pytest.approx(discrepancy + 0.01 * constraint, rel=1e-5)


def test_config_has_the_public_settings():
    config = configs.get_config("dista")
    assert (config.model.name, config.model.num_stages, config.model.channels) == ("dista", 6, 64)
    assert (config.model.lambda_weight, config.model.c, config.loss.gamma) == (0.7, 3, 0.01)
    assert config.dataset.name == "csist100k/default"
    assert (config.per_device_batch_size, config.optimizer.name, config.optimizer.learning_rate) == (64, "adam", 1e-4)
    assert (config.optimizer.weight_decay, config.optimizer.schedule, config.num_epochs) == (0.0, "constant", 250)
    assert (config.eval.threshold, config.eval_every_epochs, config.shuffle) == (50.0, 1, True)
    assert (configs.get_config("dista:c5").model.c, configs.get_config("dista:c5").model.num_stages) == (5, 6)
    assert (configs.get_config("dista:c7").model.c, configs.get_config("dista:c7").model.num_stages) == (7, 4)
    assert configs.get_config("dista:quick").dataset.name == "csist100k/mini"
    assert "dista" in methods.available_methods()


def test_smoke_config_trains():
    config = configs.get_config("dista:smoke")
    method = methods.build_method(config.model, config.loss)
    assert method.name == "dista"
    inputs = dpi.dista_parity_inputs(13, 2, 1)
    batch = {"frames": jnp.asarray(inputs["frames"]), "labels": jnp.asarray(inputs["labels"])}
    phi, q = inputs["phi"], inputs["q"]
    optimizer = train_lib.create_optimizer(config.optimizer)
    state = jax.jit(lambda rng: train_lib.create_train_state(rng, method.model, optimizer, batch["frames"], phi, q))(
        jax.random.key(0, impl="rbg")
    )
    np.testing.assert_array_equal(method.frame_index(1), [0])
    step = jax.jit(train_lib.make_train_step(method.model, method.loss_fn, optimizer, phi, q))
    w1 = np.asarray(state.params["stage_0"]["w1"]["kernel"])
    losses = []
    for _ in range(4):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    weighted = sum(float(v) for k, v in metrics.items() if k.startswith("loss_"))
    assert weighted == pytest.approx(float(metrics["loss"]), rel=1e-5)
    # the public block never trains its kernel predictor (detached kernels, Adam sees zero gradients)
    np.testing.assert_array_equal(np.asarray(state.params["stage_0"]["w1"]["kernel"]), w1)


@pytest.mark.parametrize("case", list(dpi.DISTA_PARITY_CASES))
def test_parity_with_pytorch_fixture(case):
    """Random public-layout weights, converted to Flax, give PyTorch's outputs, loss terms and gradients.

    Tolerances: forward and loss terms 1e-4 relative to the tensor's max |value| (measured ≈ 1e-6: float32
    rounding through 6 stages); gradients 2e-3 relative L2 per parameter tensor (measured ≤ 3e-5; the margin
    covers other BLAS/XLA builds). Zero by construction: ``w1``/``w2`` with detached kernels (exactly zero in
    both) and the first stage's λ (ΦQ = I makes its gradient step vanish; both sides hold rounding noise, here
    ≤ 1e-4 of the median gradient norm).
    """
    fx = np.load(FIXTURE)
    spec = dpi.DISTA_PARITY_CASES[case]
    options = {**{"num_stages": 6, "c": 3, "channels": 64, "kernel_hidden": 256}, **spec["options"]}
    seed = int(fx["seed"])
    shapes = dista_net.state_dict_shapes(
        options["num_stages"], options["channels"], options["c"], options["kernel_hidden"]
    )
    state = dpi.dista_parity_state_dict(seed, shapes)
    inputs = dpi.dista_parity_inputs(seed + 1, spec["batch"], spec["frames"], c=options["c"])
    model = DISTANet(**spec["options"])
    params = params_from_state_dict(state)

    def loss(p, frames):
        out = model.apply({"params": p}, frames, inputs["phi"], inputs["q"])
        total, terms = dista_loss(out, inputs["labels"])
        return total, (out, terms)

    # float32-exact matmuls/convs: GPUs otherwise run them in TF32 (≈1e-3 relative)
    with jax.default_matmul_precision("highest"):
        (total, (out, terms)), (g_params, g_frames) = jax.jit(
            jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        )(params, inputs["frames"])

    def close(actual, key, rtol):
        want = fx[f"{case}__{key}"]
        err = np.max(np.abs(np.asarray(actual) - want)) / max(np.max(np.abs(want)), 1e-30)
        assert err < rtol, f"{case}/{key}: relative error {err:.2e}"

    close(out["output"], "output", 1e-4)
    close(out["sym"], "sym", 1e-4)
    close(total, "total", 1e-4)
    for key in ("discrepancy", "constraint"):
        close(terms[key], key, 1e-4)
    close(g_frames, "grad_frames", 1e-3)

    grads = params_to_state_dict(g_params)
    probes = dpi.dista_grad_probes(seed + 2, shapes)
    norms, projs = fx[f"{case}__grad_norm"], fx[f"{case}__grad_proj"]
    assert len(norms) == len(shapes)
    typical = np.median(norms)
    detached = options.get("detach_dynamic_kernels", True)
    for i, key in enumerate(shapes):
        g = grads[key]
        if detached and (".w1." in key or ".w2." in key):
            assert norms[i] == 0 and not g.any(), key
            continue
        if key == "fcs.0.lambda_step":
            assert norms[i] < 1e-3 * typical and np.linalg.norm(g) < 1e-3 * typical, key
            continue
        assert norms[i] > 0, key
        assert abs(np.linalg.norm(g) - norms[i]) <= 2e-3 * norms[i], key
        assert abs(np.vdot(g, probes[key]) - projs[i]) <= 2e-3 * norms[i], key
        if f"{case}__grad__{key}" in fx:
            want = fx[f"{case}__grad__{key}"]
            assert np.linalg.norm(g - want) <= 2e-3 * np.linalg.norm(want), key
