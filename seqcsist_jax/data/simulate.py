"""The SeqCSIST trajectory simulator (SPEC §3).

``simulate_seqcsist(num_trajectories, seed, **options)`` draws ``num_trajectories`` groups of closely spaced
targets moving along smooth reference paths, renders every frame with :func:`seqcsist_jax.imaging.render`
and stores it like the public release (8-bit, rounded and clipped). Every number of the motion model is a field
of :class:`SimulationOptions`; the defaults reproduce the paper's dataset.

Motion model (paper §3; choices the paper leaves open are marked DECISION and are options):

* A reference point without intensity starts at ``(x0, f(x0))``; ``x0`` is an integer drawn uniformly from
  ``x0_range`` (1..9). ``x`` runs along image rows (``xc``), ``y = f(x)`` along columns (``yc``).
* Every frame the reference point advances ``step`` (0.04 px) along x: ``+`` if ``x0`` is below the middle of
  ``bounds`` (5 for the defaults), ``-`` otherwise; ``y`` follows ``f``.
* ``f`` is drawn per trajectory from ``curve_families`` (uniformly). **DECISION** parametrisation, every family
  described by its start point ``(x0, y0)`` and start slope ``b = f'(x0)``:

  - ``line``: ``f(x) = y0 + b·(x - x0)``;
  - ``quadratic``: ``f(x) = y0 + b·(x - x0) + a·(x - x0)²``, ``a`` uniform in ``quadratic_curvature_range``;
  - ``circle``: the arc of radius ``R`` (uniform in ``circle_radius_range``) tangent to slope ``b`` at the
    start point, bending to either side with equal probability.

  ``y0`` is uniform in ``bounds`` and ``b`` uniform in ``slope_range``. A path is accepted when all its points
  lie in ``bounds``² and ``|f'| <= max_slope`` along it (so the per-frame step stays bounded); rejected
  trajectories redraw ``y0, b, a, R`` and the bending side (family and ``x0`` are kept, so the family mix and
  the ``x0`` distribution are exactly uniform). The redraw is vectorised; only the few retry rounds loop.
* Each trajectory holds ``K`` targets, ``K`` uniform in ``[min_targets, max_targets]`` (**DECISION**: constant
  over the trajectory's frames). Each target takes a distinct direction among up/down/left/right (up = ``-xc``,
  down = ``+xc``, left = ``-yc``, right = ``+yc``), keeps it for the whole trajectory, and starts ``spacing``
  (0.3 px) from the reference point. **DECISION**: when more than 4 targets are requested (the paper's 2–8
  density study) the directions are the 8 compass directions (4 axes + 4 diagonals); ``directions`` selects
  the set explicitly.
* Every frame after the first each target moves away from the reference point by an amount uniform in
  ``[0, drift_max)`` (0.0014 px): ``r_k(t) = spacing + Σ_{s=1..t} δ_k(s)``.
* Brightness is uniform in ``brightness_range`` (220–250); **DECISION**: fixed per target along its trajectory
  (``brightness_mode="frame"`` draws it per frame instead).
* Frames are rendered from the *stored* float32 target rows (so re-rendering the returned ``targets`` reproduces
  the frames exactly), Gaussian noise of ``noise_sigma`` grey levels is added, then
  :func:`seqcsist_jax.imaging.quantize` rounds and clips to uint8 (``output="float32"`` keeps the float frame,
  clipped to ``[0, 255]`` without rounding when ``clip`` is true).

Determinism: one ``numpy.random.SeedSequence(seed)`` is split into four independent PCG64 streams (counts,
directions and brightness; reference paths; outward drift; noise), each drawn in a fixed order with fixed
shapes, so the same seed and options give byte-identical arrays on every run and machine, independent of
thread count and of the rendering chunk size. Because the streams are independent, changing ``noise_sigma``
leaves the targets unchanged (same trajectories with and without noise, as the paper's robustness study needs).

Command line (public on-disk layout, so the original PyTorch code can read generated splits)::

    python -m seqcsist_jax.data.simulate --out DIR --split test [--num_trajectories=N] [--seed=S]
        [--start_index=0|1] [--noise_sigma=S] [--min_targets=K] [--max_targets=K]
"""

