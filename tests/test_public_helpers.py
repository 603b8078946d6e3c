"""Direct unit tests of small public helpers no other test calls by name.

Each helper is checked against an independent reference: a numpy closed form in float64, an explicit Python
loop, or the rule its docstring states. Float tolerances are written as float32 epsilon (``EPS32`` ≈ 1.2e-7)
times a stated growth factor.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqcsist_jax import fileio, imaging, workdir
from seqcsist_jax.baselines import common, istanet, sr_layers, unfolded, usrnet
from seqcsist_jax.data import splits
from seqcsist_jax.decode import forward, frames, trajectory
from seqcsist_jax.decode.options import DecodeOptions
from seqcsist_jax.ops import deform_conv

EPS32 = float(np.finfo(np.float32).eps)


def _random_spd(rng: np.random.Generator, n: int) -> np.ndarray:
    """Well-conditioned SPD ``(n, n)``: ``M Mᵀ/n + I`` (eigenvalues in about ``[1, 5]``), rounded to float32."""
    m = rng.standard_normal((n, n))
    return (m @ m.T / n + np.eye(n)).astype(np.float32)


# --------------------------------------------------------------------------------------------- decode/forward


@pytest.mark.parametrize("n", [1, 3, 12, 13, 20])  # both sides of UNROLLED_MAX = 12 (unrolled vs LAPACK)
def test_spd_logdet_matches_numpy_slogdet(n):
    rng = np.random.default_rng(n)
    a = _random_spd(rng, n)
    sign, want = np.linalg.slogdet(a.astype(np.float64))  # reference on the same float32-rounded entries
    assert sign == 1.0
    kappa = np.linalg.cond(a.astype(np.float64))
    # Cholesky's backward error is |δA| ≲ n·eps·|A|, so |δ logdet| = |tr(A⁻¹ δA)| ≲ n²·κ·eps; the sum of n logs
    # adds n·eps·|logdet|. Factor 4 of slack.
    tol = 4 * EPS32 * (n * n * kappa + n * abs(want))
    got = float(forward.spd_logdet(jnp.asarray(a)))
    assert abs(got - want) <= tol, (got, want, tol)


def test_spd_logdet_vmaps_over_a_batch():
    rng = np.random.default_rng(7)
    batch = np.stack([_random_spd(rng, 5) * s for s in (0.5, 1.0, 3.0)])  # distinct logdets per matrix
    want = np.array([np.linalg.slogdet(a.astype(np.float64))[1] for a in batch])
    got = np.asarray(jax.vmap(forward.spd_logdet)(jnp.asarray(batch)))
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * EPS32 * (25 * 10 + 5 * np.abs(want).max()))


def test_jacobian_factors_match_render_and_finite_differences():
    size, sigma = 11, 0.5
    params = np.array([[3.2, 6.7, 230.0], [5.1, 4.4, 245.0], [7.9, 2.3, 221.0]])  # rows (x, y, b)
    u, v, pred = forward.jacobian_factors(jnp.asarray(params, jnp.float32), size, sigma)
    u, v, pred = np.asarray(u, np.float64), np.asarray(v, np.float64), np.asarray(pred, np.float64)
    k = params.shape[0]
    assert u.shape == v.shape == (3 * k, size) and pred.shape == (size, size)
    b_max = params[:, 2].max()
    # pred: float32 profiles are within a few eps of the float64 tail-accurate render; products of ≤ 3 factors
    # summed over K targets of brightness ≤ b_max → 16·eps·K·b_max.
    np.testing.assert_allclose(pred, imaging.render(params, size, sigma), rtol=0, atol=16 * EPS32 * k * b_max)
    # ∂pred[r, c]/∂θ_p, θ = params.reshape(-1), by central differences of the float64 render (h = 1e-4:
    # truncation h²/6·|f'''| ≲ 1e-8/6 · b/σ³ ≈ 3e-6).
    h = 1e-4
    for p in range(3 * k):
        plus, minus = params.copy(), params.copy()
        plus.reshape(-1)[p] += h
        minus.reshape(-1)[p] -= h
        fd = (imaging.render(plus, size, sigma) - imaging.render(minus, size, sigma)) / (2 * h)
        # float32 factors: |∂a/∂u| ≤ 1/(σ√(2π)) < 1, so 32·eps·b_max covers their rounding plus the FD error.
        np.testing.assert_allclose(np.outer(u[p], v[p]), fd, rtol=0, atol=32 * EPS32 * b_max + 1e-5,
                                   err_msg=f"parameter {p}")


# --------------------------------------------------------------------------------------------- decode/frames


def test_count_criterion_closed_form_and_count_range():
    rng = np.random.default_rng(0)
    opts = DecodeOptions(noise_sigma=2.0, min_targets=1, max_targets=3)
    s2 = 1.0 / 12.0 + 2.0**2  # the documented noise variance: rounding's 1/12 plus noise_sigma²
    cost = rng.uniform(0, 500, size=(4, 6)).astype(np.float32)  # K = 0..5
    penalty, per_target = 4.8, 3
    got = frames.count_criterion(cost, per_target, opts, penalty)
    assert got.shape == cost.shape
    for i in range(cost.shape[0]):
        for kk in range(cost.shape[1]):
            if 1 <= kk <= 3:
                want = float(cost[i, kk]) / s2 + penalty * per_target * kk
                assert got[i, kk] == pytest.approx(want, rel=1e-12)
            else:
                assert got[i, kk] == np.inf


def test_position_variances_match_inverse_normal_matrix():
    rng = np.random.default_rng(1)
    k, per_target = 3, 3
    jac = rng.standard_normal((121, per_target * k))
    jac[:, 2::per_target] *= 1e-2  # brightness columns on another scale, as in the fits (Jacobi scaling's job)
    jtj = jac.T @ jac
    noise_variance = 1.0 / 12.0 + 0.25
    cov = noise_variance * np.linalg.inv(jtj)  # float64 reference
    want = 0.5 * (np.diag(cov)[0::per_target] + np.diag(cov)[1::per_target])
    got = np.asarray(frames.position_variances(jnp.asarray(jtj, jnp.float32), noise_variance, per_target))
    d = 1.0 / np.sqrt(np.diag(jtj))
    kappa = np.linalg.cond(jtj * d[:, None] * d[None, :])  # condition of the Jacobi-scaled matrix it solves
    p = per_target * k
    # The 1e-6·I ridge on the scaled matrix shifts the inverse by ≤ 1e-6·κ relative; a float32 Cholesky solve
    # adds ≲ P·κ·eps (8× slack); float32 rounding of JᵀJ itself is covered by the same term.
    np.testing.assert_allclose(got, want, rtol=kappa * (1e-6 + 8 * p * EPS32))


def test_position_variances_singular_direction_is_finite_and_large():
    rng = np.random.default_rng(2)
    jac = rng.standard_normal((121, 6))
    jac[:, 3] = 0.0  # x of the second target does not move the frame at all: JᵀJ is singular
    got = np.asarray(frames.position_variances(jnp.asarray(jac.T @ jac, jnp.float32), 0.25))
    assert got.shape == (2,)
    assert np.all(np.isfinite(got))
    assert got[1] > 1e3 * got[0]


def test_masked_normal_freezes_parameters():
    rng = np.random.default_rng(3)
    p = 7
    jac = rng.standard_normal((30, p))
    jtj, jtr = jac.T @ jac, rng.standard_normal(p)
    mask = np.array([True, False, True, True, False, True, False])
    a, b = frames.masked_normal(jnp.asarray(jtj, jnp.float32), jnp.asarray(jtr, jnp.float32), jnp.asarray(mask))
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    want_a = np.zeros((p, p))
    for i in range(p):
        for j in range(p):
            want_a[i, j] = jtj[i, j] if (mask[i] and mask[j]) else float(i == j)
    want_b = np.where(mask, jtr, 0.0)
    np.testing.assert_allclose(a, want_a, rtol=EPS32)  # one float32 rounding of the inputs
    np.testing.assert_allclose(b, want_b, rtol=EPS32)
    # Consequence the fits rely on: the masked system's step is the free sub-system's step, zero on frozen ones.
    step = np.linalg.solve(a, b)
    free = np.flatnonzero(mask)
    np.testing.assert_allclose(step[free], np.linalg.solve(jtj[np.ix_(free, free)], jtr[free]), rtol=1e-5)
    assert np.all(step[~mask] == 0.0)


# Two targets, centre pixel stored at the clip level (255): censoring, the hinge and the prior all act.
_OBJ_TRUTH = np.array([[5.0, 5.2, 400.0], [5.2, 5.6, 420.0]])
_OBJ_THETA = _OBJ_TRUTH + np.array([[0.04, -0.03, 25.0], [-0.05, -0.05, -15.0]])  # 0.39 px apart (< 0.494)


def _objective_reference(obs, theta, active, opts):
    """float64 numpy residual vector of one frame's fit, from the docstrings: censored data residuals
    (``imaging.render`` minus ``obs``; 0 at pixels stored at the clip level whose prediction reaches it),
    the separation hinge ``s·max(0, d_min - d)/w`` per active pair and the brightness prior
    ``s/sd·(b - mu)`` per active slot (cost ``s²/sd²·(b - mu)²``), ``s² = opts.noise_variance``."""
    s = np.sqrt(opts.noise_variance)
    mu, sd = opts.brightness_prior
    clipped = (obs >= opts.clip_level - 0.5) & (obs.max() <= opts.clip_level + 0.5)
    censor = clipped & (imaging.render(theta.reshape(-1, 3)) >= opts.clip_level)  # fixed at theta (FD below)

    def residual(t, censored=True):
        t = t.reshape(-1, 3)
        data = np.where(censor & censored, 0.0, imaging.render(t) - obs).reshape(-1)
        hinge = [s / opts.separation_width * max(0.0, opts.min_separation - np.hypot(*(t[i, :2] - t[j, :2])))
                 for i in range(len(t)) for j in range(i + 1, len(t)) if active[i] and active[j]]
        prior = [s / sd * (t[k, 2] - mu) for k in range(len(t)) if active[k]]
        return data, np.array(hinge + prior)

    return residual, censor


@pytest.mark.parametrize("active", [(True, True), (True, False)], ids=["both", "one_active"])
def test_frame_objective_matches_a_float64_numpy_objective(active):
    opts = DecodeOptions(min_separation=0.494)  # default prior (235, 8.66), clip level 255, noise var. 1/12
    obs = imaging.quantize(imaging.render(_OBJ_TRUTH[None]))[0].astype(np.float64)
    active = np.array(active)
    theta = _OBJ_THETA.copy()
    theta[~active, 2] = 0.0  # inactive slots hold brightness 0 (documented)
    residual, censor = _objective_reference(obs, theta, active, opts)
    # both active: the clipped pixel is predicted above 255 (censored); one active: below it (a live residual)
    assert obs.max() == 255 and censor.sum() == int(active.all())
    data, extra = residual(theta)
    want_cost = data @ data + extra @ extra
    # Jacobian by central differences (h = 1e-5: truncation h²/6·b/σ³ ≲ 1e-7, cancellation 1e-16·b/h ≲ 1e-8)
    h, p = 1e-5, theta.size
    jd, je, j_all = np.zeros((data.size, p)), np.zeros((extra.size, p)), np.zeros((data.size, p))
    for q in range(p):
        plus, minus = theta.reshape(-1).copy(), theta.reshape(-1).copy()
        plus[q] += h
        minus[q] -= h
        (d_plus, e_plus), (d_minus, e_minus) = residual(plus), residual(minus)
        jd[:, q], je[:, q] = (d_plus - d_minus) / (2 * h), (e_plus - e_minus) / (2 * h)
        j_all[:, q] = (residual(plus, False)[0] - residual(minus, False)[0]) / (2 * h)  # no pixel censored
    mask = np.repeat(active, 3)  # frozen parameters: zero rows/columns, 1 on the diagonal (masked_normal)
    want_jtj = np.where(mask[:, None] & mask[None, :], jd.T @ jd + je.T @ je, np.diag(1.0 - mask))
    want_jtr = np.where(mask, jd.T @ data + je.T @ extra, 0.0)

    fns = frames.frame_objective(jnp.asarray(obs, jnp.float32), jnp.asarray(active), opts)
    normal_fn, cost_fn, project = (jax.jit(f) for f in fns)  # one compile each (eager: 5× slower)
    theta32 = jnp.asarray(theta.reshape(-1), jnp.float32)
    jtj, jtr, cost = (np.asarray(a, np.float64) for a in normal_fn(theta32))

    # Tolerances from float32 rounding. Each predicted pixel is within dp = 16·eps·K·b_max of the float64
    # render (as in test_jacobian_factors_match_render_and_finite_differences); a data Jacobian entry within
    # dj = 32·eps·b (x, y columns) or 32·eps (b columns), plus 1e-7 for the finite differences. A sum of
    # products Σ a·c is then off by ≤ Σ(|a|·dc + |c|·da) plus the rounding of the products and of the
    # separable sums (≤ 2·11 terms, JᵀJ = (UUᵀ)∘(VVᵀ)), ≤ 32·eps·Σ|a||c|; the censored pixel's row is
    # subtracted from the full sum, so magnitudes include it. (Measured errors: ~1/100 of these bounds.)
    k = len(theta)
    dp = 16 * EPS32 * k * theta[:, 2].max()
    dj = 32 * EPS32 * np.stack([theta[:, 2], theta[:, 2], np.ones(k)], 1).reshape(-1) + 1e-7
    a_all, a_e, r_abs, e_abs = np.abs(j_all), np.abs(je), np.abs(data), np.abs(extra)
    s_j = a_all.sum(0)
    tol_cost = 2 * r_abs.sum() * dp + data.size * dp**2 + 32 * EPS32 * want_cost
    tol_jtj = (dj[:, None] * s_j[None, :] + s_j[:, None] * dj[None, :]
               + 32 * EPS32 * (a_all.T @ a_all + a_e.T @ a_e))
    tol_jtr = dp * s_j + dj * r_abs.sum() + 32 * EPS32 * (a_all.T @ r_abs + a_e.T @ e_abs)
    assert cost == pytest.approx(want_cost, abs=tol_cost)
    assert float(cost_fn(theta32)) == pytest.approx(want_cost, abs=tol_cost)
    # each hinge and prior term is far above that tolerance (a dropped term fails)
    assert np.all(extra**2 > 10 * tol_cost) and len(extra) == (3 if active.all() else 1)
    np.testing.assert_array_less(np.abs(jtj - want_jtj), tol_jtj * mask[:, None] * mask[None, :] + 1e-30)
    np.testing.assert_array_less(np.abs(jtr - want_jtr), tol_jtr * mask + 1e-30)

    # project: positions into the frame box [-1, S] (no single_pixel), active brightnesses >= 1 (no range),
    # inactive brightnesses 0 -- exact (clipping).
    wild = np.array([[-3.0, 12.5, 0.25], [4.0, 11.0, 300.0]])
    want = np.array([[-1.0, 11.0, 1.0], [4.0, 11.0, 300.0 if active[1] else 0.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(project(jnp.asarray(wild.reshape(-1), jnp.float32))),
                                  want.reshape(-1))


def test_frame_objective_project_boxes_single_pixel_positions_and_brightness_range():
    obs = imaging.quantize(imaging.render(_OBJ_TRUTH[None]))[0].astype(np.float32)
    opts = DecodeOptions(single_pixel=True, brightness_range=(220.0, 250.0))
    w = obs.astype(np.float64)
    grid = np.arange(11)
    centre = np.round([(w.sum(1) * grid).sum() / w.sum(), (w.sum(0) * grid).sum() / w.sum()])
    assert centre.tolist() == [5.0, 5.0]  # the intensity centroid's pixel
    project = jax.jit(frames.frame_objective(jnp.asarray(obs), jnp.array([True, True, False]), opts)[2])
    theta = np.array([[3.0, 5.2, 100.0], [5.4, 7.0, 260.0], [5.1, 4.2, 240.0]])
    want = np.array([[4.5, 5.2, 220.0], [5.4, 5.5, 250.0], [5.1, 4.5, 0.0]], np.float32)
    got = np.asarray(project(jnp.asarray(theta.reshape(-1), jnp.float32)))
    np.testing.assert_array_equal(got, want.reshape(-1))


# ----------------------------------------------------------------------------------------------- deform_conv


def _window_count(n: int, k: int, s: int, p: int, d: int) -> int:
    """Kernel placements that fit in the padded input ``[-p, n + p)``, counted one by one."""
    count, start = 0, -p
    while start + d * (k - 1) <= n + p - 1:
        count += 1
        start += s
    return count


@pytest.mark.parametrize("stride", [1, 2, (3, 1)])
@pytest.mark.parametrize("padding", [0, 1, (2, 0)])
@pytest.mark.parametrize("dilation", [1, (2, 3)])
def test_deform_output_size_counts_kernel_placements(stride, padding, dilation):
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    for in_hw, kernel in (((11, 11), 3), ((9, 14), (3, 2)), ((7, 12), (1, 4))):
        kh, kw = pair(kernel)
        want = (_window_count(in_hw[0], kh, sh, ph, dh), _window_count(in_hw[1], kw, sw, pw, dw))
        got = deform_conv.deform_output_size(in_hw, kernel, stride, padding, dilation)
        assert got == want, (in_hw, kernel, stride, padding, dilation)



@pytest.mark.parametrize("in_hw, kernel, padding, dilation", [((2, 11), 5, 1, 1), ((11, 3), 3, 0, 2),
                                                              ((0, 11), 1, 0, 1)])
def test_deform_output_size_refuses_a_kernel_larger_than_the_padded_input(in_hw, kernel, padding, dilation):
    assert min(_window_count(n, kernel, 1, padding, dilation) for n in in_hw) == 0  # no placement fits
    with pytest.raises(ValueError, match=r"too small: .* smaller than the dilated kernel .*; output would be"):
        deform_conv.deform_output_size(in_hw, kernel, 1, padding, dilation)

def test_sampling_positions_grid_plus_offsets_in_torchvision_channel_order():
    kh, kw, g = 2, 3, 2
    stride, padding, dilation = (2, 1), (1, 0), (1, 2)
    ho, wo = deform_conv.deform_output_size((7, 9), (kh, kw), stride, padding, dilation)
    rng = np.random.default_rng(4)
    for offset in (np.zeros((2, ho, wo, 2 * g * kh * kw), np.float32),
                   rng.uniform(-1.5, 1.5, (2, ho, wo, 2 * g * kh * kw)).astype(np.float32)):
        py, px = deform_conv.sampling_positions(offset, (kh, kw), stride=stride, padding=padding,
                                                dilation=dilation, offset_groups=g)
        assert py.shape == px.shape == (2, ho, wo, g, kh * kw) and py.dtype == jnp.float32
        want_y, want_x = np.zeros(py.shape), np.zeros(px.shape)
        for n in range(2):
            for oy in range(ho):
                for ox in range(wo):
                    for gg in range(g):
                        for i in range(kh):
                            for j in range(kw):
                                kk = i * kw + j
                                ch = gg * 2 * kh * kw + 2 * kk
                                want_y[n, oy, ox, gg, kk] = oy * stride[0] - padding[0] + i * dilation[0] \
                                    + offset[n, oy, ox, ch]
                                want_x[n, oy, ox, gg, kk] = ox * stride[1] - padding[1] + j * dilation[1] \
                                    + offset[n, oy, ox, ch + 1]
        # grid positions are small integers (exact in float32); one float32 addition of the offset: ≤ 8·eps·|y|.
        np.testing.assert_allclose(np.asarray(py), want_y, rtol=0, atol=8 * EPS32 * 16)
        np.testing.assert_allclose(np.asarray(px), want_x, rtol=0, atol=8 * EPS32 * 16)


# --------------------------------------------------------------------------------------------------- imaging


def _label_maps_by_loop(targets: np.ndarray, c: int, size: int, collision: str) -> np.ndarray:
    """``(N, (size·c)²)`` label maps by the documented rule: cell ``round(c·u + (c-1)//2)`` (half to even, as
    Python's ``round``) for x (row) and y (column); brightness-0 rows and cells off the grid skipped; collisions
    add up (``sum``) or the later target wins (``overwrite``)."""
    n = size * c
    out = np.zeros((targets.shape[0], n, n))
    for f, rows in enumerate(targets):
        for x, y, b in rows:
            i, j = round(c * x + (c - 1) // 2), round(c * y + (c - 1) // 2)
            if b == 0 or not (0 <= i < n and 0 <= j < n):
                continue
            out[f, i, j] = out[f, i, j] + b if collision == "sum" else b
    return out.reshape(targets.shape[0], -1)


@pytest.mark.parametrize("collision", ["sum", "overwrite"])
def test_label_gram_equals_explicit_outer_products(collision):
    c, size = 3, 4
    rng = np.random.default_rng(5)
    targets = np.concatenate([rng.uniform(-0.4, size - 0.6, (2, 3, 4, 2)), rng.uniform(220, 250, (2, 3, 4, 1))],
                             axis=-1)
    targets[0, 0, 1] = targets[0, 0, 0] + [0.01, -0.01, 0.0]  # same cell as row 0 (a collision)
    targets[0, 0, 1, 2] = 231.0
    targets[0, 1, 2, 2] = 0.0  # padding row
    targets[1, 2, 3, :2] = [size + 1.0, 1.0]  # off the grid
    x = _label_maps_by_loop(targets.reshape(-1, 4, 3), c, size, collision)  # (frames, cells)
    got = imaging.label_gram(targets, c, size, collision)
    assert got.shape == ((size * c) ** 2,) * 2 and got.dtype == np.float64
    np.testing.assert_allclose(got, x.T @ x, rtol=1e-12, atol=0)


def test_least_squares_init_from_gram_solves_the_least_squares_problem():
    rng = np.random.default_rng(6)
    m, n, frames_ = 5, 12, 40
    phi = rng.standard_normal((m, n))
    x = rng.standard_normal((n, frames_))  # label vectors as columns
    y = phi @ x
    # Q = argmin ‖X - Q Y‖_F: per row of Q an ordinary least-squares fit (lstsq via SVD, not normal equations).
    want = np.linalg.lstsq(y.T, x.T, rcond=None)[0].T
    got = imaging.least_squares_init_from_gram(phi, x @ x.T)
    # float64 normal equations lose κ(Y)² digits: κ(Y)²·1e3·eps64 bounds the difference to the SVD solution.
    tol = np.linalg.cond(y) ** 2 * 1e3 * np.finfo(np.float64).eps
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
    # An explicit ridge is ridge regression: argmin ‖X - Q Y‖² + ridge‖Q‖², i.e. lstsq on [Yᵀ; √ridge·I].
    ridge = 3.0
    aug_a = np.concatenate([y.T, math.sqrt(ridge) * np.eye(m)])
    aug_b = np.concatenate([x.T, np.zeros((m, n))])
    want_r = np.linalg.lstsq(aug_a, aug_b, rcond=None)[0].T
    np.testing.assert_allclose(imaging.least_squares_init_from_gram(phi, x @ x.T, ridge=ridge), want_r,
                               rtol=0, atol=tol * np.abs(want_r).max())


# ------------------------------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("threshold", [0.7, np.array([0.0, 0.3, 1.0, 2.5], np.float32)])
def test_soft_and_hard_threshold(threshold):
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1.5, (6, 4)).astype(np.float32)
    x[0] = [0.7, -0.7, 1.0, -2.5]  # entries exactly at the threshold (either parametrisation for columns 2, 3)
    t = np.broadcast_to(np.asarray(threshold, np.float32), x.shape)
    soft_want = np.array([math.copysign(max(abs(v) - th, 0.0), v) if v != 0 else 0.0
                          for v, th in zip(x.ravel().tolist(), t.ravel().tolist())]).reshape(x.shape)
    hard_want = np.array([v if abs(v) > th else 0.0
                          for v, th in zip(x.ravel().tolist(), t.ravel().tolist())]).reshape(x.shape)
    soft = np.asarray(common.soft_threshold(jnp.asarray(x), jnp.asarray(threshold)))
    hard = np.asarray(unfolded.hard_threshold(jnp.asarray(x), jnp.asarray(threshold)))
    np.testing.assert_allclose(soft, soft_want, rtol=0, atol=2 * EPS32 * 8)  # one float32 subtraction, |x| < 8
    np.testing.assert_array_equal(hard, hard_want)  # exact: keeps or zeros entries


def test_frame_vectors_rows_are_flattened_frames():
    rng = np.random.default_rng(9)
    fr = rng.integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    got = np.asarray(common.frame_vectors(jnp.asarray(fr)))
    assert got.shape == (6, 20) and got.dtype == np.float32
    for b in range(2):
        for t in range(3):
            np.testing.assert_array_equal(got[b * 3 + t], [float(v) for v in fr[b, t].ravel().tolist()])


@pytest.mark.parametrize("num_frames", [5, 6, 20, 33])
def test_scored_slice_drops_two_frames_each_end(num_frames):
    frames_ = list(range(num_frames))
    assert frames_[common.scored_slice(num_frames)] == frames_[2:num_frames - 2]
    if num_frames == 20:
        assert frames_[common.scored_slice(20)] == list(range(2, 18))


@pytest.mark.parametrize("num_frames", [0, 3, 4])
def test_scored_slice_rejects_short_trajectories(num_frames):
    with pytest.raises(ValueError, match="more than 4 frames"):
        common.scored_slice(num_frames)


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_upsample_nearest_copies_source_pixel(scale):
    x = np.random.default_rng(10).standard_normal((2, 3, 4, 2)).astype(np.float32)  # NHWC, H ≠ W
    got = np.asarray(sr_layers.upsample_nearest(jnp.asarray(x), scale))
    assert got.shape == (2, 3 * scale, 4 * scale, 2)
    for i in range(3 * scale):
        for j in range(4 * scale):
            # F.interpolate nearest with an integer factor: source index floor(dst / scale).
            np.testing.assert_array_equal(got[:, i, j, :], x[:, i // scale, j // scale, :])


def test_l2_normalize_unit_norm_same_direction_and_zero_safe():
    v = np.random.default_rng(11).standard_normal(17).astype(np.float32) * 40.0
    got = np.asarray(sr_layers.l2_normalize(jnp.asarray(v)), np.float64)
    want = v.astype(np.float64) / math.sqrt(sum(float(e) ** 2 for e in v))
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * EPS32 * math.sqrt(17))  # norm of 17 terms + a division
    zero = np.asarray(sr_layers.l2_normalize(jnp.zeros(5)))
    np.testing.assert_array_equal(zero, np.zeros(5))  # eps floor: no NaN for the zero vector


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_block_mean_averages_the_distinct_blocks(scale):
    h, w = 2 * scale, 4 * scale  # (H/s, W/s) = (2, 4) blocks, non-square so a transpose would show
    x = np.random.default_rng(12).standard_normal((3, h, w)).astype(np.float32)
    bh, bw = h // scale, w // scale
    want = np.zeros((3, bh, bw))
    for a in range(scale):
        for b in range(scale):
            want += x[:, a * bh:(a + 1) * bh, b * bw:(b + 1) * bw]
    want /= scale * scale
    got = np.asarray(usrnet.block_mean(jnp.asarray(x), scale))
    assert got.shape == (3, bh, bw)
    np.testing.assert_allclose(got, want, rtol=0, atol=2 * EPS32 * scale * scale * np.abs(x).max())  # s² adds


def test_lipschitz_is_largest_singular_value_squared():
    phi = np.random.default_rng(13).standard_normal((6, 15))
    want = np.linalg.svd(phi, compute_uv=False)[0] ** 2
    got = istanet.lipschitz(jnp.asarray(phi, jnp.float32))
    assert isinstance(got, float)
    # float32 input rounding perturbs σ_max by ≤ ‖δΦ‖₂ ≲ √(mn)·eps·max|Φ| relative; ×2 for the square, ×4 slack.
    np.testing.assert_allclose(got, want, rtol=8 * EPS32 * math.sqrt(phi.size) * np.abs(phi).max())
    traced = jax.jit(istanet.lipschitz)(jnp.asarray(phi, jnp.float32))  # the traced branch
    np.testing.assert_allclose(float(traced), want, rtol=1e-5)  # float32 SVD: ~80 eps
    # The docstring's value for SeqCSIST's Φ (3 decimals).
    seq = imaging.measurement_matrix()
    assert istanet.lipschitz(seq) == pytest.approx(np.linalg.svd(seq, compute_uv=False)[0] ** 2, rel=1e-12)
    assert istanet.lipschitz(seq) == pytest.approx(8.587, abs=5e-4)


# ------------------------------------------------------------------------------------------ decode/trajectory


def test_star_direction_vectors_are_the_named_axis_and_compass_directions():
    from seqcsist_jax.data.simulate import DIRECTION_NAMES

    # (Δx, Δy), x the row axis: up = towards row 0.
    unit = {"up": (-1.0, 0.0), "down": (1.0, 0.0), "left": (0.0, -1.0), "right": (0.0, 1.0)}
    named = []
    for name in DIRECTION_NAMES:
        vec = np.sum([unit[part] for part in name.split("-")], axis=0)
        named.append(vec / np.linalg.norm(vec))
    for d in (4, 8):
        got = trajectory.star_direction_vectors(d)
        assert got.shape == (d, 2) and got.dtype == np.float64
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-15)
        np.testing.assert_allclose(got, np.array(named[:d]), rtol=0, atol=1e-15)
    axis = trajectory.star_direction_vectors(4)
    assert np.all(np.sum(axis == 0, axis=1) == 1)  # 4 axis directions
    compass = {(round(math.cos(a), 12), round(math.sin(a), 12)) for a in np.arange(8) * math.pi / 4}
    got8 = {tuple(np.round(v, 12) + 0.0) for v in trajectory.star_direction_vectors(8)}
    assert got8 == {(x + 0.0, y + 0.0) for x, y in compass}  # the 8 compass directions, each once


def test_fit_from_paths_converges_to_exact_linear_motion():
    """Two targets in uniform linear motion, rendered without rounding or clipping (the truth fits exactly):
    started from paths 0.06 px and 12 grey levels off, the trajectory fit returns the true paths. A third,
    unused row (``count`` = 2) holds a decoy target that must be ignored."""
    t_frames, k = 5, 2
    start = np.array([[4.3, 5.1, 230.0], [6.2, 4.4, 245.0]])
    velocity = np.array([[0.05, 0.02], [-0.03, 0.04]])  # px per frame
    truth = np.repeat(start[None], t_frames, 0)
    truth[:, :, :2] += np.arange(t_frames)[:, None, None] * velocity[None]  # (T, K, 3)
    obs = imaging.render(truth)[None]  # (1, T, 11, 11) float64, unclipped
    paths = np.concatenate([truth, np.tile([[[2.0, 8.0, 200.0]]], (t_frames, 1, 1))], 1)[None]  # decoy row 2
    paths[:, :, :k] += np.array([0.06, -0.04, 12.0])
    opts = DecodeOptions(clip_level=None, brightness_prior=None, max_targets=3)  # pure least squares
    params, cost = trajectory.fit_from_paths(obs, paths, np.array([k]), opts)
    assert params.shape == (1, t_frames, 3, 3) and cost.shape == (1,)
    # The float32 prediction of a frame is within dp = 16·eps·K·b_max of the float64 render, so the truth's
    # cost is at most T·121·dp² and a converged fit's cost no more.
    dp = 16 * EPS32 * k * start[:, 2].max()
    assert 0.0 <= cost[0] <= t_frames * 121 * dp**2
    # Positions and brightnesses: 1e-3 px and 0.05 grey level, 1/60 and 1/240 of the start's offsets (a stuck
    # or partial fit fails), yet far above float32 effects (measured: 4e-7 px, 2e-5 grey level).
    np.testing.assert_allclose(params[0, :, :k, :2], truth[:, :, :2], rtol=0, atol=1e-3)
    np.testing.assert_allclose(params[0, :, :k, 2], truth[:, :, 2], rtol=0, atol=0.05)
    assert np.all(params[0, :, k:, 2] == 0.0)  # the unused slot holds no target (brightness 0), decoy ignored


# ---------------------------------------------------------------------------------------- data, workdir, io


@pytest.mark.parametrize("name, family", [
    ("seqcsist/mini", "seqcsist"), ("csist100k:1.0.0", "csist100k"), ("seqcsist/default:1.0.0", "seqcsist"),
    ("simulated", "simulated"), ("simulated_csist100k", "simulated_csist100k"),
])
def test_dataset_family(name, family):
    assert splits.dataset_family(name) == family


@pytest.mark.parametrize("name, single", [
    ("csist100k/mini", True), ("csist100k:1.0.0", True), ("simulated_csist100k", True),
    ("seqcsist/mini", False), ("simulated", False), ("seqcsist/targets_2_8", False),
])
def test_is_single_image(name, single):
    from seqcsist_jax.data import names

    assert names.is_single_image(name) is single
    assert splits.is_single_image is names.is_single_image  # one definition, re-exported where data is loaded


def test_known_dataset_names_cover_the_documented_names():
    names = splits.known_dataset_names()
    assert len(set(names)) == len(names)
    for name in names:
        assert name in ("simulated", "simulated_csist100k") or re.fullmatch(r"(seqcsist|csist100k)/\w+", name), name
    assert {"simulated", "simulated_csist100k"} <= set(names)
    # Every TFDS name the README tells users to pass is one this project reads.
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    documented = set(re.findall(r"\b(?:seqcsist|csist100k)/[a-z0-9_]+", readme))
    assert {"seqcsist/default", "seqcsist/mini", "csist100k/default"} <= documented
    assert documented <= set(names), documented - set(names)


def test_run_differences_ignores_only_restart_safe_fields():
    old = {"seed": 0, "progress_bar": True, "optimizer": {"learning_rate": 1e-3},
           "dataset": {"name": "seqcsist/mini", "data_dir": "/a"}, "eval": {"batch_size": 64, "threshold": 70.0}}
    same_run = {"seed": 0, "progress_bar": False, "optimizer": {"learning_rate": 1e-3},
                "dataset": {"name": "seqcsist/mini"}, "eval": {"batch_size": 8, "threshold": 70.0}}
    assert workdir.run_differences(old, same_run) == []  # data_dir left out, logging/batching changed
    other = {**same_run, "optimizer": {"learning_rate": 2e-3}, "eval": {"batch_size": 8, "threshold": 60.0}}
    got = workdir.run_differences(old, other)
    assert len(got) == 2
    assert got[0].startswith("eval.threshold:") and "70.0" in got[0] and "60.0" in got[0]
    assert got[1].startswith("optimizer.learning_rate:") and "0.001" in got[1] and "0.002" in got[1]


def test_remove_stale_temporaries(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = proc.pid  # reaped: no process has this id (reuse within the test is vanishingly unlikely)
    target = tmp_path / "out[1].json"  # glob metacharacters in the name
    old = time.time() - 2 * fileio.STALE_SECONDS
    stale = [tmp_path / f".{target.name}.{dead}.123.tmp", tmp_path / f".{target.name}.{dead}.456.tmp.npz"]
    kept = [
        tmp_path / f".{target.name}.{dead}.789.tmp",  # writer gone but the file is fresh
        tmp_path / f".{target.name}.{os.getpid()}.1.tmp",  # live writer (this process)
        tmp_path / f".{target.name}.host.1.tmp",  # not a pid
        tmp_path / f".other.json.{dead}.1.tmp",  # another file's temporary
        target,
    ]
    for f in stale + kept:
        f.write_text("x")
    for f in stale + kept[1:]:
        os.utime(f, (old, old))
    removed = fileio.remove_stale_temporaries(target)
    assert sorted(removed) == sorted(stale)
    assert not any(f.exists() for f in stale)
    assert all(f.exists() for f in kept)


def test_file_sha256_matches_hashlib_across_block_boundaries(tmp_path):
    import hashlib

    from seqcsist_jax.fileio import file_sha256

    for size in (0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 7):  # empty, one block, block edges, two blocks
        data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        assert file_sha256(path) == hashlib.sha256(data).hexdigest(), size


# ----------------------------------------------------------------------- helpers named by no other test (batch 2)


def test_eval_dir_paper_protocol_and_other_decoders(tmp_path):
    from seqcsist_jax import evaluate

    assert evaluate.eval_dir(tmp_path, "test") == tmp_path / "eval" / "test"
    assert evaluate.eval_dir(str(tmp_path), "validation", "grid") == tmp_path / "eval" / "validation"
    assert evaluate.eval_dir(tmp_path, "test", "trajectory") == tmp_path / "eval" / "test-trajectory"
    # distinct decoders never share a folder (their metrics files would overwrite each other)
    names = {evaluate.eval_dir(tmp_path, "test", d) for d in ("grid", "peak", "refine", "trajectory")}
    assert len(names) == 4


def test_check_optimizer_choices_accepts_the_choices_and_names_the_bad_field():
    import ml_collections

    from seqcsist_jax import train

    for name in train.OPTIMIZERS:
        for schedule in train.SCHEDULES:
            train.check_optimizer_choices(ml_collections.ConfigDict({"name": name, "schedule": schedule}))
    train.check_optimizer_choices(ml_collections.ConfigDict({}))  # the defaults (adam, constant)
    with pytest.raises(train.OptimizerConfigError, match=r"config\.optimizer\.name must be one of adam, got 'adamw'"):
        train.check_optimizer_choices(ml_collections.ConfigDict({"name": "adamw"}))
    with pytest.raises(train.OptimizerConfigError, match=r"config\.optimizer\.schedule must be one of constant, cosine"):
        train.check_optimizer_choices(ml_collections.ConfigDict({"schedule": "cosin"}))


def test_case_rng_is_a_stable_function_of_the_name():
    import zlib

    from seqcsist_jax.testing import parity_inputs

    a = parity_inputs.case_rng("offsets/mixed").standard_normal(5)
    b = parity_inputs.case_rng("offsets/mixed").standard_normal(5)
    c = parity_inputs.case_rng("offsets/zero").standard_normal(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # the seed is the CRC-32 of the UTF-8 name (so a fixture written by another process matches)
    ref = np.random.default_rng(zlib.crc32(b"offsets/mixed")).standard_normal(5)
    np.testing.assert_array_equal(a, ref)


def test_frames_nhwc_folds_time_into_batch_in_order():
    from seqcsist_jax.baselines import dbpn_gmfn

    frames = jnp.asarray(np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5), jnp.uint8)
    x, b, t, h = dbpn_gmfn.frames_nhwc(frames)
    assert (x.shape, x.dtype, b, t, h) == ((6, 4, 5, 1), jnp.float32, 2, 3, 4)
    for i in range(2):
        for j in range(3):  # row i·T + j is frame j of trajectory i
            np.testing.assert_array_equal(np.asarray(x[i * 3 + j, :, :, 0]), np.asarray(frames[i, j], np.float32))


def test_reconstruction_loss_is_the_mean_of_per_trajectory_mse():
    from seqcsist_jax.baselines import classical

    rng = np.random.default_rng(0)
    out = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    lab = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    loss, metrics = classical.reconstruction_loss({"output": jnp.asarray(out)}, jnp.asarray(lab))
    ref = np.mean((out.astype(np.float64) - lab) ** 2)  # equal-size trajectories: mean of means = global mean
    # a mean of n ≤ 432 float32 squares: relative error ≤ n·eps32 (pairwise summation does better)
    np.testing.assert_allclose(float(loss), ref, rtol=432 * EPS32)
    assert float(metrics["mse"]) == float(loss)


def test_loss_from_config_selects_own_frame_or_public_broadcast_mse():
    import ml_collections

    from seqcsist_jax.baselines import lista

    rng = np.random.default_rng(1)
    out = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    lab = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    outputs = {"output": jnp.asarray(out)}
    o64, l64 = out.astype(np.float64), lab.astype(np.float64)
    own = np.mean((o64 - l64) ** 2)
    # the public broadcast form: every output frame against every label frame of its trajectory
    broadcast = np.mean([np.mean((o64[b, i] - l64[b, j]) ** 2) for b in range(2) for i in range(3) for j in range(3)])
    for cfg, ref in ((None, own), (ml_collections.ConfigDict({}), own),
                     (ml_collections.ConfigDict({"public_broadcast": False}), own),
                     (ml_collections.ConfigDict({"public_broadcast": True}), broadcast)):
        loss, _ = lista.loss_from_config(cfg)(outputs, jnp.asarray(lab))
        np.testing.assert_allclose(float(loss), ref, rtol=1e3 * EPS32)
    assert abs(own - broadcast) > 0.1  # the two forms differ on this data, so the switch is observable


def test_write_shard_checksums_round_trips_with_verify(tmp_path):
    import hashlib
    import json

    from seqcsist_jax.data import tfds_open

    shards = []
    for split, payload in (("train", b"a" * 100), ("test", b"b" * 70)):
        p = tmp_path / f"csist100k-{split}.array_record-00000-of-00001"
        p.write_bytes(payload)
        shards.append(p)
    tfds_open.write_shard_checksums(tmp_path, shards)
    record = json.loads((tmp_path / tfds_open.CHECKSUMS_NAME).read_text())
    assert record == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}
    assert tfds_open.verify_shard_checksums(tmp_path, "test") is True
    shards[0].write_bytes(b"a" * 99 + b"c")  # one changed byte in train: test still verifies, train does not
    assert tfds_open.verify_shard_checksums(tmp_path, "test") is True
    with pytest.raises(tfds_open.DamagedDatasetError, match="csist100k-train.array_record-00000-of-00001"):
        tfds_open.verify_shard_checksums(tmp_path, "train[:10]")


def test_register_makes_both_datasets_known_to_tfds_and_is_idempotent():
    import tensorflow_datasets as tfds

    from seqcsist_jax.data import tfds_registration

    tfds_registration.register()
    tfds_registration.register()
    for name in ("seqcsist", "csist100k"):
        cls = tfds.builder_cls(name)
        assert cls.name == name
        assert any(c.name == "mini" for c in cls.BUILDER_CONFIGS)
