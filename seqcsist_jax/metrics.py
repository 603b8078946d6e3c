"""CSO-mAP, the SeqCSIST benchmark metric, and extra detection diagnostics (SPEC §4).

Protocol (exactly as the public toolkit, ``grokcso/evaluation``, computes it):

1. :func:`grid_to_detections`: in a predicted ``(size·c)²`` label map, cells **strictly below** the
   brightness threshold are zeroed and every remaining non-zero cell is one detection
   ``(x, y, score=value)`` with ``x = (i - (c-1)//2)/c`` on the row axis and ``y`` likewise on the column
   axis (row-major order, no NMS).
2. Per frame, each detection looks only at its nearest ground truth (Euclidean distance on ``(x, y)``;
   brightness ignored; ties → lowest target index, like ``numpy.argmin``). Detections are visited in
   descending score; a detection is a true positive iff its nearest target is within the distance threshold
   (``<=``) and not yet taken, otherwise a false positive — even when another free target is within reach.
   A detection whose nearest target is beyond the threshold does not take it.
3. All detections of all scored frames are pooled and ranked by descending score; cumulative TP/FP give
   ``recall = TP / num_gt`` and ``precision = TP / (TP + FP)``.
4. AP is the VOC "area" AP: recall padded with 0 and 1, precision with 0 and 0, monotone precision envelope,
   sum of Δrecall × envelope over recall changes.
5. Thresholds 0.05 … 0.25 px give ``AP05`` … ``AP25``; ``mAP`` is their mean. Values are fractions in
   [0, 1]; papers print ×100.
6. SeqCSIST scores frames 2..17 (0-based) of every 20-frame trajectory: :func:`scored_frames`.

Implementation: per-frame greedy matching is sequential only within one target's claimers, so it is resolved
for all frames at once: detection ``i`` is a TP iff it *claims* its nearest target (distance ``<=``
threshold) and is the first claimer of that ``(frame, target)`` pair in visiting order. Visiting order within
a frame equals the pooled ranking restricted to that frame (both are the same stable sort by descending
score), so one global stable sort serves both. No Python loop over frames; 12,000 frames × 10 detections
score in a few tens of milliseconds.

Deviations from / decisions beyond the public code (documented, not configurable unless stated):

- **Tie-breaking (DECISION)**: equal scores are ordered by input order (frame-major, then row order within a
  frame; for grid detections that is row-major cell order) — a stable sort, both for the per-frame visiting
  order and the pooled ranking. The public code calls ``np.argsort(-scores)`` (default quicksort), whose order
  among ties is unspecified and differs between CPUs (SIMD sorts on AVX-512 machines are not stable even for
  10 elements). With distinct scores both agree exactly. ``cso_map(..., ties="grouped")`` is the tie-aware
  option: tied detections enter the PR curve together (one curve point per distinct score), which makes the
  result independent of input order; it is not the published protocol, so it is not the default.
- Robustness: the public code crashes on a split without any detection (``np.vstack`` of nothing), on a
  frame without ground truth, and on a single frame (its process pool is only created for > 1 frame). Here
  these give: no detections → every AP 0 and empty PR curves; frame without ground truth → all its
  detections are false positives; ``num_gt == 0`` → every AP 0 (the public ``eval_map`` also returns 0 when
  it has no ground truth). NaN/inf scores or coordinates raise ``ValueError`` naming the frame.
- Precision: computed in float64. The public code stores each AP in float32 (≤ 6e-8 difference) and rounds
  the ``APxx`` entries it reports to 3 decimals; here nothing is rounded. Keys are
  ``f"AP{round(100·t):02d}"`` (the public code truncates with ``int(100·t)``; the keys agree for the five
  standard thresholds).
- Padding: target rows with brightness 0 are dropped, so the simulator's zero-padded ``(T, MAXT, 3)`` arrays
  can be passed frame by frame. ``num_gt`` counts the remaining rows.
- The public ``CSO_Metrics_1``/``_2`` variants (3- and 7-frame windows) prepend a sentinel detection
  ``(100, 100, score 0)`` to every frame to dodge the empty-input crash; it only adds a trailing false
  positive, which cannot change a VOC AP when real scores are positive. It is not reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seqcsist_jax.imaging import grid_coordinates

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ap_key",
    "average_precision",
    "grid_to_detections",
    "grids_to_detections",
    "cso_map",
    "detection_diagnostics",
    "scored_frames",
    "scored_frame_indices",
]

Array = Any  # numpy.ndarray | jax.Array | nested lists

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.05, 0.10, 0.15, 0.20, 0.25)


# ----------------------------------------------------------------------------------------------------------
# Grid → detections
# ----------------------------------------------------------------------------------------------------------


def _grid_axes(shape: tuple[int, ...], c: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Cell coordinates along the two trailing axes of a label map of ``shape``."""
    if c < 1:
        raise ValueError(f"sub-pixel division c must be >= 1, got {c}")
    if len(shape) < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (…, n, n), got shape {shape}")
    rows, cols = shape[-2], shape[-1]
    if rows % c or cols % c:
        raise ValueError(f"{name} side lengths {rows}×{cols} are not multiples of c={c}")
    return grid_coordinates(c, rows // c), grid_coordinates(c, cols // c)


def _check_finite_grids(grids: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(grids).all(axis=(-2, -1))
    if bad.any():
        raise ValueError(f"{name}: frame {int(np.argmax(bad))} contains NaN or inf values")


def grid_to_detections(grid: Array, threshold: float = 70.0, c: int = 3) -> np.ndarray:
    """Detections of one predicted label map (SPEC §4.1).

    Like the public code (``x[x < threshold] = 0`` then ``np.nonzero``), a cell is a detection iff its value
    is ``>= threshold`` and non-zero; values exactly at the threshold are kept and, for a positive threshold,
    negative values are dropped. No NMS.

    Args:
      grid: ``(size·c, size·c)`` predicted label map (numpy or JAX; 33×33 for SeqCSIST).
      threshold: brightness threshold (70 for SeqCSIST, 50 for CSIST-100K).
      c: sub-pixel division.

    Returns:
      ``(M, 3)`` float64 rows ``(x, y, score)`` in row-major cell order; ``x`` (pixels) on the row axis,
      ``score`` is the cell value.

    Raises:
      ValueError: ``grid`` is not 2-D, its sides are not multiples of ``c``, or it holds NaN/inf.
    """
    g = np.asarray(grid)
    if g.ndim != 2:
        raise ValueError(f"grid must be a 2-D (n, n) label map, got shape {g.shape}")
    return grids_to_detections(g[None], threshold, c)[0]


def grids_to_detections(grids: Array, threshold: float = 70.0, c: int = 3) -> list[np.ndarray]:
    """Batched :func:`grid_to_detections` with one ``np.nonzero`` for the whole batch.

    Args:
      grids: ``(..., n, n)`` predicted label maps; leading axes are flattened in C order.
      threshold: brightness threshold.
      c: sub-pixel division.

    Returns:
      A list with one ``(M_i, 3)`` float64 array ``(x, y, score)`` per frame (``prod(...)`` entries).
    """
    g = np.asarray(grids)
    xs, ys = _grid_axes(g.shape, c, "grids")
    g = g.reshape(-1, g.shape[-2], g.shape[-1])
    _check_finite_grids(g, "grids")
    # Same two steps as the public code: below-threshold cells are zeroed, every non-zero cell remains.
    keep = (g >= threshold) & (g != 0)
    frame, i, j = np.nonzero(keep)
    dets = np.stack([xs[i], ys[j], g[frame, i, j].astype(np.float64)], axis=1)
    counts = np.bincount(frame, minlength=g.shape[0])
    return np.split(dets, np.cumsum(counts)[:-1]) if g.shape[0] else []


# ----------------------------------------------------------------------------------------------------------
# Input normalisation
# ----------------------------------------------------------------------------------------------------------


def _rows_and_counts(
    frames: Sequence[Array], name: str, allowed_cols: tuple[int, int], canonical: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated rows of a per-frame sequence and the number of rows per frame.

    Size-0 entries (``[]``, ``(0, C)``) are frames without rows. When the non-empty frames mix the two allowed
    widths, each is first mapped by ``canonical`` (an ``(M, C) → (M, allowed_cols[0])`` function).
    """
    arrs = [np.asarray(a, dtype=np.float64) for a in frames]
    full = [a for a in arrs if a.size]
    widths = {a.shape[1] if a.ndim == 2 else -1 for a in full}
    if not widths <= set(allowed_cols):
        for f, a in enumerate(arrs):  # error path only: name the first bad frame
            if a.size and (a.ndim != 2 or a.shape[1] not in allowed_cols):
                want = " or ".join(f"(M, {k})" for k in allowed_cols)
                hint = " (one row per item: use a (1, C) array)" if a.ndim == 1 else ""
                raise ValueError(f"{name}[{f}] must have shape {want}, got {a.shape}{hint}")
    counts = np.fromiter((a.shape[0] if a.size else 0 for a in arrs), dtype=np.int64, count=len(arrs))
    if len(widths) > 1:
        full = [canonical(a) if a.shape[1] != allowed_cols[0] else a for a in full]
    width = widths.pop() if len(widths) == 1 else allowed_cols[0]
    rows = np.concatenate(full) if full else np.zeros((0, width))
    return rows, counts


def _as_frame_list(frames: Any, name: str) -> Sequence[Array]:
    if isinstance(frames, (str, bytes, Mapping)):
        raise ValueError(f"{name} must be a sequence with one array per frame, got {type(frames).__name__}")
    if hasattr(frames, "shape") and not isinstance(frames, np.ndarray):
        frames = np.asarray(frames)  # JAX array
    if isinstance(frames, np.ndarray) and frames.dtype == object and frames.ndim == 1:
        return list(frames)  # ragged per-frame arrays
    if isinstance(frames, np.ndarray) and frames.ndim != 3:
        raise ValueError(
            f"{name} as a single array must be (frames, rows, columns), got shape {frames.shape}"
        )
    return frames


def _first_bad_frame(values: np.ndarray, frame: np.ndarray) -> int | None:
    bad = ~np.isfinite(values).all(axis=1)
    return int(frame[np.argmax(bad)]) if bad.any() else None


def _flatten_detections(detections: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All ``(x, y, score)`` rows: xy ``(D, 2)``, score ``(D,)``, frame ``(D,)``, counts ``(F,)``."""
    frames = _as_frame_list(detections, "detections")
    if isinstance(frames, np.ndarray):  # (F, M, C): every row a detection
        n_frames, m, ncol = frames.shape
        if ncol not in (3, 4):
            raise ValueError(f"detections must have 3 or 4 columns, got shape {frames.shape}")
        rows = frames.reshape(-1, ncol).astype(np.float64)
        counts = np.full(n_frames, m, dtype=np.int64)
    else:
        # Mixed layouts: (x, y, brightness, score) → (x, y, score).
        rows, counts = _rows_and_counts(frames, "detections", (3, 4), lambda a: a[:, (0, 1, 3)])
    if rows.shape[1] == 4:
        rows = rows[:, (0, 1, 3)]  # the score is the last column in both layouts
    frame = np.repeat(np.arange(counts.size), counts)
    bad = _first_bad_frame(rows, frame)
    if bad is not None:
        raise ValueError(f"detections for frame {bad} contain NaN or inf (coordinates or score)")
    return rows[:, :2], rows[:, 2], frame, counts


def _flatten_targets(targets: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-padding target positions: xy ``(G, 2)``, frame ``(G,)``, counts ``(F,)`` (frame order kept)."""
    frames = _as_frame_list(targets, "targets")
    if isinstance(frames, np.ndarray):
        n_frames, k, ncol = frames.shape
        if ncol not in (2, 3):
            raise ValueError(f"targets must have 2 or 3 columns, got shape {frames.shape}")
        rows = frames.reshape(-1, ncol).astype(np.float64)
        frame = np.repeat(np.arange(n_frames), k)
    else:
        # Mixed layouts: (xc, yc) rows get brightness 1 (never padding).
        rows, counts = _rows_and_counts(
            frames, "targets", (3, 2), lambda a: np.column_stack([a, np.ones(len(a))])
        )
        n_frames = counts.size
        frame = np.repeat(np.arange(n_frames), counts)
    if rows.shape[1] == 3:
        real = rows[:, 2] != 0  # brightness 0 = padding (NaN brightness is kept and rejected below)
        rows, frame = rows[real], frame[real]
    bad = _first_bad_frame(rows, frame)
    if bad is not None:
        raise ValueError(f"targets for frame {bad} contain NaN or inf")
    return rows[:, :2], frame, np.bincount(frame, minlength=n_frames)


def _nearest_targets(
    det_xy: np.ndarray, det_frame: np.ndarray, gt_xy: np.ndarray, gt_frame: np.ndarray, gt_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Nearest target of every detection within its own frame.

    Returns:
      ``nearest`` ``(D,)`` int, its ``distance`` ``(D,)`` float64, all distances ``(D, Kmax)`` (inf for
      absent targets) and ``Kmax``.
      A detection in a frame without targets gets distance ``inf`` (it can never claim anything).
    """
    kmax = int(gt_counts.max()) if gt_counts.size else 0
    n_frames = gt_counts.size
    if kmax == 0 or det_xy.shape[0] == 0:
        d = np.full((det_xy.shape[0], kmax), np.inf)
        return np.zeros(det_xy.shape[0], np.int64), np.full(det_xy.shape[0], np.inf), d, kmax
    # Padded (F, Kmax, 2) table in original target order, so argmin ties resolve to the lowest index.
    starts = np.concatenate([[0], np.cumsum(gt_counts)[:-1]])
    slot = np.arange(gt_frame.size) - starts[gt_frame]
    table = np.full((n_frames, kmax, 2), np.nan)
    table[gt_frame, slot] = gt_xy
    diff = det_xy[:, None, :] - table[det_frame]
    # sqrt(dx² + dy²) in float64, the same arithmetic as np.linalg.norm in the public code (ties at `<=`).
    dist = np.sqrt(diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1])
    dist[np.isnan(dist)] = np.inf
    nearest = np.argmin(dist, axis=1)
    return nearest, dist[np.arange(dist.shape[0]), nearest], dist, kmax


# ----------------------------------------------------------------------------------------------------------
# CSO-mAP
# ----------------------------------------------------------------------------------------------------------


def ap_key(threshold: float) -> str:
    """Result key of a distance threshold: ``0.05 → "AP05"``, ``0.25 → "AP25"``."""
    return f"AP{round(threshold * 100):02d}"


def average_precision(recall: Array, precision: Array) -> float:
    """VOC "area" average precision (SPEC §4.4).

    Args:
      recall: ``(D,)`` cumulative recall along the ranking (non-decreasing).
      precision: ``(D,)`` cumulative precision along the ranking.

    Returns:
      ``Σ Δrecall · envelope`` where the envelope is the running maximum of precision from the right, with
      recall padded by 0 and 1 and precision by 0 and 0. Empty input gives 0.
    """
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if rec.shape != prec.shape or rec.ndim != 1:
        raise ValueError(
            f"recall and precision must be 1-D of equal length, got {rec.shape} and {prec.shape}"
        )
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * envelope[step + 1]))


def _check_thresholds(thresholds: Sequence[float]) -> tuple[tuple[float, ...], list[str]]:
    ts = tuple(float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=np.float64)))
    if not ts:
        raise ValueError("thresholds must hold at least one distance")
    if not all(np.isfinite(t) and t >= 0 for t in ts):
        raise ValueError(f"thresholds must be finite and >= 0 pixels, got {ts}")
    keys = [ap_key(t) for t in ts]
    if len(set(keys)) != len(keys):
        raise ValueError(f"thresholds {ts} give duplicate result keys {keys}")
    return ts, keys


