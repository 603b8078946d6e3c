"""The CSIST-100K README figure's helpers: matched errors, example picking, drawing, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from experiments import make_csist100k_figure as fig


def _bottleneck_reference(p: np.ndarray, q: np.ndarray) -> float:
    """Smallest threshold under which a perfect matching exists (each candidate threshold checked by an
    assignment on 0/1 costs): independent of the permutation search under test."""
    d = np.sqrt(((p[:, None] - q[None]) ** 2).sum(-1))
    for thr in np.sort(d.ravel()):
        r, c = linear_sum_assignment((d > thr).astype(float))
        if (d[r, c] <= thr).all():
            return float(thr)
    raise AssertionError("unreachable")


def test_max_matched_error_is_the_bottleneck_matching_and_inf_for_a_wrong_count():
    rng = np.random.default_rng(0)
    n, k = 40, 5
    counts = rng.integers(1, k + 1, n)
    targets = np.zeros((n, k, 3))
    det = np.zeros((n, k, 4))
    for i, c in enumerate(counts):
        targets[i, :c, :2] = rng.uniform(0, 1, (c, 2))
        det[i, :c, :2] = targets[i, rng.permutation(c), :2] + rng.normal(0, 0.1, (c, 2))  # shuffled rows
    decoded = counts.copy()
    decoded[:3] = np.maximum(counts[:3] - 1, 0)  # wrong counts
    got = fig.max_matched_error(det, decoded, targets, counts)
    assert np.all(np.isinf(got[:3]) == (decoded[:3] != counts[:3]))
    for i in range(3, n):
        c = counts[i]
        want = _bottleneck_reference(det[i, :c, :2], targets[i, :c, :2])
        assert got[i] == pytest.approx(want, rel=1e-12, abs=1e-15), i
    # the matching matters: the row order alone would give a larger worst distance for some images
    row_order = [np.sqrt(((det[i, :c, :2] - targets[i, :c, :2]) ** 2).sum(-1)).max() for i, c in
                 enumerate(counts) if i >= 3]
    assert np.any(np.asarray(row_order) > got[3:] + 1e-9)


def test_pick_examples_takes_the_first_qualifying_image_with_the_most_targets():
    error = np.array([0.01, 0.2, 0.02, 0.3, 0.15, np.inf, 0.01])
    n = np.array([5, 4, 5, 5, 3, 5, 4])
    clipped = np.array([False, True, True, True, True, True, True])
    alternative = np.array([False, True, False, True, False, False, False])
    renders = np.array([True, True, True, True, False, False, True])
    success, alt, wrong = fig.pick_examples(error, n, clipped, alternative, renders)
    assert success == 2  # image 0 is not clipped
    assert alt == 3  # 5 targets beat image 1's 4
    assert wrong == 4  # image 3 reproduces the bytes; image 5 has the wrong count
    none = fig.pick_examples(error, n, np.zeros(7, bool), np.zeros(7, bool), np.ones(7, bool))
    assert none == [None, None, None]


def _bench() -> dict:
    by = {str(c): 100.0 - 2 * c for c in range(1, 6)}
    return {"images": 10, "rows": [{"mAP": 91.0}],
            "diagnostics": {"mAP_by_true_count": by, "truth_start_by_true_count": {c: v + 1 for c, v in by.items()},
                            "truth_start": {"mAP": 95.0}}}


def test_draw_writes_a_png_with_a_missing_example(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 11, 11)).astype(np.uint8)
    targets = np.zeros((3, 5, 3))
    targets[:, :2] = [[5.1, 5.2, 230.0], [4.8, 5.3, 240.0]]
    out = fig.draw(images, targets, np.array([2, 2, 2]), targets + 0.01, np.array([2, 2, 2]), [0, None, 2],
                   np.array([0.01, 0.5, 0.2]), _bench(), tmp_path / "sub" / "f.png", decoded_images=3)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"diagnostics": {}})])
def test_main_names_a_bad_results_file_in_one_line(tmp_path, capsys, content):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as info:
        fig.main(["--results", str(path), "--out", str(tmp_path / "f.png")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--results {path}: expected the JSON that python -m experiments.benchmarks.bench_decode_csist100k" in err
    assert not (tmp_path / "f.png").exists()
