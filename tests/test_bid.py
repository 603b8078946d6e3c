"""BID (public ``tools/BID.py``): convergence to the known fixed point, batched = single-frame loop, the public
PSF, upsampling and the faithful (resized column) input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs
from seqcsist_jax import imaging, methods
from seqcsist_jax.baselines import bid
from seqcsist_jax.data.simulate import simulate_seqcsist

S = 33


def correlation_matrix(psf: np.ndarray, side: int = S) -> np.ndarray:
    """``(side², side²)`` matrix of the 'same' zero-padded cross-correlation with a 3×3 ``psf`` (``F.conv2d``)."""
    k = np.zeros((side * side, side * side))
    for i in range(side):
        for j in range(side):
            for a in range(3):
                for b in range(3):
                    ii, jj = i + a - 1, j + b - 1
                    if 0 <= ii < side and 0 <= jj < side:
                        k[i * side + j, ii * side + jj] += psf[a, b]
    return k


def torch_bilinear(img: np.ndarray, out: int) -> np.ndarray:
    """Per-pixel ``F.interpolate(mode='bilinear', align_corners=False)`` written from PyTorch's definition."""
    h = img.shape[0]
    res = np.empty((out, out))
    scale = h / out

    def src(i):
        p = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(np.floor(p)), h - 1)
        return lo, min(lo + 1, h - 1), p - lo

    for i in range(out):
        y0, y1, fy = src(i)
        for j in range(out):
            x0, x1, fx = src(j)
            top = (1 - fx) * img[y0, x0] + fx * img[y0, x1]
            bottom = (1 - fx) * img[y1, x0] + fx * img[y1, x1]
            res[i, j] = (1 - fy) * top + fy * bottom
    return res


def loop_bid(frame, max_iter, alpha, tol):
    """The public per-frame loop (float64): update, then stop once max|residual| < tol."""
    k = correlation_matrix(bid.public_psf())
    u = torch_bilinear(frame, S).ravel()
    x = u.copy()
    for it in range(max_iter):
        dev = k @ x - u
        x = x - alpha * dev
        if np.max(np.abs(dev)) < tol:
            return x.reshape(S, S), it + 1
    return x.reshape(S, S), max_iter


def grid_frame() -> np.ndarray:
    """An 11×11 frame rendered from three targets sitting on grid points of the 33×33 label grid."""
    grid = imaging.grid_coordinates()  # (33,) positions of the label cells along one axis, px
    cells = [(6, 6, 230.0), (24, 21, 240.0), (9, 27, 225.0)]
    targets = np.array([[grid[i], grid[j], b] for i, j, b in cells])
    return imaging.render(targets)


def test_public_psf_is_the_off_centre_gaussian():
    psf = bid.public_psf(3, 0.5)
    points = np.array([-2.0, -0.5, 1.0])  # np.linspace(-3 // 2, 3 // 2, 3)
    g = np.exp(-(points[:, None] ** 2 + points[None, :] ** 2) / (2 * 0.25))
    np.testing.assert_allclose(psf, g / g.sum(), rtol=1e-12)
    assert psf.sum() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (1, 1)
    with pytest.raises(ValueError, match="sigma"):
        bid.public_psf(3, 0.0)


def test_bilinear_upsampling_matches_pytorch_definition():
    img = np.random.default_rng(0).uniform(0, 255, size=(11, 11))
    a = bid.bilinear_matrix(11, 33)
    np.testing.assert_allclose(a @ img @ a.T, torch_bilinear(img, 33), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)


def test_public_column_input_is_opencv_resize_of_the_121_vector():
    frames = np.random.default_rng(1).integers(0, 256, size=(3, 11, 11)).astype(np.float32)
    got = np.asarray(bid.public_column_input(jnp.asarray(frames)))
    for f, g in zip(frames, got):
        vec = f.reshape(121)
        # cv2.INTER_LINEAR, half-pixel centres: 121 rows → 11 rows samples (i + 0.5)·11 - 0.5; 1 column → 11 copies
        rows = np.interp((np.arange(11) + 0.5) * 11 - 0.5, np.arange(121), vec)
        np.testing.assert_array_equal(g, np.repeat(rows[:, None], 11, axis=1))
        np.testing.assert_array_equal(g, np.repeat(f[:, 5:6], 11, axis=1))  # the centre column copied across