from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import math
import sys
from typing import Any, Sequence

import numpy as np

from seqcsist_jax import imaging

__all__ = [
    "CURVE_FAMILIES",
    "DIRECTION_NAMES",
    "DIRECTION_VECTORS",
    "SPLIT_SIZES",
    "SimulationOptions",
    "direction_count",
    "make_options",
    "simulate_seqcsist",
    "split_seed",
    "main",
]

#: Curve families of the reference path; ``curve_family`` in the output indexes this tuple.
CURVE_FAMILIES: tuple[str, ...] = ("line", "quadratic", "circle")

#: Target directions; ``directions`` in the output indexes this tuple. The first four are the paper's.
DIRECTION_NAMES: tuple[str, ...] = (
    "up", "down", "left", "right", "up-left", "up-right", "down-left", "down-right",
)

_D = 1.0 / math.sqrt(2.0)
#: ``(8, 2)`` unit vectors ``(Δxc, Δyc)`` of :data:`DIRECTION_NAMES` (up = -xc = towards row 0).
DIRECTION_VECTORS: np.ndarray = np.array(
    [[-1, 0], [1, 0], [0, -1], [0, 1], [-_D, -_D], [-_D, _D], [_D, -_D], [_D, _D]], dtype=np.float64
)
DIRECTION_VECTORS.setflags(write=False)

#: Trajectories per split of the paper's dataset (3,500 / 750 / 750 × 20 frames).
SPLIT_SIZES: dict[str, int] = {"train": 3500, "val": 750, "test": 750}


def direction_count(directions: str, max_targets: int) -> int:
    """Directions a group's targets leave along (SPEC §3): ``"axis"`` 4, ``"compass"`` 8, ``"auto"`` the
    generator's rule (the 4 axis directions up to 4 targets, else the 8 compass directions)."""
    if directions == "axis":
        return 4
    if directions == "compass":
        return 8
    return 4 if max_targets <= 4 else 8


