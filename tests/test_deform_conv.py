"""Deformable convolution (SPEC §6): parity with torchvision fixtures, an independent map_coordinates
reference, the plain-convolution limit, the floor-based gradient, transforms and the Flax modules.

Tolerances: float64 runs (``jax.enable_x64``) against the float64 torchvision fixture use 1e-10 (observed
~5e-15); float32 runs use 2e-5 absolute + relative (observed ~1e-6).
"""

from __future__ import annotations

import functools
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.scipy.ndimage import map_coordinates

from seqcsist_jax.ops.deform_conv import (
    METHODS,
    DeformConv,
    DeformConvOffsetFrom,
    DeformConvPack,
    deform_conv2d,
    legacy_mmcv_kernel_init,
    mmcv_kernel_init,
)
from seqcsist_jax.testing import parity_inputs as pi

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "deform_conv_parity.npz"
SETTINGS = ("stride", "padding", "dilation", "groups", "offset_groups")
F64_TOL = 1e-10
F32_TOL = 2e-5


@functools.lru_cache(maxsize=None)
def _op_and_grads(method: str, edge_grad: str, settings: tuple):
    """Jitted ``(x, offset, kernel, cot) -> (out, grad_x, grad_offset, grad_kernel)``, cached per settings."""
    kwargs = dict(settings)

    def run(x, offset, kernel, cot):
        f = functools.partial(deform_conv2d, method=method, edge_grad=edge_grad, **kwargs)
        out, vjp = jax.vjp(f, x, offset, kernel)
        return (out, *vjp(cot))

    return jax.jit(run)


def _settings(case: dict) -> tuple:
    return tuple((k, tuple(case[k]) if isinstance(case[k], (tuple, list)) else case[k]) for k in SETTINGS)


def _run_case(case: dict, method: str = "gather", edge_grad: str = "torchvision", dtype=np.float64):
    fn = _op_and_grads(method, edge_grad, _settings(case))
    args = [np.asarray(case[k], dtype) for k in ("x", "offset", "kernel", "cotangent")]
    return [np.asarray(a) for a in fn(*args)]


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return dict(data)


NAMES = ("out", "grad_x", "grad_offset", "grad_kernel")


# ---------------------------------------------------------------------------------------------------------
# torchvision parity (fixture written by experiments/reference/make_deform_conv_fixtures.py)
# ---------------------------------------------------------------------------------------------------------


def test_fixture_matches_generators(fixture):
    """The stored results belong to the inputs the shared generators produce now."""
    from experiments.reference.make_deform_conv_fixtures import input_digest

    assert FIXTURE.stat().st_size < 300 * 1024
    for name in pi.DEFORM_CONV_CASES:
        np.testing.assert_allclose(
            fixture[f"{name}/input_digest"],
            input_digest(pi.deform_conv_case(name)),
            rtol=1e-12,
            err_msg=f"{name}: parity_inputs changed; rerun make_deform_conv_fixtures",
        )


@pytest.mark.parametrize("name", list(pi.DEFORM_CONV_CASES))
def test_matches_torchvision_float64(fixture, name):
    case = pi.deform_conv_case(name)
    with jax.enable_x64(True):
        got = _run_case(case, "gather")
    for key, value in zip(NAMES, got):
        np.testing.assert_allclose(value, fixture[f"{name}/{key}"], rtol=F64_TOL, atol=F64_TOL, err_msg=key)


@pytest.mark.parametrize("name", ["integer", "out_of_image", "offset_groups2", "asymmetric"])
def test_matmul_method_matches_torchvision_float64(fixture, name):
    case = pi.deform_conv_case(name)
    with jax.enable_x64(True):
        got = _run_case(case, "matmul")
    for key, value in zip(NAMES, got):
        np.testing.assert_allclose(value, fixture[f"{name}/{key}"], rtol=F64_TOL, atol=F64_TOL, err_msg=key)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["integer", "fractional", "out_of_image"])
def test_matches_torchvision_float32(fixture, name, method):
    case = pi.deform_conv_case(name)
    got = _run_case(case, method, dtype=np.float32)
    for key, value in zip(NAMES, got):
        assert value.dtype == np.float32
        np.testing.assert_allclose(value, fixture[f"{name}/{key}"], rtol=F32_TOL, atol=F32_TOL, err_msg=key)


