"""DeRefNet in Flax: shapes and options, initialisation, batching, and parity with the PyTorch reference
(``tests/fixtures/derefnet_parity.npz``, written by ``experiments/reference/make_derefnet_fixtures.py``)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqcsist_jax.interop import convert_state_dict, params_to_state_dict, state_dict_shapes
from seqcsist_jax.models.derefnet_loss import derefnet_loss
from seqcsist_jax.models import DeRefNet
from seqcsist_jax.model_stats import count_params, flops_per_trajectory
from seqcsist_jax.testing import parity_inputs as pi

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "derefnet_parity.npz"
S = jax.ShapeDtypeStruct
PHI = S((121, 1089), jnp.float32)
Q = S((1089, 121), jnp.float32)
TINY = dict(num_stages=1, channels=4, num_res_blocks=1)


def _abstract(model, b, t):
    """Shapes of the variables and outputs without computing anything."""
    frames = S((b, t, 11, 11), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), frames, PHI, Q)
    out = jax.eval_shape(model.apply, variables, frames, PHI, Q)
    return variables["params"], out


@pytest.mark.parametrize(
    "options, t, expected_index",
    [
        ({}, 8, [2, 3, 4, 5]),
        ({"predict_edges": True}, 6, [0, 1, 2, 3, 4, 5]),
        ({"window": 3}, 6, [1, 2, 3, 4]),
        ({"window": 7, "time_encoding": False, "selective_attention": False}, 9, [3, 4, 5]),
    ],
)
def test_output_shapes_and_frame_index(options, t, expected_index):
    model = DeRefNet(**{**TINY, **options})
    params, out = _abstract(model, 2, t)
    j = len(expected_index)
    window = options.get("window", 5)
    np.testing.assert_array_equal(model.output_frame_index(t), expected_index)
    assert out["output"].shape == (2, j, 33, 33)
    assert out["aligned"].shape == (2, j, window - 1, 33, 33)
    assert out["x_last"].shape == (2, t, 33, 33)
    assert out["sym"].shape == (1, 2, t, 33, 33)
    assert ("time_encoding" in params) == options.get("time_encoding", True)
    assert ("attention" in params["tdfa"]) == options.get("selective_attention", True)
    assert params["tdfa"]["tail"]["head"]["kernel"].shape == (3, 3, window, 4)
    offset_in = 4 if options.get("selective_attention", True) else 8
    assert params["tdfa"]["align_1"]["conv_offset"]["kernel"].shape == (3, 3, offset_in, 18)


def test_parameter_count_matches_architecture():
    c, n, conv = 32, 1089, lambda i, o, k=3, bias=True: i * o * k * k + (o if bias else 0)
    stage = 2 + conv(1, c, bias=False) + 2 * conv(c, c, bias=False) + conv(c, 1, bias=False)
    tdfa = (
        conv(1, c)  # feat_extract
        + 2 * conv(c, c // 2, k=1) + conv(2, 2)  # selective attention
        + 2 * (conv(c, c, bias=False) + conv(c, 18))  # two deformable convs with their offset convs
        + conv(c, 1)
        + conv(5, c) + 5 * 2 * conv(c, c) + conv(c, 1, bias=False)  # tail
    )
    params, _ = _abstract(DeRefNet(), 1, 5)
    assert count_params(params) == 9 * stage + (n * n + n) + tdfa == 1_482_879
    no_te, _ = _abstract(DeRefNet(time_encoding=False), 1, 5)
    assert count_params(no_te) == 9 * stage + tdfa


def test_bad_inputs_raise():
    model = DeRefNet(**TINY)
    with pytest.raises(ValueError, match="frames must be"):
        _abstract_bad(model, S((4, 11, 11), jnp.float32), PHI, Q)
    with pytest.raises(ValueError, match="at least 5 frames"):
        _abstract(model, 1, 4)
    with pytest.raises(ValueError, match="q must have shape"):
        _abstract_bad(model, S((1, 5, 11, 11), jnp.float32), PHI, S((121, 1089), jnp.float32))
    with pytest.raises(ValueError, match="even channel count"):
        _abstract(DeRefNet(num_stages=1, channels=5), 1, 5)
    with pytest.raises(ValueError, match="window must be"):
        _abstract(DeRefNet(**TINY, window=4), 1, 5)


def _abstract_bad(model, frames, phi, q):
    return jax.eval_shape(model.init, jax.random.key(0), frames, phi, q)


@pytest.fixture(scope="module")
def default_params():
    """Default model initialised without running it (lazy init). The distributions do not depend on the PRNG;
    ``unsafe_rbg`` compiles the ~60 initialisers 2–3× faster than threefry."""
    frames = S((1, 5, 11, 11), jnp.float32)
    return DeRefNet(num_stages=1).lazy_init(jax.random.key(1, impl="unsafe_rbg"), frames, PHI, Q)["params"]


def _std(x):
    return float(np.std(np.asarray(x)))


def test_initialisation_matches_public_code(default_params):
    p = jax.tree_util.tree_map(np.asarray, default_params)
    st = p["stage_0"]
    assert st["lambda_step"].tolist() == [0.5] and st["soft_thr"].tolist() == [pytest.approx(0.01)]
    # Xavier-normal: std √(2/(fan_in+fan_out)), receptive field 9
    assert _std(st["conv2_forward"]) == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.05)
    assert _std(st["conv1_backward"]) == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.05)
    assert abs(np.mean(st["conv2_forward"])) < 0.005
    td = p["tdfa"]
    # ConvModule: Kaiming-normal fan_out (relu), bias 0
    assert _std(td["feat_extract"]["kernel"]) == pytest.approx(np.sqrt(2 / (9 * 32)), rel=0.15)
    assert _std(td["tail"]["head"]["kernel"]) == pytest.approx(np.sqrt(2 / (9 * 32)), rel=0.1)
    assert not td["feat_extract"]["bias"].any() and not td["tail"]["head"]["bias"].any()
    # residual blocks: Kaiming-normal fan_in × 0.1, bias 0
    for k in range(5):
        for conv in ("conv1", "conv2"):
            r = td["tail"][f"res_{k}"][conv]
            assert _std(r["kernel"]) == pytest.approx(0.1 * np.sqrt(2 / (9 * 32)), rel=0.05)
            assert not r["bias"].any()
    # offset convs zero; deformable kernels U(±√(6/(C·9))) like mmcv ≥ 2 DeformConv2d (kaiming_uniform, relu)
    bound = 1 / np.sqrt(9 * 32)
    for name in ("align_1", "align_2"):
        assert not td[name]["conv_offset"]["kernel"].any() and not td[name]["conv_offset"]["bias"].any()
        kern = td[name]["kernel"]
        assert np.abs(kern).max() <= np.sqrt(6) * bound
        assert _std(kern) == pytest.approx(np.sqrt(2) * bound, rel=0.05)
    # PyTorch defaults: U(±1/√fan_in) for weights and biases
    dense = p["time_encoding"]["dense"]
    assert np.abs(dense["kernel"]).max() <= 1 / 33 and _std(dense["kernel"]) == pytest.approx(1 / 33 / np.sqrt(3), rel=0.01)
    assert np.abs(dense["bias"]).max() <= 1 / 33 and dense["bias"].std() > 0.01
    att = td["attention"]
    assert np.abs(att["conv0_s"]["kernel"]).max() <= 1 / np.sqrt(32)
    assert _std(att["conv0_s"]["kernel"]) == pytest.approx(1 / np.sqrt(32) / np.sqrt(3), rel=0.15)
    assert np.abs(att["conv0_s"]["bias"]).max() <= 1 / np.sqrt(32) and att["conv0_s"]["bias"].any()
    assert np.abs(td["tail"]["out"]["kernel"]).max() <= bound
    assert "bias" not in td["tail"]["out"]


@pytest.fixture(scope="module")
def tiny_setup():
    inputs = pi.derefnet_parity_inputs(5, 2, 6)
    state = pi.derefnet_parity_state_dict(3, state_dict_shapes(**TINY))
    return DeRefNet(**TINY), convert_state_dict(state, **TINY), inputs


def test_trajectories_are_independent(tiny_setup):
    model, params, inputs = tiny_setup
    apply = jax.jit(lambda f: model.apply({"params": params}, f, inputs["phi"], inputs["q"]))
    out = apply(inputs["frames"])
    np.testing.assert_array_equal(out["frame_index"], [2, 3])
    swapped = apply(inputs["frames"][::-1])
    for key in ("output", "aligned", "x_last"):
        np.testing.assert_allclose(swapped[key][::-1], out[key], rtol=1e-6, atol=1e-5 * np.abs(out[key]).max())


def test_predict_edges_keeps_centre_frames(tiny_setup):
    model, params, inputs = tiny_setup
    edges = DeRefNet(**TINY, predict_edges=True)
    args = (inputs["frames"], inputs["phi"], inputs["q"])
    out = jax.jit(lambda: model.apply({"params": params}, *args))()
    out_e = jax.jit(lambda: edges.apply({"params": params}, *args))()
    np.testing.assert_array_equal(out_e["frame_index"], np.arange(6))
    np.testing.assert_allclose(out_e["output"][:, 2:4], out["output"], rtol=1e-5, atol=1e-5)
    # the first frame's window is (0, 0, 0, 1, 2): its far neighbours repeat frame 0
    np.testing.assert_allclose(out_e["aligned"][:, 0, 0], out_e["aligned"][:, 0, 1], rtol=1e-6, atol=1e-6)


def test_a_window_longer_than_the_sequence_names_the_way_out():
    from seqcsist_jax.models.tdfa import pair_indices

    with pytest.raises(ValueError, match=r"a 5-frame window needs at least 5 frames per sequence, got 1 \(a "
                                         r"single-image dataset such as CSIST-100K needs a single-frame method; "
                                         r"or set model.predict_edges=True"):
        pair_indices(1, 5, predict_edges=False)
    with pytest.raises(ValueError, match=r"got 3 \(or set model.predict_edges=True, which repeats the edge"):
        pair_indices(3, 5, predict_edges=False)
    centres, neighbours = pair_indices(1, 5, predict_edges=True)
    np.testing.assert_array_equal(centres, [0])
    np.testing.assert_array_equal(neighbours, np.zeros((1, 4)))


def test_flops_per_trajectory_counts_the_convolutions():
    model = DeRefNet(**TINY, time_encoding=False)
    params, _ = _abstract(model, 1, 5)
    params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    flops = flops_per_trajectory(model, params, np.zeros((121, 1089), np.float32), np.zeros((1089, 121)), 5)
    px, c, t, pairs = 33 * 33, 4, 5, 4
    stage = t * px * 9 * (3 * c + 3 * c * c)  # conv1_forward, conv2_forward, backward convs on S and F
    tdfa = t * px * 9 * c + pairs * px * 9 * (2 * (c * c + c * 18) + c)  # features, 2 × (offset + deform), conv
    tail = px * 9 * (5 * c + 2 * c * c + c)
    lower = 2 * (stage + tdfa + tail)  # a multiply-add counts 2
    assert lower < flops < 2 * lower


@pytest.mark.parametrize("case", list(pi.DEREFNET_PARITY_CASES))
def test_parity_with_pytorch_fixture(case):
    """A random PyTorch DeRefNet converted to Flax gives the same outputs, loss terms and gradients.

    Tolerances: forward 1e-4 relative (to the tensor's max |value|); loss terms 1e-4; gradients 2e-3 relative
    L2 per parameter tensor (ReLU kinks and floor() in the bilinear sampler meet a few float32-rounding
    flips); the stage-1 λ, whose gradient is exactly zero in exact arithmetic (ΦQ = I makes the first
    residual vanish), only needs to stay negligible.
    """
    fx = np.load(FIXTURE)
    spec = pi.DEREFNET_PARITY_CASES[case]
    seed = int(fx["seed"])
    shapes = state_dict_shapes(**spec["options"])
    state = pi.derefnet_parity_state_dict(seed, shapes)
    inputs = pi.derefnet_parity_inputs(seed + 1, spec["batch"], spec["frames"])
    model = DeRefNet(**spec["options"])
    params = convert_state_dict(state, **spec["options"])
    phi, q, labels = inputs["phi"], inputs["q"], inputs["labels"]

    def loss(p, frames):
        out = model.apply({"params": p}, frames, phi, q)
        total, terms = derefnet_loss(out, labels)
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

    for key in ("output", "aligned", "x_last"):
        close(out[key], key, 1e-4)
    close(total, "total", 1e-4)
    for key in ("loss_constraint", "loss_reg", "loss_align", "constraint", "align"):
        close(terms[key], key, 1e-4)
    close(g_frames, "grad_frames", 1e-3)

    grads = params_to_state_dict(g_params)
    probes = pi.derefnet_grad_probes(seed + 2, shapes)
    norms, projs = fx[f"{case}__grad_norm"], fx[f"{case}__grad_proj"]
    assert len(norms) == len(shapes)
    typical = np.median(norms)
    for i, key in enumerate(shapes):
        g = grads[key]
        if norms[i] < 1e-6 * typical:  # zero by construction (see docstring)
            assert np.linalg.norm(g) < 1e-5 * typical, key
            continue
        assert abs(np.linalg.norm(g) - norms[i]) <= 2e-3 * norms[i], key
        assert abs(np.vdot(g, probes[key]) - projs[i]) <= 2e-3 * norms[i], key
        if f"{case}__grad__{key}" in fx:
            want = fx[f"{case}__grad__{key}"]
            assert np.linalg.norm(g - want) <= 2e-3 * np.linalg.norm(want), key
