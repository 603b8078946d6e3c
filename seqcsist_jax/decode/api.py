"""The public entry point :func:`decode` and its padded-array form :func:`decode_arrays`."""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from typing import Any

import numpy as np

from seqcsist_jax.decode import centre as centre_mod
from seqcsist_jax.decode import frames as frames_mod
from seqcsist_jax.decode import imaging_params as imaging_mod
from seqcsist_jax.decode import maps as maps_mod
from seqcsist_jax.decode import precompile
from seqcsist_jax.decode import trajectory as traj_mod
from seqcsist_jax.decode.forward import saturated_frames
from seqcsist_jax.decode.options import METHODS, DecodeOptions, make_options
from seqcsist_jax.protocol import CONTINUOUS_DECODERS
from seqcsist_jax.suggest import did_you_mean

__all__ = ["decode", "decode_arrays", "Decoded", "CountCapWarning", "SaturationWarning", "localisation_confidence",
           "map_seeds", "saturated_frames"]


class CountCapWarning(UserWarning):
    """A fit chose the largest count of the range (``max_targets``): the true count may be larger."""


class SaturationWarning(RuntimeWarning):
    """Some decoded frames have pixels at the clip level: their brightnesses and counts are less certain."""


@dataclasses.dataclass
class Decoded:
    """Padded decoder output (``refine``/``trajectory``) plus what the diagnostics need.

    Attributes:
      detections: ``(N, T, Kmax, 4)`` rows ``(x, y, brightness, score)``; rows ``>= count`` are zero.
      count: ``(N, T)`` detections per frame.
      pos_var: ``(N, T, Kmax)`` posterior position variance (px², mean of x and y).
      count_prob: ``(N, T)`` probability of the chosen count.
      frame_cost: ``(N, T, Kmax+1)`` per-frame fit cost for every count ``K = 0..Kmax`` (both methods fit
        frames).
      trajectory: the :class:`~seqcsist_jax.decode.trajectory.TrajectoryFits` (``trajectory`` only). With
        non-default ``imaging`` its params stay in fit units (pixel coordinates, brightness × gain); the
        detections are in label units.
      at_cap: ``(N, T)`` bool, frames whose chosen count equals ``max_targets`` (the count range may have
        capped them; :func:`decode_arrays` warns with their number).
      saturated: ``(N, T)`` bool, frames with a pixel at the 8-bit maximum (:func:`saturated_frames`).
    """

    detections: np.ndarray
    count: np.ndarray
    pos_var: np.ndarray
    count_prob: np.ndarray
    frame_cost: np.ndarray
    trajectory: Any = None
    at_cap: np.ndarray | None = None
    saturated: np.ndarray | None = None

    def to_lists(self) -> list[list[np.ndarray]]:
        """``N`` lists of ``T`` arrays ``(M, 4)`` (float64)."""
        n, t = self.count.shape
        det = self.detections.astype(np.float64)
        return [[det[i, j, : self.count[i, j]].copy() for j in range(t)] for i in range(n)]


def localisation_confidence(pos_var: np.ndarray, radius: float) -> np.ndarray:
    """``P(‖error‖ <= radius)`` for an isotropic 2-D Gaussian error of per-axis variance ``pos_var``.

    ``1 - exp(-r²/(2σ²))`` (Rayleigh CDF), computed as ``-expm1`` so tiny variances keep distinct scores.
    """
    v = np.maximum(np.asarray(pos_var, np.float64), 1e-300)
    return -np.expm1(-(radius**2) / (2.0 * v))


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the function that calls this: the first frame outside
    ``seqcsist_jax/decode``, so a warning names the user's line whichever public entry (``decode``,
    ``decode_arrays``) they called."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        frame, level = frame.f_back, level + 1
    return level


def _warn_saturated(saturated: np.ndarray, clip_level: float | None) -> None:
    count = int(np.sum(saturated))
    if count:
        warnings.warn(
            f"{count} of {saturated.size} decoded frames have saturated pixels (stored at the clip level, "
            f"{clip_level:.0f}): their brightnesses and counts are less certain (clipped pixels only "
            "bound the signal, up to max_saturated per frame); "
            "seqcsist_jax.decode.saturated_frames(frames) flags them",
            SaturationWarning,
            stacklevel=_caller_stacklevel(),
        )


