"""The CSIST-100K benchmark's metric-sensitivity probe: detections appended after every decoded one.

``rank_after`` must keep the decoded detections (and their order) as they were and rank every appended row
after all of them, split-wide; the VOC area AP then cannot fall. ``hedged_detections`` must leave each image's
decoded detections first and unchanged and only add rows away from them.
"""

import types
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


@pytest.fixture(scope="module")
def decoded_split():
    """24 simulated CSIST-100K images and their decoding with the preset (shared: it compiles the preset)."""
    sim = simulate_csist100k(24, seed=7)
    data = {"images": sim["image"], "targets": sim["targets"], "num_targets": sim["num_targets"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dec = decode_arrays(data["images"][:, None], method="refine", **bench.PRESET)
    return data, dec


@pytest.mark.slow
def test_hedged_detections_keep_decoded_rows_first(decoded_split):
    data, dec = decoded_split
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
    assert per_target == pytest.approx(sum(len(h) for h in hedged) / data["num_targets"].sum())
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


class _FakeDecoded:
    """The two things ``best_basin_oracle`` reads from a ``Decoded``: ``count (N, 1)`` and ``to_lists()``."""

    def __init__(self, dets: list[np.ndarray]):
        self.dets = dets
        self.count = np.array([[len(d)] for d in dets])

    def to_lists(self):
        return [[d.copy()] for d in self.dets]


def test_best_basin_oracle_picks_the_basin_nearest_the_truth():
    truth = np.array([[5.0, 5.0, 230.0], [5.3, 5.2, 240.0], [0.0, 0.0, 0.0]])
    data = {"images": np.zeros((3, 11, 11), np.uint8), "targets": np.stack([truth] * 3),
            "num_targets": np.array([2, 2, 2])}
    decoded = [np.array([[5.2, 5.1, 231.0, 0.9], [4.9, 5.0, 235.0, 0.4]]),   # 0.23 px off at worst
               np.array([[5.01, 5.0, 231.0, 0.8], [5.3, 5.21, 235.0, 0.7]]),  # already the nearest
               np.array([[5.0, 5.0, 230.0, 0.6]])]                            # wrong count: kept
    k = 3  # slots of the basins' arrays
    near = np.zeros((3, k, 3), np.float32)
    near[:, :2] = [[5.31, 5.19, 239.0], [5.02, 4.99, 229.0]]  # the truth's basin, in the other slot order
    far = np.zeros((3, k, 3), np.float32)
    far[:, :2] = [[5.6, 5.6, 230.0], [5.0, 4.6, 230.0]]
    obj = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    best, switched = bench.best_basin_oracle(_FakeDecoded(decoded), data, {}, basin_fits=(None, [far, near], obj))
    assert switched.tolist() == [True, False, False]
    # image 0: the near basin's targets, each with the score of the nearest decoded target
    np.testing.assert_allclose(best[0][:, :3], near[0, :2], rtol=0, atol=0)
    np.testing.assert_array_equal(best[0][:, 3], [0.9, 0.4])
    np.testing.assert_array_equal(best[1], decoded[1])
    np.testing.assert_array_equal(best[2], decoded[2])
    # a missing basin (objective inf) is never chosen; neither is one within `distinct` of the decoded fit
    obj_missing = obj.copy()
    obj_missing[0, 1] = np.inf
    _, switched = bench.best_basin_oracle(_FakeDecoded(decoded), data, {}, basin_fits=(None, [far, near], obj_missing))
    assert not switched.any()
    _, switched = bench.best_basin_oracle(_FakeDecoded(decoded), data, {}, basin_fits=(None, [far, near], obj),
                                          distinct=0.5)
    assert not switched.any()


@pytest.mark.slow
def test_best_basin_oracle_never_moves_a_fit_away_from_the_truth(decoded_split):
    data, dec = decoded_split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best, switched = bench.best_basin_oracle(dec, data, bench.PRESET)
    for i, (d, b) in enumerate(zip((d[0] for d in dec.to_lists()), best)):
        t = data["targets"][i, : data["num_targets"][i], :2].astype(np.float64)
        assert b.shape == d.shape
        assert set(b[:, 3].tolist()) <= set(d[:, 3].tolist())  # the decoder's scores
        if not switched[i]:
            np.testing.assert_array_equal(b, d)
        else:
            assert len(d) == len(t)
            assert bench._matched_max_distance(b[:, :2], t) < bench._matched_max_distance(d[:, :2], t)
            assert bench._matched_max_distance(b[:, :2], d[:, :2]) > 0.02


def test_byte_identical_distances_from_the_generators_own_pipeline():
    """The truth itself renders to its image (distance 0); a fit moved by 0.3 px does not (NaN); a wrong count is
    NaN; the thresholds read the same distances whether passed in or computed."""
    sim = simulate_csist100k(6, seed=5)
    data = {"images": sim["image"], "targets": sim["targets"], "num_targets": sim["num_targets"]}
    count = sim["num_targets"].copy()
    det = np.zeros((6, 1, 5, 4), np.float32)
    det[:, 0, :, :3] = sim["targets"]
    det[1, 0, 0, 0] += 0.3  # another configuration, which renders differently
    count[2] = max(int(count[2]) - 1, 0) if count[2] > 1 else 2  # a wrong count

    dec = types.SimpleNamespace(detections=det, count=count[:, None])  # what the function reads of a Decoded
    d = bench.byte_identical_distances(dec, data)
    assert np.isnan(d[1]) and np.isnan(d[2])
    np.testing.assert_array_equal(d[[0, 3, 4, 5]], 0.0)
    for far in (0.0, 0.05):
        np.testing.assert_array_equal(bench.byte_identical_alternatives(dec, data, far=far),
                                      bench.byte_identical_alternatives(dec, data, far=far, distances=d))
    assert bench.byte_identical_alternatives(dec, data, far=0.0).tolist() == [True, False, False, True, True, True]
    assert not bench.byte_identical_alternatives(dec, data, far=0.05).any()
