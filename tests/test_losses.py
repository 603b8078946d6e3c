"""DeRefNet loss (SPEC §5) against a loop reference written like the public code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqcsist_jax.models.derefnet_loss import LOSS_PRESETS, derefnet_loss


def _random_out(rng, b=2, t=7, s=5, stages=3, window=5):
    half = window // 2
    idx = np.arange(half, t - half, dtype=np.int32)
    j, k = len(idx), window - 1
    return {
        "output": rng.normal(size=(b, j, s, s)).astype(np.float32),
        "frame_index": idx,
        "sym": rng.normal(size=(stages, b, t, s, s)).astype(np.float32),
        "x_last": rng.normal(size=(b, t, s, s)).astype(np.float32),
        "aligned": rng.normal(size=(b, j, k, s, s)).astype(np.float32),
    }


def _public_loss_one(out, labels, bi, gamma, alpha):
    """One trajectory, written as the public ``DeRefNet.forward(mode='loss')`` loops (float64)."""
    constraint = 0.0
    for sym in out["sym"][:, bi].astype(np.float64):
        constraint += np.mean(sym**2)
    align = 0.0
    reg = 0.0
    for jj, frame in enumerate(out["frame_index"]):
        ref = out["x_last"][bi, frame].astype(np.float64)
        for m in range(out["aligned"].shape[2]):
            align += np.sum(np.abs(out["aligned"][bi, jj, m] - ref))
        reg += np.mean((out["output"][bi, jj].astype(np.float64) - labels[bi, frame]) ** 2)
    return gamma * constraint + reg + alpha * align, gamma * constraint, reg, alpha * align


@pytest.mark.parametrize("preset", ["code", "paper"])
def test_matches_public_loop_reference(preset):
    rng = np.random.default_rng(0)
    out = _random_out(rng)
    labels = rng.normal(size=out["x_last"].shape).astype(np.float32)
    gamma, alpha = {"code": (0.1, 0.1), "paper": (0.01, 0.01)}[preset]
    total, terms = derefnet_loss(out, labels, preset=preset)
    refs = np.array([_public_loss_one(out, labels, bi, gamma, alpha) for bi in range(2)])
    mean = refs.mean(axis=0)  # DDP-style average of per-trajectory losses
    np.testing.assert_allclose(float(total), mean[0], rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss_constraint"]), mean[1], rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss_reg"]), mean[2], rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss_align"]), mean[3], rtol=1e-5)
    np.testing.assert_allclose(float(terms["constraint"]) * gamma, mean[1], rtol=1e-5)
    np.testing.assert_allclose(float(terms["align"]) * alpha, mean[3], rtol=1e-5)
    np.testing.assert_allclose(
        float(terms["loss_constraint"] + terms["loss_reg"] + terms["loss_align"]), float(total), rtol=1e-6
    )


def test_presets_and_explicit_weights():
    assert LOSS_PRESETS["code"] == (0.1, 0.1)
    assert LOSS_PRESETS["paper"] == (0.01, 0.01)
    rng = np.random.default_rng(1)
    out = _random_out(rng, b=1)
    labels = rng.normal(size=out["x_last"].shape).astype(np.float32)
    a, _ = derefnet_loss(out, labels)  # default preset is the public code's
    b, _ = derefnet_loss(out, labels, preset=(0.1, 0.1))
    c, _ = derefnet_loss(out, labels, preset="paper")
    assert float(a) == pytest.approx(float(b))
    assert float(c) < float(a)
    with pytest.raises(ValueError, match="unknown loss preset"):
        derefnet_loss(out, labels, preset="nope")


def test_labels_picked_by_frame_index_and_shape_checked():
    rng = np.random.default_rng(2)
    out = _random_out(rng, b=1)
    labels = rng.normal(size=out["x_last"].shape).astype(np.float32)
    # a perfect prediction of the centre frames zeroes the regression term, whatever the edge frames hold
    out["output"] = labels[:, out["frame_index"]]
    labels[:, 0] = 1e6
    _, terms = derefnet_loss(out, labels)
    assert float(terms["loss_reg"]) == 0.0
    with pytest.raises(ValueError, match="labels must be"):
        derefnet_loss(out, labels[:, 1:])


def test_jittable_and_differentiable():
    rng = np.random.default_rng(3)
    out = jax.tree_util.tree_map(jnp.asarray, _random_out(rng, b=1))
    frame_index = np.asarray(out.pop("frame_index"))
    labels = jnp.asarray(rng.normal(size=out["x_last"].shape), jnp.float32)

    @jax.jit
    def f(o):
        return derefnet_loss({**o, "frame_index": frame_index}, labels)[0]

    g = jax.grad(f)(out)
    # d/d output of Σ_j mean((o-l)²) = 2(o-l)/s²
    expect = 2 * (out["output"] - labels[:, frame_index]) / out["output"][0, 0].size
    np.testing.assert_allclose(g["output"], expect, rtol=1e-5, atol=1e-7)
