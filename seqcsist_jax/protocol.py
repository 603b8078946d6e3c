"""The benchmark protocol's constants, stated once (SPEC §4): what is scored, at which threshold, under which keys.

Every module that scores, reports or decodes takes these names from here.
"""

from __future__ import annotations

import numpy as np

# SeqCSIST scores frames 2..T-3 of each trajectory (2..17 of 20), for every method (SPEC §4.6); the public
# detectors also regress only on those frames. Single-image benchmarks (CSIST-100K, SPEC §9) score every image.
SCORED_MARGIN = 2
# Brightness thresholds of the grid decoder (SPEC §4.1 and §9).
SEQCSIST_THRESHOLD = 70.0
CSIST100K_THRESHOLD = 50.0
# Result keys of the paper's table, in its column order (CSO-mAP, then AP at 0.05 … 0.25 px).
METRIC_KEYS: tuple[str, ...] = ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25")
# Decoders of seqcsist_jax.decode; "grid" is the paper protocol, the others are this project's continuous ones.
DECODERS: tuple[str, ...] = ("grid", "peak", "refine", "trajectory")
# The decoders that fit the imaging model to the frames (grid and peak read the model's maps only).
CONTINUOUS_DECODERS: tuple[str, ...] = ("refine", "trajectory")


def protocol_difference(single_image: bool, threshold: float, scored_margin: int) -> str:
    """A note when ``(threshold, scored_margin)`` are not the dataset's benchmark protocol (SeqCSIST: 70 and frames
    2..T-3; CSIST-100K: 50 and every image), e.g. a single-image method pointed at SeqCSIST by an override of
    ``config.dataset.name`` alone; ``""`` when they are. A note, not an error: other settings are legitimate
    studies, but their scores do not compare with the published ones."""
    want = (CSIST100K_THRESHOLD, 0) if single_image else (SEQCSIST_THRESHOLD, SCORED_MARGIN)
    if (float(threshold), int(scored_margin)) == want:
        return ""
    benchmark = "CSIST-100K" if single_image else "SeqCSIST"
    fix = [f"--config.eval.threshold={want[0]:g}"] if float(threshold) != want[0] else []
    fix += [f"--config.eval.scored_margin={want[1]}"] if int(scored_margin) != want[1] else []
    return (f"scoring at threshold {float(threshold):g} with eval.scored_margin {int(scored_margin)}, not {benchmark}'s "
            f"protocol (threshold {want[0]:g}, scored_margin {want[1]}), so the scores do not compare with the "
            f"published ones; {' '.join(fix)} scores as the paper does")


def scored_frame_range(num_frames: int, margin: int = SCORED_MARGIN) -> tuple[int, int]:
    """Inclusive range of scored frames: ``(margin, T-1-margin)``, i.e. 2..17 for T = 20.

    Raises:
      ValueError: the trajectory has no scored frame with this margin.
    """
    if margin < 0 or num_frames <= 2 * margin:
        raise ValueError(f"trajectories of {num_frames} frames have no scored frame with a margin of {margin}")
    return margin, num_frames - 1 - margin


def scored_frames(num_frames: int, margin: int = SCORED_MARGIN) -> np.ndarray:
    """Indices of the scored frames, ``(T - 2·margin,)`` int."""
    first, last = scored_frame_range(num_frames, margin)
    return np.arange(first, last + 1)
