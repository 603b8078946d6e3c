"""GMFN, DBPN, RDN, USRNet: public parameter counts, shapes, a few training steps, and their numerical pieces
(transposed conv, bilinear resize, USRNet's closed-form data step) against independent references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs
from seqcsist_jax.model_stats import count_params
from seqcsist_jax.testing import smoke
from seqcsist_jax.testing.smoke import smoke_batch
from seqcsist_jax import methods
from seqcsist_jax.baselines import dbpn_gmfn, sr_layers, usrnet

SR = ["gmfn", "dbpn", "rdn", "usrnet"]


def conv(k, c, o, bias=True):
    """Parameters of a k×k conv C→O."""
    return k * k * c * o + (o if bias else 0)


# Public counts (GrokCV/SeqCSIST backbones with the detectors' arguments), written layer by layer.
_PRELU = 1
_DBPN_PROJ = 3 * (conv(7, 32, 32) + _PRELU)  # (de)conv 7×7 32→32 + PReLU, three per projection unit
_RDB8 = sum(conv(3, 32 * (i + 1), 32) + _PRELU for i in range(8)) + conv(1, 288, 32)
_RDN_RDB = sum(conv(3, 64 * (c + 1), 64) for c in range(8)) + conv(1, 576, 64)
_RES_UNET = (
    conv(3, 2, 16, False)
    + sum(2 * 2 * conv(3, c, c, False) for c in (16, 32, 64))  # 2 res blocks per level, down path
    + sum(conv(2, c, 2 * c, False) for c in (16, 32, 64))  # stride-2 convs
    + 2 * 2 * conv(3, 128, 128, False)  # body
    + sum(conv(2, 2 * c, c, False) + 2 * 2 * conv(3, c, c, False) for c in (64, 32, 16))  # up path
    + conv(3, 16, 1, False)
)
PUBLIC_PARAMS = {
    "dbpn": (conv(3, 1, 128) + _PRELU) + (conv(1, 128, 32) + _PRELU) + 13 * _DBPN_PROJ + conv(1, 32, 1),  # 1.96 M
    "gmfn": (conv(3, 1, 128) + _PRELU) + (conv(1, 128, 32) + _PRELU) + 8 * _RDB8
    + (conv(1, 256, 32) + _PRELU) + (conv(1, 64, 32) + _PRELU) + (conv(7, 32, 32) + _PRELU) + conv(3, 32, 1),
    "rdn": conv(3, 1, 64) + conv(3, 64, 64) + 16 * _RDN_RDB + conv(1, 1024, 64) + conv(3, 64, 64)
    + conv(3, 64, 576) + conv(3, 64, 1),
    "usrnet": _RES_UNET + conv(1, 2, 64) + conv(1, 64, 64) + conv(1, 64, 16),
}
PAPER_MILLIONS = {"gmfn": 2.80, "dbpn": 1.96, "rdn": 22.3, "usrnet": 1.07}


@pytest.fixture(scope="module")
def smoke_data():
    return smoke_batch("dbpn:smoke", 1)


_count = count_params


@pytest.mark.parametrize("name", SR)
def test_public_parameter_count(name):
    config = configs.get_config(name)
    method = methods.build_method(config.model, config.loss)
    frames = jax.ShapeDtypeStruct((1, 2, 11, 11), jnp.float32)
    phi = jax.ShapeDtypeStruct((121, 1089), jnp.float32)
    q = jax.ShapeDtypeStruct((1089, 121), jnp.float32)
    shapes = jax.eval_shape(method.model.init, jax.random.PRNGKey(0), frames, phi, q)
    assert _count(shapes["params"]) == PUBLIC_PARAMS[name]
    assert PUBLIC_PARAMS[name] / 1e6 == pytest.approx(PAPER_MILLIONS[name], abs=0.006)


@pytest.mark.parametrize("name", SR)
def test_smoke_shapes_and_training_reduces_loss(name, smoke_data):
    batch, phi, q = smoke_data
    config = configs.get_config(f"{name}:smoke")
    method = methods.build_method(config.model, config.loss)
    state, losses, _ = smoke.train_steps(method, batch, phi, q, config.optimizer)
    b, t = batch["frames"].shape[:2]
    out = jax.eval_shape(lambda p: method.model.apply({"params": p}, batch["frames"], phi, q), state.params)
    assert out["output"].shape == (b, t, 33, 33)
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses


def test_gmfn_output_step_selects_a_feedback_step(smoke_data):
    batch, phi, q = smoke_data
    frames = batch["frames"][:, :2]
    first = dbpn_gmfn.GMFN(features=4, num_steps=2, num_blocks=1, num_reroute=1, output_step=0)
    last = first.clone(output_step=-1)
    params = jax.jit(first.init)(jax.random.PRNGKey(0), frames, phi, q)
    # one compile for both variants (they share the params)
    out_first, out_last = jax.jit(lambda p: (first.apply(p, frames, phi, q), last.apply(p, frames, phi, q)))(params)
    assert out_first["steps"].shape == (2, 1, 2, 33, 33)
    np.testing.assert_array_equal(out_first["output"], out_first["steps"][0])
    np.testing.assert_array_equal(out_last["output"], out_first["steps"][-1])
    # the feedback changes the later steps (the gate convs see the previous step's features)
    assert not np.allclose(out_first["steps"][0], out_first["steps"][1])


def _conv_transpose_reference(x, w_torch, b, stride, padding):
    """Literal scatter definition of ``nn.ConvTranspose2d`` (weight ``(C_in, C_out, k, k)``), NCHW numpy."""
    n, c, h, wd = x.shape
    _, o, k, _ = w_torch.shape
    full = np.zeros((n, o, (h - 1) * stride + k, (wd - 1) * stride + k))
    for i in range(h):
        for j in range(wd):
            full[:, :, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
                "nc,cokl->nokl", x[:, :, i, j], w_torch
            )
    out = full[:, :, padding:full.shape[2] - padding, padding:full.shape[3] - padding]
    return out + b[None, :, None, None]


@pytest.mark.parametrize("k,s,p,side", [(7, 3, 2, 11), (2, 2, 0, 4), (6, 2, 2, 5)])
def test_conv_transpose_matches_scatter_definition(k, s, p, side):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, side, side, 3)).astype(np.float32)
    layer = sr_layers.ConvTranspose(4, k, s, p)
    params = layer.init(jax.random.PRNGKey(0), jnp.asarray(x))
    out = np.asarray(layer.apply(params, jnp.asarray(x)))
    kernel = np.asarray(params["params"]["kernel"])  # (k, k, C_out, C_in)
    expected = _conv_transpose_reference(
        x.transpose(0, 3, 1, 2).astype(np.float64), kernel.transpose(3, 2, 0, 1), np.asarray(params["params"]["bias"]),
        s, p,
    ).transpose(0, 2, 3, 1)
    assert out.shape == expected.shape == (2, (side - 1) * s - 2 * p + k, (side - 1) * s - 2 * p + k, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def _bilinear_reference(img, out_h, out_w, scale_h, scale_w):
    """PyTorch's align_corners=False bilinear resampling written per output pixel (2-D numpy array)."""
    h, w = img.shape
    out = np.zeros((out_h, out_w))
    for oy in range(out_h):
        sy = max((oy + 0.5) * scale_h - 0.5, 0.0)
        y0 = min(int(sy), h - 1)
        y1 = min(y0 + 1, h - 1)
        ly = sy - y0
        for ox in range(out_w):
            sx = max((ox + 0.5) * scale_w - 0.5, 0.0)
            x0 = min(int(sx), w - 1)
            x1 = min(x0 + 1, w - 1)
            lx = sx - x0
            out[oy, ox] = ((1 - ly) * ((1 - lx) * img[y0, x0] + lx * img[y0, x1])
                           + ly * ((1 - lx) * img[y1, x0] + lx * img[y1, x1]))
    return out


