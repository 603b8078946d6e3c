"""The CSIST-100K benchmark's metric-sensitivity probe: detections appended after every decoded one.

``rank_after`` must keep the decoded detections (and their order) as they were and rank every appended row
after all of them, split-wide; the VOC area AP then cannot fall. ``hedged_detections`` must leave each image's
decoded detections first and unchanged and only add rows away from them.
"""

import warnings

import numpy as np
import pytest

from experiments.benchmarks import bench_decode_csist100k as bench
from seqcsist_jax import metrics
from seqcsist_jax.data.csist100k import simulate_csist100k
from seqcsist_jax.decode import decode_arrays


def _random_split(rng: np.random.Generator, frames: int):
    targets, primary, extra = [], [], []
    for _ in range(frames):
        k = int(rng.integers(1, 6))
        t = np.c_[rng.uniform(4.5, 5.5, (k, 2)), rng.uniform(220, 250, k)]
        targets.append(t)
        m = int(rng.integers(0, k + 2))
        d = np.c_[t[rng.integers(0, k, m), :2] + rng.normal(0, 0.12, (m, 2)), np.full(m, 230.0),
                  rng.uniform(0, 1, m)]
        primary.append(d)
        e = int(rng.integers(0, 4))
        extra.append(np.c_[t[rng.integers(0, k, e), :2] + rng.normal(0, 0.12, (e, 2)), np.full(e, 230.0),
                           rng.uniform(-3, 2, e)])
    return targets, primary, extra


@pytest.mark.parametrize("seed", range(6))
def test_rank_after_keeps_primaries_and_cannot_lower_ap(seed):
    rng = np.random.default_rng(seed)
    targets, primary, extra = _random_split(rng, 40)
    hedged = bench.rank_after(primary, extra)
    low = min(d[:, -1].min() for d in primary if len(d))
    for d, e, h in zip(primary, extra, hedged):
        np.testing.assert_array_equal(h[: len(d)], d)
        assert len(h) == len(d) + len(e)
        np.testing.assert_array_equal(h[len(d):, :3], e[:, :3])
        assert np.all(h[len(d):, -1] < low)
        # the appended rows keep their order among themselves
        order = np.argsort(-e[:, -1], kind="stable")
        assert np.array_equal(np.argsort(-h[len(d):, -1], kind="stable"), order)
    before = metrics.cso_map(primary, targets)
    after = metrics.cso_map(hedged, targets)
    for key in ("AP05", "AP10", "AP15", "AP20", "AP25"):
        # The primary part of the PR curve is the same curve; its envelope can only rise.
        assert after[key] >= before[key] - 1e-12, (key, before[key], after[key])
    assert after["num_detections"] == before["num_detections"] + sum(len(e) for e in extra)


def test_rank_after_can_raise_ap():
    """Not a no-op: a second guess that finds a target the first one missed adds recall."""
    targets = [np.array([[5.0, 5.0, 230.0]])]
    primary = [np.array([[5.3, 5.0, 230.0, 0.9]])]
    extra = [np.array([[5.01, 5.0, 230.0, 0.5]])]
    assert metrics.cso_map(primary, targets)["AP05"] == 0.0
    assert metrics.cso_map(bench.rank_after(primary, extra), targets)["AP05"] == pytest.approx(0.5)


@pytest.mark.slow
def test_hedged_detections_keep_decoded_rows_first():
    sim = simulate_csist100k(24, seed=7)
    data = {"images": sim["image"], "targets": sim["targets"], "num_targets": sim["num_targets"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dec = decode_arrays(data["images"][:, None], method="refine", **bench.PRESET)
    hedged, per_target = bench.hedged_detections(dec, data, bench.PRESET, distinct=0.02)
    decoded = [d[0] for d in dec.to_lists()]
    low = min(d[:, -1].min() for d in decoded if len(d))
    assert len(hedged) == len(decoded)
    for d, h in zip(decoded, hedged):
        np.testing.assert_array_equal(h[: len(d)], d)
        extra = h[len(d):]
        assert np.all(extra[:, -1] < low)
        if len(d) and len(extra):
            gap = np.sqrt(((extra[:, None, :2] - d[None, :, :2]) ** 2).sum(-1)).min(1)
            assert np.all(gap > 0.02)
    assert per_target == pytest.approx(sum(len(h) for h in hedged) / sim["num_targets"].sum())
    assert sum(len(h) - len(d) for d, h in zip(decoded, hedged)) > 0  # the probe adds second guesses here


@pytest.mark.slow
def test_hedged_detections_without_alternative_basins():
    """``centre_candidates=1`` keeps no alternative basins: only the neighbouring counts' fits are added.
    (Plain ``refine`` options up to 3 targets: this branch does not depend on the preset, and they compile in a
    fraction of its time.)"""
    sim = simulate_csist100k(6, seed=3, max_targets=3)
    data = {"images": sim["image"], "targets": sim["targets"], "num_targets": sim["num_targets"]}
    options = dict(max_targets=3, centre_candidates=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dec = decode_arrays(data["images"][:, None], method="refine", **options)
    hedged, _ = bench.hedged_detections(dec, data, options)
    for d, h in zip((d[0] for d in dec.to_lists()), hedged):
        np.testing.assert_array_equal(h[: len(d)], d)
        assert len(h) - len(d) <= len(d) + 1 + max(len(d) - 1, 0)  # at most the K+1 and K-1 fits