def _match_flags(
    perm: np.ndarray, claim_key: np.ndarray, distance: np.ndarray, threshold: float
) -> np.ndarray:
    """``(D,)`` TP flag of every detection (input order) for one threshold.

    ``perm`` lists detections grouped by ``claim_key`` = (frame, nearest target) and, within a group, in
    ranking order. A detection claims its nearest target when the distance is ``<= threshold``; the first
    claimer of each group wins. Later claimers and non-claimers are false positives.
    """
    claimers = perm[distance[perm] <= threshold]
    keys = claim_key[claimers]
    first = np.ones(keys.size, dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    tp = np.zeros(distance.size, dtype=bool)
    tp[claimers[first]] = True
    return tp


def cso_map(
    detections: Sequence[Array] | Array,
    targets: Sequence[Array] | Array,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    ties: str = "input_order",
) -> dict[str, Any]:
    """CSO-mAP over a set of scored frames, exactly the public protocol (SPEC §4.2–4.5).

    Args:
      detections: one entry per scored frame: ``(M_i, 3)`` rows ``(x, y, score)`` or ``(M_i, 4)`` rows
        ``(x, y, brightness, score)`` (the decoder's layout; the score is always the last column). Every row
        is a detection; empty entries (``[]``, ``(0, 3)``) are allowed. A single ``(F, M, 3|4)`` array works
        too. ``x`` is on the row axis, in pixels.
      targets: one entry per frame, same length: ``(K_i, 3)`` rows ``(xc, yc, brightness)`` (rows with
        brightness 0 are padding and dropped) or ``(K_i, 2)`` rows ``(xc, yc)``. A padded ``(F, K, 3)`` array
        works too.
      thresholds: distance thresholds in pixels (``<=`` counts as a match).
      ties: ``"input_order"`` (the protocol; equal scores ranked in input order) or ``"grouped"`` (tied
        detections enter the curve together: precision/recall are taken only after the last detection of each
        run of equal scores, so the result does not depend on input order). Within a frame, the number of
        targets first claimed by a run of tied detections does not depend on their order, so the grouped
        curve is well defined.

    Returns:
      A dict with ``mAP`` and one ``APxx`` per threshold (floats in [0, 1]); ``pr_curves``:
      ``{APxx: {"recall": (D,), "precision": (D,)}}`` along the pooled ranking (empty without detections);
      ``scores``: ``(D,)`` pooled scores in ranking order (descending; with ``ties="grouped"`` one entry per
      distinct score, like the curves); ``num_gt``, ``num_detections``,
      ``num_frames``.

    Raises:
      ValueError: mismatched lengths, bad shapes, NaN/inf in scores or coordinates (naming the frame), or bad
        thresholds.
    """
    ts, keys = _check_thresholds(thresholds)
    if ties not in ("input_order", "grouped"):
        raise ValueError(f"ties must be 'input_order' or 'grouped', got {ties!r}")
    det_xy, score, det_frame, det_counts = _flatten_detections(detections)
    gt_xy, gt_frame, gt_counts = _flatten_targets(targets)
    if det_counts.size != gt_counts.size:
        raise ValueError(
            f"detections has {det_counts.size} frames but targets has {gt_counts.size}; "
            "pass one entry per frame"
        )
    num_gt = int(gt_xy.shape[0])
    nearest, distance, _, kmax = _nearest_targets(det_xy, det_frame, gt_xy, gt_frame, gt_counts)
    claim_key = det_frame * max(kmax, 1) + nearest

    # Stable: ties keep input order (frame-major). Restricted to one frame, this is its visiting order.
    order = np.argsort(-score, kind="stable")
    # Group by (frame, nearest target), ranking order inside a group: one sort shared by all thresholds.
    perm = order[np.argsort(claim_key[order], kind="stable")]
    ranks = np.arange(1, order.size + 1, dtype=np.float64)
    ranked_scores = score[order]
    if ties == "grouped":  # the last index of every run of equal scores
        points = np.flatnonzero(np.r_[ranked_scores[1:] != ranked_scores[:-1], True]) if order.size else order
    else:
        points = np.arange(order.size)
    ranks = ranks[points]
    result: dict[str, Any] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    aps = []
    for t, key in zip(ts, keys):
        tp = np.cumsum(_match_flags(perm, claim_key, distance, t)[order], dtype=np.float64)[points]
        recall = tp / num_gt if num_gt > 0 else np.zeros_like(tp)
        precision = tp / ranks
        ap = average_precision(recall, precision) if num_gt > 0 else 0.0
        result[key] = ap
        curves[key] = {"recall": recall, "precision": precision}
        aps.append(ap)
    return {
        "mAP": float(np.mean(aps)),
        **result,
        "pr_curves": curves,
        "scores": ranked_scores[points],
        "num_gt": num_gt,
        "num_detections": int(score.size),
        "num_frames": int(gt_counts.size),
    }


# ----------------------------------------------------------------------------------------------------------
# Diagnostics the paper lacks
# ----------------------------------------------------------------------------------------------------------


def _optimal_pairs(dist: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One frame's maximum-cardinality matching within ``radius`` with minimum total distance."""
    from scipy.optimize import linear_sum_assignment

    # A forbidden pair costs more than any full set of allowed pairs, so cardinality is maximised first.
    forbidden = radius * (min(dist.shape) + 1) + 1.0
    cost = np.where(dist <= radius, dist, forbidden)
    r, c = linear_sum_assignment(cost)
    ok = dist[r, c] <= radius
    return r[ok], c[ok]


def detection_diagnostics(
    detections: Sequence[Array] | Array,
    targets: Sequence[Array] | Array,
    distance: float = 0.25,
    score_threshold: float | None = None,
) -> dict[str, float | int]:
    """Count, localisation and operating-point diagnostics (not part of the published protocol).

    Detections and targets are matched one-to-one per frame with the Hungarian algorithm: the largest number
    of pairs within ``distance`` pixels, and among those the smallest total distance. Frames where no
    detection or target has two candidates within ``distance`` are matched directly without the solver.

    Args:
      detections, targets: as for :func:`cso_map`.
      distance: matching radius in pixels (``<=``).
      score_threshold: when given, only detections with ``score >= score_threshold`` are used (the operating
        point); otherwise all given detections.

    Returns:
      ``count_accuracy``: fraction of frames where the number of detections equals the number of targets;
      ``count_mae``: mean |#detections − #targets| per frame; ``count_bias``: mean (#detections −
      #targets);
      ``rmse``: root-mean-square distance of matched pairs in pixels; ``precision`` = matched / detections;
      ``recall`` = matched / targets; ``f1``; ``num_matched``, ``num_detections``, ``num_gt``, ``num_frames``.
      Undefined ratios (no detections, no targets, no matches, no frames) are NaN.
    """
    if not (np.isfinite(distance) and distance >= 0):
        raise ValueError(f"distance must be finite and >= 0 pixels, got {distance}")
    det_xy, score, det_frame, det_counts = _flatten_detections(detections)
    gt_xy, gt_frame, gt_counts = _flatten_targets(targets)
    n_frames = gt_counts.size
    if det_counts.size != n_frames:
        raise ValueError(f"detections has {det_counts.size} frames but targets has {n_frames}")
    if score_threshold is not None:
        keep = score >= score_threshold
        det_xy, score, det_frame = det_xy[keep], score[keep], det_frame[keep]
        det_counts = np.bincount(det_frame, minlength=n_frames)

    _, _, dist, kmax = _nearest_targets(det_xy, det_frame, gt_xy, gt_frame, gt_counts)
    cand = dist <= distance  # (D, Kmax)
    det_deg = cand.sum(axis=1)
    gt_deg = np.zeros((n_frames, kmax), dtype=np.int64)
    np.add.at(gt_deg, det_frame, cand.astype(np.int64))
    complex_frame = np.zeros(n_frames, dtype=bool)
    complex_frame[det_frame[det_deg > 1]] = True
    complex_frame |= (gt_deg > 1).any(axis=1)

    # Simple frames: every candidate pair is already one-to-one.
    simple = cand & ~complex_frame[det_frame][:, None]
    sq = [dist[simple] ** 2]
    if complex_frame.any():
        starts = np.concatenate([[0], np.cumsum(det_counts)[:-1]])
        for f in np.flatnonzero(complex_frame):
            d = dist[starts[f] : starts[f] + det_counts[f], : gt_counts[f]]
            r, c = _optimal_pairs(d, distance)
            sq.append(d[r, c] ** 2)
    sq_all = np.concatenate(sq)
    matched = int(sq_all.size)
    num_det, num_gt = int(score.size), int(gt_xy.shape[0])

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b > 0 else float("nan")

    precision, recall = ratio(matched, num_det), ratio(matched, num_gt)
    diff = det_counts - gt_counts
    return {
        "count_accuracy": ratio(np.sum(diff == 0), n_frames),
        "count_mae": ratio(np.sum(np.abs(diff)), n_frames),
        "count_bias": ratio(np.sum(diff), n_frames),
        "rmse": float(np.sqrt(sq_all.mean())) if matched else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * precision * recall, precision + recall) if matched else float("nan"),
        "num_matched": matched,
        "num_detections": num_det,
        "num_gt": num_gt,
        "num_frames": int(n_frames),
    }


# ----------------------------------------------------------------------------------------------------------
# Scored frames (SPEC §4.6)
# ----------------------------------------------------------------------------------------------------------


def scored_frame_indices(T: int = 20, first: int = 2, last: int | None = None) -> np.ndarray:
    """0-based indices of the scored frames of a ``T``-frame trajectory: ``first..last`` inclusive.

    ``last`` defaults to ``T - 3``, so ``scored_frame_indices(20)`` is ``np.arange(2, 18)`` — exactly the
    centre frames DeRefNet predicts (it needs two neighbours on each side). Its ``(N, T-4, ...)`` output
    therefore already is the scored set and must not be passed through :func:`scored_frames` again.
    """
    last = T - 3 if last is None else last
    if not 0 <= first <= last < T:
        raise ValueError(f"scored frames need 0 <= first <= last < T, got first={first}, last={last}, T={T}")
    return np.arange(first, last + 1)


def scored_frames(
    arrays_or_sequence: Any,
    frames_per_trajectory: int = 20,
    first: int = 2,
    last: int = 17,
    layout: str = "auto",
) -> Any:
    """Selects the scored frames ``first..last`` of every trajectory (SPEC §4.6: frames 2..17 of 20).

    Args:
      arrays_or_sequence: one of
        - an array ``(N, T, ...)`` (numpy or JAX) → ``(N·S, ...)`` with ``S = last - first + 1``, flattened
          trajectory-major (trajectory 0's scored frames first);
        - an array ``(N·T, ...)`` of consecutive per-frame entries → ``(N·S, ...)``;
        - a list/tuple of per-frame entries, length ``N·T`` (e.g. per-frame detection arrays) → a list;
        - a dict of any of these → a dict with the same keys.
      frames_per_trajectory: ``T``.
      first, last: first and last scored frame, inclusive, 0-based.
      layout: ``"auto"`` (an array whose axis 1 has length ``T`` is ``(N, T, ...)``, any other array is
        per-frame), ``"trajectories"`` or ``"frames"`` to force one reading of an array.

    DeRefNet outputs exactly frames ``2..T-3``; its ``(N, T-4, ...)`` output already is the scored set.
    """
    t = frames_per_trajectory
    idx = scored_frame_indices(t, first, last)
    if layout not in ("auto", "trajectories", "frames"):
        raise ValueError(f"layout must be 'auto', 'trajectories' or 'frames', got {layout!r}")
    x = arrays_or_sequence
    if isinstance(x, Mapping):
        return {k: scored_frames(v, t, first, last, layout) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        if len(x) % t:
            raise ValueError(
                f"a per-frame sequence of length {len(x)} is not a whole number of {t}-frame trajectories"
            )
        return [x[n * t + i] for n in range(len(x) // t) for i in idx]
    if not hasattr(x, "shape"):
        raise ValueError(f"expected an array, list, tuple or dict, got {type(x).__name__}")
    shape = tuple(x.shape)
    as_traj = layout == "trajectories" or (layout == "auto" and len(shape) >= 2 and shape[1] == t)
    if as_traj:
        if len(shape) < 2 or shape[1] != t:
            raise ValueError(f"expected an (N, {t}, ...) array, got shape {shape}")
        return x[:, first : last + 1].reshape((shape[0] * idx.size,) + shape[2:])
    if not shape or shape[0] % t:
        raise ValueError(
            f"a per-frame array of shape {shape} is not a whole number of {t}-frame trajectories"
        )
    traj = x.reshape((shape[0] // t, t) + shape[1:])
    return traj[:, first : last + 1].reshape((shape[0] // t * idx.size,) + shape[1:])
