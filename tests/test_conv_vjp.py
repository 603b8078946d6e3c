"""seqcsist_jax.ops.conv: the same values and gradients as lax.conv_general_dilated, and canonical backward
convolutions inside lax.scan (XLA:CPU's fast path)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from seqcsist_jax.ops import conv

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize(
    "x_shape, w_shape, padding, dilation",
    [
        ((2, 9, 9, 3), (3, 3, 3, 5), ((1, 1), (1, 1)), (1, 1)),
        ((2, 9, 9, 3), (1, 1, 3, 5), ((0, 0), (0, 0)), (1, 1)),
        ((2, 9, 8, 3), (3, 3, 3, 4), ((2, 0), (1, 2)), (1, 1)),
        ((1, 11, 11, 2), (3, 3, 2, 2), ((2, 2), (2, 2)), (2, 2)),
        ((2, 9, 9, 3), (3, 3, 3, 5), "SAME", (1, 1)),
    ],
)
def test_values_and_gradients_equal_lax(x_shape, w_shape, padding, dilation):
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)

    def f(x, w, fn):
        return jnp.sum(jnp.sin(fn(x, w, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=DN)))

    want = jax.value_and_grad(f, (0, 1))(x, w, lax.conv_general_dilated)
    got = jax.value_and_grad(f, (0, 1))(x, w, conv.conv_general_dilated)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_other_cases_are_passed_to_lax():
    x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4))
    grouped = conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN, feature_group_count=4)
    np.testing.assert_array_equal(grouped, lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                                    dimension_numbers=DN, feature_group_count=4))


@pytest.mark.parametrize("backend, canonical", [("cpu", True), ("gpu", False), ("tpu", False)])
def test_uses_canonical_backward_on_the_cpu_backend_only(backend, canonical, monkeypatch):
    """uses_canonical_backward is true exactly on the CPU backend, and decides whether conv_general_dilated
    routes the canonical case through its own backward pass (a custom_vjp in the traced program)."""
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert conv.uses_canonical_backward() is canonical
    x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))

    def fn(x, w):
        return conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)

    traced = str(jax.make_jaxpr(fn)(x, w))
    assert ("custom_vjp_call" in traced) is canonical
    assert "conv_general_dilated" in traced  # the forward convolution either way


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the canonical backward is CPU-only")
def test_backward_convolutions_inside_scan_are_canonical():
    """The reason for the module: inside a while body XLA:CPU does not canonicalise convolutions, so JAX's own
    backward convolutions (kernel ``01oi``, or ``f01b_i01o->01bf``) would run on the naive emitter."""
    w = jnp.ones((3, 3, 4, 4))

    def loss(w, x, fn):
        return jnp.sum(fn(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN) ** 2)

    def scanned(fn):
        def body(w, x):
            return w - 0.1 * jax.grad(loss)(w, x, fn), None

        return jax.jit(lambda w, xs: lax.scan(body, w, xs)[0])

    xs = jnp.ones((3, 2, 8, 8, 4))
    labels = lambda fn: re.findall(r"dim_labels=(\S+?)[,\s]", scanned(fn).lower(w, xs).compile().as_text())
    assert set(labels(conv.conv_general_dilated)) == {"b01f_01io->b01f"}
    np.testing.assert_allclose(scanned(conv.conv_general_dilated)(w, xs), scanned(lax.conv_general_dilated)(w, xs),
                               rtol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the canonical backward is CPU-only")
@pytest.mark.parametrize("layer", ["strided_conv", "sn_conv"])
def test_baseline_stride1_layers_keep_canonical_backward_inside_scan(layer, monkeypatch):
    """The SR baselines' own stride-1 layers (``StridedConv``, ``SNConv``) route through ops.conv too: trained
    with K-step calls their backward convolutions stay canonical, and their gradients equal the same layer's
    with plain ``lax.conv_general_dilated``."""
    from seqcsist_jax.baselines import sr_layers

    module = sr_layers.StridedConv(4, 3, 1, 1) if layer == "strided_conv" else sr_layers.SNConv(4, 3, 1, 1)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    params = module.init(jax.random.PRNGKey(2), x)
    grad = jax.grad(lambda p, x: jnp.sum(jnp.sin(module.apply(p, x))))

    def step(p, x):
        return jax.tree_util.tree_map(lambda a, g: a - 0.1 * g, p, grad(p, x)), None

    run = jax.jit(lambda p, xs: lax.scan(step, p, xs)[0])
    text = run.lower(params, jnp.stack([x, 0.5 * x])).compile().as_text().lower()
    assert set(re.findall(r"dim_labels=(\S+?)[,\s]", text)) == {"b01f_01io->b01f"}
    got = grad(params, x)
    monkeypatch.setattr(sr_layers.conv, "conv_general_dilated", lax.conv_general_dilated)
    want = grad(params, x)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)