@dataclasses.dataclass(frozen=True)
class SimulationOptions:
    """Every number of the SeqCSIST motion and imaging model. Defaults = SPEC §3 (the paper's dataset).

    Lengths and positions are in pixels, brightness and noise in grey levels.

    Attributes:
      frames_per_trajectory: frames ``T`` per trajectory.
      min_targets, max_targets: targets per trajectory, uniform in ``[min_targets, max_targets]``, constant
        over the trajectory's frames.
      max_targets_padded: ``MAXT``, the padded target axis of ``targets`` (``None`` = ``max_targets``).
      brightness_range: ``(low, high)`` uniform brightness; must be > 0 (0 marks padding rows).
      brightness_mode: ``"trajectory"`` (fixed per target, DECISION) or ``"frame"`` (redrawn every frame).
      spacing: distance of every target from the reference point in the first frame.
      step: per-frame advance of the reference point along x (rows).
      drift_max: per-frame outward move of each target is uniform in ``[0, drift_max)``.
      directions: ``"auto"`` (4 axis directions if ``max_targets <= 4``, else the 8 compass directions),
        ``"axis"`` or ``"compass"``.
      curve_families: families of ``f`` to draw from (subset of :data:`CURVE_FAMILIES`), uniformly.
      x0_range: inclusive integer range of the start row ``x0``.
      bounds: ``(low, high)``: the reference path stays in ``[low, high]²``.
      slope_range: start slope ``f'(x0)`` (all families), uniform.
      quadratic_curvature_range: ``a`` of the quadratic family, uniform.
      circle_radius_range: radius of the circle family, uniform.
      max_slope: paths with ``|f'(x)| > max_slope`` anywhere along them are redrawn.
      max_redraw_rounds: give up (ValueError) when paths still fail after this many vectorised redraws.
      noise_sigma: std of additive Gaussian noise in grey levels (0 = the released noise-free data).
      clip: clip to ``[0, 255]`` (uint8 output: rounding then clipping as the public writer; with ``clip=False``
        out-of-range pixels raise ValueError). For float32 output: clip without rounding, or keep raw values.
      output: ``"uint8"`` (as stored in PNG) or ``"float32"`` (rendered frame plus noise, unquantised).
      size: frame side in pixels.
      sigma: PSF width in pixels.
      render_chunk: trajectories rendered at once (memory only; the result does not depend on it).
    """

    frames_per_trajectory: int = 20
    min_targets: int = 2
    max_targets: int = 4
    max_targets_padded: int | None = None
    brightness_range: tuple[float, float] = (220.0, 250.0)
    brightness_mode: str = "trajectory"
    spacing: float = 0.3
    step: float = 0.04
    drift_max: float = 0.0014
    directions: str = "auto"
    curve_families: tuple[str, ...] = CURVE_FAMILIES
    x0_range: tuple[int, int] = (1, 9)
    bounds: tuple[float, float] = (1.0, 9.0)
    slope_range: tuple[float, float] = (-1.0, 1.0)
    quadratic_curvature_range: tuple[float, float] = (-0.5, 0.5)
    circle_radius_range: tuple[float, float] = (1.0, 5.0)
    max_slope: float = 2.0
    max_redraw_rounds: int = 200
    noise_sigma: float = 0.0
    clip: bool = True
    output: str = "uint8"
    size: int = 11
    sigma: float = 0.5
    render_chunk: int = 1000

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so options hash/compare and print the same however they were given.
        for name in ("brightness_range", "x0_range", "bounds", "slope_range", "quadratic_curvature_range",
                     "circle_radius_range", "curve_families"):
            value = getattr(self, name)
            if name == "curve_families" and isinstance(value, str):
                value = (value,)
            if isinstance(value, (str, bytes)) or not isinstance(value, (collections.abc.Sequence, np.ndarray)):
                raise ValueError(f"option {name} must be a sequence, got {value!r}")
            object.__setattr__(self, name, tuple(np.asarray(value).tolist()))
        self._validate()

    @property
    def maxt(self) -> int:
        """The padded target axis length ``MAXT``."""
        return self.max_targets if self.max_targets_padded is None else self.max_targets_padded

    @property
    def direction_set(self) -> int:
        """Number of usable directions (4 axis or 8 compass), indices into :data:`DIRECTION_NAMES`."""
        return direction_count(self.directions, self.max_targets)

    @property
    def max_radius(self) -> float:
        """Largest possible distance of a target from the reference point (last frame)."""
        return self.spacing + self.drift_max * (self.frames_per_trajectory - 1)

    def x_direction(self, x0: np.ndarray) -> np.ndarray:
        """``+1`` where the reference point moves to larger rows (x0 below the middle of ``bounds``), else -1."""
        return np.where(np.asarray(x0) < 0.5 * (self.bounds[0] + self.bounds[1]), 1.0, -1.0)

    def _validate(self) -> None:
        def pair(name: str, strict: bool = False, positive: bool = False) -> None:
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not all(np.isfinite(v) for v in lo_hi):
                raise ValueError(f"option {name} must be a finite (low, high) pair, got {lo_hi!r}")
            lo, hi = lo_hi
            if (lo >= hi) if strict else (lo > hi):
                raise ValueError(f"option {name} needs low {'<' if strict else '<='} high, got {lo_hi!r}")
            if positive and lo <= 0:
                raise ValueError(f"option {name} must be > 0 (brightness 0 marks padding), got {lo_hi!r}")

        for name in ("frames_per_trajectory", "min_targets", "max_targets", "size", "render_chunk",
                     "max_redraw_rounds"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"option {name} must be a positive integer, got {value!r}")
        if self.min_targets > self.max_targets:
            raise ValueError(f"min_targets ({self.min_targets}) > max_targets ({self.max_targets})")
        if self.max_targets_padded is not None and self.max_targets_padded < self.max_targets:
            raise ValueError(
                f"max_targets_padded ({self.max_targets_padded}) < max_targets ({self.max_targets})"
            )
        if self.directions not in ("auto", "axis", "compass"):
            raise ValueError(f"option directions must be 'auto', 'axis' or 'compass', got {self.directions!r}")
        if self.max_targets > self.direction_set:
            raise ValueError(
                f"max_targets={self.max_targets} needs that many distinct directions but directions="
                f"{self.directions!r} offers {self.direction_set} (8 at most)"
            )
        if self.brightness_mode not in ("trajectory", "frame"):
            raise ValueError(
                f"option brightness_mode must be 'trajectory' or 'frame', got {self.brightness_mode!r}"
            )
        if self.output not in ("uint8", "float32"):
            raise ValueError(f"option output must be 'uint8' or 'float32', got {self.output!r}")
        if not self.curve_families or any(f not in CURVE_FAMILIES for f in self.curve_families):
            raise ValueError(f"option curve_families must be a non-empty subset of {CURVE_FAMILIES}, "
                             f"got {self.curve_families!r}")
        if len(set(self.curve_families)) != len(self.curve_families):
            raise ValueError(f"option curve_families has duplicates: {self.curve_families!r}")
        pair("brightness_range", positive=True)
        pair("slope_range")
        pair("quadratic_curvature_range")
        pair("circle_radius_range")
        pair("bounds", strict=True)
        pair("x0_range")
        if self.circle_radius_range[0] <= 0:
            raise ValueError(f"option circle_radius_range must be > 0, got {self.circle_radius_range!r}")
        if any(float(v) != int(v) for v in self.x0_range):
            raise ValueError(f"option x0_range must hold integers, got {self.x0_range!r}")
        for name in ("spacing", "step", "drift_max", "noise_sigma", "max_slope", "sigma"):
            value = getattr(self, name)
            strict = name in ("sigma", "max_slope")
            if not np.isfinite(value) or value < 0 or (strict and value == 0):
                raise ValueError(f"option {name} must be finite and {'> 0' if strict else '>= 0'}, got {value!r}")
        if min(abs(self.slope_range[0]), abs(self.slope_range[1])) > self.max_slope and (
            self.slope_range[0] * self.slope_range[1] > 0
        ):
            raise ValueError(f"slope_range {self.slope_range!r} lies entirely beyond max_slope={self.max_slope}")
        # The x path is deterministic given x0: check every start row once here.
        lo, hi = self.bounds
        x0s = np.arange(int(self.x0_range[0]), int(self.x0_range[1]) + 1, dtype=np.float64)
        x_end = x0s + self.x_direction(x0s) * self.step * (self.frames_per_trajectory - 1)
        if np.any(np.minimum(x0s, x_end) < lo) or np.any(np.maximum(x0s, x_end) > hi):
            raise ValueError(
                f"with x0_range={self.x0_range}, step={self.step} and {self.frames_per_trajectory} frames the "
                f"reference path leaves bounds={self.bounds}"
            )
        # Paths stay in bounds², targets stay within max_radius of the path: targets inside the image.
        if lo - self.max_radius < -0.5 or hi + self.max_radius > self.size - 0.5:
            raise ValueError(
                f"targets up to {self.max_radius:.4g} px from a path in bounds={self.bounds} can leave the "
                f"{self.size}×{self.size} image [-0.5, {self.size - 0.5}]; shrink bounds, spacing or drift_max"
            )


