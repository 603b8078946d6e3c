"""Imaging parameters of an acquisition: the forward model the continuous decoders fit, as one value.

A stored frame of targets labelled ``(xc, yc, b)`` is modelled as

    ``frame = clip(round(gain · Σ_k b_k · a_σ(xc_k + dx) ⊗ a_σ(yc_k + dy) + background + n), 0, 255)``

with ``a_σ`` the pixel integrals of the Gaussian PSF of width ``σ`` (SPEC §2,
:func:`seqcsist_jax.imaging.render`) and ``n`` additive Gaussian noise of std ``noise_std`` grey levels.
**Offset convention**: a target labelled at ``(xc, yc)`` is imaged at pixel coordinates
``(xc + dx, yc + dy)``; decoders fit in pixel coordinates and report label coordinates (``x - dx, y - dy``).
The defaults (σ 0.5, offset 0, gain 1, background 0, noise 0) are the SeqCSIST model of SPEC §2.

:func:`to_fit_space` / :func:`to_label_space` turn a decoding problem with given imaging parameters into the
default-model problem the decoders solve (frames minus background, brightness in ``gain × label`` units,
noise in grey levels), and the detections back; :func:`render_frames` renders frames with them (tests and
benchmarks).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

import numpy as np

from seqcsist_jax import imaging

__all__ = ["ImagingParams", "DEFAULT_IMAGING", "render_frames", "to_fit_space", "to_label_space"]


@dataclasses.dataclass(frozen=True)
class ImagingParams:
    """Forward-model parameters (see the module docstring for the model and the offset convention).

    Attributes:
      sigma: PSF width in pixels (> 0).
      offset: ``(dx, dy)`` pixels: where a label sits in pixel coordinates, minus the label.
      gain: grey levels per unit of label brightness (> 0).
      background: constant grey level added to every pixel.
      noise_std: std of the additive noise in grey levels (>= 0), rounding excluded (the decoders add its
        variance 1/12 themselves).
    """

    sigma: float = 0.5
    offset: tuple[float, float] = (0.0, 0.0)
    gain: float = 1.0
    background: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        def number(name: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"ImagingParams.{name} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"ImagingParams.{name} must be finite, got {value!r}")
            return float(value)

        off = self.offset
        if isinstance(off, (str, bytes)) or not hasattr(off, "__len__") or len(off) != 2:
            raise ValueError(f"ImagingParams.offset must be a pair (dx, dy), got {off!r}")
        object.__setattr__(self, "offset", (number("offset[0]", off[0]), number("offset[1]", off[1])))
        for name in ("sigma", "gain", "background", "noise_std"):
            object.__setattr__(self, name, number(name, getattr(self, name)))
        if self.sigma <= 0 or self.gain <= 0 or self.noise_std < 0:
            raise ValueError(
                f"ImagingParams needs sigma > 0, gain > 0 and noise_std >= 0, got sigma={self.sigma}, "
                f"gain={self.gain}, noise_std={self.noise_std}"
            )

    @property
    def is_default(self) -> bool:
        """True when these are exactly the SPEC §2 defaults (decoding then takes the unchanged path)."""
        return self == DEFAULT_IMAGING

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``offset`` as a list)."""
        d = dataclasses.asdict(self)
        d["offset"] = list(self.offset)
        return d

    def to_json(self) -> str:
        """One JSON object with the five fields (floats written exactly, round trip is lossless)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "imaging parameters") -> "ImagingParams":
        """From a mapping with exactly the five fields; errors name ``source`` and the field."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{source}: expected a JSON object with fields {_FIELDS}, got {type(data).__name__}"
            )
        missing = [f for f in _FIELDS if f not in data]
        extra = sorted(set(data) - set(_FIELDS))
        if missing or extra:
            raise ValueError(f"{source}: expected fields {_FIELDS}; missing {missing}, unknown {extra}")
        try:
            return cls(**{f: (tuple(data[f]) if f == "offset" and isinstance(data[f], list) else data[f])
                          for f in _FIELDS})
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "imaging parameters") -> "ImagingParams":
        """Parses :meth:`to_json` output; a clear ``ValueError`` naming ``source`` on bad input."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON ({e})") from None
        return cls.from_dict(data, source)

    def __str__(self) -> str:
        dx, dy = self.offset
        return (f"imaging: sigma={self.sigma:.4f} px, offset=({dx:+.4f}, {dy:+.4f}) px, "
                f"gain={self.gain:.4f}, background={self.background:.3f}, noise_std={self.noise_std:.3f}")


_FIELDS = tuple(f.name for f in dataclasses.fields(ImagingParams))

#: The SeqCSIST imaging model of SPEC §2.
DEFAULT_IMAGING = ImagingParams()


def render_frames(
    targets: Any,
    params: ImagingParams = DEFAULT_IMAGING,
    rng: np.random.Generator | None = None,
    quantize: bool = True,
    size: int = 11,
) -> np.ndarray:
    """Frames of ``targets (..., K, 3)`` rows ``(xc, yc, b)`` under ``params`` → ``(..., size, size)``.

    Noise (``params.noise_std > 0``) needs ``rng``. ``quantize=True`` stores them like the release (uint8,
    rounded, clipped to 0..255); ``False`` returns the float64 frames (unrounded, unclipped).
    """
    t = np.asarray(targets, np.float64)
    if t.ndim < 2 or t.shape[-1] != 3:
        raise ValueError(f"targets must have shape (..., K, 3), got {t.shape}")
    shifted = t.copy()
    shifted[..., 0] += params.offset[0]
    shifted[..., 1] += params.offset[1]
    img = params.gain * imaging.render(shifted, size=size, sigma=params.sigma) + params.background
    if params.noise_std > 0:
        if rng is None:
            raise ValueError("render_frames: noise_std > 0 needs an rng (numpy.random.Generator)")
        img = img + rng.normal(0.0, params.noise_std, img.shape)
    return imaging.quantize(img) if quantize else img


#: Decode options the imaging parameters set (passing them as well would be ambiguous).
IMAGING_OPTIONS = ("sigma", "noise_sigma")


def to_fit_space(frames: np.ndarray, options: dict[str, Any], params: ImagingParams
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Frames and decode options of the default-model problem equivalent to decoding under ``params``.

    The background is subtracted from the frames (and from the clip level, so censoring stays at stored
    255); brightness is fitted in grey levels, i.e. ``gain × label`` units, so the brightness prior, a
    ``brightness_range`` box and ``flux_count_bound`` (all given in label units) are scaled by ``gain``; σ and
    the noise level come from ``params``. The fit's residuals are then the raw ones, so its likelihood is the
    raw data's.

    Args:
      frames: ``(..., S, S)`` float grey values.
      options: decode option overrides (not modified); ``sigma``/``noise_sigma`` must not be among them.

    Returns:
      ``frames - background`` (float32) and the option overrides for the fit.
    """
    both = sorted(set(options) & set(IMAGING_OPTIONS))
    if both:
        given = ", ".join(f"{k}={options[k]!r}" for k in both)
        raise ValueError(f"decode: pass {', '.join(both)} through imaging=ImagingParams(...), not as well as "
                         f"options (got imaging={params} and {given})")
    from seqcsist_jax.decode.options import DecodeOptions

    base = DecodeOptions()
    out = dict(options)
    out["sigma"] = params.sigma
    out["noise_sigma"] = params.noise_std
    clip = out.get("clip_level", base.clip_level)
    out["clip_level"] = None if clip is None else float(clip) - params.background
    prior = out.get("brightness_prior", base.brightness_prior)
    if prior is not None:
        out["brightness_prior"] = (float(prior[0]) * params.gain, float(prior[1]) * params.gain)
    if out.get("flux_count_bound") is not None:  # the smallest brightness (label units), if given
        out["flux_count_bound"] = float(out["flux_count_bound"]) * params.gain
    if out.get("brightness_range") is not None:  # a box constraint on brightness (label units), if given
        lo, hi = out["brightness_range"]
        out["brightness_range"] = (float(lo) * params.gain, float(hi) * params.gain)
    return (np.asarray(frames, np.float32) - np.float32(params.background)).astype(np.float32), out


def to_label_space(rows: np.ndarray, params: ImagingParams) -> np.ndarray:
    """Rows ``(..., ≥3)`` ``(x, y, b, …)`` fitted in pixel/grey-level units → label coordinates, brightness.

    Positions minus the offset, brightness divided by the gain; further columns (scores) unchanged.
    """
    out = np.array(rows, dtype=np.float64 if np.asarray(rows).dtype == np.float64 else np.float32, copy=True)
    out[..., 0] -= params.offset[0]
    out[..., 1] -= params.offset[1]
    out[..., 2] /= params.gain
    return out


def to_pixel_space(rows: np.ndarray, params: ImagingParams) -> np.ndarray:
    """Inverse of :func:`to_label_space` (label rows, e.g. map seeds, → fit units)."""
    out = np.array(rows, dtype=np.float32, copy=True)
    out[..., 0] += params.offset[0]
    out[..., 1] += params.offset[1]
    out[..., 2] *= params.gain
    return out
