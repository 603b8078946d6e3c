"""Tests of seqcsist_jax.metrics: CSO-mAP (SPEC §4), grid decoding, scored frames and diagnostics.

Expected values come from hand computation or from independent pure-Python references written here (lists,
``math``, ``sorted``, permutations), never from the code under test.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from seqcsist_jax import metrics as M

KEYS = ("AP05", "AP10", "AP15", "AP20", "AP25")


# ---------------------------------------------------------------------------------------------------------
# Independent pure-Python reference of the public protocol
# ---------------------------------------------------------------------------------------------------------


def ref_ap(tp_flags: list[int], num_gt: int) -> float:
    """VOC area AP from TP flags already in ranking order, with explicit loops."""
    if num_gt == 0:
        return 0.0
    rec, prec, tp = [], [], 0
    for n, flag in enumerate(tp_flags, start=1):
        tp += flag
        rec.append(tp / num_gt)
        prec.append(tp / n)
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


def ref_cso_map(dets, gts, thresholds=(0.05, 0.10, 0.15, 0.20, 0.25)):
    """dets: list of lists of (x, y, score); gts: list of lists of (x, y). Stable ties, input order."""
    out = {}
    for thr in thresholds:
        pooled = []  # (score, frame, index, tp)
        for f, (det, gt) in enumerate(zip(dets, gts)):
            flags = [0] * len(det)
            taken = set()
            for i in sorted(range(len(det)), key=lambda i: -det[i][2]):
                if not gt:
                    continue
                ds = [math.sqrt((det[i][0] - g[0]) ** 2 + (det[i][1] - g[1]) ** 2) for g in gt]
                best = min(range(len(gt)), key=lambda k: (ds[k], k))
                if ds[best] <= thr and best not in taken:
                    taken.add(best)
                    flags[i] = 1
            pooled += [(det[i][2], f, i, flags[i]) for i in range(len(det))]
        pooled.sort(key=lambda r: -r[0])  # Python's sort is stable: ties keep (frame, index) order
        out[M.ap_key(thr)] = ref_ap([r[3] for r in pooled], sum(len(g) for g in gts))
    out["mAP"] = sum(out[M.ap_key(t)] for t in thresholds) / len(thresholds)
    return out


def assert_aps(result, expected, tol=1e-12):
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=tol), key


# ---------------------------------------------------------------------------------------------------------
# Grid → detections
# ---------------------------------------------------------------------------------------------------------


def test_grid_to_detections_threshold_rule_and_coordinates():
    g = np.zeros((33, 33), np.float32)
    g[0, 0] = 70.0  # exactly at the threshold: kept (public code zeroes only values < threshold)
    g[4, 7] = 200.5
    g[10, 2] = 69.99  # below: dropped
    g[20, 20] = -300.0  # negative: below the threshold, dropped
    g[32, 31] = 1e4
    dets = M.grid_to_detections(g)
    expected = [((0 - 1) / 3, (0 - 1) / 3, 70.0), ((4 - 1) / 3, (7 - 1) / 3, 200.5), (31 / 3, 30 / 3, 1e4)]
    np.testing.assert_allclose(dets, np.array(expected), rtol=0, atol=1e-12)
    assert dets.dtype == np.float64 and dets.shape == (3, 3)


def test_grid_to_detections_zero_threshold_keeps_negatives_not_zeros():
    g = np.zeros((33, 33))
    g[1, 1], g[2, 2] = -5.0, 3.0
    assert len(M.grid_to_detections(g, threshold=-10.0)) == 2  # zero cells are never detections
    assert len(M.grid_to_detections(g, threshold=0.0)) == 1


def test_grid_to_detections_other_division_and_empty():
    g = np.zeros((55, 55))
    g[7, 12] = 100.0
    np.testing.assert_allclose(M.grid_to_detections(g, c=5), [[(7 - 2) / 5, (12 - 2) / 5, 100.0]])
    assert M.grid_to_detections(np.zeros((33, 33))).shape == (0, 3)


def test_grid_to_detections_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        M.grid_to_detections(np.zeros((2, 33, 33)))
    with pytest.raises(ValueError, match="multiples"):
        M.grid_to_detections(np.zeros((32, 32)))
    g = np.zeros((33, 33))
    g[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.grid_to_detections(g)
    grids = np.zeros((4, 33, 33))
    grids[2, 0, 0] = np.inf
    with pytest.raises(ValueError, match="frame 2"):
        M.grids_to_detections(grids)


def test_grids_to_detections_matches_hand_loop():
    rng = np.random.default_rng(1)
    grids = rng.uniform(-50, 120, size=(2, 3, 33, 33)).astype(np.float32)
    grids[0, 1] = 0.0  # one frame without detections
    out = M.grids_to_detections(jnp.asarray(grids), threshold=70.0)
    assert len(out) == 6
    for n, frame in enumerate(grids.reshape(6, 33, 33)):
        rows = [
            ((i - 1) / 3, (j - 1) / 3, float(frame[i, j]))
            for i in range(33)
            for j in range(33)
            if frame[i, j] >= 70.0 and frame[i, j] != 0
        ]
        np.testing.assert_array_equal(out[n], np.array(rows).reshape(-1, 3))
        np.testing.assert_array_equal(out[n], M.grid_to_detections(frame))
    assert M.grids_to_detections(np.zeros((0, 33, 33))) == []


# ---------------------------------------------------------------------------------------------------------
# CSO-mAP: hand-computed cases
# ---------------------------------------------------------------------------------------------------------


def test_perfect_prediction_scores_one_with_padding_and_both_layouts():
    rng = np.random.default_rng(2)
    targets, dets3, dets4 = [], [], []
    for _ in range(30):
        k = rng.integers(2, 5)
        t = np.zeros((4, 3))  # zero-padded like the simulator
        t[:k, :2] = rng.uniform(1, 9, (k, 2))
        t[:k, 2] = rng.uniform(220, 250, k)
        targets.append(t)
        dets3.append(t[:k].copy())  # score = brightness
        dets4.append(np.column_stack([t[:k, :2], np.full(k, 7.0), t[:k, 2]]))  # (x, y, brightness, score)
    for dets in (dets3, dets4):
        r = M.cso_map(dets, targets)
        assert_aps(r, {"mAP": 1.0, **{k: 1.0 for k in KEYS}})
        assert r["num_gt"] == sum(int(np.sum(t[:, 2] != 0)) for t in targets)
        assert r["num_detections"] == r["num_gt"] and r["num_frames"] == 30
    # (K, 2) targets and a padded (F, K, 3) array give the same answer.
    r2 = M.cso_map(dets3, [t[t[:, 2] != 0, :2] for t in targets])
    assert r2["mAP"] == pytest.approx(1.0)
    r3 = M.cso_map(dets3, np.stack(targets))
    assert r3["mAP"] == pytest.approx(1.0)


def test_duplicate_detections_on_one_target():
    # Frame 0: one target, two detections on it (0.9 then 0.8); frame 1: one target, one detection (0.7).
    dets = [np.array([[1.0, 1.0, 0.9], [1.02, 1.0, 0.8]]), np.array([[2.0, 2.0, 0.7]])]
    gts = [np.array([[1.0, 1.0, 230.0]]), np.array([[2.0, 2.0, 230.0]])]
    r = M.cso_map(dets, gts)
    # Ranking TP, FP, TP over 2 targets: recall .5 .5 1, precision 1 .5 2/3 → AP = .5·1 + .5·2/3.
    assert_aps(r, {k: 5 / 6 for k in KEYS} | {"mAP": 5 / 6})
    np.testing.assert_allclose(r["pr_curves"]["AP05"]["recall"], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(r["pr_curves"]["AP05"]["precision"], [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(r["scores"], [0.9, 0.8, 0.7])


def test_nearest_taken_is_false_positive_even_with_free_target_in_reach():
    gts = [np.array([[0.0, 0.0, 230.0], [0.2, 0.0, 230.0]])]
    # d1 takes g1. d2 is 0.08 from g1 (nearest, taken) and 0.12 from the free g2: still a false positive.
    dets = [np.array([[0.0, 0.0, 0.9], [0.08, 0.0, 0.8]])]
    r = M.cso_map(dets, gts)
    assert_aps(r, {k: 0.5 for k in KEYS})  # ranking TP, FP over 2 targets; a Hungarian match would give 1


def test_equidistant_targets_resolve_to_lowest_index():
    # d1 is exactly equidistant (dyadic values) from g1 and g2 and takes g1 (numpy argmin); d2, nearest to g1,
    # is then a false positive. Resolving the tie to g2 would give AP 1.
    gts = [np.array([[0.0, 0.0, 230.0], [0.0, 0.25, 230.0]])]
    dets = [np.array([[0.0, 0.125, 0.9], [0.0, -0.0625, 0.8]])]
    assert M.cso_map(dets, gts, thresholds=(0.25,))["AP25"] == pytest.approx(0.5)


def test_detection_beyond_threshold_does_not_take_its_target():
    gts = [np.array([[0.0, 0.0, 230.0]])]
    dets = [np.array([[0.2, 0.0, 0.9], [0.01, 0.0, 0.5]])]
    r = M.cso_map(dets, gts)
    # thr < 0.2: the high-scoring far detection is an FP and leaves the target to the near one → FP, TP.
    # thr >= 0.2: TP, FP.
    assert_aps(r, {"AP05": 0.5, "AP10": 0.5, "AP15": 0.5, "AP20": 1.0, "AP25": 1.0, "mAP": 0.7})


def test_distance_equal_to_threshold_matches():
    gts = [np.array([[0.0, 0.0, 230.0]])]
    dets = [np.array([[0.0, 0.25, 1.0]])]  # exactly 0.25 px away
    r = M.cso_map(dets, gts, thresholds=(0.2, 0.25))
    assert r["AP20"] == 0.0 and r["AP25"] == 1.0 and r["mAP"] == 0.5


def test_ties_keep_input_order():
    # DECISION: equal scores rank in input order (frame-major), for the pooled ranking and within a frame.
    gts = [np.array([[5.0, 5.0, 230.0]]), np.array([[1.0, 1.0, 230.0]])]
    dets = [np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 1.0, 1.0]])]
    r = M.cso_map(dets, gts)
    assert_aps(r, {k: 0.25 for k in KEYS})  # FP then TP over 2 targets
    # Within a frame: both claim the target; the first row wins, so the pooled order is TP, FP.
    r = M.cso_map([np.array([[1.0, 1.1, 2.0], [1.0, 1.0, 2.0]])], [np.array([[1.0, 1.0, 230.0]])])
    np.testing.assert_allclose(r["pr_curves"]["AP25"]["precision"], [1.0, 0.5])
    np.testing.assert_allclose(r["pr_curves"]["AP05"]["precision"], [0.0, 0.5])  # first row too far


# ---------------------------------------------------------------------------------------------------------
# CSO-mAP: edge cases the public code crashes on
# ---------------------------------------------------------------------------------------------------------


def test_no_detections_anywhere():
    gts = [np.array([[1.0, 1.0, 230.0]]), np.array([[2.0, 2.0, 220.0]])]
    for dets in ([[], []], [np.zeros((0, 3)), np.zeros((0, 4))], np.zeros((2, 0, 3))):
        r = M.cso_map(dets, gts)
        assert_aps(r, {"mAP": 0.0, **{k: 0.0 for k in KEYS}})
        assert r["num_detections"] == 0 and r["num_gt"] == 2
        assert r["pr_curves"]["AP25"]["recall"].shape == (0,)


def test_frames_without_targets_and_single_frame():
    # Frame 0 has no targets (its high-scoring detection is an FP); frame 1 is perfect.
    dets = [np.array([[3.0, 3.0, 0.9]]), np.array([[1.0, 1.0, 0.5]])]
    gts = [np.zeros((0, 3)), np.array([[1.0, 1.0, 230.0]])]
    assert_aps(M.cso_map(dets, gts), {k: 0.5 for k in KEYS})
    assert_aps(M.cso_map(dets, [[], [[1.0, 1.0, 230.0]]]), {k: 0.5 for k in KEYS})
    assert_aps(M.cso_map(dets, [np.zeros((2, 3)), np.array([[1.0, 1.0, 230.0], [0, 0, 0]])]), {"mAP": 0.5})
    assert_aps(M.cso_map(dets[1:], gts[1:]), {"mAP": 1.0})  # a single frame
    # No targets at all → AP 0 (not a division by zero).
    r = M.cso_map(dets, [[], []])
    assert r["num_gt"] == 0 and r["mAP"] == 0.0
    r = M.cso_map([], [])
    assert r["num_frames"] == 0 and r["mAP"] == 0.0


def test_invalid_inputs_are_rejected_clearly():
    gts = [np.array([[1.0, 1.0, 230.0]])] * 3
    dets = [np.array([[1.0, 1.0, 0.5]]), np.array([[1.0, 1.0, 0.5]]), np.array([[1.0, 1.0, np.nan]])]
    with pytest.raises(ValueError, match="frame 2"):
        M.cso_map(dets, gts)
    with pytest.raises(ValueError, match="frame 1"):
        M.cso_map(dets[:2], [gts[0], np.array([[np.inf, 1.0, 230.0]])])
    with pytest.raises(ValueError, match="frames"):
        M.cso_map(dets[:2], gts)
    with pytest.raises(ValueError, match=r"detections\[1\]"):
        M.cso_map([dets[0], np.ones((2, 5))], gts[:2])
    with pytest.raises(ValueError, match="thresholds"):
        M.cso_map(dets[:1], gts[:1], thresholds=())
    with pytest.raises(ValueError, match="thresholds"):
        M.cso_map(dets[:1], gts[:1], thresholds=(-0.1,))
    # Padding rows with NaN coordinates are dropped before the check.
    assert M.cso_map(dets[:1], [np.array([[1.0, 1.0, 230.0], [np.nan, np.nan, 0.0]])])["mAP"] == 1.0


def test_average_precision_hand_values():
    assert M.average_precision([], []) == 0.0
    assert M.average_precision([0.5, 1.0], [1.0, 1.0]) == pytest.approx(1.0)
    # Envelope: the precision dip at recall .5 is lifted to .75 by the later point.
    assert M.average_precision([0.25, 0.25, 0.5, 0.75], [1.0, 0.5, 0.5, 0.75]) == pytest.approx(
        0.25 * 1.0 + 0.25 * 0.75 + 0.25 * 0.75
    )


# ---------------------------------------------------------------------------------------------------------
# CSO-mAP: agreement with the pure-Python reference on random data
# ---------------------------------------------------------------------------------------------------------


def random_split(rng, frames, tie_scores):
    dets, gts = [], []
    for _ in range(frames):
        k = int(rng.integers(0, 5))
        gt = rng.uniform(0, 4, (k, 2))
        m = int(rng.integers(0, 9))
        near = gt[rng.integers(0, k, m)] + rng.normal(0, 0.12, (m, 2)) if k else rng.uniform(0, 4, (m, 2))
        pos = np.round(near * 3) / 3 if rng.random() < 0.5 else near  # grid-snapped or continuous
        score = rng.integers(0, 4, m).astype(float) if tie_scores else rng.uniform(0, 1, m)
        dets.append(np.column_stack([pos, score]).reshape(-1, 3))
        gts.append(gt)
    return dets, gts


@pytest.mark.parametrize("tie_scores", [False, True])
def test_agrees_with_reference_loop_on_random_data(tie_scores):
    rng = np.random.default_rng(3 + tie_scores)
    thresholds = (0.05, 0.10, 0.15, 0.20, 0.25, 0.4)
    for _ in range(4):
        dets, gts = random_split(rng, 60, tie_scores)
        got = M.cso_map(dets, gts, thresholds)
        want = ref_cso_map([d.tolist() for d in dets], [g.tolist() for g in gts], thresholds)
        assert_aps(got, want)
        assert got["num_detections"] == sum(len(d) for d in dets)
    assert 0.0 < got["mAP"] < 1.0  # the random data exercise both outcomes


def test_scores_from_grids_end_to_end():
    # Label maps of ground truth snapped to the grid: every target is detected within 1/(3√2) px ≈ 0.236.
    rng = np.random.default_rng(5)
    gts = [np.column_stack([rng.uniform(1, 9, (3, 2)), rng.uniform(220, 250, 3)]) for _ in range(8)]
    grids = np.zeros((8, 33, 33))
    for f, g in enumerate(gts):
        for x, y, b in g:
            grids[f, round(3 * x + 1), round(3 * y + 1)] += b
    dets = M.grids_to_detections(grids)
    got = M.cso_map(dets, gts)
    want = ref_cso_map([d.tolist() for d in dets], [g[:, :2].tolist() for g in gts])
    assert_aps(got, want)
    assert got["num_detections"] == 24


# ---------------------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------------------


def brute_force_matching(det_xy, gt_xy, radius):
    """Max number of pairs within radius, then min total distance, over all injective assignments."""
    best = (0, 0.0, [])
    n, k = len(det_xy), len(gt_xy)
    for r in range(min(n, k), 0, -1):
        for dsel in itertools.combinations(range(n), r):
            for gsel in itertools.permutations(range(k), r):
                ds = [math.dist(det_xy[a], gt_xy[b]) for a, b in zip(dsel, gsel)]
                if all(d <= radius for d in ds) and (r > best[0] or sum(ds) < best[1] - 1e-12):
                    best = (r, sum(ds), ds)
        if best[0]:
            break
    return best[2]


def test_diagnostics_hand_case():
    # d1 is 0.15 from both targets; d2 is 0.1 from g1 only → the maximum matching is d2–g1, d1–g2.
    dets = [np.array([[0.0, 0.15, 0.9], [0.0, -0.1, 0.8], [5.0, 5.0, 0.1]]), np.zeros((0, 3))]
    gts = [np.array([[0.0, 0.0, 230.0], [0.0, 0.3, 230.0]]), np.array([[2.0, 2.0, 230.0]])]
    d = M.detection_diagnostics(dets, gts, distance=0.25)
    assert d["num_matched"] == 2 and d["num_detections"] == 3 and d["num_gt"] == 3
    assert d["rmse"] == pytest.approx(math.sqrt((0.1**2 + 0.15**2) / 2))
    assert d["precision"] == pytest.approx(2 / 3) and d["recall"] == pytest.approx(2 / 3)
    assert d["count_accuracy"] == 0.0 and d["count_mae"] == pytest.approx(1.0)
    assert d["count_bias"] == pytest.approx(0.0)
    # Operating point: the far, low-scoring detection is dropped.
    d = M.detection_diagnostics(dets, gts, distance=0.25, score_threshold=0.5)
    assert d["precision"] == pytest.approx(1.0) and d["count_accuracy"] == 0.5
    # Cardinality first: pairing d1 with g1 (distance 0) would leave d2 unmatched; two 0.24 pairs win.
    d = M.detection_diagnostics(
        [np.array([[0.0, 0.0, 1.0], [0.0, -0.24, 1.0]])], [np.array([[0.0, 0.0, 1.0], [0.0, 0.24, 1.0]])]
    )
    assert d["num_matched"] == 2 and d["rmse"] == pytest.approx(0.24)
    d = M.detection_diagnostics([[]], [[]])
    assert d["num_frames"] == 1 and math.isnan(d["rmse"]) and math.isnan(d["precision"])


def test_diagnostics_match_brute_force_on_random_frames():
    rng = np.random.default_rng(6)
    dets, gts, want_sq, want_dets, want_gts = [], [], [], 0, 0
    for _ in range(40):
        k, m = int(rng.integers(0, 4)), int(rng.integers(0, 5))
        gt = rng.uniform(0, 0.6, (k, 2))
        det = rng.uniform(0, 0.6, (m, 2))
        dets.append(np.column_stack([det, rng.uniform(0, 1, m)]))
        gts.append(gt)
        want_sq += [d * d for d in brute_force_matching(det.tolist(), gt.tolist(), 0.25)]
        want_dets, want_gts = want_dets + m, want_gts + k
    d = M.detection_diagnostics(dets, gts, distance=0.25)
    assert d["num_matched"] == len(want_sq)
    assert d["rmse"] == pytest.approx(math.sqrt(sum(want_sq) / len(want_sq)))
    assert d["precision"] == pytest.approx(len(want_sq) / want_dets)
    assert d["recall"] == pytest.approx(len(want_sq) / want_gts)
    counts = [len(a) == len(b) for a, b in zip(dets, gts)]
    assert d["count_accuracy"] == pytest.approx(sum(counts) / len(counts))


# ---------------------------------------------------------------------------------------------------------
# Scored frames
# ---------------------------------------------------------------------------------------------------------


def test_scored_frame_indices():
    np.testing.assert_array_equal(M.scored_frame_indices(20), np.arange(2, 18))
    np.testing.assert_array_equal(M.scored_frame_indices(), np.arange(2, 18))
    np.testing.assert_array_equal(M.scored_frame_indices(10), np.arange(2, 8))
    with pytest.raises(ValueError):
        M.scored_frame_indices(3)


def test_scored_frames_layouts():
    x = np.arange(3 * 20 * 2).reshape(3, 20, 2)  # frame (n, t) holds [2·(20n+t), 2·(20n+t)+1]
    want = np.concatenate([x[n, 2:18] for n in range(3)])
    np.testing.assert_array_equal(M.scored_frames(x), want)
    np.testing.assert_array_equal(M.scored_frames(x.reshape(60, 2)), want)  # flat per-frame array
    np.testing.assert_array_equal(np.asarray(M.scored_frames(jnp.asarray(x))), want)
    frames = [f"frame{i}" for i in range(60)]
    assert M.scored_frames(frames) == [f"frame{20 * n + t}" for n in range(3) for t in range(2, 18)]
    out = M.scored_frames({"a": x, "b": frames})
    assert out["b"][:2] == ["frame2", "frame3"] and out["a"].shape == (48, 2)
    # A flat array whose second axis happens to equal T needs layout="frames".
    flat = np.arange(40 * 20).reshape(40, 20)
    want_flat = flat.reshape(2, 20, 20)[:, 2:18].reshape(32, 20)
    np.testing.assert_array_equal(M.scored_frames(flat, layout="frames"), want_flat)
    assert M.scored_frames(flat).shape == (40 * 16,)
    with pytest.raises(ValueError, match="trajectories"):
        M.scored_frames(frames[:30])
    with pytest.raises(ValueError):
        M.scored_frames(x, frames_per_trajectory=10)  # last=17 does not fit T=10