def test_bid_converges_to_the_known_fixed_point():
    """With a convergent step the public iteration reaches K⁻¹·up(frame) (K: the PSF correlation)."""
    frame = grid_frame()
    k = correlation_matrix(bid.public_psf())
    a = bid.bilinear_matrix(11, 33)
    solution = np.linalg.solve(k, (a @ frame @ a.T).ravel()).reshape(S, S)
    # eigenvalues of K lie in [0.61, 0.73] (real), so α = 1 contracts the error by ≤ 0.39 per step
    x, iterations = bid.bid(jnp.asarray(frame[None], jnp.float32), alpha=1.0, tol=1e-3, max_iter=2000)
    assert int(iterations[0]) < 2000  # stopped by the tolerance
    # at the stop max|K x - U| < 1e-3, so |x - x*| ≤ ‖K⁻¹‖∞·1e-3; plus float32 rounding of values ≤ ~400
    bound = np.abs(np.linalg.inv(k)).sum(axis=1).max() * 1e-3 + 1e-3
    np.testing.assert_allclose(np.asarray(x[0]), solution, atol=bound)
    # the public setting (α = 0.001, 1,000 iterations) moves only part of the way from up(frame) to x*
    x_pub, it_pub = bid.bid(jnp.asarray(frame[None], jnp.float32))
    assert int(it_pub[0]) == 1000
    up = a @ frame @ a.T
    assert 0.3 < np.linalg.norm(np.asarray(x_pub[0]) - up) / np.linalg.norm(solution - up) < 0.6


def test_batched_bid_matches_single_frame_loop():
    frames = simulate_seqcsist(1, 4, frames_per_trajectory=3)["frames"][0].astype(np.float64)
    # a zero frame (stops at once), a dim frame (stops earlier) and full frames (stop later or never)
    batch = np.concatenate([frames, np.zeros((1, 11, 11)), 0.2 * frames[:1]])
    options = dict(max_iter=40, alpha=0.5, tol=0.5)
    x, iterations = bid.bid(jnp.asarray(batch, jnp.float32), **options)
    expected = [loop_bid(f, **options) for f in batch]
    np.testing.assert_array_equal(np.asarray(iterations), [it for _, it in expected])
    assert len(set(int(i) for i in iterations)) >= 3  # the frames really stop at different iterations
    for got, (want, _) in zip(np.asarray(x), expected):
        np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("mode", bid.INPUT_MODES)
def test_bid_method_output_and_input_modes(mode):
    config = configs.get_config("bid:smoke")
    assert not config.model.trainable and config.model.input_mode == "frame"
    config.model.input_mode = mode
    method = methods.build_method(config.model, config.loss)
    frames = jnp.asarray(simulate_seqcsist(2, 5, frames_per_trajectory=4)["frames"], jnp.float32)
    phi = imaging.measurement_matrix().astype(np.float32)
    out = method.model.apply({}, frames, phi)
    assert out["output"].shape == (2, 4, 33, 33)
    np.testing.assert_array_equal(out["frame_index"], np.arange(4))
    flat = frames.reshape(8, 11, 11)
    solver_in = bid.public_column_input(flat) if mode == "public_column" else flat
    x, _ = bid.bid(solver_in, max_iter=config.model.max_iter)
    np.testing.assert_allclose(np.asarray(out["output"]).reshape(8, 33, 33), np.asarray(x), rtol=1e-6)
    with pytest.raises(ValueError, match="input_mode"):
        bid.BidSolver(input_mode="column").apply({}, frames, phi)


def test_flops_per_frame_counts_the_correlation():
    per_iteration = bid.flops_per_frame(1) - bid.flops_per_frame(0)
    # XLA's count of one 'same' 3×3 correlation of a 33×33 image (a multiply-add = 2) is the dominant part
    conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC")))
    cost = conv.lower(jnp.zeros((1, 33, 33, 1)), jnp.zeros((3, 3, 1, 1))).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert per_iteration == 33 * 33 * (2 * 9 + 4)
    assert 0.7 * per_iteration < float(cost["flops"]) + 4 * 33 * 33 <= 1.05 * per_iteration
    assert bid.flops_per_frame(0) == 2 * 33 * 11 * 11 + 2 * 33 * 33 * 11
    assert bid.BidSolver().flops_per_frame(10) == bid.flops_per_frame(10)
