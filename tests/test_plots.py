"""Evaluation figures: what each panel says (labels, legends, zoom, markers), and that the PNGs are written."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest

from seqcsist_jax import metrics, plots

T, S = 20, 11


def _arrays(n=3, seed=0):
    """Two targets per frame at fixed sub-pixel positions, ``frames (n, T, S, S)``, ``targets (n, T, 4, 3)``."""
    rng = np.random.default_rng(seed)
    targets = np.zeros((n, T, 4, 3), np.float32)
    targets[:, :, 0] = (4.2, 5.1, 200.0)
    targets[:, :, 1] = (4.6, 5.5, 150.0)
    targets[:, :, :2, :2] += rng.uniform(-0.2, 0.2, (n, 1, 2, 2)).astype(np.float32)
    frames = rng.integers(0, 30, (n, T, S, S)).astype(np.uint8)
    return {"frames": frames, "targets": targets}


def _detections(arrays, noise, seed=1):
    """Per trajectory, per scored frame (2..17): the true targets moved by Gaussian noise, rows (x, y, b, s)."""
    rng = np.random.default_rng(seed)
    out = []
    for traj in arrays["targets"]:
        frames = []
        for t in range(2, T - 2):
            gt = traj[t][traj[t][:, 2] > 0]
            xy = gt[:, :2] + rng.normal(0, noise, gt[:, :2].shape)
            frames.append(np.c_[xy, gt[:, 2], rng.uniform(0.5, 1.0, len(gt))].astype(np.float32))
        out.append(frames)
    return out


def _cso(arrays, detections):
    flat = [d for traj in detections for d in traj]
    gts = [arrays["targets"][i, t] for i in range(len(detections)) for t in range(2, T - 2)]
    return metrics.cso_map(flat, gts)


def _legend_outside(fig, ax):
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    return legend.x0 >= ax.get_window_extent().x1


# --------------------------------------------------------------------------------------------- PR curves


def test_pr_curves_label_thresholds_and_ap_with_legend_outside():
    arrays = _arrays()
    result = _cso(arrays, _detections(arrays, noise=0.08))
    assert 0 < result["AP05"] < result["AP25"]  # a case where the curves differ and precision drops
    fig = plots.pr_curves_figure(result, title="m — test")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"{t:.2f} px  AP {100 * result[k]:.1f}"
                      for t, k in zip((0.05, 0.10, 0.15, 0.20, 0.25), ("AP05", "AP10", "AP15", "AP20", "AP25"))]
    assert _legend_outside(fig, ax)
    assert ax.get_xlabel() == "recall" and ax.get_ylabel() == "precision"
    assert ax.get_ylim()[0] == 0 and not ax.texts  # precision falls below 0.5: the full axis
    assert ax.get_title() == f"m — test\nCSO-mAP {100 * result['mAP']:.2f}"
    matplotlib.pyplot.close(fig)


def test_pr_curves_at_precision_one_are_zoomed_and_mark_their_recall():
    arrays = _arrays()
    result = _cso(arrays, _detections(arrays, noise=0.0))
    result["pr_curves"]["AP05"]["recall"] = result["pr_curves"]["AP05"]["recall"] * 0.6  # AP = recall reached
    for curve in result["pr_curves"].values():
        assert np.all(curve["precision"] == 1.0)
    fig = plots.pr_curves_figure(result)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert 0.5 < low < 1.0 < high and "zoomed" in ax.get_ylabel()
    assert any("AP = the recall reached" in t.get_text() for t in ax.texts)
    # One end marker per curve, at its last (recall, precision): where AP = the recall reached.
    ends = [line.get_xydata()[0] for line in ax.get_lines() if line.get_marker() == "o"]
    want = [(curve["recall"][-1], 1.0) for curve in result["pr_curves"].values()]
    np.testing.assert_allclose(ends, want)
    matplotlib.pyplot.close(fig)


def test_pr_curves_without_curves_still_draw():
    fig = plots.pr_curves_figure({"mAP": 0.0, "pr_curves": {}})
    assert fig.axes[0].get_legend() is None and fig.axes[0].get_title() == "CSO-mAP 0.00"
    matplotlib.pyplot.close(fig)


def test_pr_curves_of_an_evaluation_without_detections_say_so():
    """A barely trained model detects nothing: its curves are empty, which is not "precision 1 at every rank"."""
    arrays = _arrays()
    result = _cso(arrays, [[np.zeros((0, 4), np.float32) for _ in frames] for frames in _detections(arrays, 0.0)])
    assert result["mAP"] == 0.0 and all(len(c["recall"]) == 0 for c in result["pr_curves"].values())
    fig = plots.pr_curves_figure(result)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["no detection at any threshold: every AP is 0"]
    assert fig.axes[0].get_ylim() == (0.0, 1.02) and fig.axes[0].get_ylabel() == "precision"
    matplotlib.pyplot.close(fig)


# --------------------------------------------------------------------------------------------- samples


def _maps(n):
    return np.zeros((n, T - 4, 3 * S, 3 * S), np.float32), np.arange(2, T - 2)


def test_samples_continuous_detections_are_open_circles_with_their_errors():
    arrays = _arrays()
    detections = _detections(arrays, noise=0.03)
    maps, index = _maps(3)
    fig = plots.samples_figure(arrays, maps, index, detections, num=2, decode="trajectory")
    axes = np.asarray(fig.axes[:4]).reshape(-1)  # the two colour bars come after the panels
    rows = [(axes[0], axes[1], 0), (axes[2], axes[3], 2)]  # picks 0 and 2 of three trajectories
    for inp, pred, i in rows:
        k = len(detections[i]) // 2
        gt = arrays["targets"][i, 2 + k, :2, :2]
        d = detections[i][k][:, :2]
        errors = [min(np.hypot(*(g - e)) for e in d) for g in gt]
        assert pred.get_title().endswith(", ".join(f"{e:.3f}" for e in errors) + " px")
        assert "trajectory" in pred.get_title()
        # Detections are drawn on the input too, as unfilled circles at their sub-pixel positions.
        for ax in (inp, pred):
            circles = [c for c in ax.collections if "trajectory detections" in c.get_label()]
            assert len(circles) == 1
            assert circles[0].get_facecolors().size == 0 or circles[0].get_facecolors()[:, 3].max() == 0
            np.testing.assert_allclose(circles[0].get_offsets(), d[:, ::-1], rtol=0, atol=1e-6)
        assert any("continuous" in t.get_text() for t in pred.get_legend().get_texts())
    matplotlib.pyplot.close(fig)


def test_samples_grid_detections_are_crosses_on_the_map_only():
    arrays = _arrays()
    detections = _detections(arrays, noise=0.1)
    maps, index = _maps(3)
    fig = plots.samples_figure(arrays, maps, index, detections, num=1, decode="grid")
    inp, pred = fig.axes[:2]
    assert "grid" in pred.get_title() and "33×33" in pred.get_title()
    assert not [c for c in inp.collections if "detections" in c.get_label()]
    crosses = [c for c in pred.collections if "detections" in c.get_label()]
    assert len(crosses) == 1 and crosses[0].get_facecolors()[:, 3].max() > 0
    assert inp.get_xlabel() == "y (columns, px)" and inp.get_ylabel() == "x (rows, px)"
    matplotlib.pyplot.close(fig)
    assert plots.samples_figure({"frames": np.zeros((0, T, S, S)), "targets": np.zeros((0, T, 4, 3))},
                                *_maps(0), [], decode="grid") is None


# --------------------------------------------------------------------------------------------- loss curves


def _records():
    train = [{"step": s, "split": "train", "loss": 10.0 / s, "loss_align": 2.0 / s, "loss_reg": 8.0 / s,
              "align": 20.0 / s, "grad_norm": 1.0, "steps_per_second": 3.0, "epoch": s / 10} for s in (1, 2, 3, 4)]
    evals = [{"step": s, "split": "validation", "mAP": m} for s, m in ((2, 0.30), (4, 0.25))]
    return train + evals


def test_loss_series_keeps_the_total_and_weighted_terms_only():
    assert plots.loss_series(_records()[:4]) == ["loss", "loss_align", "loss_reg"]
    assert plots.loss_series([{"step": 1, "split": "train", "mse": 1.0, "grad_norm": 2.0}]) == ["mse"]
    assert plots.loss_series([]) == []


def test_loss_curves_label_axes_and_the_evaluation_split():
    fig = plots.loss_curves_figure(_records())
    left, right = fig.axes
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["total", "align", "reg"]
    assert left.get_xlabel() == "training step" and "loss" in left.get_ylabel()
    assert right.get_xlabel() == "training step" and right.get_ylabel() == "CSO-mAP (×100)"
    assert "validation" in right.get_title()
    labels = [t.get_text() for t in right.get_legend().get_texts()]
    assert labels == ["validation CSO-mAP", "best 30.00 at step 2"]
    assert _legend_outside(fig, left)
    matplotlib.pyplot.close(fig)


# --------------------------------------------------------------------------------------------- files


def test_plot_functions_write_pngs_atomically(tmp_path):
    arrays = _arrays()
    detections = _detections(arrays, noise=0.05)
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    open_before = set(matplotlib.pyplot.get_fignums())
    plots.plot_pr_curves(_cso(arrays, detections), tmp_path / "pr.png")
    plots.plot_samples(arrays, *_maps(3), detections, tmp_path / "samples.png", num=2, decode="refine")
    plots.plot_loss_curves(log, tmp_path / "loss.png")
    for name in ("pr.png", "samples.png", "loss.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl", "pr.png", "samples.png"]
    assert set(matplotlib.pyplot.get_fignums()) == open_before  # every figure it made is closed


@pytest.mark.parametrize("key, want", [("AP05", "0.05 px"), ("AP25", "0.25 px"), ("mAP", "mAP")])
def test_threshold_labels(key, want):
    assert plots._threshold_label(key) == want


def test_samples_of_single_images_are_titled_by_image():
    from seqcsist_jax.data import csist100k

    arrays = csist100k.as_trajectories(csist100k.simulate_csist100k(3, 0))
    real = [t[0][t[0][:, 2] != 0] for t in arrays["targets"]]  # detections at the truth, score 1
    detections = [[np.concatenate([r, np.ones((len(r), 1), np.float32)], axis=1)] for r in real]
    fig = plots.samples_figure(arrays, np.zeros((3, 1, 33, 33), np.float32), np.arange(1), detections, num=3,
                               first_scored=0, threshold=50.0, decode="refine")
    titles = [ax.get_title() for ax in fig.axes[:6:2]]
    counts = arrays["num_targets"][:, 0]
    assert titles == [f"image {i}: input, {counts[i]} targets" for i in range(3)]
    matplotlib.pyplot.close(fig)
