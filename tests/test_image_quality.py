"""PSNR/SSIM as the GrokCSO toolkit reports them, against independent references: per-window loops over the
SSIM definition, skimage's own structure (whole-image reflected uniform filter, then a cropped border) rebuilt
with scipy.ndimage, and closed forms."""

import math

import numpy as np
import pytest
from scipy import ndimage

from seqcsist_jax import image_quality as iq


def _maps(seed: int, shape=(3, 33, 33)) -> tuple[np.ndarray, np.ndarray]:
    """Sparse label maps (a few bright cells, as CSIST labels) and a noisy, blurred prediction."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape)
    flat = label.reshape(-1, shape[-2] * shape[-1])
    for row in flat:
        row[rng.choice(row.size, 4, replace=False)] = rng.uniform(220, 250, 4)
    pred = ndimage.uniform_filter(label, size=(1, 3, 3)) * 4 + rng.normal(0, 8, shape)
    return pred, label


def _toolkit_uint8_loop(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The toolkit's per-image branch, written as it reads."""
    if pred.max() <= 1.0:
        return (np.clip(pred, 0, 1) * 255).astype(np.uint8), (np.clip(gt, 0, 1) * 255).astype(np.uint8)
    return np.clip(pred, 0, 255).astype(np.uint8), np.clip(gt, 0, 255).astype(np.uint8)


def _ssim_loop(x: np.ndarray, y: np.ndarray, w: int = 7) -> float:
    """SSIM from its definition: every w×w window inside the image, sample (co)variances, plain loops."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - w + 1):
        for j in range(x.shape[1] - w + 1):
            a, b = x[i : i + w, j : j + w].ravel(), y[i : i + w, j : j + w].ravel()
            ma, mb = a.sum() / a.size, b.sum() / b.size
            va = sum((v - ma) ** 2 for v in a) / (a.size - 1)
            vb = sum((v - mb) ** 2 for v in b) / (b.size - 1)
            cov = sum((u - ma) * (v - mb) for u, v in zip(a, b)) / (a.size - 1)
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def _ssim_skimage_structure(x: np.ndarray, y: np.ndarray, w: int = 7) -> float:
    """skimage's algorithm: uniform filter over the whole image (reflect borders), then crop (w-1)/2 pixels."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    f = lambda a: ndimage.uniform_filter(a, size=w, mode="reflect")
    norm = w * w / (w * w - 1)
    ux, uy = f(x), f(y)
    vx, vy, vxy = norm * (f(x * x) - ux * ux), norm * (f(y * y) - uy * uy), norm * (f(x * y) - ux * uy)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (w - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def test_toolkit_uint8_follows_the_prediction_range():
    pred = np.array([[[0.5, 1.0], [-0.2, 0.999]], [[255.9, 300.0], [-1.0, 0.7]]])
    label = np.array([[[2.0, 0.5], [0.0, 1.0]], [[230.0, 0.4], [260.0, 12.99]]])
    p8, l8 = iq.toolkit_uint8(pred, label)
    assert p8.dtype == l8.dtype == np.uint8
    # image 0: prediction max ≤ 1 → both maps read as [0, 1] images (the label's 2.0 clips to 1 → 255)
    np.testing.assert_array_equal(p8[0], [[127, 255], [0, 254]])
    np.testing.assert_array_equal(l8[0], [[255, 127], [0, 255]])
    # image 1: grey values, clipped and truncated (255.9 → 255, 12.99 → 12, 0.7 → 0)
    np.testing.assert_array_equal(p8[1], [[255, 255], [0, 0]])
    np.testing.assert_array_equal(l8[1], [[230, 0], [255, 12]])
    for k in range(2):
        ref_p, ref_l = _toolkit_uint8_loop(pred[k], label[k])
        np.testing.assert_array_equal(p8[k], ref_p)
        np.testing.assert_array_equal(l8[k], ref_l)


def test_psnr_matches_loop_and_closed_forms():
    pred, label = _maps(0)
    got = iq.psnr(pred, label)
    assert got.shape == (3,)
    for k in range(3):
        p8, l8 = _toolkit_uint8_loop(pred[k], label[k])
        sq = [(float(a) - float(b)) ** 2 for a, b in zip(l8.ravel(), p8.ravel())]
        assert got[k] == pytest.approx(10 * math.log10(255**2 / (sum(sq) / len(sq))), rel=1e-12)
    # a constant error d everywhere: 20·log10(255/d); a perfect map: the toolkit's 100 dB
    flat = np.full((33, 33), 100.0)
    assert iq.psnr(flat + 5, flat) == pytest.approx(20 * math.log10(255 / 5), rel=1e-12)
    assert iq.psnr(label, label).tolist() == [100.0] * 3
    # without the 8-bit conversion the float maps are scored directly
    assert iq.psnr(flat + 0.5, flat, quantize=False) == pytest.approx(20 * math.log10(255 / 0.5), rel=1e-12)


def test_ssim_matches_definition_loop_and_skimage_structure():
    pred, label = _maps(1, shape=(2, 33, 33))
    got = iq.ssim(pred, label)
    assert got.shape == (2,)
    for k in range(2):
        p8, l8 = _toolkit_uint8_loop(pred[k], label[k])
        assert got[k] == pytest.approx(_ssim_loop(l8, p8), abs=1e-12)
        assert got[k] == pytest.approx(_ssim_skimage_structure(l8, p8), abs=1e-12)
    # float maps, a non-square size and the 55×55 grid of c = 5
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0, 255, (2, 12, 9))
    assert iq.ssim(a, b, quantize=False) == pytest.approx(_ssim_loop(b, a), abs=1e-12)
    big_p, big_l = _maps(3, shape=(1, 55, 55))
    p8, l8 = _toolkit_uint8_loop(big_p[0], big_l[0])
    assert iq.ssim(big_p, big_l)[0] == pytest.approx(_ssim_skimage_structure(l8, p8), abs=1e-12)


def test_ssim_properties():
    pred, label = _maps(4)
    np.testing.assert_allclose(iq.ssim(label, label), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(iq.ssim(pred, label), iq.ssim(label, pred), rtol=0, atol=1e-15)  # symmetric
    assert np.all(iq.ssim(pred, label) < 1) and np.all(iq.ssim(pred, label) > -1)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        iq.psnr(np.zeros((2, 33, 33)), np.zeros((33, 33)))
    with pytest.raises(ValueError, match="at least 7×7"):
        iq.ssim(np.zeros((5, 5)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        iq.psnr(np.zeros(4), np.zeros(4))