def test_bilinear_resize_matches_per_pixel_definition():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(11, 11))
    up = sr_layers.resize_bilinear(jnp.asarray(img[None, :, :, None], jnp.float32), (33, 33), 3)
    up = np.asarray(up)[0, :, :, 0]
    np.testing.assert_allclose(up, _bilinear_reference(img, 33, 33, 1 / 3, 1 / 3), atol=1e-5)
    img32 = rng.normal(size=(32, 32))
    to33 = np.asarray(sr_layers.resize_bilinear(jnp.asarray(img32[None, :, :, None], jnp.float32), (33, 33)))
    np.testing.assert_allclose(to33[0, :, :, 0], _bilinear_reference(img32, 33, 33, 32 / 33, 32 / 33), atol=1e-5)
    # a constant image stays constant (the weights of each output pixel sum to 1)
    ones = sr_layers.resize_bilinear(jnp.ones((1, 4, 4, 1)), (7, 9))
    np.testing.assert_allclose(np.asarray(ones), 1.0, rtol=1e-6)


def test_usrnet_data_step_solves_its_normal_equations():
    """``data_step`` returns argmin_x ‖(k ⊛ x)↓3 - y‖² + α‖x - z‖²: the gradient of that objective vanishes.

    The operator is built independently here as a dense (121 × 1089) matrix from circular convolution with the
    PSF and 3× decimation (keep the upper-left pixel of each 3×3 cell)."""
    rng = np.random.default_rng(2)
    psf = usrnet.gaussian_kernel(3, 0.5)
    side, scale = 33, 3
    a_rows = []
    for r in range(0, side, scale):
        for c in range(0, side, scale):
            row = np.zeros((side, side))
            for dy in range(3):
                for dx in range(3):  # (k ⊛ x)[r, c] = Σ k[dy, dx] · x[r + 1 - dy, c + 1 - dx] (circular, centred)
                    row[(r + 1 - dy) % side, (c + 1 - dx) % side] += psf[dy, dx]
            a_rows.append(row.ravel())
    a = np.stack(a_rows)  # (121, 1089)
    y = rng.uniform(0, 50, size=(11, 11))
    z = rng.normal(size=(side, side))
    alpha = 0.37
    otf = jnp.asarray(usrnet.psf_to_otf(psf, (side, side)), jnp.complex64)
    sty = np.zeros((side, side))
    sty[::scale, ::scale] = y
    fy = jnp.conj(otf) * jnp.fft.fft2(jnp.asarray(sty))
    x = np.asarray(usrnet.data_step(jnp.asarray(z[None], jnp.float32), otf, fy[None], alpha, scale))[0]
    assert np.max(np.abs(x.imag)) < 1e-3 * np.max(np.abs(x.real))
    x = x.real.ravel().astype(np.float64)
    grad = a.T @ (a @ x - y.ravel()) + alpha * (x - z.ravel())
    assert np.max(np.abs(grad)) < 1e-4 * np.max(np.abs(a.T @ y.ravel()))
    # and it equals the dense solve
    expected = np.linalg.solve(a.T @ a + alpha * np.eye(side * side), a.T @ y.ravel() + alpha * z.ravel())
    np.testing.assert_allclose(x, expected, atol=1e-3 * np.max(np.abs(expected)))


def test_spectral_normalize_and_batch_norm_against_numpy():
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(4, 4, 8, 16)).astype(np.float32)
    normed = np.asarray(sr_layers.spectral_normalize(jnp.asarray(kernel), iterations=50))
    sigma = np.linalg.svd(normed.reshape(-1, 16).T, compute_uv=False)[0]
    assert sigma == pytest.approx(1.0, rel=1e-3)
    x = rng.normal(size=(6, 5, 5, 3)).astype(np.float32) * 3 + 1
    bn = sr_layers.BatchNorm()
    y = np.asarray(bn.apply(bn.init(jax.random.PRNGKey(0), x), x))
    expected = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(y, expected, atol=1e-4)


def test_prelu_and_bad_scale():
    layer = sr_layers.PReLU(0.2)
    x = jnp.asarray([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(np.asarray(layer.apply(layer.init(jax.random.PRNGKey(0), x), x)), [-0.4, 0.0, 3.0])
    with pytest.raises(ValueError, match="upscale factor"):
        dbpn_gmfn.projection_geometry(5)


def test_registered():
    assert set(SR) <= set(methods.available_methods())
