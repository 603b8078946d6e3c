"""Calibration of the forward model from labelled frames: maximum likelihood of :class:`ImagingParams`.

With the targets known (the labels), a frame depends on five global numbers only: the PSF width σ, the
offset ``(dx, dy)`` between label and pixel coordinates, the gain and the background
(:mod:`seqcsist_jax.decode.imaging_params` gives the model). :func:`calibrate` fits them to all labelled
frames at once by Levenberg–Marquardt on the same likelihood the decoders use
(:mod:`seqcsist_jax.decode.forward`): rounding to 8 bits is Gaussian noise of variance 1/12 added to the
additive noise, pixels stored at the clip level (255) are censored (a prediction at or above 255 costs
nothing there), and all other pixels contribute ``(pred - obs)²``. Under that Gaussian model the maximum
likelihood of the five parameters is the censored least-squares fit whatever the noise level, and the ML
noise variance is then the mean squared residual ``s²`` over the live pixels: ``noise_std = √max(s² - 1/12,
0)``, i.e. the additive noise that, with the decoders' own rounding term, reproduces the residual variance
(so the decoders' count criterion ``cost/s²`` sees the calibrated ``s²`` exactly).

The Jacobian (5 columns) comes from forward-mode autodiff through the pixel integrals; frames are processed in
fixed-size chunks under ``lax.scan`` so memory does not grow with the split, and the whole fit is one jitted
call. Limitation (documented): pixels clipped at 0 (noise on a zero background) are treated as ordinary
pixels, as the decoders do; they bias the noise level low on such data.
"""

from __future__ import annotations

import functools
import math
import pathlib
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from seqcsist_jax.decode import forward
from seqcsist_jax.decode.imaging_params import DEFAULT_IMAGING, ImagingParams
from seqcsist_jax.decode.lm import levenberg_marquardt

__all__ = ["calibrate", "calibrate_split", "calibration_residual_variance", "load_or_calibrate"]

#: Frames per scan step of the normal equations (memory ~ chunk·S²·5 floats for the Jacobian).
_CHUNK = 1024
#: Bounds that keep the LM candidates physical (σ in px, offsets in px, gain).
_LOG_SIGMA_RANGE = (math.log(0.05), math.log(5.0))
_MAX_OFFSET = 2.0
_MIN_GAIN = 1e-3