def test_integer_case_exercises_edges():
    """The integer case really samples exactly on −1, on H−1/W−1 and on H/W (where the rules matter)."""
    case = pi.deform_conv_case("integer")
    n, h, w, _ = case["x"].shape
    off = case["offset"].reshape(n, h, w, 9, 2)
    k = np.arange(9)
    py = np.arange(h)[None, :, None, None] - 1 + (k // 3) + off[..., 0]
    px = np.arange(w)[None, None, :, None] - 1 + (k % 3) + off[..., 1]
    for value in (-1, h - 1, h):
        assert (py == value).any(), value
    for value in (-1, w - 1, w):
        assert (px == value).any(), value


# ---------------------------------------------------------------------------------------------------------
# Independent reference: jax.scipy.ndimage.map_coordinates + an explicit grouped convolution
# ---------------------------------------------------------------------------------------------------------


def reference_deform_conv(x, offset, kernel, *, stride, padding, dilation, groups, offset_groups):
    """Independent reference: sample points built with numpy broadcasting, bilinear sampling of every
    (image, offset group, kernel point, channel) with ``map_coordinates(order=1, mode='constant', cval=0)``
    (floor-based; each corner contributes only if inside the image, which is torchvision's rule, including its
    gradient at −1), then an explicit grouped weighted sum."""
    n, h, w, c = x.shape
    kh, kw, cin_g, o = kernel.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    g_count, cg = offset_groups, c // offset_groups
    off = offset.reshape(n, ho, wo, g_count, kh, kw, 2)
    oy, ox = np.meshgrid(np.arange(ho), np.arange(wo), indexing="ij")  # (Ho, Wo)
    ki, kj = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")  # (kh, kw)
    base_y = (oy * sh - ph)[:, :, None, None, None] + (ki * dh)[None, None, None]  # (Ho, Wo, 1, kh, kw)
    base_x = (ox * sw - pw)[:, :, None, None, None] + (kj * dw)[None, None, None]
    py = base_y[None] + off[..., 0]  # (N, Ho, Wo, G, kh, kw)
    px = base_x[None] + off[..., 1]
    imgs = x.reshape(n, h, w, g_count, cg)

    def one(img, yy, xx):  # (H, W), (Ho, Wo, kh, kw) x2
        return map_coordinates(img, [yy, xx], order=1, mode="constant", cval=0.0)

    over_channels = jax.vmap(one, in_axes=(2, None, None), out_axes=-1)  # img (H, W, Cg)
    over_groups = jax.vmap(over_channels, in_axes=(2, 2, 2), out_axes=2)  # img (H, W, G, Cg)
    cols = jax.vmap(over_groups)(imgs, py, px)  # (N, Ho, Wo, G, kh, kw, Cg)
    cols = jnp.moveaxis(cols, 3, 5).reshape(n, ho, wo, kh, kw, c)
    og = o // groups
    outs = [
        jnp.einsum(
            "nhwijc,ijco->nhwo", cols[..., q * cin_g:(q + 1) * cin_g], kernel[..., q * og:(q + 1) * og]
        )
        for q in range(groups)
    ]
    return jnp.concatenate(outs, axis=-1)


@pytest.mark.parametrize("name", ["integer", "asymmetric"])
def test_matches_map_coordinates_reference(name):
    case = pi.deform_conv_case(name)
    kwargs = {k: case[k] for k in SETTINGS}

    @jax.jit
    def ref(x, offset, kernel, cot):
        out, vjp = jax.vjp(functools.partial(reference_deform_conv, **kwargs), x, offset, kernel)
        return (out, *vjp(cot))

    with jax.enable_x64(True):
        want = ref(case["x"], case["offset"], case["kernel"], case["cotangent"])
        got = _run_case(case, "gather")
    for key, a, b in zip(NAMES, got, want):
        np.testing.assert_allclose(a, np.asarray(b), rtol=F64_TOL, atol=F64_TOL, err_msg=key)


# ---------------------------------------------------------------------------------------------------------
# Zero offsets = plain convolution; floor-based gradient; edge rules
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["zero", "asymmetric"])
def test_zero_offsets_reproduce_conv_general_dilated(name, method):
    case = pi.deform_conv_case(name)
    case["offset"] = np.zeros_like(case["offset"])
    with jax.enable_x64(True):
        got = _run_case(case, method)[0]
        want = lax.conv_general_dilated(
            case["x"],
            case["kernel"],
            window_strides=case["stride"],
            padding=[(p, p) for p in case["padding"]],
            rhs_dilation=case["dilation"],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=case["groups"],
        )
    np.testing.assert_allclose(got, np.asarray(want), rtol=F64_TOL, atol=F64_TOL)


