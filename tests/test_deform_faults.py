"""Deformable op edge cases: non-finite offsets treated identically by both formulations; size limit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqcsist_jax.ops.deform_conv import MAX_ELEMENTS, deform_conv2d, deform_sample


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_offsets_agree_between_gather_and_matmul(bad):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 5, 5, 2)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 3)), jnp.float32)
    offset = rng.normal(size=(1, 5, 5, 18)).astype(np.float32)
    offset[0, 2, 2, 4] = bad  # one coordinate of one kernel point at one output pixel
    offset = jnp.asarray(offset)

    def loss(method):
        return lambda x, off: jnp.sum(deform_conv2d(x, off, kernel, padding=1, method=method) ** 2)

    results = {}
    for method in ("gather", "matmul"):
        value, grads = jax.value_and_grad(loss(method), argnums=(0, 1))(x, offset)
        assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads), method
        results[method] = (value, grads)
    (v1, (gx1, go1)), (v2, (gx2, go2)) = results["gather"], results["matmul"]
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    np.testing.assert_allclose(gx1, gx2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(go1, go2, rtol=1e-4, atol=1e-4)
    assert go1[0, 2, 2, 4] == 0 and go1[0, 2, 2, 5] == 0  # the bad point has no gradient
    # Its sample is 0, exactly as a point far outside the image.
    far = offset.at[0, 2, 2, 4].set(-1e4)
    np.testing.assert_allclose(deform_sample(x, offset, 3), deform_sample(x, far, 3), atol=0)


def test_input_beyond_the_int32_limit_is_a_clear_error():
    side = 2**14
    x = jax.ShapeDtypeStruct((2, side, side, 8), jnp.float32)  # 4.3e9 elements: never allocated
    offset = jax.ShapeDtypeStruct((2, side, side, 18), jnp.float32)
    with pytest.raises(ValueError, match=rf"exceeds the int32 index limit {MAX_ELEMENTS}"):
        jax.eval_shape(lambda a, b: deform_sample(a, b, 3), x, offset)
    small = jax.ShapeDtypeStruct((1, 64, 64, 8), jnp.float32)
    assert jax.eval_shape(lambda a, b: deform_sample(a, b, 3), small,
                          jax.ShapeDtypeStruct((1, 64, 64, 18), jnp.float32)).shape == (1, 64, 64, 9, 8)