def _as_float(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"calibrate: {name} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"calibrate: {name} contain NaN or inf values")
    return arr


def _check_inputs(frames: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(F, S, S)`` frames and ``(F, K, 3)`` targets from the ``(N, T, …)`` or single-image ``(N, …)``
    layouts."""
    fr, tg = _as_float("frames", frames), _as_float("targets", targets)
    if fr.ndim not in (3, 4) or fr.shape[-1] != fr.shape[-2]:
        raise ValueError(f"calibrate: frames must have shape (N, T, S, S) or (N, S, S), got {fr.shape}")
    lead = fr.shape[:-2]
    if tg.ndim != fr.ndim or tg.shape[:-2] != lead or tg.shape[-1] != 3:
        want = "(N, T, MAXT, 3)" if fr.ndim == 4 else "(N, MAXT, 3)"
        raise ValueError(
            f"calibrate: targets must have shape {want} matching frames {fr.shape}, got {tg.shape}"
        )
    if fr.size == 0:
        raise ValueError(f"calibrate: no frames to calibrate on (frames shape {fr.shape})")
    if tg.shape[-2] == 0 or not np.any(tg[..., 2] != 0):
        raise ValueError(
            "calibrate: targets hold no labelled target (every row has brightness 0); calibration needs "
            "frames with their target labels (xc, yc, brightness)"
        )
    return fr.reshape(-1, fr.shape[-2], fr.shape[-1]), tg.reshape(-1, tg.shape[-2], 3)


def _theta_to_params(theta: np.ndarray, noise_std: float) -> ImagingParams:
    log_s, dx, dy, gain, bg = (float(v) for v in theta)
    return ImagingParams(sigma=math.exp(log_s), offset=(dx, dy), gain=gain, background=bg,
                         noise_std=noise_std)


def _chunk_residuals(theta: jax.Array, obs: jax.Array, tg: jax.Array, weight: jax.Array,
                     clip_level: float | None) -> tuple[jax.Array, jax.Array]:
    """Censored residuals ``(C, S, S)`` of a chunk (zero on padding frames) and the live-pixel mask."""
    size = obs.shape[-1]
    sigma = jnp.exp(theta[0])
    ax, _ = forward.axis_profiles(tg[..., 0] + theta[1], size, sigma)  # (C, K, S)
    ay, _ = forward.axis_profiles(tg[..., 1] + theta[2], size, sigma)
    pred = theta[3] * jnp.einsum("ck,ckr,cks->crs", tg[..., 2], ax, ay) + theta[4]
    r, live = forward.residuals(pred, obs, clip_level)
    w = weight[:, None, None]
    return r * w, live & (w > 0)


@functools.partial(jax.jit, static_argnames=("clip_level", "iterations"))
def _fit(obs: jax.Array, tg: jax.Array, weight: jax.Array, theta0: jax.Array, clip_level: float | None,
         iterations: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """LM fit over chunked data ``obs (B, C, S, S)``, ``tg (B, C, K, 3)``, ``weight (B, C)``.

    Returns the parameters ``(5,)``, the final cost and the number of live pixels.
    """

    def normal_fn(theta):
        def step(acc, chunk):
            o, t, w = chunk
            res = lambda th: _chunk_residuals(th, o, t, w, clip_level)[0].reshape(-1)  # noqa: E731
            r = res(theta)
            jac = jax.jacfwd(res)(theta)  # (C·S², 5)
            jtj, jtr, cost = acc
            return (jtj + jac.T @ jac, jtr + jac.T @ r, cost + jnp.sum(r * r)), None

        zero = (jnp.zeros((5, 5), obs.dtype), jnp.zeros(5, obs.dtype), jnp.zeros((), obs.dtype))
        out, _ = jax.lax.scan(step, zero, (obs, tg, weight))
        return out

    def cost_fn(theta):
        def step(acc, chunk):
            r, _ = _chunk_residuals(theta, *chunk, clip_level)
            return acc + jnp.sum(r * r), None

        out, _ = jax.lax.scan(step, jnp.zeros((), obs.dtype), (obs, tg, weight))
        return out

    def project(theta):
        return jnp.stack([
            jnp.clip(theta[0], *_LOG_SIGMA_RANGE),
            jnp.clip(theta[1], -_MAX_OFFSET, _MAX_OFFSET),
            jnp.clip(theta[2], -_MAX_OFFSET, _MAX_OFFSET),
            jnp.maximum(theta[3], _MIN_GAIN),
            theta[4],
        ])

    res = levenberg_marquardt(project(theta0), normal_fn, cost_fn, project, iterations)

    def count_live(acc, chunk):
        _, live = _chunk_residuals(res.theta, *chunk, clip_level)
        return acc + jnp.sum(live), None

    live, _ = jax.lax.scan(count_live, jnp.zeros((), jnp.int32), (obs, tg, weight))
    return res.theta, cost_fn(res.theta), live


def calibration_residual_variance(cost: float, live_pixels: int, num_params: int = 5) -> float:
    """ML residual variance ``s² = cost / (live pixels - fitted parameters)`` (the 5 dof hardly matter)."""
    return float(cost) / max(int(live_pixels) - num_params, 1)


def calibrate(
    frames: Any,
    targets: Any,
    *,
    clip_level: float | None = 255.0,
    iterations: int = 30,
    max_frames: int | None = None,
    seed: int = 0,
    init: ImagingParams = DEFAULT_IMAGING,
) -> ImagingParams:
    """Maximum-likelihood imaging parameters of labelled frames.

    Args:
      frames: ``(N, T, S, S)`` raw grey values (uint8 as stored, or float), or ``(N, S, S)`` single images.
      targets: ``(N, T, MAXT, 3)`` (or ``(N, MAXT, 3)``) label rows ``(xc, yc, brightness)``, zero rows
        padding; frames whose rows are all padding count as empty frames (they still inform background and
        noise).
      clip_level: the 8-bit saturation level (pixels stored there are censored); ``None`` for none. Frames
        with a pixel above it are taken as unclipped, as in the decoders.
      iterations: Levenberg–Marquardt iterations (fixed budget; the problem is nearly linear, ~5 suffice).
      max_frames: fit on a random subset of this many frames (``seed``) when there are more; ``None``: all.
      init: starting point of the fit (the SPEC §2 model by default; offsets within about ±σ of the truth
        converge from it).

    Returns:
      :class:`ImagingParams` (σ, offset ``(dx, dy)``: label ``(xc, yc)`` is imaged at ``(xc+dx, yc+dy)``,
      gain, background, ``noise_std``).

    Raises:
      ValueError: bad shapes, NaN/inf, no frames, or no labelled target.
    """
    fr, tg = _check_inputs(frames, targets)
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"calibrate: iterations must be a positive integer, got {iterations!r}")
    f = fr.shape[0]
    if max_frames is not None and f > max_frames:
        if max_frames < 1:
            raise ValueError(f"calibrate: max_frames must be positive, got {max_frames!r}")
        keep = np.sort(np.random.default_rng(seed).choice(f, size=max_frames, replace=False))
        fr, tg, f = fr[keep], tg[keep], max_frames
    chunk = min(_CHUNK, f)
    blocks = -(-f // chunk)
    pad = blocks * chunk - f
    weight = np.concatenate([np.ones(f, np.float32), np.zeros(pad, np.float32)])
    if pad:
        fr = np.concatenate([fr, np.zeros((pad,) + fr.shape[1:], np.float32)])
        tg = np.concatenate([tg, np.zeros((pad,) + tg.shape[1:], np.float32)])
    s, k = fr.shape[-1], tg.shape[1]
    theta0 = np.array([math.log(init.sigma), init.offset[0], init.offset[1], init.gain, init.background],
                      np.float32)
    theta, cost, live = _fit(
        jnp.asarray(fr.reshape(blocks, chunk, s, s)), jnp.asarray(tg.reshape(blocks, chunk, k, 3)),
        jnp.asarray(weight.reshape(blocks, chunk)), jnp.asarray(theta0),
        None if clip_level is None else float(clip_level), int(iterations),
    )
    theta = np.asarray(theta, np.float64)
    if not np.all(np.isfinite(theta)):
        raise ValueError("calibrate: the fit diverged (non-finite parameters); check that targets label "
                         "frames")
    s2 = calibration_residual_variance(float(cost), int(live))
    return _theta_to_params(theta, math.sqrt(max(s2 - 1.0 / 12.0, 0.0)))


def calibrate_split(arrays: Mapping[str, Any], *, max_frames: int | None = 20000, seed: int = 0,
                    **kwargs: Any) -> ImagingParams:
    """:func:`calibrate` on a split's arrays (the TFDS layout: ``frames`` and ``targets``).

    By default at most 20,000 frames (a random subset, ``seed``) are used: the five parameters are then known
    to ~1e-4 px, and a whole training split would only cost time. ``kwargs`` go to :func:`calibrate`.
    """
    missing = [key for key in ("frames", "targets") if key not in arrays]
    if missing:
        raise ValueError(f"calibrate_split: arrays lack {missing} (have {sorted(arrays)}); "
                         "expected the TFDS layout with 'frames' and 'targets'")
    return calibrate(arrays["frames"], arrays["targets"], max_frames=max_frames, seed=seed, **kwargs)


def load_or_calibrate(
    path: str | pathlib.Path,
    arrays: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    *,
    calibrated_on: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[ImagingParams, bool]:
    """The imaging parameters stored at ``path`` (JSON), or calibrated from ``arrays`` and stored there.

    For a CLI: ``params, fresh = load_or_calibrate(workdir / "imaging.json", lambda: load_split("train"),
    calibrated_on={"dataset": "seqcsist/mini", "split": "train"})`` calibrates once per run directory and data
    (``arrays`` may be a callable so the split is only loaded when needed).

    ``calibrated_on`` (JSON-ready) says which data ``arrays`` are; it is stored with the parameters, and a file
    calibrated on other data (or written without saying, by an older version) is not reused: the parameters are
    calibrated again and the file replaced, with a warning naming both. Reusing another dataset's model would
    decode with the wrong noise, blur or registration and score silently wrong. ``None`` reuses any valid file.

    A damaged file (not UTF-8, not JSON, a missing or invalid field) is a cache that can be rebuilt: it is moved
    to ``<path>.damaged`` with a warning naming the problem, and the parameters are calibrated again.

    Returns:
      The parameters and whether they were calibrated now (``False``: read from ``path``).
    """
    import json
    import os
    import warnings

    from seqcsist_jax.fileio import atomic_write

    path = pathlib.Path(path)
    want = None if calibrated_on is None else json.loads(json.dumps(dict(calibrated_on), sort_keys=True))
    if path.exists():
        stored, problem = None, None
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
            stored = data.pop("calibrated_on", None) if isinstance(data, dict) else None
            params = ImagingParams.from_dict(data, source=str(path))
        except UnicodeDecodeError as e:
            problem = f"{path} is not UTF-8 text (byte {e.start})"
        except json.JSONDecodeError as e:
            problem = f"{path}: not valid JSON ({e})"
        except ValueError as e:
            problem = " ".join(str(e).split())
        if problem is not None:
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            warnings.warn(f"{problem}; moved it to {aside.name} and calibrating the imaging model again",
                          RuntimeWarning, stacklevel=2)
        elif want is None or stored == want:
            return params, False
        else:
            was = "unrecorded data (an older file)" if stored is None else _describe(stored)
            warnings.warn(f"{path} was calibrated on {was}, not on {_describe(want)}; calibrating the imaging "
                          "model again and replacing it", RuntimeWarning, stacklevel=2)
    params = calibrate_split(arrays() if callable(arrays) else arrays, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = params.to_dict() if want is None else {**params.to_dict(), "calibrated_on": want}
    atomic_write(path, json.dumps(record, sort_keys=True) + "\n")
    return params, True


def _describe(source: Any) -> str:
    """``{"dataset": "seqcsist/mini", "split": "train"}`` → ``"dataset=seqcsist/mini, split=train"``."""
    if isinstance(source, Mapping):
        return ", ".join(f"{k}={v}" for k, v in sorted(source.items()))
    return repr(source)
