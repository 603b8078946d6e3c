"""Figures for evaluation reports: PR curves, sample frames with detections, loss curves (PNG, matplotlib Agg).

Image coordinates follow SPEC §1: ``x`` (= ``xc``) runs down the rows, ``y`` (= ``yc``) along the columns, so
a target at ``(x, y)`` is drawn at horizontal position ``y`` and vertical position ``x``.
"""

from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from seqcsist_jax.fileio import atomic_path  # noqa: E402
from seqcsist_jax.metric_writers import read_metrics  # noqa: E402


def _save(fig, path: pathlib.Path) -> None:
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_pr_curves(metrics: Mapping, path: pathlib.Path, title: str = "") -> None:
    """Precision–recall curve per distance threshold (``metrics['pr_curves']`` from :func:`metrics.cso_map`)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for key, curve in metrics.get("pr_curves", {}).items():
        recall, precision = np.asarray(curve["recall"]), np.asarray(curve["precision"])
        ap = metrics.get(key)
        label = f"{key}" + ("" if ap is None else f" (AP {100 * float(ap):.1f})")
        ax.plot(recall, precision, label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title or f"CSO-mAP {100 * float(metrics.get('mAP', 0)):.2f}", fontsize=9)
    _save(fig, path)


def plot_samples(
    arrays: Mapping[str, np.ndarray],
    maps: np.ndarray,
    frame_index: np.ndarray,
    detections: Sequence[Sequence[np.ndarray]],
    path: pathlib.Path,
    num: int = 4,
    threshold: float = 70.0,
    first_scored: int = 2,
    zoom: float = 1.6,
    decode: str = "grid",
) -> None:
    """A row per sample trajectory: the input frame with ground truth, and the predicted map with detections.

    The map panel is zoomed to ``±zoom`` px around the targets so sub-pixel errors are visible.
    ``detections[i][k]`` are the detections of trajectory i's k-th scored frame (frame ``first_scored + k``).
    """
    frames = np.asarray(arrays["frames"])
    targets = np.asarray(arrays["targets"])
    n = min(num, len(frames))
    if n == 0:
        return
    picks = np.linspace(0, len(frames) - 1, n).round().astype(int)
    fig, axes = plt.subplots(n, 2, figsize=(6.6, 3.2 * n), squeeze=False, constrained_layout=True)
    size = frames.shape[-1]
    cells = maps.shape[-1]
    c = cells // size
    lo = -((c - 1) // 2) / c - 0.5 / c
    hi = lo + cells / c
    position = {int(f): i for i, f in enumerate(np.asarray(frame_index))}
    for row, i in enumerate(picks):
        k = len(detections[i]) // 2  # a frame in the middle of the scored range
        f = first_scored + k
        gt = targets[i, f]
        gt = gt[gt[:, 2] != 0]
        d = np.asarray(detections[i][k]).reshape(-1, 4)
        ax = axes[row, 0]
        ax.imshow(frames[i, f], cmap="gray", extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        ax.scatter(gt[:, 1], gt[:, 0], marker="+", c="lime", s=50, linewidths=1)
        ax.set_title(f"trajectory {i}, frame {f}: input ({len(gt)} targets)", fontsize=8)
        ax = axes[row, 1]
        pred = maps[i, position[f]] if f in position else np.zeros((cells, cells))
        im = ax.imshow(pred, cmap="magma", extent=(lo, hi, hi, lo), vmin=0, vmax=max(float(pred.max()), threshold))
        ax.scatter(gt[:, 1], gt[:, 0], marker="+", c="lime", s=90, linewidths=1.5, label="ground truth")
        ax.scatter(d[:, 1], d[:, 0], marker="x", c="cyan", s=30, linewidths=1, label=f"detections ({len(d)})")
        centre = gt[:, :2].mean(axis=0) if len(gt) else np.array([size / 2, size / 2])
        ax.set_xlim(centre[1] - zoom, centre[1] + zoom)
        ax.set_ylim(centre[0] + zoom, centre[0] - zoom)
        ax.set_title(f"predicted {cells}×{cells} map (zoomed)", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
        fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
        for a in axes[row]:
            a.set_xlabel("y (columns, px)", fontsize=7)
            a.set_ylabel("x (rows, px)", fontsize=7)
            a.tick_params(labelsize=6)
    _save(fig, path)


def plot_loss_curves(metrics_jsonl: pathlib.Path, path: pathlib.Path) -> None:
    """Training loss terms and validation CSO-mAP over steps from ``metrics.jsonl``."""
    records = read_metrics(metrics_jsonl)
    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") != "train" and "mAP" in r]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    ax = axes[0]
    if train:
        steps = [r["step"] for r in train]
        skip = {"step", "split", "steps_per_second", "epoch", "grad_norm"}
        for key in [k for k in train[0] if k not in skip]:
            values = [r.get(key, np.nan) for r in train]
            if np.all(np.asarray(values) > 0):
                ax.plot(steps, values, label=key)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel("step")
    ax.set_title("training loss", fontsize=9)
    ax = axes[1]
    if evals:
        ax.plot([r["step"] for r in evals], [100 * r["mAP"] for r in evals], marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("CSO-mAP (×100)")
    ax.set_title("validation", fontsize=9)
    for a in axes:
        a.grid(alpha=0.3)
    _save(fig, path)
