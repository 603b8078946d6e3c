"""Figures for evaluation reports: PR curves, sample frames with detections, loss curves (PNG, matplotlib Agg).

Each figure has a ``*_figure`` function that returns the matplotlib ``Figure`` (tests inspect it) and a
``plot_*`` function that writes it to a PNG atomically.

Image coordinates follow SPEC §1: ``x`` (= ``xc``) runs down the rows, ``y`` (= ``yc``) along the columns, so
a target at ``(x, y)`` is drawn at horizontal position ``y`` and vertical position ``x``.
"""

from __future__ import annotations

import pathlib
import re
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from seqcsist_jax.fileio import atomic_path  # noqa: E402
from seqcsist_jax.metric_writers import read_metrics  # noqa: E402

#: Precision-axis floor below which the PR plot shows the full [0, 1] range; above it the axis is zoomed so
#: curves near precision 1 (typical of continuous decoders) do not vanish into the frame.
_ZOOM_FLOOR = 0.5
#: Keys of a training record that are not loss values.
_NOT_LOSS = frozenset({"step", "split", "steps_per_second", "epoch", "grad_norm", "learning_rate", "lr"})


def _save(fig: Figure, path: pathlib.Path) -> None:
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def _threshold_label(key: str) -> str:
    """``AP05`` → ``0.05 px`` (the metric's distance threshold); other keys unchanged."""
    m = re.fullmatch(r"AP(\d\d)", key)
    return f"{int(m.group(1)) / 100:.2f} px" if m else key


# --------------------------------------------------------------------------------------------- PR curves


