"""Tie-aware CSO-mAP (``ties="grouped"``): order-independent, equal to the protocol without ties."""

from __future__ import annotations

import numpy as np
import pytest

from seqcsist_jax.metrics import cso_map


def _split(seed: int, frames: int = 40, step: float | None = 10.0):
    rng = np.random.default_rng(seed)
    dets, tgts = [], []
    for _ in range(frames):
        k = rng.integers(1, 4)
        xy = rng.uniform(1, 9, (k, 2))
        hits = np.repeat(xy, rng.integers(1, 3, k), axis=0)
        hits = hits + rng.normal(0, 0.12, hits.shape)
        clutter = rng.uniform(0, 10, (rng.integers(0, 4), 2))
        pos = np.concatenate([hits, clutter])
        score = rng.uniform(70, 250, len(pos))
        if step:
            score = np.round(score / step) * step
        dets.append(np.column_stack([pos, score]))
        tgts.append(np.column_stack([xy, np.full(k, 200.0)]))
    return dets, tgts


def _shuffle(dets, tgts, rng):
    order = rng.permutation(len(dets))
    return [dets[i][rng.permutation(len(dets[i]))] for i in order], [tgts[i] for i in order]


def test_hand_example_tied_hit_and_miss_enter_together():
    # One target; two detections with the same score, one on it and one far away.
    tgts = [np.array([[5.0, 5.0, 200.0]])]
    hit_first = [np.array([[5.0, 5.0, 100.0], [0.0, 0.0, 100.0]])]
    miss_first = [hit_first[0][::-1].copy()]
    assert cso_map(hit_first, tgts)["mAP"] == 1.0  # curve (1, 1), (1, 1/2)
    assert cso_map(miss_first, tgts)["mAP"] == 0.5  # curve (0, 0), (1, 1/2)
    for dets in (hit_first, miss_first):
        grouped = cso_map(dets, tgts, ties="grouped")
        assert grouped["mAP"] == 0.5  # one point (recall 1, precision 1/2)
        np.testing.assert_array_equal(grouped["pr_curves"]["AP05"]["precision"], [0.5])
        np.testing.assert_array_equal(grouped["scores"], [100.0])


def test_grouped_does_not_depend_on_input_order_and_matches_group_ends():
    dets, tgts = _split(0)
    rng = np.random.default_rng(1)
    reference = cso_map(dets, tgts, ties="grouped")
    protocol_values = set()
    for _ in range(8):
        d, t = _shuffle(dets, tgts, rng)
        grouped = cso_map(d, t, ties="grouped")
        assert grouped["mAP"] == pytest.approx(reference["mAP"], rel=1e-12, abs=1e-15)
        # Independent check: the protocol's curve in this order, read at the end of every run of tied scores,
        # is the grouped curve (TP counts at a group's end do not depend on the order inside the group).
        protocol = cso_map(d, t)
        protocol_values.add(round(protocol["mAP"], 12))
        ends = np.flatnonzero(np.r_[protocol["scores"][1:] != protocol["scores"][:-1], True])
        for key, curve in grouped["pr_curves"].items():
            np.testing.assert_array_equal(curve["recall"], protocol["pr_curves"][key]["recall"][ends])
            np.testing.assert_array_equal(curve["precision"], protocol["pr_curves"][key]["precision"][ends])
    assert len(protocol_values) > 1  # the published protocol itself does move with the order here


def test_grouped_equals_protocol_without_ties():
    dets, tgts = _split(2, step=None)
    a, b = cso_map(dets, tgts), cso_map(dets, tgts, ties="grouped")
    for key in ("mAP", "AP05", "AP25"):
        assert a[key] == b[key]
    np.testing.assert_array_equal(a["scores"], b["scores"])


def test_grouped_handles_no_detections_and_bad_option():
    tgts = [np.array([[5.0, 5.0, 200.0]])]
    assert cso_map([np.zeros((0, 3))], tgts, ties="grouped")["mAP"] == 0.0
    with pytest.raises(ValueError, match="ties must be"):
        cso_map([np.zeros((0, 3))], tgts, ties="random")