def _as_array(x: Any, name: str) -> np.ndarray:
    """``np.asarray(x)``, with one line naming ``name`` when ``x`` is ragged (nested lists of unequal lengths)."""
    try:
        return np.asarray(x)
    except ValueError as e:
        raise ValueError(f"{name} must be a rectangular array (equal lengths on every axis): {e}") from None


def _check_frames(frames: Any) -> np.ndarray:
    arr = _as_array(frames, "frames")
    if arr.ndim != 4 or arr.shape[-1] != arr.shape[-2]:
        hint = ""
        if arr.ndim == 3:
            hint = "; single images (N, S, S): decode(...) takes them, or pass frames[:, None]"
        elif arr.ndim == 2:
            raise ValueError(f"frames: got one image of shape {arr.shape}; pass image[None] to decode (single "
                             "images (N, S, S)) or image[None, None] to decode_arrays (sequences (N, T, S, S))")
        raise ValueError(f"frames must have shape (N, T, S, S), got {arr.shape}{hint}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"frames must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr).all(axis=(2, 3)))[0]
        raise ValueError(f"frames contain NaN or inf values (trajectory {bad[0]}, frame {bad[1]})")
    return arr


def _check_maps(maps: Any, frames: np.ndarray, c: int) -> tuple[np.ndarray, int]:
    """Maps ``(N, T', n, n)`` and the index of the frame their first entry belongs to."""
    arr = _as_array(maps, "maps")
    n, t, s = frames.shape[:3]
    if arr.ndim != 4 or arr.shape[0] != n or arr.shape[-1] != arr.shape[-2] or arr.shape[-1] != s * c:
        raise ValueError(
            f"maps must have shape (N, T, {s * c}, {s * c}) matching frames {frames.shape}, got {arr.shape}"
        )
    if arr.shape[1] == t:
        first = 0
    elif arr.shape[1] == t - 4:  # DeRefNet predicts the centre frames 2..T-3 only
        first = 2
    else:
        raise ValueError(f"maps must have T={t} frames (or T-4={t - 4} centre frames), got {arr.shape[1]}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr).all(axis=(2, 3)))[0]
        raise ValueError(f"maps contain NaN or inf values (trajectory {bad[0]}, map {bad[1]})")
    return arr, first


def _full_maps(maps: np.ndarray, first: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, T, n, n)`` maps (zeros where none was given) and the ``(T,)`` mask of frames that had one."""
    n, tm = maps.shape[:2]
    full = np.zeros((n, t) + maps.shape[2:], np.float32)
    full[:, first : first + tm] = maps
    have = np.zeros(t, bool)
    have[first : first + tm] = True
    return full, have


def map_seeds(maps: np.ndarray, opts: DecodeOptions, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts from map peaks: ``(F, slots, 3)`` rows ``(x, y, b)``, strongest first, and ``(F,)`` counts."""
    flat = maps.reshape(-1, *maps.shape[-2:])
    # Edge-neighbour maxima: generous on purpose. Two close targets on diagonal cells of a sharp map stay
    # two seeds; a spurious extra peak only adds a start that the fit's cost then rejects.
    fr, xy, total, _ = maps_mod.peak_table(flat, opts.threshold, opts.c, connectivity=4)
    f = flat.shape[0]
    seeds = np.zeros((f, slots, 3), np.float32)
    count = np.zeros(f, np.int32)
    if fr.size:
        order = np.lexsort((-total, fr))  # by frame, then brightness descending
        fr, xy, total = fr[order], xy[order], total[order]
        starts = np.searchsorted(fr, np.arange(f))
        rank = np.arange(fr.size) - starts[fr]
        keep = rank < slots
        seeds[fr[keep], rank[keep], :2] = xy[keep]
        seeds[fr[keep], rank[keep], 2] = total[keep]
        count = np.minimum(np.bincount(fr, minlength=f), slots).astype(np.int32)
    return seeds, count


def _check_imaging(imaging: Any) -> imaging_mod.ImagingParams | None:
    """``None`` for the default model (the unchanged code path), else the validated parameters."""
    if imaging is None:
        return None
    if not isinstance(imaging, imaging_mod.ImagingParams):
        raise ValueError(f"decode: imaging must be an ImagingParams (or None), got {type(imaging).__name__}")
    return None if imaging.is_default else imaging


def _frame_fits(frames: np.ndarray, maps: np.ndarray | None, opts: DecodeOptions, progress: bool,
                imaging: imaging_mod.ImagingParams | None = None, count_upper: np.ndarray | None = None):
    n, t, s, _ = frames.shape
    flat = frames.reshape(n * t, s, s)
    seeds = seed_count = None
    if maps is not None and opts.map_seeds:
        seeds, seed_count = map_seeds(maps, opts, frames_mod.slots_for(opts.max_targets))
        if imaging is not None:  # maps are in label units, the fit in pixel/grey-level units
            seeds = imaging_mod.to_pixel_space(seeds, imaging)
    return frames_mod.fit_frames(flat, opts, seeds, seed_count, progress=progress, count_upper=count_upper)


def decode_arrays(
    frames: Any,
    maps: Any = None,
    method: str = "trajectory",
    progress: bool = False,
    imaging: imaging_mod.ImagingParams | None = None,
    **options: Any,
) -> Decoded:
    """Continuous decoding (``refine`` or ``trajectory``) as padded arrays; see :func:`decode`."""
    if method not in CONTINUOUS_DECODERS:
        raise ValueError(f"decode_arrays supports 'refine' and 'trajectory', got {method!r}"
                         f"{did_you_mean(str(method), CONTINUOUS_DECODERS)}")
    imaging = _check_imaging(imaging)
    if imaging is not None:
        frames, options = imaging_mod.to_fit_space(_check_frames(frames), options, imaging)
    opts = make_options(**options)
    frames = _check_frames(frames)
    n, t, s, _ = frames.shape
    full_maps = None
    if maps is not None:
        m, first = _check_maps(maps, frames, opts.c)
        full_maps, _ = _full_maps(m, first, t)
    kmax = opts.max_targets
    seed_rows = frames_mod.slots_for(kmax) if full_maps is not None and opts.map_seeds else 0
    flat = frames.reshape(n * t, s, s)
    # computed once: it sizes the programs compiled ahead and orders the fits
    upper = None if opts.flux_count_bound is None else frames_mod.flux_count_upper(flat.astype(np.float32), opts)
    programs = frames_mod.stage_programs(flat, opts, seed_rows, count_upper=upper)
    if method == "refine":
        programs += centre_mod.centre_programs(flat, opts, opts.centre_candidates)
    # Compiling the later stages and the centring while the first stage runs (precompile's docstring).
    with precompile.compiling(programs):
        fits = _frame_fits(frames, full_maps, opts, progress, imaging, count_upper=upper)
        crit = frames_mod.count_criterion(fits.cost, 3, opts, opts.count_penalty)  # (F, Kmax+1), index = K
        chosen = np.argmin(crit, axis=-1)
        rel = crit - crit[np.arange(crit.shape[0]), chosen][:, None]
        frame_prob = 1.0 / np.sum(np.exp(-0.5 * rel), axis=-1)
        counts = chosen.reshape(n, t)
        frame_cost = fits.cost.reshape(n, t, kmax + 1)
        agreement = np.ones((n, t, kmax))  # basin agreement of each target (centring only)
        if method == "refine":
            idx = np.maximum(chosen - 1, 0)
            params = fits.params[np.arange(n * t), idx]
            var = fits.pos_var[np.arange(n * t), idx]
            if opts.centre_iterations:
                alts = ok = None
                if fits.alternatives is not None:  # alternatives[:, :, 0] is the best fit itself
                    alts = fits.alternatives[np.arange(n * t), idx, 1:]
                    ok = fits.alternative_valid[np.arange(n * t), idx, 1:]
                centred = centre_mod.centre_fits(flat, params, chosen, opts, alts, ok)
                params = centred.params
                # The centring objective's curvature also sees the walls and the saturated pixels' bounds.
                var = np.where(centred.centred[:, None], centred.pos_var, var)
                agreement = centred.agreement.reshape(n, t, kmax)
            params = params.reshape(n, t, kmax, 3)
            var = var.reshape(n, t, kmax)
            prob = frame_prob.reshape(n, t)
            traj = None
        else:
            traj = traj_mod.fit_trajectories(frames, fits, counts, opts, progress=progress)
            params, var = traj.params, traj.pos_var
            counts = np.repeat(traj.count[:, None], t, axis=1)
            prob = np.repeat(traj.count_prob[:, None], t, axis=1)
    if imaging is not None:
        params = imaging_mod.to_label_space(params, imaging)
    active = np.arange(kmax)[None, None, :] < counts[..., None]
    score = prob[..., None] * localisation_confidence(np.where(active, var, 1.0), opts.score_radius) * agreement
    det = np.concatenate([params.astype(np.float64), score[..., None]], axis=-1)
    det = np.where(active[..., None], det, 0.0)
    var = np.where(active, var, np.inf)
    at_cap = counts == kmax
    warn_at_cap(at_cap, kmax, method)
    saturated = saturated_frames(frames, opts.clip_level)
    _warn_saturated(saturated, opts.clip_level)
    return Decoded(det, counts.astype(np.int32), var, prob, frame_cost, traj, at_cap, saturated)


def warn_at_cap(at_cap: np.ndarray, max_targets: int, method: str) -> None:
    """Warns (:class:`CountCapWarning`) when any frame's chosen count equals ``max_targets``.

    The count range must never cap silently: a frame fitted with the range's largest count may hold more
    targets than the range allows. ``at_cap (N, T)`` bool.
    """
    num = int(np.sum(at_cap))
    if num:
        warnings.warn(
            f"decode ({method}): {num} of {at_cap.size} frames chose the largest count max_targets="
            f"{max_targets} (counted over every decoded frame): expected if that is the data's maximum "
            "(SeqCSIST 4, targets_2_8 8, CSIST-100K 5), else raise max_targets; decode_arrays(...).at_cap "
            "flags these frames",
            CountCapWarning,
            stacklevel=_caller_stacklevel(),
        )


#: Keyword arguments of :func:`decode` that are not :class:`DecodeOptions` fields.
_CALL_OPTIONS = ("progress", "physics_iterations")


def decode(
    frames: Any,
    maps: Any = None,
    method: str = "trajectory",
    imaging: imaging_mod.ImagingParams | None = None,
    **options: Any,
) -> list[list[np.ndarray]] | list[np.ndarray]:
    """Decodes continuous target positions and brightnesses from SeqCSIST frames or single images.

    Args:
      frames: ``(N, T, S, S)`` raw grey values (uint8 as stored, or float), ``T = 20`` for SeqCSIST; or
        ``(N, S, S)``: ``N`` single images (CSIST-100K), decoded as ``N`` one-frame sequences (every method
        but ``trajectory``, which needs sequences; one trajectory is ``frames[None]``).
      maps: optional ``(N, T, 11c, 11c)`` model label maps (DeRefNet, ISTA, …); ``(N, T-4, …)`` is read as
        the centre frames ``2..T-3`` that DeRefNet predicts (other frames then have no map). With single
        images: ``(N, 11c, 11c)``.
      method: one of
        - ``"grid"``: the published protocol — every map cell ``>= threshold`` is a detection at its grid
          point (score = brightness = cell value);
        - ``"peak"``: local maxima of the map ``>= threshold``; position = weighted centroid of the peak's
          neighbourhood, brightness = its sum, score = brightness;
        - ``"refine"``: per-frame least-squares fit of positions and brightnesses to the 8-bit frame on the
          imaging model (:mod:`seqcsist_jax.decode.frames`), count by a BIC-like criterion (``count_penalty``;
          0 in ``CSIST100K_OPTIONS``: the lowest cost);
        - ``"trajectory"``: per-trajectory fit of polynomial paths with constant brightness
          (:mod:`seqcsist_jax.decode.trajectory`), one count per trajectory.
        ``grid`` and ``peak`` keep map cells ``>= threshold`` (SeqCSIST's 70 by default; CSIST-100K's
        protocol is ``threshold=50``); they need maps; without them the physics-only map
        (:func:`seqcsist_jax.decode.maps.physics_maps`, non-negative sparse least squares on Φ) is used.
        ``refine`` and ``trajectory`` work from the frames alone; maps only add starts (their peaks).
      imaging: the forward model (:class:`~seqcsist_jax.decode.imaging_params.ImagingParams`: PSF σ, label →
        pixel offset, gain, background, noise level), e.g. from :func:`~seqcsist_jax.decode.calibrate`.
        ``None`` (or the defaults) is the SPEC §2 model. It is used by ``refine``/``trajectory`` and by the
        physics-only maps of ``grid``/``peak``; given maps are already in label units and are decoded as
        they are. It sets ``sigma`` and ``noise_sigma`` (passing those as well is an error); ``clip_level``
        stays the stored level (255) and ``brightness_prior`` stays in label units. Detections are returned
        in label coordinates and brightness.
      **options: fields of :class:`~seqcsist_jax.decode.options.DecodeOptions`, plus ``progress`` (bool,
        tqdm bars) and, for ``grid``/``peak`` without maps, ``physics_iterations`` (FISTA iterations, 100).

    Returns:
      ``N`` lists of ``T`` float64 arrays ``(M, 4)`` with rows ``(x, y, brightness, score)``; ``x`` on the
      row axis, in pixels; for single images ``(N, S, S)``, ``N`` arrays ``(M, 4)``. Scores rank detections
      across a split: for ``refine``/``trajectory`` they are ``P(count right) · P(localisation error <=
      score_radius)`` from the fit's posterior (see the README), times the basin agreement of centred fits
      when ``basin_temperature > 0`` (``CSIST100K_OPTIONS``).

    Raises:
      ValueError: bad shapes, NaN/inf in frames or maps, unknown method, bad ``imaging``; TypeError: unknown
        option.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}{did_you_mean(str(method), METHODS)}")
    frames = _as_array(frames, "frames")
    if frames.ndim == 3:
        if frames.shape[1] != frames.shape[2]:
            raise ValueError(f"frames must have shape (N, T, S, S) or (N, S, S), got {frames.shape}")
        if method == "trajectory":
            raise ValueError(
                f"decode: frames of shape {frames.shape} are read as N single images (N, S, S); "
                "method='trajectory' needs sequences (N, T, S, S) (one trajectory: frames[None]); single "
                "images take 'refine', 'grid' or 'peak'"
            )
        if maps is not None:
            maps = _as_array(maps, "maps")
            c = make_options(**{k: v for k, v in options.items() if k not in _CALL_OPTIONS}).c
            n, s = frames.shape[:2]
            if maps.shape != (n, s * c, s * c):
                raise ValueError(
                    f"decode: with single images {frames.shape}, maps must have shape {(n, s * c, s * c)} "
                    f"(N, {s}c, {s}c with c={c}), got {maps.shape}"
                )
            maps = maps[:, None]
        per_image = decode(frames[:, None], maps, method, imaging, **options)
        return [frames_dets[0] for frames_dets in per_image]
    progress = bool(options.pop("progress", False))
    physics_iterations = int(options.pop("physics_iterations", 100))
    if method in CONTINUOUS_DECODERS:
        return decode_arrays(frames, maps, method, progress=progress, imaging=imaging, **options).to_lists()
    imaging = _check_imaging(imaging)
    if imaging is not None:
        frames, options = imaging_mod.to_fit_space(_check_frames(frames), options, imaging)
    opts = make_options(**options)
    frames = _check_frames(frames)
    if maps is None:  # the physics-only map reads the frames; given maps are decoded without them
        _warn_saturated(saturated_frames(frames, opts.clip_level), opts.clip_level)
    n, t, s, _ = frames.shape
    shift = None
    if maps is None:
        flat = maps_mod.physics_maps(frames.reshape(n * t, s, s), opts.c, opts.sigma, physics_iterations)
        if imaging is not None:  # map cells in label brightness; detections shifted to label coordinates
            flat = flat / np.float32(imaging.gain)
            shift = np.array([imaging.offset[0], imaging.offset[1], 0.0, 0.0])
        full, have = flat.reshape(n, t, s * opts.c, s * opts.c), np.ones(t, bool)
    else:
        m, first = _check_maps(maps, frames, opts.c)
        full, have = _full_maps(m, first, t)
    flat = full.reshape(n * t, *full.shape[2:])
    if method == "grid":
        dets = maps_mod.grid_detections(flat, opts.threshold, opts.c)
    else:
        dets = maps_mod.peak_detections(flat, opts.threshold, opts.c, opts.connectivity)
    if shift is not None:
        dets = [d - shift for d in dets]
    empty = np.zeros((0, 4))
    return [[dets[i * t + j] if have[j] else empty for j in range(t)] for i in range(n)]