def pr_curves_figure(metrics: Mapping, title: str = "") -> Figure:
    """Precision–recall curve per distance threshold, legend outside the axes.

    Args:
      metrics: a :func:`seqcsist_jax.metrics.cso_map` result: ``pr_curves`` ``{key: {recall, precision}}``,
        ``mAP`` and the ``APxx`` values (floats in [0, 1]).
      title: figure title; default ``CSO-mAP xx.xx``.

    The end of each curve (its highest recall) is marked: where precision stays at 1, as for continuous
    decoders, AP equals that recall, so the markers carry the information the overlapping curves cannot.
    When every curve stays above ``precision 0.5`` the precision axis is zoomed to the data (the axis label
    says so). Curves without points (no detection) say so in the axes.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4))
    curves = metrics.get("pr_curves", {}) or {}
    lowest, drawn = 1.0, False
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (key, curve) in enumerate(curves.items()):
        recall, precision = np.asarray(curve["recall"], float), np.asarray(curve["precision"], float)
        ap = metrics.get(key)
        label = _threshold_label(key) + ("" if ap is None else f"  AP {100 * float(ap):.1f}")
        colour = colours[n % len(colours)]
        ax.plot(recall, precision, color=colour, label=label, lw=1.5)
        if len(recall):
            ax.plot(recall[-1], precision[-1], "o", color=colour, ms=5, mec="black", mew=0.5)
            lowest, drawn = min(lowest, float(np.min(precision))), True
    ax.set_xlabel("recall")
    ax.set_xlim(0, 1.02)
    if curves and drawn and lowest >= 1.0:  # every ranked detection is a match at every threshold
        ax.set_ylim(0.95, 1.005)
        ax.set_ylabel("precision (axis zoomed)")
        ax.text(0.02, 0.05, "precision 1 at every rank and threshold:\nAP = the recall reached (●)",
                transform=ax.transAxes, fontsize=8, va="bottom")
    elif curves and drawn and lowest >= _ZOOM_FLOOR:
        pad = max(0.01, 0.08 * (1 - lowest))
        ax.set_ylim(lowest - pad, 1 + pad)
        ax.set_ylabel("precision (axis zoomed)")
    else:
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("precision")
        if curves and not drawn:  # empty curves: nothing was detected, not "precision 1"
            ax.text(0.5, 0.5, "no detection at any threshold: every AP is 0", transform=ax.transAxes,
                    fontsize=9, ha="center", va="center")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(title="distance threshold", fontsize=8, title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    mean_ap = f"CSO-mAP {100 * float(metrics.get('mAP', 0)):.2f}"
    ax.set_title(f"{title}\n{mean_ap}" if title else mean_ap, fontsize=9)
    fig.tight_layout()
    return fig


def plot_pr_curves(metrics: Mapping, path: pathlib.Path, title: str = "") -> None:
    """Writes :func:`pr_curves_figure` to ``path`` (PNG)."""
    _save(pr_curves_figure(metrics, title), pathlib.Path(path))


# --------------------------------------------------------------------------------------------- samples


def _nearest_distances(gt: np.ndarray, det: np.ndarray) -> np.ndarray:
    """Distance (px) from each ground-truth position ``(K, 2)`` to its nearest detection ``(M, 2)``."""
    if len(gt) == 0 or len(det) == 0:
        return np.full(len(gt), np.nan)
    return np.sqrt(((gt[:, None, :] - det[None, :, :]) ** 2).sum(-1)).min(axis=1)


def samples_figure(
    arrays: Mapping[str, np.ndarray],
    maps: np.ndarray,
    frame_index: np.ndarray,
    detections: Sequence[Sequence[np.ndarray]],
    num: int = 4,
    threshold: float = 70.0,
    first_scored: int = 2,
    zoom: float = 1.6,
    decode: str = "grid",
) -> Figure | None:
    """A row per sample trajectory: the input frame with ground truth, and the predicted map with detections.

    Args:
      arrays: ``frames (N, T, S, S)`` and ``targets (N, T, MAXT, 3)`` rows ``(x, y, brightness)`` in px.
      maps: ``(N, F, C, C)`` predicted label maps (``C = 3·S``) for the frames in ``frame_index (F,)``.
      detections: ``detections[i][k]`` rows ``(x, y, brightness, score)`` of trajectory i's k-th scored frame
        (frame ``first_scored + k``).
      num: trajectories shown (evenly spread over the split); threshold: the map's colour-scale floor.
      zoom: the map panel shows ``±zoom`` px around the targets so sub-pixel errors are visible.
      decode: the decoder that produced ``detections``. ``grid`` detections sit on the ⅓-px cells of the map;
        the continuous decoders (``peak``, ``refine``, ``trajectory``) place them anywhere, so they are drawn
        as open circles on both panels, and each title gives the distance from every target to its nearest
        detection.

    Returns:
      the figure, or ``None`` when there is no trajectory.
    """
    frames = np.asarray(arrays["frames"])
    targets = np.asarray(arrays["targets"])
    n = min(num, len(frames))
    if n == 0:
        return None
    continuous = decode != "grid"
    picks = np.linspace(0, len(frames) - 1, n).round().astype(int)
    fig, axes = plt.subplots(n, 2, figsize=(7.2, 3.3 * n), squeeze=False, constrained_layout=True)
    size = frames.shape[-1]
    cells = maps.shape[-1]
    c = cells // size
    lo = -((c - 1) // 2) / c - 0.5 / c
    hi = lo + cells / c
    position = {int(f): i for i, f in enumerate(np.asarray(frame_index))}
    det_style = (dict(marker="o", facecolors="none", edgecolors="cyan", s=60, linewidths=1.2) if continuous
                 else dict(marker="x", c="cyan", s=30, linewidths=1))
    det_label = f"{decode} detections" + (" (continuous)" if continuous else " (⅓-px cells)")
    for row, i in enumerate(picks):
        k = len(detections[i]) // 2  # a frame in the middle of the scored range
        f = first_scored + k
        gt = targets[i, f]
        gt = gt[gt[:, 2] != 0]
        d = np.asarray(detections[i][k]).reshape(-1, 4)
        ax = axes[row, 0]
        ax.imshow(frames[i, f], cmap="gray", extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        ax.scatter(gt[:, 1], gt[:, 0], marker="+", c="lime", s=50, linewidths=1, label="ground truth")
        if continuous:
            ax.scatter(d[:, 1], d[:, 0], **{**det_style, "s": 30}, label=det_label)
        where = f"image {i}" if frames.shape[1] == 1 else f"trajectory {i}, frame {f}"  # CSIST-100K: one frame each
        ax.set_title(f"{where}: input, {len(gt)} targets", fontsize=8)
        ax = axes[row, 1]
        pred = maps[i, position[f]] if f in position else np.zeros((cells, cells))
        vmax = max(float(pred.max()), threshold)
        im = ax.imshow(pred, cmap="magma", extent=(lo, hi, hi, lo), vmin=0, vmax=vmax)
        ax.scatter(gt[:, 1], gt[:, 0], marker="+", c="lime", s=90, linewidths=1.5, label="ground truth")
        ax.scatter(d[:, 1], d[:, 0], **det_style, label=f"{det_label}: {len(d)}")
        centre = gt[:, :2].mean(axis=0) if len(gt) else np.array([size / 2, size / 2])
        ax.set_xlim(centre[1] - zoom, centre[1] + zoom)
        ax.set_ylim(centre[0] + zoom, centre[0] - zoom)
        if continuous:
            errors = _nearest_distances(gt[:, :2], d[:, :2])
            shown = ", ".join("–" if np.isnan(e) else f"{e:.3f}" for e in errors)
            ax.set_title(f"model map, zoomed; {decode} fit\ntarget → nearest detection: {shown} px", fontsize=8)
        else:
            ax.set_title(f"predicted {cells}×{cells} map, zoomed; grid detections", fontsize=8)
        ax.legend(fontsize=6, loc="lower right")
        bar = fig.colorbar(im, ax=ax, shrink=0.8)
        bar.ax.tick_params(labelsize=6)
        bar.set_label("map value (grey levels)", fontsize=6)
        for a in axes[row]:
            a.set_xlabel("y (columns, px)", fontsize=7)
            a.set_ylabel("x (rows, px)", fontsize=7)
            a.tick_params(labelsize=6)
    return fig


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
    """Writes :func:`samples_figure` to ``path`` (PNG); nothing when there is no trajectory."""
    fig = samples_figure(arrays, maps, frame_index, detections, num=num, threshold=threshold,
                         first_scored=first_scored, zoom=zoom, decode=decode)
    if fig is not None:
        _save(fig, pathlib.Path(path))


# --------------------------------------------------------------------------------------------- loss curves


def loss_series(train_records: Sequence[Mapping]) -> list[str]:
    """Keys of the training records to plot: the total ``loss`` and its weighted terms ``loss_*``.

    A method logs each term twice, raw (``align``) and weighted (``loss_align``, what sums to ``loss``);
    only the weighted one is plotted. A log without ``loss_*`` terms falls back to every positive series.
    """
    if not train_records:
        return []
    keys = [k for k in train_records[0] if k not in _NOT_LOSS]
    terms = sorted(k for k in keys if k.startswith("loss_"))
    if "loss" in keys or terms:
        return (["loss"] if "loss" in keys else []) + terms
    return keys


def loss_curves_figure(records: Sequence[Mapping]) -> Figure:
    """Training loss (total and weighted terms, log scale) and the evaluation CSO-mAP over steps.

    Args:
      records: ``metrics.jsonl`` records (``step``, ``split``; ``train`` records hold the losses, the others
        the periodic evaluation's ``mAP`` in [0, 1], labelled with their split's name).
    """
    train = [r for r in records if r.get("split", "train") == "train"]
    evals = [r for r in records if r.get("split", "train") != "train" and "mAP" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    ax = axes[0]
    steps = [r["step"] for r in train]
    plotted = 0
    for key in loss_series(train):
        values = np.asarray([r.get(key, np.nan) for r in train], dtype=float)
        if not np.all(values[np.isfinite(values)] > 0):
            continue  # a log axis cannot show it
        total = key == "loss"
        label = "total" if total else key.removeprefix("loss_")
        ax.plot(steps, values, label=label, color="black" if total else None, lw=2 if total else 1.2)
        plotted += 1
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (log scale)")
    ax.set_title("training loss: total and its weighted terms", fontsize=9)
    if plotted:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax = axes[1]
    splits = sorted({r["split"] for r in evals})
    for split in splits:
        rows = [r for r in evals if r["split"] == split]
        x = [r["step"] for r in rows]
        y = [100 * float(r["mAP"]) for r in rows]
        (line,) = ax.plot(x, y, marker="o", ms=4, label=f"{split} CSO-mAP")
        best = int(np.argmax(y))
        ax.plot(x[best], y[best], "*", ms=12, color=line.get_color(), mec="black", mew=0.5,
                label=f"best {y[best]:.2f} at step {x[best]}")
    ax.set_xlabel("training step")
    ax.set_ylabel("CSO-mAP (×100)")
    names = " / ".join(splits) if splits else "no evaluation yet"
    ax.set_title(f"periodic evaluation on the {names} split" if splits else names, fontsize=9)
    if splits:
        ax.legend(fontsize=7, loc="lower right")
    if train and steps:
        for a in axes:
            a.set_xlim(0, max([*steps, *(r["step"] for r in evals)]) * 1.02)
    for a in axes:
        a.grid(alpha=0.3)
    return fig


def plot_loss_curves(metrics_jsonl: pathlib.Path, path: pathlib.Path) -> None:
    """Writes :func:`loss_curves_figure` of a run's ``metrics.jsonl`` to ``path`` (PNG)."""
    _save(loss_curves_figure(read_metrics(metrics_jsonl)), pathlib.Path(path))
