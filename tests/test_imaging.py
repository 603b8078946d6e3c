"""Imaging model (SPEC §1–2) against independent references: numeric integration, loops, finite differences."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import dblquad

from seqcsist_jax import imaging

SIGMA = 0.5
SIZE = 11


def _gaussian(v: float, u: float, xc: float, yc: float) -> float:
    """The public PSF at (row u, column v); dblquad passes the inner (column) variable first."""
    return math.exp(-((u - xc) ** 2 + (v - yc) ** 2) / (2 * SIGMA**2)) / (2 * math.pi * SIGMA**2)


def _pixel_dblquad(r: int, c: int, xc: float, yc: float) -> float:
    """Gaussian mass in pixel (r, c) = [r-½, r+½] × [c-½, c+½] by numerical 2-D integration (public method)."""
    return dblquad(_gaussian, r - 0.5, r + 0.5, c - 0.5, c + 0.5, args=(xc, yc), epsabs=0, epsrel=1e-11)[0]


def _random_targets(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 3)`` targets: half anywhere in the image, half hugging a border or corner."""
    pos = rng.uniform(-0.5, SIZE - 0.5, (n, 2))
    border = rng.choice([-0.5, -0.2, 0.0, 0.3, SIZE - 1.3, SIZE - 1.0, SIZE - 0.8, SIZE - 0.5], (n // 2, 2))
    pos[: n // 2, 0] = border[:, 0]
    pos[: n // 4, 1] = border[: n // 4, 1]  # a quarter in corners
    return np.concatenate([pos, rng.uniform(200, 255, (n, 1))], axis=1)


def test_render_matches_dblquad_pixel_integrals():
    rng = np.random.default_rng(20250710)
    targets = _random_targets(rng, 24)
    checked = 0
    for xc, yc, b in targets:
        img = imaging.render(np.array([[xc, yc, b]]), size=SIZE, sigma=SIGMA)
        assert img.shape == (SIZE, SIZE)
        r0, c0 = int(round(xc)), int(round(yc))
        # The 5×5 neighbourhood (clipped to the image) covers values from the peak down to ~1e-9 of it, plus the
        # far corner pixel of the image (deep tail) for the tail branch of the closed form.
        pixels = {(r, c) for r in range(r0 - 2, r0 + 3) for c in range(c0 - 2, c0 + 3)
                  if 0 <= r < SIZE and 0 <= c < SIZE}
        pixels.add((SIZE - 1 - min(max(r0, 0), SIZE - 1), SIZE - 1 - min(max(c0, 0), SIZE - 1)))
        for r, c in sorted(pixels):
            ref = b * _pixel_dblquad(r, c, xc, yc)
            assert ref > 0
            assert abs(img[r, c] - ref) <= 1e-6 * ref, (xc, yc, r, c, img[r, c], ref)
            checked += 1
    assert checked >= 20 * 9


def test_render_axis_convention_xc_on_rows():
    img = imaging.render(np.array([[2.0, 7.0, 100.0]]))
    assert np.unravel_index(np.argmax(img), img.shape) == (2, 7)


def test_render_sums_targets_and_ignores_padding():
    rng = np.random.default_rng(1)
    targets = _random_targets(rng, 4)
    padded = np.concatenate([targets, np.zeros((2, 3))])
    total = sum(imaging.render(t[None]) for t in targets)
    np.testing.assert_allclose(imaging.render(padded), total, rtol=1e-12, atol=1e-12)


def test_render_batch_shapes_match_per_frame_loop():
    rng = np.random.default_rng(2)
    targets = np.stack([_random_targets(rng, 3) for _ in range(6)]).reshape(2, 3, 3, 3)
    batch = imaging.render(targets)
    assert batch.shape == (2, 3, SIZE, SIZE)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(batch[i, j], imaging.render(targets[i, j]))


def test_energy_of_centred_target_on_large_canvas():
    size = 41
    img = imaging.render(np.array([[20.0, 20.0, 237.5]]), size=size)
    assert abs(img.sum() - 237.5) < 1e-9
    # Shifted off-centre and with a wider PSF the energy is still conserved.
    img = imaging.render(np.array([[19.63, 20.41, 100.0]]), size=size, sigma=1.3)
    assert abs(img.sum() - 100.0) < 1e-9


def test_pixel_integrals_tails_have_relative_precision():
    # Far from the target plain erf differences cancel to 0; the closed form must keep ~full relative precision.
    centre = 0.0
    a = imaging.pixel_integrals(np.array(centre), size=SIZE, sigma=SIGMA)
    z = 1 / (SIGMA * math.sqrt(2))
    for r in range(1, SIZE):
        ref = 0.5 * (math.erfc((r - 0.5) * z) - math.erfc((r + 0.5) * z))
        assert abs(a[r] - ref) <= 1e-13 * ref


@pytest.mark.parametrize("c", [3, 5])
def test_phi_columns_are_rendered_unit_targets_on_grid(c):
    phi = imaging.measurement_matrix(c=c, sigma=SIGMA, size=SIZE)
    n = SIZE * c
    assert phi.shape == (SIZE * SIZE, n * n)
    coords = imaging.grid_coordinates(c, SIZE)
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")  # row-major cell order
    unit = np.stack([coords[ii.ravel()], coords[jj.ravel()], np.ones(n * n)], axis=-1)[:, None, :]
    cols = imaging.render(unit, size=SIZE, sigma=SIGMA).reshape(n * n, SIZE * SIZE).T
    np.testing.assert_allclose(phi, cols, rtol=0, atol=1e-15)


def test_phi_times_label_equals_render_for_on_grid_targets():
    rng = np.random.default_rng(3)
    cells = rng.choice(33 * 33, 4, replace=False)
    coords = imaging.grid_coordinates(3, SIZE)
    targets = np.stack([coords[cells // 33], coords[cells % 33], rng.uniform(220, 250, 4)], axis=-1)
    label = imaging.targets_to_grid(targets)
    phi = imaging.measurement_matrix()
    np.testing.assert_allclose(phi @ label.ravel(), imaging.render(targets).ravel(), rtol=1e-12, atol=1e-10)


def test_grid_coordinates_and_index():
    coords = imaging.grid_coordinates(3, SIZE)
    np.testing.assert_allclose(coords[[0, 1, 32]], [-1 / 3, 0.0, 31 / 3])
    np.testing.assert_array_equal(imaging.grid_index(coords, 3), np.arange(33))
    # Round half to even like Python's round(): 3·(1/6) + 1 = 1.5 → 2, 3·(1/2) + 1 = 2.5 → 2.
    assert [round(3 * u + 1) for u in (1 / 6, 0.5)] == list(imaging.grid_index(np.array([1 / 6, 0.5]), 3))


def _loop_grid(targets: np.ndarray, c: int, collision: str) -> np.ndarray:
    n = SIZE * c
    out = np.zeros((n, n))
    for xc, yc, b in targets:
        if b == 0:
            continue
        i, j = round(c * xc + (c - 1) // 2), round(c * yc + (c - 1) // 2)
        if 0 <= i < n and 0 <= j < n:
            out[i, j] = b if collision == "overwrite" else out[i, j] + b
    return out


@pytest.mark.parametrize("collision", ["sum", "overwrite"])
def test_targets_to_grid_matches_loop_reference(collision):
    rng = np.random.default_rng(4)
    frames = rng.uniform(-0.4, 10.4, (50, 5, 3))
    frames[..., 2] = rng.uniform(220, 250, (50, 5))
    # Forced collisions: target 1 sits 0.05 px (< 1/6) from target 0, which sits on a grid point.
    frames[:10, 0, :2] = rng.integers(0, 31, (10, 2)) / 3.0
    frames[:10, 1, :2] = frames[:10, 0, :2] + [0.05, -0.05]
    frames[10:20, 4] = 0.0  # padding rows
    grids = imaging.targets_to_grid(frames, c=3, collision=collision)
    for f, g in zip(frames, grids):
        np.testing.assert_array_equal(g, _loop_grid(f, 3, collision))
    collisions = imaging.grid_collisions(frames)
    assert np.all(collisions[:10] >= 1)
    for f, k in zip(frames, collisions):
        cells = [(round(3 * x + 1), round(3 * y + 1)) for x, y, b in f if b != 0]
        cells = [ij for ij in cells if 0 <= min(ij) and max(ij) < 33]
        assert k == len(cells) - len(set(cells))
    jgrids = jax.jit(lambda t: imaging.targets_to_grid(t, collision=collision))(jnp.asarray(frames, jnp.float32))
    np.testing.assert_allclose(np.asarray(jgrids), grids, rtol=1e-6)


def test_least_squares_init_matches_normal_equations():
    rng = np.random.default_rng(5)
    c, size = 3, 5  # small problem: Φ is 25 × 225
    phi = imaging.measurement_matrix(c=c, size=size)
    targets = np.concatenate([rng.uniform(0, size - 1, (400, 3, 2)), rng.uniform(220, 250, (400, 3, 1))], -1)
    x = imaging.targets_to_grid(targets, c=c, size=size).reshape(400, -1).T  # (n, N)
    y = phi @ x
    q_ref = x @ y.T @ np.linalg.inv(y @ y.T)
    q = imaging.least_squares_init(phi, x.T)
    assert q.shape == (c * c * size * size, size * size)
    np.testing.assert_allclose(q, q_ref, rtol=1e-6, atol=1e-9 * np.abs(q_ref).max())


def test_quantize_rounds_and_clips_and_counts():
    img = np.array([[-3.2, 0.49, 0.5, 1.5], [254.4, 254.6, 255.49, 300.0]])
    np.testing.assert_array_equal(imaging.quantize(img), [[0, 0, 0, 2], [254, 255, 255, 255]])
    assert imaging.quantize(img).dtype == np.uint8
    assert int(imaging.count_clipped(img)) == 2
    with pytest.raises(ValueError):
        imaging.quantize(img, clip=False)
    ok = np.array([[0.2, 254.7]])
    np.testing.assert_array_equal(imaging.quantize(ok, clip=False), [[0, 255]])


# --- JAX path -------------------------------------------------------------------------------------------------

_render_jit = jax.jit(imaging.render)


def _weighted(t):
    weights = jnp.arange(SIZE * SIZE, dtype=t.dtype).reshape(SIZE, SIZE) / 60.0 - 1.0
    return jnp.sum(weights * imaging.render(t))


_grad = jax.jit(jax.grad(_weighted))


def test_render_jax_jit_matches_numpy():
    rng = np.random.default_rng(6)
    targets = np.stack([_random_targets(rng, 4) for _ in range(5)])
    out = _render_jit(jnp.asarray(targets, jnp.float32))
    assert out.shape == (5, SIZE, SIZE) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), imaging.render(targets), rtol=2e-5, atol=2e-4)


def test_render_gradients_match_finite_differences():
    rng = np.random.default_rng(7)
    targets = _random_targets(rng, 6)
    with jax.enable_x64(True):
        grad = np.asarray(_grad(jnp.asarray(targets, jnp.float64)))
    assert grad.shape == targets.shape

    def f(t):
        weights = np.arange(SIZE * SIZE, dtype=np.float64).reshape(SIZE, SIZE) / 60.0 - 1.0
        return float(np.sum(weights * imaging.render(t)))

    fd = np.zeros_like(targets)
    h = 1e-6
    for idx in np.ndindex(*targets.shape):
        tp, tm = targets.copy(), targets.copy()
        tp[idx] += h
        tm[idx] -= h
        fd[idx] = (f(tp) - f(tm)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
    # The brightness gradient is exactly the PSF-weighted sum: a second, closed-form check.
    assert np.all(np.abs(grad[:, 2]) > 0)


def test_render_float32_gradients_are_finite_at_awkward_positions():
    # Pixel edges and far tails hit the branch switches of the closed form; gradients must stay finite.
    targets = jnp.array([[0.5, 5.0, 230.0], [-0.5, 10.5, 240.0], [5.0, 5.0, 220.0]], jnp.float32)
    g = _grad(targets)
    assert bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.abs(g[:, :2]).max()) > 0