def _tent_deform_1ch(x, py, px):
    """The 'tent' form Σ relu(1−|py−h|)·relu(1−|px−w|)·x[h, w]: same values, different autodiff."""
    h, w = x.shape
    wy = jax.nn.relu(1 - jnp.abs(py - jnp.arange(h)))
    wx = jax.nn.relu(1 - jnp.abs(px - jnp.arange(w)))
    return jnp.einsum("h,w,hw->", wy, wx, x)


@pytest.mark.parametrize("method", METHODS)
def test_offset_gradient_at_zero_offsets_is_floor_based(method):
    """Zero offsets (DeRefNet's init) must receive the right (floor) derivative, which is non-zero."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 6, 1))
    img = x[0, :, :, 0]
    kernel = np.zeros((3, 3, 1, 1))
    kernel[1, 1, 0, 0] = 1.0  # output = sample of the centre kernel point (channels 8, 9 = Δy, Δx)
    eps = 1e-6
    # Offsets of the centre point at output (2, 3): 0, +ε and −ε along Δy and Δx.
    offsets = np.zeros((5, 1, 5, 6, 18))
    offsets[1, 0, 2, 3, 8], offsets[2, 0, 2, 3, 8] = eps, -eps
    offsets[3, 0, 2, 3, 9], offsets[4, 0, 2, 3, 9] = eps, -eps

    def f(off):
        return deform_conv2d(x, off, kernel, method=method)[0, 2, 3, 0]

    with jax.enable_x64(True):
        values = np.asarray(jax.jit(jax.vmap(f))(offsets))
        grad = np.asarray(jax.jit(jax.grad(f))(offsets[0]))[0, 2, 3, 8:10]
        tent_value, tent_grad = jax.jit(jax.value_and_grad(_tent_deform_1ch, argnums=(1, 2)))(
            img, jnp.float64(2.0), jnp.float64(3.0)
        )
    right = (values[[1, 3]] - values[0]) / eps
    left = (values[0] - values[[2, 4]]) / eps
    floor_derivative = [img[3, 3] - img[2, 3], img[2, 4] - img[2, 3]]
    np.testing.assert_allclose(grad, floor_derivative, rtol=1e-9)
    np.testing.assert_allclose(grad, right, rtol=1e-5)  # the one-sided (right) derivative...
    assert not np.allclose(grad, left, rtol=1e-3)  # ...not the left one
    assert np.all(np.abs(grad) > 1e-3)
    # The tent form has the same value, but JAX differentiates it (relu'(0) = 0, |·|'(0) = 1) to −x[y0, x0]
    # alone, dropping the neighbour: a wrong gradient (under PyTorch's |·|'(0) = 0 it would be exactly 0).
    np.testing.assert_allclose(float(tent_value), img[2, 3])
    np.testing.assert_allclose(np.asarray(tent_grad), [-img[2, 3], -img[2, 3]], rtol=1e-12)
    assert not np.allclose(np.asarray(tent_grad), floor_derivative, rtol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_edge_grad_rules(method):
    """At a coordinate of exactly −1 torchvision keeps the one-sided gradient, mmcv zeroes it; same values."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 5, 1))
    kernel = np.ones((1, 1, 1, 1))
    # One output pixel (stride 10, no padding) at base (0, 0): Δ = (−1, 1.25) → py = −1, px = 1.25.
    offset = np.array([-1.0, 1.25]).reshape(1, 1, 1, 2)
    with jax.enable_x64(True):
        vals, grads = {}, {}
        for rule in ("torchvision", "mmcv"):

            def f(off, rule=rule):
                out = deform_conv2d(x, off, kernel, stride=10, padding=0, method=method, edge_grad=rule)
                return out.sum()

            value, grad = jax.jit(jax.value_and_grad(f))(offset)
            vals[rule], grads[rule] = float(value), np.asarray(grad).ravel()
    assert vals["torchvision"] == vals["mmcv"] == 0.0
    row0 = x[0, 0, :, 0]
    np.testing.assert_allclose(grads["torchvision"], [0.75 * row0[1] + 0.25 * row0[2], 0.0], atol=1e-12)
    np.testing.assert_array_equal(grads["mmcv"], [0.0, 0.0])


