"""Continuous sub-pixel decoding of SeqCSIST frames with the differentiable imaging model.

Every published SeqCSIST method outputs a 33×33 map whose cells become detections at grid points, which
caps CSO-mAP near 48–59 (SPEC §4). The frames are 8-bit images of a known imaging model (SPEC §2) and a
trajectory moves almost rigidly over 20 frames (SPEC §3); these decoders use both.

``decode(frames, maps=None, method='trajectory', **options)`` → ``N`` lists of ``T`` arrays ``(M, 4)`` rows
``(x, y, brightness, score)`` (single images ``(N, S, S)``, e.g. CSIST-100K: ``N`` arrays). Methods: ``grid`` (the protocol), ``peak`` (map maxima, centroids), ``refine``
(per-frame fits), ``trajectory`` (per-trajectory polynomial-path fits).

Modules by job:
  options     DecodeOptions (every knob, validated)
  forward     forward model, censored residuals, analytic separable normal equations, small SPD solves
  lm          fixed-budget Levenberg–Marquardt
  maps        grid and peak decoders of label maps, physics-only maps (NNLS on Φ)
  frames      per-frame fits for every count (greedy add/split/map/layout starts, single-pixel priors),
              count criterion
  centre      feasibility centring: a fit moved to the middle of the targets that reproduce the stored bytes
  precompile  background compilation: the stage and centring programs compile on other threads while the
              first stage runs (SEQCSIST_COMPILE_THREADS=0 turns it off)
  trajectory  polynomial-path fits of whole trajectories; opt-in star geometry (geometry="star")
  api         decode / decode_arrays, scores
  imaging_params  ImagingParams (σ, label→pixel offset, gain, background, noise): a data set's forward model
  calibrate   maximum-likelihood ImagingParams from labelled frames (calibrate, calibrate_split,
              load_or_calibrate)
"""

from seqcsist_jax.decode.api import (
    CountCapWarning,
    SaturationWarning,
    Decoded,
    decode,
    decode_arrays,
    localisation_confidence,
    map_seeds,
    saturated_frames,
)
from seqcsist_jax.decode.calibrate import calibrate, calibrate_split, load_or_calibrate
from seqcsist_jax.decode.imaging_params import DEFAULT_IMAGING, ImagingParams
from seqcsist_jax.decode.maps import grid_detections, peak_detections, physics_maps
from seqcsist_jax.decode.options import METHODS, DecodeOptions, make_options, parse_option_items
from seqcsist_jax.decode.presets import (
    CSIST100K_OPTIONS,
    SEQCSIST_CONFIG_OPTIONS,
    SEQCSIST_STAR_OPTIONS,
    STAR_DATASETS,
    dataset_decode_options,
)

__all__ = [
    "CSIST100K_OPTIONS",
    "SEQCSIST_STAR_OPTIONS",
    "STAR_DATASETS",
    "dataset_decode_options",
    "SEQCSIST_CONFIG_OPTIONS",
    "DEFAULT_IMAGING",
    "METHODS",
    "CountCapWarning",
    "SaturationWarning",
    "DecodeOptions",
    "ImagingParams",
    "Decoded",
    "calibrate",
    "calibrate_split",
    "decode",
    "saturated_frames",
    "decode_arrays",
    "grid_detections",
    "load_or_calibrate",
    "localisation_confidence",
    "make_options",
    "parse_option_items",
    "map_seeds",
    "peak_detections",
    "physics_maps",
]