def make_options(**options: Any) -> SimulationOptions:
    """``SimulationOptions(**options)`` with a TypeError naming any unknown option."""
    known = {f.name for f in dataclasses.fields(SimulationOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown simulation option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return SimulationOptions(**options)


def split_seed(base_seed: int, split: str) -> int:
    """A stable per-split seed: the first 8 bytes of SHA-256 of ``"{base_seed}/{split}"`` (< 2**63).

    Independent of Python's hash randomisation and of the platform, so every machine generates the same split.
    """
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    digest = hashlib.sha256(f"{int(base_seed)}/{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------------------------
# Reference paths


def _path_y(family: np.ndarray, dx: np.ndarray, y0, b, a, radius, side) -> tuple[np.ndarray, np.ndarray]:
    """``y = f(x0 + dx)`` and ``f'`` for every family; ``(n, T)`` each (the chosen family's values).

    Circle: centre ``p0 + side·R·n`` with ``n = (-b, 1)/√(1+b²)`` the unit normal, so the arc passes through
    ``(x0, y0)`` with slope ``b``; ``y = cy - side·√(R² - (x - cx)²)``. Off the circle's x-extent the square
    root is clamped and the slope set to inf so the path is rejected.
    """
    y0, b, a, radius, side = (v[:, None] for v in (y0, b, a, radius, side))
    y_line = y0 + b * dx
    y_quad = y_line + a * dx * dx
    slope_quad = b + 2 * a * dx
    norm = np.sqrt(1 + b * b)
    u = dx + side * radius * b / norm  # x - cx
    root2 = radius * radius - u * u
    root = np.sqrt(np.maximum(root2, 0.0))
    y_circle = y0 + side * radius / norm - side * root  # cy - side·root, cy = y0 + side·R/norm
    with np.errstate(divide="ignore", invalid="ignore"):
        slope_circle = np.where(root2 > 0, side * u / np.where(root2 > 0, root, 1.0), np.inf)
    fam = family[:, None]
    y = np.where(fam == 0, y_line, np.where(fam == 1, y_quad, y_circle))
    slope = np.where(fam == 0, b, np.where(fam == 1, slope_quad, slope_circle))
    return y, slope


def _draw_paths(rng: np.random.Generator, n: int, opts: SimulationOptions) -> tuple[np.ndarray, np.ndarray]:
    """Reference paths ``(n, T, 2)`` float64 ``(x, y)`` and family indices ``(n,)`` (into CURVE_FAMILIES)."""
    t = np.arange(opts.frames_per_trajectory, dtype=np.float64)
    allowed = np.array([CURVE_FAMILIES.index(f) for f in opts.curve_families], dtype=np.int32)
    family = allowed[rng.integers(0, len(allowed), n)]
    x0 = rng.integers(int(opts.x0_range[0]), int(opts.x0_range[1]) + 1, n).astype(np.float64)
    dx = opts.x_direction(x0)[:, None] * opts.step * t  # (n, T)
    x = x0[:, None] + dx
    y = np.empty_like(x)
    todo = np.arange(n)
    lo, hi = opts.bounds
    for _ in range(opts.max_redraw_rounds):
        if todo.size == 0:
            break
        m = todo.size
        # Fixed draw order, fixed shapes per round: deterministic for a given seed.
        y0 = rng.uniform(lo, hi, m)
        b = rng.uniform(*opts.slope_range, m)
        a = rng.uniform(*opts.quadratic_curvature_range, m)
        radius = rng.uniform(*opts.circle_radius_range, m)
        side = np.where(rng.random(m) < 0.5, -1.0, 1.0)
        yy, slope = _path_y(family[todo], dx[todo], y0, b, a, radius, side)
        ok = np.all((yy >= lo) & (yy <= hi) & (np.abs(slope) <= opts.max_slope), axis=1)
        y[todo[ok]] = yy[ok]
        todo = todo[~ok]
    if todo.size:
        raise ValueError(
            f"{todo.size} reference paths still leave bounds={opts.bounds} or exceed max_slope="
            f"{opts.max_slope} after {opts.max_redraw_rounds} redraw rounds; loosen the path options"
        )
    return np.stack([x, y], axis=-1), family


# ---------------------------------------------------------------------------------------------------------------
# Targets


def _draw_targets(
    rng_targets: np.random.Generator, rng_drift: np.random.Generator, reference: np.ndarray,
    opts: SimulationOptions,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target rows ``(n, T, MAXT, 3)`` float32, counts ``(n,)`` int32 and directions ``(n, MAXT)`` int8.

    Rows are sorted by direction index (up, down, left, right, then diagonals); padding rows are zero and have
    direction -1.
    """
    n, frames = reference.shape[:2]
    maxt, ndir = opts.maxt, opts.direction_set
    count = rng_targets.integers(opts.min_targets, opts.max_targets + 1, n).astype(np.int32)
    # A random permutation of the usable directions per trajectory; its first K entries are the chosen ones.
    perm = np.argsort(rng_targets.random((n, ndir)), axis=1, kind="stable")
    slot = np.arange(maxt)
    padded = np.full((n, maxt), ndir, dtype=np.int64)
    k_cols = min(maxt, ndir)
    padded[:, :k_cols] = np.where(slot[None, :k_cols] < count[:, None], perm[:, :k_cols], ndir)
    directions = np.sort(padded, axis=1)
    real = directions < ndir  # (n, MAXT)
    if opts.brightness_mode == "trajectory":
        brightness = np.broadcast_to(
            rng_targets.uniform(*opts.brightness_range, (n, 1, maxt)), (n, frames, maxt)
        )
    else:
        brightness = rng_targets.uniform(*opts.brightness_range, (n, frames, maxt))
    drift = rng_drift.uniform(0.0, opts.drift_max, (n, frames - 1, maxt))
    radius = opts.spacing + np.concatenate([np.zeros((n, 1, maxt)), np.cumsum(drift, axis=1)], axis=1)
    unit = DIRECTION_VECTORS[np.where(real, directions, 0)]  # (n, MAXT, 2)
    pos = reference[:, :, None, :] + radius[..., None] * unit[:, None, :, :]  # (n, T, MAXT, 2)
    targets = np.concatenate([pos, brightness[..., None]], axis=-1)
    targets = np.where(real[:, None, :, None], targets, 0.0).astype(np.float32)
    return targets, count, np.where(real, directions, -1).astype(np.int8)


# ---------------------------------------------------------------------------------------------------------------
# Public entry point


def simulate_seqcsist(num_trajectories: int, seed: int, **options: Any) -> dict[str, np.ndarray]:
    """Generates SeqCSIST trajectories (SPEC §3).

    Args:
      num_trajectories: ``N``, number of trajectories (0 allowed).
      seed: non-negative integer; same seed and options → byte-identical arrays on every machine.
      **options: fields of :class:`SimulationOptions` (unknown names raise TypeError).

    Returns:
      dict of numpy arrays (``T`` = frames_per_trajectory, ``S`` = size, ``MAXT`` = padded target axis):

      - ``frames``: ``(N, T, S, S)`` uint8 grey levels (or float32 with ``output="float32"``); ``xc`` on rows.
      - ``targets``: ``(N, T, MAXT, 3)`` float32 rows ``(xc, yc, brightness)`` in px / grey levels, sorted by
        direction index, zero padded (brightness 0 = padding).
      - ``num_targets``: ``(N, T)`` int32 real rows per frame.
      - ``curve_family``: ``(N,)`` int32 index into :data:`CURVE_FAMILIES`.
      - ``reference``: ``(N, T, 2)`` float32 reference-point path ``(x, y) = (xc, yc)`` in px.
      - ``directions``: ``(N, MAXT)`` int8 index into :data:`DIRECTION_NAMES` per target row, -1 for padding.
      - ``clipped_pixels``: ``(N, T)`` int32 pixels that 8-bit storage clips (after noise), whatever ``output``.
    """
    opts = make_options(**options)
    if isinstance(num_trajectories, bool) or not isinstance(num_trajectories, (int, np.integer)) \
            or num_trajectories < 0:
        raise ValueError(f"num_trajectories must be a non-negative integer, got {num_trajectories!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    n, frames, size = int(num_trajectories), opts.frames_per_trajectory, opts.size
    rng_targets, rng_path, rng_drift, rng_noise = (
        np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(int(seed)).spawn(4)
    )
    reference, family = _draw_paths(rng_path, n, opts)
    targets, count, directions = _draw_targets(rng_targets, rng_drift, reference, opts)
    real = targets[..., 2] != 0
    inside = (targets[..., :2] >= -0.5) & (targets[..., :2] <= size - 0.5)
    if not np.all(inside[real]):  # guaranteed by option validation; kept as a cheap safety net
        raise AssertionError("simulated targets left the image; please report the options used")

    out_dtype = np.uint8 if opts.output == "uint8" else np.float32
    out = np.empty((n, frames, size, size), dtype=out_dtype)
    clipped = np.empty((n, frames), dtype=np.int32)
    for start in range(0, n, opts.render_chunk):
        stop = min(n, start + opts.render_chunk)
        # Render from the stored float32 rows so that re-rendering the returned targets reproduces the frames.
        img = imaging.render(targets[start:stop].astype(np.float64), size=size, sigma=opts.sigma)
        if opts.noise_sigma > 0:
            img += rng_noise.normal(0.0, opts.noise_sigma, img.shape)
        clipped[start:stop] = imaging.count_clipped(img)
        if opts.output == "uint8":
            if not opts.clip and clipped[start:stop].any():
                bad = start + int(np.nonzero(clipped[start:stop].any(axis=1))[0][0])
                raise ValueError(
                    f"trajectory {bad} has pixels outside [0, 255] after rounding and clip=False; "
                    "use clip=True or output='float32'"
                )
            out[start:stop] = imaging.quantize(img, clip=True)
        else:
            out[start:stop] = np.clip(img, 0.0, 255.0) if opts.clip else img
    return {
        "frames": out,
        "targets": targets,
        "num_targets": np.repeat(count[:, None], frames, axis=1).astype(np.int32),
        "curve_family": family.astype(np.int32),
        "reference": reference.astype(np.float32),
        "directions": directions,
        "clipped_pixels": clipped,
    }


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _define_flags(fv) -> None:
    from absl import flags

    flags.DEFINE_float("noise_sigma", 0.0, "Gaussian noise std in grey levels", flag_values=fv)
    flags.DEFINE_integer("min_targets", 2, "fewest targets per frame", flag_values=fv)
    flags.DEFINE_integer("max_targets", 4, "most targets per frame", flag_values=fv)
    flags.DEFINE_integer("frames_per_trajectory", 20, "frames per trajectory", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    from seqcsist_jax.data import public_format  # deferred: PIL is only needed to write files

    from seqcsist_jax.data.export_cli import parse

    args = parse(argv, "seqcsist_jax.data.simulate", "generate SeqCSIST splits in the public on-disk layout "
                 "({split}/image/image_{N}.png + {split}/annotation/COS{N}.xml).", "num_trajectories",
                 "trajectories per split (default: the paper's 3500/750/750)", _define_flags)
    if isinstance(args, int):
        return args
    splits = args.split
    options = dict(
        noise_sigma=args.noise_sigma, min_targets=args.min_targets, max_targets=args.max_targets,
        frames_per_trajectory=args.frames_per_trajectory,
    )
    for split in splits:
        n = SPLIT_SIZES[split] if args.num_trajectories is None else args.num_trajectories
        seed = split_seed(args.seed, split)
        try:
            arrays = simulate_seqcsist(n, seed, **options)
            base = public_format.write_public_split(
                args.out, split, arrays, start_index=args.start_index, progress=args.progress,
                overwrite=args.overwrite,
            )
        except (FileExistsError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        # Provenance next to (not inside) image/ and annotation/, so readers of the public layout ignore it.
        record = {"split": split, "base_seed": args.seed, "seed": seed, "num_trajectories": n,
                  "start_index": args.start_index,
                  "options": dataclasses.asdict(make_options(**options))}
        (base / "simulation.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        clipped = int(np.count_nonzero(arrays["clipped_pixels"]))
        print(f"{split}: {n} trajectories × {args.frames_per_trajectory} frames (seed {seed}) → {base}; "
              f"{clipped} frames with clipped pixels", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