def test_edge_grad_rules_agree_off_the_edge(fixture):
    case = pi.deform_conv_case("fractional")
    with jax.enable_x64(True):
        got = _run_case(case, "gather", edge_grad="mmcv")
    for key, value in zip(NAMES, got):
        np.testing.assert_allclose(value, fixture[f"fractional/{key}"], rtol=F64_TOL, atol=F64_TOL)


# ---------------------------------------------------------------------------------------------------------
# Transforms, methods, validation
# ---------------------------------------------------------------------------------------------------------


def test_vmap_and_jit_compose():
    case = pi.deform_conv_case("asymmetric")
    kwargs = {k: case[k] for k in SETTINGS}
    f = jax.jit(jax.vmap(functools.partial(deform_conv2d, **kwargs), in_axes=(0, 0, None)))
    xs = np.stack([case["x"], case["x"][::-1]]).astype(np.float32)
    offs = np.stack([case["offset"], -case["offset"]]).astype(np.float32)
    kernel = case["kernel"].astype(np.float32)
    got = np.asarray(f(xs, offs, kernel))
    single = jax.jit(functools.partial(deform_conv2d, **kwargs))
    for i in range(2):
        np.testing.assert_allclose(got[i], np.asarray(single(xs[i], offs[i], kernel)), rtol=1e-6, atol=1e-6)


def _good():
    return np.zeros((2, 5, 6, 4)), np.zeros((2, 5, 6, 18)), np.zeros((3, 3, 4, 4))


