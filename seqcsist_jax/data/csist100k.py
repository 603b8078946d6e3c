"""The CSIST-100K single-image generator (SPEC §9) and a whole-split loader for the `csist100k` TFDS dataset.

CSIST-100K (DISTA-Net, Han et al., ICCV 2025; GrokCV/GrokCSO) is the single-frame sibling of SeqCSIST: each
11×11 image holds 1–5 point targets that all lie **inside one pixel**, pairwise at least ``0.52·R`` apart
(``R = 1.9·σ`` the Rayleigh unit, so ≈ 0.494 px for σ = 0.5), brightness uniform in [220, 250], rendered with
the pixel-integrated Gaussian PSF of :func:`seqcsist_jax.imaging.render` and stored as 8-bit (rounded and
clipped like the public PNG writer). :func:`simulate_csist100k` draws such images; every number is a field of
:class:`Csist100kOptions`.

Sampling (choices the sources leave open are marked DECISION and are options):

* count ``K`` uniform in ``[min_targets, max_targets]`` (1–5);
* host pixel ``(r, c)`` uniform over ``pixel_range``² (**DECISION**: the whole 0..10 grid; the public figure
  shows groups next to the border too);
* positions: ``K`` points uniform in the host pixel's square ``[r-½, r+½) × [c-½, c+½)`` **conditioned on** every
  pairwise distance being ``>= min_distance`` (**DECISION**: exact rejection of whole configurations, i.e. the
  uniform distribution on the feasible set, rather than placing points one after the other, which favours
  other shapes). Five points pass with probability ≈ 1.4e-4, so candidates are drawn in fixed-size vectorised
  batches and screened point by point (a configuration is dropped at its first violation);
* brightness uniform in ``brightness_range`` per target.

Positions are multiples of 2⁻²⁰ px, which float32 holds exactly for ``|x| < 16``: the spacing constraint that
the generator checks in float64 holds exactly for the stored float32 rows (the tests recompute it).
Targets are listed in the order drawn (exchangeable); padding rows are zero (brightness 0).

Determinism: ``numpy.random.SeedSequence(seed)`` is split into four independent PCG64 streams (counts, host
pixels, brightness, positions), each drawn in a fixed order with fixed shapes, so the same seed and options
give byte-identical arrays on every machine and with any rendering chunk size.

Label grids for ``c`` = 3, 5, 7: :func:`labels` (:func:`seqcsist_jax.imaging.targets_to_grid`). With
``min_distance`` ≥ √2/c no two targets of an image share a cell (√2/3 ≈ 0.471 < 0.494), so ``"sum"`` and the
public code's ``"overwrite"`` rule agree on this dataset.

Command line (the public CSIST-100K layout ``{split}/cso_img/image_{N}.png`` + ``{split}/Annotations/CSO{N}.xml``,
which the GrokCSO PyTorch code reads)::

    python -m seqcsist_jax.data.csist100k --out DIR --split test [--num_images=N] [--seed=S] [--start_index=0|1]
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import sys
from typing import Any, Sequence

import numpy as np

__all__ = [
    "DATASET_NAME",
    "SPLIT_SIZES",
    "Csist100kOptions",
    "as_trajectories",
    "load_csist100k_arrays",
    "labels",
    "make_options",
    "simulate_csist100k",
    "main",
]

#: TFDS name of the dataset built from this generator (``tfds_builders/csist100k``).
DATASET_NAME = "csist100k"

#: Images per split of the published dataset (80,000 / 10,000 / 10,000), by release folder name.
SPLIT_SIZES: dict[str, int] = {"train": 80000, "val": 10000, "test": 10000}

#: Candidate configurations drawn per vectorised rejection round. Part of the definition of the data (the
#: draws depend on it), so it is a constant, not an option.
_CANDIDATE_BATCH = 1 << 16

#: Positions are multiples of this step (px): exact in float32 for |x| < 16, see the module docstring.
_POSITION_STEP_BITS = 20

#: A count whose first this many rounds accept nothing is declared infeasible.
_MAX_EMPTY_ROUNDS = 500

#: Largest possible smallest pairwise distance of k points in a unit square (the known optimal packings:
#: √2, √6 − √2, 1, √2/2, ...). A separation at or above it is infeasible; just below it, rejection is hopeless
#: too, which the sampler reports after ``_MAX_EMPTY_ROUNDS`` empty rounds.
_PACKING_DISTANCE: dict[int, float] = {
    2: 2 ** 0.5, 3: 6 ** 0.5 - 2 ** 0.5, 4: 1.0, 5: 2 ** 0.5 / 2, 6: 0.6009, 7: 0.5359, 8: 0.5176, 9: 0.5,
}


@dataclasses.dataclass(frozen=True)
class Csist100kOptions:
    """Every number of the CSIST-100K generator. Defaults = SPEC §9 (the published dataset).

    Lengths and positions are in pixels, brightness in grey levels.

    Attributes:
      min_targets, max_targets: targets per image, uniform in ``[min_targets, max_targets]``.
      max_targets_padded: ``MAXT``, the padded target axis of ``targets`` (``None`` = ``max_targets``).
      brightness_range: ``(low, high)`` uniform brightness per target; must be > 0 (0 marks padding).
      min_separation_rayleigh: smallest pairwise distance in Rayleigh units (0.52).
      rayleigh_factor: the Rayleigh unit in units of ``sigma`` (``R = 1.9·σ``).
      pixel_range: inclusive integer range of the host pixel's row and column (DECISION: 0..10).
      output: ``"uint8"`` (8-bit, as stored in PNG) or ``"float32"`` (rendered, unquantised).
      clip: uint8 output: round then clip to [0, 255] (the public writer); ``False`` raises on overflow.
        float32 output: clip to [0, 255] without rounding, or keep raw values.
      size: image side in pixels.
      sigma: PSF width in pixels.
      render_chunk: images rendered at once (memory only; the result does not depend on it).
    """

    min_targets: int = 1
    max_targets: int = 5
    max_targets_padded: int | None = None
    brightness_range: tuple[float, float] = (220.0, 250.0)
    min_separation_rayleigh: float = 0.52
    rayleigh_factor: float = 1.9
    pixel_range: tuple[int, int] = (0, 10)
    output: str = "uint8"
    clip: bool = True
    size: int = 11
    sigma: float = 0.5
    render_chunk: int = 10000

    def __post_init__(self) -> None:
        for name in ("brightness_range", "pixel_range"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (collections.abc.Sequence, np.ndarray)):
                raise ValueError(f"option {name} must be a (low, high) pair, got {value!r}")
            object.__setattr__(self, name, tuple(np.asarray(value).tolist()))
        self._validate()

    @property
    def maxt(self) -> int:
        """The padded target axis length ``MAXT``."""
        return self.max_targets if self.max_targets_padded is None else self.max_targets_padded

    @property
    def min_distance(self) -> float:
        """Smallest allowed pairwise distance in px: ``min_separation_rayleigh · rayleigh_factor · sigma``."""
        return self.min_separation_rayleigh * self.rayleigh_factor * self.sigma

    def _validate(self) -> None:
        for name in ("min_targets", "max_targets", "size", "render_chunk"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"option {name} must be a positive integer, got {value!r}")
        if self.min_targets > self.max_targets:
            raise ValueError(f"min_targets ({self.min_targets}) > max_targets ({self.max_targets})")
        if self.max_targets_padded is not None and self.max_targets_padded < self.max_targets:
            raise ValueError(f"max_targets_padded ({self.max_targets_padded}) < max_targets ({self.max_targets})")
        if self.output not in ("uint8", "float32"):
            raise ValueError(f"option output must be 'uint8' or 'float32', got {self.output!r}")
        for name in ("brightness_range", "pixel_range"):
            pair = getattr(self, name)
            if len(pair) != 2 or not all(np.isfinite(v) for v in pair) or pair[0] > pair[1]:
                raise ValueError(f"option {name} must be a finite (low, high) pair with low <= high, got {pair!r}")
        if self.brightness_range[0] <= 0:
            raise ValueError(f"option brightness_range must be > 0 (brightness 0 marks padding), "
                             f"got {self.brightness_range!r}")
        if any(float(v) != int(v) for v in self.pixel_range) or self.pixel_range[0] < 0 \
                or self.pixel_range[1] > self.size - 1:
            raise ValueError(f"option pixel_range must hold integer pixel indices in [0, {self.size - 1}], "
                             f"got {self.pixel_range!r}")
        if self.size - 0.5 >= 2 ** (24 - _POSITION_STEP_BITS):
            raise ValueError(f"option size={self.size} is too large for exact float32 positions (< 16 px)")
        for name in ("min_separation_rayleigh", "rayleigh_factor", "sigma"):
            value = getattr(self, name)
            strict = name != "min_separation_rayleigh"
            if not np.isfinite(value) or value < 0 or (strict and value == 0):
                raise ValueError(f"option {name} must be finite and {'> 0' if strict else '>= 0'}, got {value!r}")
        k = self.max_targets
        if k > 1 and (k not in _PACKING_DISTANCE or self.min_distance >= _PACKING_DISTANCE[k]):
            best = _PACKING_DISTANCE.get(k)
            raise ValueError(
                f"max_targets={k} targets cannot lie in one pixel with pairwise distance >= "
                f"{self.min_distance:.4g} px" + (f" (at most {best:.4f} px is possible)" if best else
                                                 f" (supported: up to {max(_PACKING_DISTANCE)} targets)")
            )


def make_options(**options: Any) -> Csist100kOptions:
    """``Csist100kOptions(**options)`` with a TypeError naming any unknown option."""
    known = {f.name for f in dataclasses.fields(Csist100kOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown CSIST-100K option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return Csist100kOptions(**options)


# ---------------------------------------------------------------------------------------------------------------
# Positions inside one pixel


def _quantise(u: np.ndarray) -> np.ndarray:
    """Floor to the grid of multiples of 2⁻²⁰ (float32, exact)."""
    scale = np.float32(2 ** _POSITION_STEP_BITS)
    return np.floor(u * scale) / scale


def _spaced_offsets(rng: np.random.Generator, k: int, n: int, min_distance: float) -> np.ndarray:
    """``n`` configurations of ``k`` points uniform in the unit square, all pairwise ``>= min_distance``.

    Whole-configuration rejection: each round draws ``_CANDIDATE_BATCH`` candidate configurations (first all
    first points, then for the survivors the next point, ...), keeps those that satisfy every pairwise
    constraint and appends them in draw order. Accepted configurations are independent and uniform on the
    feasible set. Candidates are float32 uniforms ``u`` (multiples of 2⁻²⁴); a configuration is accepted when
    its points floored to multiples of 2⁻²⁰ (``q``, uniform on that grid) are feasible, checked exactly in
    float64. The float32 screen on ``u`` uses a margin larger than ``|q - u|`` and float32 rounding, so it
    never drops a configuration whose ``q`` is feasible.

    Returns:
      ``(n, k, 2)`` float64 offsets in [0, 1), multiples of 2⁻²⁰.
    """
    if n == 0:
        return np.zeros((0, k, 2))
    if k == 1:
        return _quantise(rng.random((n, 1, 2), dtype=np.float32)).astype(np.float64)
    d2 = min_distance * min_distance
    # |q - u| < 2⁻²⁰ per coordinate moves a distance by < 2√2·2⁻²⁰ ≈ 2.7e-6; float32 adds ~1e-7 relative.
    screen = np.float32(max(min_distance - 4e-6, 0.0) ** 2 * (1 - 1e-6))
    iu = np.triu_indices(k, 1)
    accepted, have, rounds = [], 0, 0
    while have < n:
        rounds += 1
        if have == 0 and rounds > _MAX_EMPTY_ROUNDS:
            raise ValueError(
                f"no configuration of {k} targets with pairwise distance >= {min_distance:.4g} px fitted in one "
                f"pixel after {_MAX_EMPTY_ROUNDS * _CANDIDATE_BATCH:,} candidates; lower max_targets or the "
                "separation"
            )
        xs = [rng.random(_CANDIDATE_BATCH, dtype=np.float32)]
        ys = [rng.random(_CANDIDATE_BATCH, dtype=np.float32)]
        for _ in range(1, k):
            m = xs[0].size
            xn, yn = rng.random(m, dtype=np.float32), rng.random(m, dtype=np.float32)
            ok = np.ones(m, dtype=bool)
            for xi, yi in zip(xs, ys):
                dx, dy = xi - xn, yi - yn
                ok &= dx * dx + dy * dy >= screen
            keep = np.flatnonzero(ok)
            xs = [v.take(keep) for v in xs] + [xn.take(keep)]
            ys = [v.take(keep) for v in ys] + [yn.take(keep)]
        config = _quantise(np.stack([np.stack(xs, 1), np.stack(ys, 1)], axis=-1)).astype(np.float64)  # (m, k, 2)
        delta = config[:, :, None, :] - config[:, None, :, :]
        dist2 = np.einsum("mijc,mijc->mij", delta, delta)  # exact: 21-bit differences
        config = config[np.all(dist2[:, iu[0], iu[1]] >= d2, axis=1)]
        accepted.append(config)
        have += config.shape[0]
    return np.concatenate(accepted)[:n]


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


def simulate_csist100k(num_images: int, seed: int, **options: Any) -> dict[str, np.ndarray]:
    """Generates CSIST-100K images (SPEC §9).

    Args:
      num_images: ``N``, number of images (0 allowed).
      seed: non-negative integer; same seed and options → byte-identical arrays on every machine.
      **options: fields of :class:`Csist100kOptions` (unknown names raise TypeError).

    Returns:
      dict of numpy arrays (``S`` = size, ``MAXT`` = padded target axis, 5 by default):

      - ``image``: ``(N, S, S)`` uint8 grey levels (float32 with ``output="float32"``); ``xc`` on rows.
      - ``targets``: ``(N, MAXT, 3)`` float32 rows ``(xc, yc, brightness)`` in px / grey levels, real rows
        first, zero padded (brightness 0 = padding).
      - ``num_targets``: ``(N,)`` int32 real rows per image.
      - ``host_pixel``: ``(N, 2)`` int32 ``(row, column)`` of the pixel that holds all targets of the image.
      - ``clipped_pixels``: ``(N,)`` int32 pixels that 8-bit storage clips, whatever ``output``.
    """
    from seqcsist_jax import imaging  # deferred: imports JAX

    opts = make_options(**options)
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative integer, got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    n, maxt, size = int(num_images), opts.maxt, opts.size
    rng_count, rng_pixel, rng_brightness, rng_position = (
        np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(int(seed)).spawn(4)
    )
    count = rng_count.integers(opts.min_targets, opts.max_targets + 1, n).astype(np.int32)
    lo, hi = int(opts.pixel_range[0]), int(opts.pixel_range[1])
    host = rng_pixel.integers(lo, hi + 1, (n, 2)).astype(np.int32)
    brightness = rng_brightness.uniform(*opts.brightness_range, (n, maxt))
    positions = np.zeros((n, maxt, 2))
    for k in range(opts.min_targets, opts.max_targets + 1):  # fixed order: one position stream for all counts
        rows = np.nonzero(count == k)[0]
        positions[rows, :k] = _spaced_offsets(rng_position, k, rows.size, opts.min_distance)
    real = np.arange(maxt)[None, :] < count[:, None]
    xy = host[:, None, :] - 0.5 + positions  # exact: multiples of 2⁻²⁰ below 16
    targets = np.concatenate([xy, brightness[..., None]], axis=-1)
    targets = np.where(real[..., None], targets, 0.0).astype(np.float32)

    out = np.empty((n, size, size), dtype=np.uint8 if opts.output == "uint8" else np.float32)
    clipped = np.empty((n,), dtype=np.int32)
    for start in range(0, n, opts.render_chunk):
        stop = min(n, start + opts.render_chunk)
        # Render from the stored float32 rows so that re-rendering the returned targets reproduces the images.
        img = imaging.render(targets[start:stop].astype(np.float64), size=size, sigma=opts.sigma)
        clipped[start:stop] = imaging.count_clipped(img)
        if opts.output == "uint8":
            if not opts.clip and clipped[start:stop].any():
                bad = start + int(np.argmax(clipped[start:stop] > 0))
                raise ValueError(f"image {bad} has pixels above 255 after rounding and clip=False; use clip=True "
                                 "or output='float32'")
            out[start:stop] = imaging.quantize(img, clip=True)
        else:
            out[start:stop] = np.clip(img, 0.0, 255.0) if opts.clip else img
    return {"image": out, "targets": targets, "num_targets": count, "host_pixel": host,
            "clipped_pixels": clipped}


def labels(targets: Any, c: int = 3, size: int = 11, collision: str = "sum") -> Any:
    """Label grids of CSIST-100K targets for sub-pixel division ``c`` (3, 5 or 7 in DISTA-Net).

    Args:
      targets: ``(..., MAXT, 3)`` rows ``(xc, yc, brightness)``, zero padded.
      c: sub-pixel division; the grid is ``(size·c) × (size·c)`` with cell ``(i, j)`` at
        ``((i - (c-1)//2)/c, (j - (c-1)//2)/c)`` px (SPEC §1).
      size: image side in pixels.
      collision: see :func:`seqcsist_jax.imaging.targets_to_grid` (no collisions occur on CSIST-100K, c >= 3).

    Returns:
      ``(..., size·c, size·c)`` maps with each target's brightness at its nearest cell.
    """
    from seqcsist_jax import imaging  # deferred: imports JAX

    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
        raise ValueError(f"c must be a positive integer, got {c!r}")
    return imaging.targets_to_grid(targets, c=int(c), size=size, collision=collision)


def load_csist100k_arrays(
    name: str = "csist100k/mini", split: str = "test", data_dir: str | None = None, build_if_missing: bool = True,
    manual_dir: str | None = None,
) -> dict[str, np.ndarray]:
    """A whole split of a ``csist100k`` TFDS config as numpy arrays, in stored order.

    Args:
      name: TFDS name, e.g. ``"csist100k/default"``, ``"csist100k/mini"`` or ``"csist100k/public"``.
      split: ``train``, ``validation`` or ``test``, or several joined with ``+`` (slices such as ``test[:7]`` are
        refused: TFDS would ignore them on these Parquet files).
      data_dir: TFDS data directory (``None``: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      build_if_missing: run ``download_and_prepare`` first when the config is not prepared yet.
      manual_dir: where ``csist100k/public`` reads the release when it is first prepared (None:
        ``<data_dir>/downloads/manual/``); e.g. the folder ``python -m seqcsist_jax.data.csist100k --out=DIR`` wrote.

    Returns:
      ``image (N, 11, 11) uint8``, ``targets (N, 5, 3) float32``, ``num_targets (N,) int32``,
      ``image_number (N,) int64`` (the ``N`` of ``image_{N}.png``; the index for simulated configs).
    """
    if not isinstance(name, str) or name.split("/", 1)[0].split(":", 1)[0] != DATASET_NAME:
        raise ValueError(f"load_csist100k_arrays reads the {DATASET_NAME!r} dataset, got name {name!r}")
    from seqcsist_jax.data.tfds_open import manual_dir_kwargs, read_tfds_split

    # under the dataset's lock; damaged prepared files are rebuilt (seqcsist_jax.data.tfds_open)
    examples = read_tfds_split(name, split, data_dir, build_if_missing,
                               lambda source: source.__getitems__(list(range(len(source)))) if len(source) else [],
                               **manual_dir_kwargs(manual_dir))
    n = len(examples)
    if n == 0:
        raise ValueError(f"{name} split {split!r} is empty")
    return {
        "image": np.stack([np.asarray(e["image"]) for e in examples]),
        "targets": np.stack([np.asarray(e["targets"], dtype=np.float32) for e in examples]),
        "num_targets": np.array([e["num_targets"] for e in examples], dtype=np.int32),
        "image_number": np.array([e["image_number"] for e in examples], dtype=np.int64),
    }


def as_trajectories(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Single images as one-frame trajectories, for the trajectory-shaped pipeline and models.

    Args:
      arrays: ``image (N, S, S)``, ``targets (N, MAXT, 3)`` and optionally ``num_targets (N,)`` and
        ``image_number (N,)`` (as returned by :func:`load_csist100k_arrays` or :func:`simulate_csist100k`).

    Returns:
      ``frames (N, 1, S, S)``, ``targets (N, 1, MAXT, 3)``, ``num_targets (N, 1)`` int32, ``trajectory_id (N,)``
      int64 (the index) and ``frame_numbers (N, 1)`` (``image_number``, else the index): the input of
      :class:`seqcsist_jax.data.pipeline.ArraySource` / ``TrajectoryLoader``. Views, no copies.
    """
    for key in ("image", "targets"):
        if key not in arrays:
            raise ValueError(f"as_trajectories needs arrays[{key!r}], got keys {sorted(arrays)}")
    image, targets = np.asarray(arrays["image"]), np.asarray(arrays["targets"])
    if image.ndim != 3 or targets.ndim != 3 or targets.shape[0] != image.shape[0] or targets.shape[-1] != 3:
        raise ValueError(f"as_trajectories needs image (N, S, S) and targets (N, MAXT, 3), got {image.shape} "
                         f"and {targets.shape}")
    n = image.shape[0]
    counts = arrays.get("num_targets")
    counts = np.count_nonzero(targets[..., 2], axis=-1) if counts is None else np.asarray(counts)
    numbers = np.asarray(arrays.get("image_number", np.arange(n)))
    return {
        "frames": image[:, None],
        "targets": targets[:, None],
        "num_targets": counts.astype(np.int32)[:, None],
        "trajectory_id": np.arange(n, dtype=np.int64),
        "frame_numbers": numbers[:, None],
    }


# ---------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    from seqcsist_jax.data import public_format  # deferred: PIL is only needed to write files
    from seqcsist_jax.data.simulate import split_seed

    from seqcsist_jax.data.export_cli import parse

    args = parse(argv, "seqcsist_jax.data.csist100k", "generate CSIST-100K splits in the public on-disk layout "
                 "({split}/cso_img/image_{N}.png + {split}/Annotations/CSO{N}.xml).", "num_images",
                 "images per split (default: the published 80000/10000/10000)")
    if isinstance(args, int):
        return args
    splits = args.split
    for split in splits:
        n = SPLIT_SIZES[split] if args.num_images is None else args.num_images
        seed = split_seed(args.seed, split)
        try:
            arrays = simulate_csist100k(n, seed)
            # One image is a "trajectory" of one frame for the shared public-format writer.
            base = public_format.write_public_split(
                args.out, split, {"frames": arrays["image"][:, None], "targets": arrays["targets"][:, None],
                                  "num_targets": arrays["num_targets"][:, None]},
                start_index=args.start_index, progress=args.progress, overwrite=args.overwrite,
                layout=public_format.CSIST100K_LAYOUT,
            )
        except (FileExistsError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        # Provenance next to (not inside) cso_img/ and Annotations/, so readers of the public layout ignore it.
        record = {"dataset": DATASET_NAME, "split": split, "base_seed": args.seed, "seed": seed,
                  "num_images": n, "start_index": args.start_index,
                  "options": dataclasses.asdict(make_options())}
        (base / "simulation.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        clipped = int(np.count_nonzero(arrays["clipped_pixels"]))
        print(f"{split}: {n} images (seed {seed}) → {base}; {clipped} images with clipped pixels", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