@pytest.mark.parametrize(
    "change, kwargs, match",
    [
        (lambda x, o, k: (x, o[..., :16], k), {}, "offset has shape"),
        (lambda x, o, k: (x, o[:, :4], k), {}, "offset has shape"),
        (lambda x, o, k: (x[0], o, k), {}, "x must be"),
        (lambda x, o, k: (x, o[0], k), {}, "offset must be"),
        (lambda x, o, k: (x, o, k[0]), {}, "kernel must be"),
        (lambda x, o, k: (x, o, k), {"groups": 3}, "not divisible by groups"),
        (lambda x, o, k: (x, o, k), {"groups": 2}, "kernel in-channels"),
        (lambda x, o, k: (x, o, np.zeros((3, 3, 2, 3))), {"groups": 2}, "out-channels"),
        (lambda x, o, k: (x, np.zeros((2, 5, 6, 54)), k), {"offset_groups": 3}, "offset_groups"),
        (lambda x, o, k: (x, o, k), {"padding": -1}, "padding"),
        (lambda x, o, k: (x, o, k), {"stride": (1, 0)}, "stride"),
        (lambda x, o, k: (x, o, k), {"dilation": (1, 1, 1)}, "dilation"),
        (lambda x, o, k: (x, o, k), {"stride": 1.5}, "stride"),
        (lambda x, o, k: (x, o, np.zeros((7, 7, 4, 4))), {"padding": 0}, "too small"),
        (lambda x, o, k: (x, o, k), {"method": "fft"}, "method"),
        (lambda x, o, k: (x, o, k), {"edge_grad": "tf"}, "edge_grad"),
    ],
)
def test_validation(change, kwargs, match):
    with pytest.raises(ValueError, match=match):
        deform_conv2d(*change(*_good()), **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Flax modules
# ---------------------------------------------------------------------------------------------------------


def _conv(x, kernel, bias=None, *, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1):
    y = lax.conv_general_dilated(
        x, kernel, stride, [(p, p) for p in padding], rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
    )
    return y if bias is None else y + bias


def test_deform_conv_module_params_and_output():
    case = pi.deform_conv_case("asymmetric")
    kwargs = {k: case[k] for k in SETTINGS}
    x, offset = case["x"].astype(np.float32), case["offset"].astype(np.float32)
    module = DeformConv(4, kernel_size=case["kernel_size"], use_bias=True, **kwargs)
    variables = jax.eval_shape(module.init, jax.random.key(0), x, offset)
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes == {"kernel": (3, 2, 2, 4), "bias": (4,)}
    params = {"kernel": case["kernel"].astype(np.float32), "bias": np.arange(4.0, dtype=np.float32)}
    got = jax.jit(module.apply)({"params": params}, x, offset)
    want = _run_case(case, dtype=np.float32)[0] + params["bias"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["pack", "offset_from"])
def test_pack_modules(variant):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 7, 8, 4)).astype(np.float32)
    extra = rng.normal(size=(2, 7, 8, 6)).astype(np.float32)
    if variant == "pack":  # mmcv DeformConv2dPack: conv_offset shares stride, padding and dilation
        settings = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, offset_groups=2)
        module = DeformConvPack(4, kernel_size=(3, 2), kernel_init=nn.initializers.zeros, **settings)
        args, source = (x,), x
    else:  # public AugmentedDeformConv2dPack: conv_offset has stride and padding (dilation must then be 1)
        settings = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 1), groups=2, offset_groups=2)
        module = DeformConvOffsetFrom(4, kernel_size=(3, 2), kernel_init=nn.initializers.zeros, **settings)
        args, source = (x, extra), extra
    conv_kw = {k: settings[k] for k in ("stride", "padding", "dilation")}
    variables = jax.jit(module.init)(jax.random.key(0), *args)  # (main kernel: zeros here, no RNG compile)
    apply = jax.jit(module.apply)
    params = variables["params"]
    params = {**params, "kernel": rng.normal(size=(3, 2, 2, 4)).astype(np.float32)}
    variables = {"params": params}
    off_ch = 2 * 2 * 3 * 2
    assert jax.tree.map(jnp.shape, params) == {
        "kernel": (3, 2, 2, 4),
        "conv_offset": {"kernel": (3, 2, source.shape[-1], off_ch), "bias": (off_ch,)},
    }
    # Zero-initialised offsets: the module starts as a plain convolution...
    assert not np.any(np.asarray(params["conv_offset"]["kernel"]))
    assert not np.any(np.asarray(params["conv_offset"]["bias"]))
    np.testing.assert_allclose(
        np.asarray(apply(variables, *args)),
        np.asarray(_conv(x, params["kernel"], groups=2, **conv_kw)),
        rtol=1e-5,
        atol=1e-5,
    )
    # ...whose offset conv nevertheless gets a gradient (floor-based sampler).
    grads = jax.jit(jax.grad(lambda p: jnp.sum(module.apply({"params": p}, *args) ** 2)))(params)
    assert np.abs(np.asarray(grads["conv_offset"]["bias"])).max() > 1e-3
    # With non-zero offset-conv weights the offsets are conv_offset(source) with the same stride/padding.
    params = {
        "kernel": params["kernel"],
        "conv_offset": {
            "kernel": 0.3 * rng.normal(size=(3, 2, source.shape[-1], off_ch)).astype(np.float32),
            "bias": rng.normal(size=(off_ch,)).astype(np.float32),
        },
    }
    offset = _conv(source, params["conv_offset"]["kernel"], params["conv_offset"]["bias"], **conv_kw)
    want = jax.jit(functools.partial(deform_conv2d, **settings))(x, offset, params["kernel"])
    got = apply({"params": params}, *args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_offset_from_rejects_mismatched_extra():
    x = np.zeros((1, 7, 8, 4), np.float32)
    module = DeformConvOffsetFrom(4)
    with pytest.raises(ValueError, match="offset has shape"):
        jax.eval_shape(module.init, jax.random.key(0), x, np.zeros((1, 6, 8, 4), np.float32))


def test_kernel_inits():
    """mmcv ≥ 2: kaiming_uniform_(nonlinearity='relu') = U(±√(6/n)); legacy: U(±1/√n); n = C_in·kh·kw."""
    shape = (3, 3, 16, 16)
    n = 3 * 3 * 16
    for init, bound in ((mmcv_kernel_init, math.sqrt(6 / n)), (legacy_mmcv_kernel_init, 1 / math.sqrt(n))):
        k = np.asarray(jax.jit(init, static_argnums=(1, 2))(jax.random.key(3), shape, jnp.float32))
        assert k.shape == shape
        assert np.abs(k).max() <= bound and np.abs(k).max() > 0.98 * bound
        np.testing.assert_allclose(k.std(), bound / math.sqrt(3), rtol=0.05)
    assert DeformConv.kernel_init is mmcv_kernel_init


def test_deform_conv_module_in_bfloat16():
    x = jnp.ones((1, 5, 6, 4), jnp.bfloat16)
    offset = jnp.full((1, 5, 6, 18), 0.5, jnp.bfloat16)
    module = DeformConv(3, dtype=jnp.bfloat16)
    variables = jax.eval_shape(module.init, jax.random.key(0), x, offset)
    assert variables["params"]["kernel"].dtype == jnp.float32  # param_dtype
    y = jax.eval_shape(module.apply, variables, x, offset)
    assert y.dtype == jnp.bfloat16 and y.shape == (1, 5, 6, 3)
    assert isinstance(module, nn.Module)
