"""Options of the continuous decoders (one frozen dataclass, validated once)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from seqcsist_jax.protocol import DECODERS
from seqcsist_jax.suggest import closest_name

__all__ = ["DecodeOptions", "make_options", "METHODS", "GEOMETRIES"]

#: Decoding methods of :func:`seqcsist_jax.decode.decode`.
METHODS: tuple[str, ...] = DECODERS

#: Group geometries of the ``trajectory`` fit (``DecodeOptions.geometry``).
GEOMETRIES: tuple[str, ...] = ("free", "star")


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """Every knob of :func:`seqcsist_jax.decode.decode`. Lengths in pixels, brightness in grey levels.

    Attributes:
      threshold: map value a cell/peak needs (70, the SeqCSIST protocol) — ``grid``, ``peak`` and map seeds.
      c: sub-pixel division of the label maps (3).
      connectivity: 8 or 4, neighbours of the local-maximum test of the ``peak`` decoder (map seeds always
        use 4, see :func:`seqcsist_jax.decode.map_seeds`).
      sigma: PSF width (SPEC §2).
      clip_level: the 8-bit saturation level; observed pixels at this level are censored in the fits
        (frames with a pixel above it are taken as unclipped). ``None`` turns censoring off.
      noise_sigma: std of additive noise in the frames (0 for the released data). The fits' noise variance is
        ``s² = 1/12 + noise_sigma²`` (rounding adds a uniform ±½ error of variance 1/12); it scales the
        priors, the count criterion and the uncertainties.
      min_targets, max_targets: range of target counts the fits consider (per frame / per trajectory);
        ``K = 0`` (no target) is allowed, so an empty frame gives no detections.
      brightness_prior: ``(mean, std)`` of a Gaussian prior on every brightness, or ``None``. **DECISION**:
        the default ``(235, 8.66)`` is the mean and std of SPEC §3's uniform 220–250 draw. Close targets
        trade separation against brightness almost perfectly; the prior breaks that tie in single frames
        (simulated frames started at the truth: ~73 → ~82 CSO-mAP) and makes a spurious extra target cost
        its brightness deficit, which is what makes the per-frame counts reliable. In trajectory fits it
        applies once per target.
      frame_iterations: LM iterations of every per-frame fit (fixed budget).
      trajectory_iterations: LM iterations of every trajectory fit.
      degree: polynomial degree in time of each target's path in the trajectory fit (2: the reference paths
        are lines, parabolas and circle arcs over 0.8 px, the outward drift is linear on average).
      shared_from: Legendre degree from which the path coefficients are common to the whole group (the
        targets move with one reference point, SPEC §3): ``> degree`` fits independent paths, ``2`` shares
        the curvature, ``1`` the velocity too (rigid translation; the < 0.014 px outward drift is then
        ignored). Fewer free coefficients mean less noise in the fitted positions.
      count_penalty: penalty per fitted parameter added to ``cost/s²`` when choosing the number of targets
        (``log n`` ≈ 4.8 is BIC for a 121-pixel frame, kept as is: on the validation split every value in
        1–8 gives the same per-frame counts on ``default``; with σ = 5 noise 4.8 miscounts 0.2% of frames,
        8 none — the trajectory vote absorbs those).
      trajectory_count_penalty: the same for trajectory fits (per own parameter of a target's path).
      templates: per-frame solutions used as starts of each trajectory fit (per candidate count).
      runner_up: when a trajectory fit also tries the runner-up count of the per-frame votes: ``"split"``
        (only where the per-frame counts disagree), ``"always"`` or ``"never"``.
      trajectory_restarts: extra starts of the chosen count's trajectory fit: the fit's own solution with every
        target's offset moved by a Gaussian of std ``restart_jitter`` (px), each refined by the full
        Levenberg–Marquardt budget; the lowest cost wins (it includes the fit itself, so the cost never rises).
        Skipped with ``geometry="star"``, whose fit replaces the free paths (every direction subset is screened).
        **DECISION**: 0 (off) by default — ``default``'s trajectory fits are already in the right basin; 8 for
        ``targets_2_8`` (:func:`seqcsist_jax.decode.presets.dataset_decode_options`), where dense clipped groups
        of 5–8 targets leave the fit in a wrong basin (validation split: see
        ``experiments/benchmarks/results/trajectory_basins_targets_2_8.md``).
      restart_jitter: that std (px; 0.1, chosen on the ``targets_2_8`` validation split: 0.15 and 0.2 did no better).
      restart_seed: seed of the jitter pattern (one ``(restarts, slots, 2)`` draw shared by every trajectory, so
        a trajectory's result does not depend on the batch it is decoded in).
      trajectory_centre_iterations: damped Gauss–Newton steps that refine the chosen trajectory fit (after the
        restarts) on the exact 8-bit rounding likelihood of all its frames, smoothed by ``centre_softness``
        (:mod:`seqcsist_jax.decode.trajectory_centre`; the count stays, the scores use that objective's
        curvature). **DECISION**: 0 (off) by default; 20 with ``centre_softness=0.1`` for ``targets_2_8``
        (validation split, after the restarts: 82.37 → 83.92 CSO-mAP for ~50 % more decoding time; 10 steps or
        softness 0.15 did less). Skipped with ``geometry="star"``.
      trajectory_centre_starts: that refit also starts from up to ``trajectory_centre_starts - 1`` further
        distinct ends of the restarts (lowest least-squares cost first; ends within 0.02 px of a kept one are one
        basin, :func:`seqcsist_jax.decode.trajectory.distinct_ends`) and the lowest rounding objective wins: the
        least-squares cost often prefers a wrong basin that the rounding likelihood ranks below the near-truth
        one. 1 refits the chosen fit only; without ``trajectory_restarts`` (no ends) or with
        ``trajectory_centre_iterations=0`` (no refit) the value has no effect, like every trajectory option
        under ``method="refine"`` (so a preset's value can stay when those are switched off). **DECISION**: 1 by
        default; 9 (every end of 8 restarts) for ``targets_2_8`` (validation split: 83.92 → 85.43 CSO-mAP; the
        whole decode of 750 trajectories 74 → 144 s; test split 83.78 → 84.28).
      map_seeds: use peaks of supplied model maps as extra starts (``refine``/``trajectory``).
      max_saturated: saturated pixels per frame handled as censored (more are treated as ordinary pixels).
      score_radius: ``r₀`` of the localisation confidence ``1 - exp(-r₀²/(2σ²))`` in the scores.
      single_pixel: every target of a frame lies inside one pixel (CSIST-100K, SPEC §9): the per-frame fits
        keep all positions inside the pixel holding the frame's intensity centroid (a box constraint
        applied after every step). **DECISION**: off by default (SeqCSIST groups span several pixels).
      layout_starts: with ``single_pixel``, extra starts per count ``K >= 3``: fixed spread-out layouts of
        ``K`` targets inside the pixel (:func:`seqcsist_jax.decode.frames.pixel_layouts`); greedy add/split
        starts often end in a wrong basin when 4–5 targets share a saturated pixel.
      screen_iterations: when a per-frame stage has more than ``screen_keep`` starts, run every start this
        many LM iterations and continue only the best ``screen_keep`` for the rest of ``frame_iterations``
        (0: off, every start gets the full budget).
      screen_keep: starts that survive the screening (2).
      evidence_weight: how the per-frame fits pick among the ends of their starts: by
        ``cost/s² + evidence_weight · log det(JᵀJ)`` (:func:`seqcsist_jax.decode.frames.start_rank`). 0 (the
        default) is the lowest cost; 1 is the Laplace approximation of each basin's posterior mass, which
        prefers a broad basin to a slightly lower, sharper one (on CSIST-100K's 4–5 targets inside one
        clipped pixel the true basin is usually the broader one, not the lowest).
      min_separation: minimum distance (px) between two targets of a frame the generator allows (CSIST-100K:
        ``0.52·1.9σ ≈ 0.494``), or ``None``: closer pairs in a per-frame fit pay the soft hinge penalty of
        :func:`seqcsist_jax.decode.frames.separation_residuals` (it rules out fits that merge two targets
        and compensate with the others). **DECISION**: off by default.
      separation_width: width (px) of that hinge: a pair ``w`` closer than allowed costs one ``s²``.
      brightness_range: ``(lo, hi)`` box constraint on every brightness in the per-frame fits (the generator's
        uniform range, e.g. ``(220, 250)``), or ``None``. **DECISION**: off by default.
      centre_iterations: ``refine`` only: damped Gauss–Newton steps that move each chosen fit to the middle of
        the set of targets that reproduce the stored 8-bit frame (:mod:`seqcsist_jax.decode.centre`; the count
        stays the fit's, the scores use the centring objective's curvature). **DECISION**: 0 (off) by default; 10 in ``CSIST100K_OPTIONS``, where 4–5
        targets share one saturated pixel and that set is wide.
      centre_softness: ``s`` (grey levels) of the centring's rounding likelihood, combined with ``noise_sigma``
        as ``√(s² + noise_sigma²)``: how strongly slack on every pixel's rounding interval is rewarded.
      centre_wall: softness (px) of the centring's position walls (the box of ``single_pixel``) and of the
        ``min_separation`` limit.
      centre_saturated_only: centre only frames with a saturated pixel (the set is wide where clipped pixels
        bound the signal from one side only; centring the unclipped CSIST-100K images too gains 0.25 CSO-mAP on
        the validation split for about 20 % more time).
      centre_candidates: with centring, the chosen count's fit is centred from this many distinct start ends
        (the lowest-cost basins of its starts) and the end with the lowest centring objective wins: the
        least-squares cost ranks the basins of a wide, flat set poorly.
      centre_screen_iterations, centre_keep: with several candidates, each first runs this many centring steps
        and only the ``centre_keep`` lowest objectives continue for the rest of ``centre_iterations``.
      basin_temperature: with centring from several candidates, multiply each target's score by the weighted
        share of the candidates' ends (after the screening steps, or the full run when none is dropped) that
        place a target within ``score_radius`` of it, each end weighted ``exp(-Δ/basin_temperature)`` by its
        objective's excess ``Δ`` (nats) over the chosen fit's, the chosen fit counting once with weight 1
        (:func:`seqcsist_jax.decode.centre.basin_agreement`): a target on which near-equal basins disagree is
        ranked lower. 1 is the posterior weight of each basin's mode. **DECISION**: 0 (off) by default; 1 in
        ``CSIST100K_OPTIONS``.
      flux_count_bound: the smallest brightness a target can have (label units; CSIST-100K: 220), or
        ``None``. With ``single_pixel``, a frame without a saturated pixel then holds at most
        ``⌊(Σ pixels + S²/2 + 4·noise_sigma·S) / (flux_count_bound · m)⌋`` targets (the stored bytes lose at
        most ½ per pixel to rounding; ``m``: the smallest share of a target's PSF inside the frame for a
        target within 1 px of the frame's brightest pixel, where ``single_pixel`` puts every target), and its
        per-frame fits skip the counts above that bound (their cost is ``inf``): compute that only produced
        wrong counts. Frames are fitted in bound order so that a batch stops at its largest bound; each
        frame's fits are the same as without the bound. **DECISION**: off by default; 220 in
        ``CSIST100K_OPTIONS``.
      uniform_slots: run the per-frame fits of every count ``K >= 3`` in ``max_targets`` slots (one compiled
        program for them instead of one per slot count 4, 8, …; ``K = 1, 2`` keep 1 and 2 slots). Compilation
        is a large share of a 10,000-image CPU run; for small ``max_targets`` (CSIST-100K: 5) the extra slots
        cost less at run time than the compilation they save. Results equal the per-count slots' up to
        float rounding (unused slots never move).
      chunk: the most frames (``refine``) or trajectories×frames/T (``trajectory``) per jitted call; every call
        is padded to one size so each shape compiles once (``refine`` balances its calls,
        :func:`seqcsist_jax.decode.frames.balanced_chunk`, so the padding stays below one frame per call).
      geometry: the group geometry of the ``trajectory`` fit. ``"free"`` (the default): every target has its
        own polynomial path (curvature shared from ``shared_from``). ``"star"``: SPEC §3's SeqCSIST motion
        model (:func:`seqcsist_jax.decode.trajectory.star_reparametrisation`): target ``k`` at
        ``ref(t) + r_k(t)·u(θ_k)``, ``ref`` a degree-``degree`` path shared by the group, ``θ_k`` one of the
        generator's compass directions (distinct per target), ``r_k(t) = r0_k + v_k·t``, brightness constant.
        The free fit still chooses the count and supplies the direction candidates; the star fit replaces its
        positions. **DECISION**: simulator-specific, off by default — use it only for data whose generator
        follows that geometry (``seqcsist`` default/``targets_2_8``/``noise_*``, see
        :data:`seqcsist_jax.decode.presets.SEQCSIST_STAR_OPTIONS`).
      star_directions: the direction set of ``geometry="star"``: ``"auto"`` (the generator's rule: the 4 axis
        directions if ``max_targets <= 4``, else the 8 compass directions), ``"axis"`` or ``"compass"``.
      star_candidates: direction subsets fitted with the full ``trajectory_iterations`` per trajectory; the
        lowest cost wins. Candidates: the free fit's targets' mean positions are matched to every injective
        choice of directions (:func:`seqcsist_jax.decode.trajectory.star_candidates`) and the subsets ranked
        by that misfit.
      star_screen: with ``star_screen_iterations > 0``, the best ``star_screen`` subsets by that misfit (all
        of them when fewer; 70 = C(8, 4) covers every subset of the 8 compass directions) each get
        ``star_screen_iterations`` LM iterations, and only the ``star_candidates`` lowest costs continue. 0:
        no screening, the ``star_candidates`` best-ranked subsets are fitted. The misfit ranking alone is not
        enough: where the free fit fell into a wrong basin (dense, clipped groups) its mean positions rank
        the true subset low (20th–25th of 28–56), while the image cost picks it out.
      star_screen_iterations: LM iterations of that screening.
      star_radius: ``(mean, std)`` of each target's start distance ``r0_k`` from the reference point (px):
        the mean is the start value, ``std`` a Gaussian prior (``None``: free). SPEC §3: 0.3 px.
      star_drift: ``(mean, std)`` of each target's outward drift per frame ``v_k`` (px/frame), likewise. SPEC
        §3 draws the drift uniform in ``[0, 0.0014)``: mean 0.0007, std 0.0004.
      star_stiffness: ``None`` (default): the star is a hard parametrisation. A positive value (px) makes it a
        soft prior: each target also gets its own polynomial deviation from the star (``degree`` in x and
        y), every Legendre coefficient with a Gaussian prior of this std.
    """

    threshold: float = 70.0
    c: int = 3
    connectivity: int = 8
    sigma: float = 0.5
    clip_level: float | None = 255.0
    noise_sigma: float = 0.0
    min_targets: int = 0
    max_targets: int = 4
    brightness_prior: tuple[float, float] | None = (235.0, 8.66)
    frame_iterations: int = 12
    trajectory_iterations: int = 15
    degree: int = 2
    shared_from: int = 2
    count_penalty: float = 4.8
    trajectory_count_penalty: float = 4.8
    templates: int = 3
    runner_up: str = "split"
    trajectory_restarts: int = 0
    restart_jitter: float = 0.1
    restart_seed: int = 0
    trajectory_centre_iterations: int = 0
    trajectory_centre_starts: int = 1
    map_seeds: bool = True
    max_saturated: int = 8
    score_radius: float = 0.1
    chunk: int = 4096
    single_pixel: bool = False
    layout_starts: int = 0
    screen_iterations: int = 0
    screen_keep: int = 2
    evidence_weight: float = 0.0
    uniform_slots: bool = False
    min_separation: float | None = None
    separation_width: float = 0.02
    brightness_range: tuple[float, float] | None = None
    flux_count_bound: float | None = None
    centre_iterations: int = 0
    centre_softness: float = 0.15
    centre_wall: float = 0.03
    centre_saturated_only: bool = True
    centre_candidates: int = 1
    centre_screen_iterations: int = 5
    centre_keep: int = 1
    basin_temperature: float = 0.0
    geometry: str = "free"
    star_directions: str = "auto"
    star_candidates: int = 2
    star_screen: int = 70
    star_screen_iterations: int = 3
    star_radius: tuple[float, float | None] = (0.3, 0.01)
    star_drift: tuple[float, float | None] = (0.0007, 0.0004)
    star_stiffness: float | None = None

    @property
    def noise_variance(self) -> float:
        """``s²``: variance of one pixel's residual at the true targets (rounding + additive noise)."""
        return 1.0 / 12.0 + float(self.noise_sigma) ** 2

    @property
    def star_direction_count(self) -> int:
        """Directions of ``geometry="star"``: 4 (axis) or 8 (compass); ``"auto"`` follows the generator."""
        from seqcsist_jax.data.simulate import direction_count  # the generator's own rule

        return direction_count(self.star_directions, self.max_targets)

    def __post_init__(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        mt = self.min_targets
        check(isinstance(mt, int) and not isinstance(mt, bool) and mt >= 0,
              f"decode option min_targets must be a non-negative integer, got {mt!r}")
        for name in ("c", "max_targets", "frame_iterations", "trajectory_iterations", "centre_candidates",
                     "centre_keep",
                     "templates", "chunk", "screen_keep", "star_candidates"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                  f"decode option {name} must be a positive integer, got {v!r}")
        check(self.min_targets <= self.max_targets,
              f"decode options min_targets ({self.min_targets}) > max_targets ({self.max_targets})")
        check(isinstance(self.shared_from, int) and self.shared_from >= 0,
              f"decode option shared_from must be a non-negative integer, got {self.shared_from!r}")
        check(isinstance(self.degree, int) and 0 <= self.degree <= 6,
              f"decode option degree must be an integer in 0..6, got {self.degree!r}")
        check(self.runner_up in ("split", "always", "never"),
              f"decode option runner_up must be 'split', 'always' or 'never', got {self.runner_up!r}")
        check(self.connectivity in (4, 8),
              f"decode option connectivity must be 4 or 8, got {self.connectivity!r}")
        check(isinstance(self.max_saturated, int) and self.max_saturated >= 0,
              f"decode option max_saturated must be a non-negative integer, got {self.max_saturated!r}")
        for name in ("threshold", "sigma", "noise_sigma", "count_penalty", "trajectory_count_penalty",
                     "score_radius", "evidence_weight"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and math.isfinite(v),
                  f"decode option {name} must be finite, got {v!r}")
        check(self.evidence_weight >= 0, f"decode option evidence_weight must be >= 0, got {self.evidence_weight!r}")
        check(self.sigma > 0 and self.score_radius > 0 and self.noise_sigma >= 0,
              "decode options sigma and score_radius must be > 0 and noise_sigma >= 0")
        if self.clip_level is not None:
            check(math.isfinite(self.clip_level) and self.clip_level > 0,
                  f"decode option clip_level must be positive or None, got {self.clip_level!r}")
        check(isinstance(self.layout_starts, int) and not isinstance(self.layout_starts, bool)
              and self.layout_starts >= 0,
              f"decode option layout_starts must be a non-negative integer, got {self.layout_starts!r}")
        if self.min_separation is not None:
            check(isinstance(self.min_separation, (int, float)) and math.isfinite(self.min_separation)
                  and self.min_separation > 0,
                  f"decode option min_separation must be a positive number or None, got {self.min_separation!r}")
        check(isinstance(self.separation_width, (int, float)) and math.isfinite(self.separation_width)
              and self.separation_width > 0,
              f"decode option separation_width must be a positive number, got {self.separation_width!r}")
        for name in ("centre_iterations", "centre_screen_iterations", "trajectory_restarts", "restart_seed",
                     "trajectory_centre_iterations"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                  f"decode option {name} must be a non-negative integer, got {v!r}")
        v = self.trajectory_centre_starts
        check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              f"decode option trajectory_centre_starts must be a positive integer, got {v!r}")
        check(isinstance(self.centre_saturated_only, bool),
              f"decode option centre_saturated_only must be True or False, got {self.centre_saturated_only!r}")
        bt = self.basin_temperature
        check(isinstance(bt, (int, float)) and not isinstance(bt, bool) and math.isfinite(bt) and bt >= 0,
              f"decode option basin_temperature must be a non-negative number (0: off), got {bt!r}")
        for name in ("centre_softness", "centre_wall", "restart_jitter"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                  f"decode option {name} must be a positive number, got {v!r}")
        si = self.screen_iterations
        check(isinstance(si, int) and not isinstance(si, bool) and si >= 0,
              f"decode option screen_iterations must be a non-negative integer, got {si!r}")
        check(isinstance(self.uniform_slots, bool),
              f"decode option uniform_slots must be True or False, got {self.uniform_slots!r}")
        check(isinstance(self.single_pixel, bool),
              f"decode option single_pixel must be True or False, got {self.single_pixel!r}")
        if self.flux_count_bound is not None:
            check(isinstance(self.flux_count_bound, (int, float)) and not isinstance(self.flux_count_bound, bool)
                  and math.isfinite(self.flux_count_bound) and self.flux_count_bound > 0,
                  f"decode option flux_count_bound must be a positive brightness or None, got "
                  f"{self.flux_count_bound!r}")
            check(self.single_pixel, "decode option flux_count_bound needs single_pixel=True (the bound assumes "
                                     "every target lies within 1 px of the brightest pixel)")
            object.__setattr__(self, "flux_count_bound", float(self.flux_count_bound))
        if self.brightness_range is not None:
            br = tuple(float(v) for v in self.brightness_range)
            check(len(br) == 2 and all(math.isfinite(v) for v in br) and 0 < br[0] <= br[1],
                  f"decode option brightness_range must be (lo, hi) with 0 < lo <= hi, or None, "
                  f"got {self.brightness_range!r}")
            object.__setattr__(self, "brightness_range", br)
        check(self.geometry in GEOMETRIES,
              f"decode option geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        check(self.star_directions in ("auto", "axis", "compass"),
              f"decode option star_directions must be 'auto', 'axis' or 'compass', got {self.star_directions!r}")
        if self.geometry == "star":
            check(self.max_targets <= self.star_direction_count,
                  f"decode option geometry='star' places at most {self.star_direction_count} targets "
                  f"(star_directions={self.star_directions!r}), got max_targets={self.max_targets}")
        for name in ("star_screen", "star_screen_iterations"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                  f"decode option {name} must be a non-negative integer, got {v!r}")
        for name in ("star_radius", "star_drift"):
            v = getattr(self, name)
            ok = isinstance(v, (tuple, list)) and len(v) == 2
            if ok:
                mean, std = v
                ok = isinstance(mean, (int, float)) and math.isfinite(mean) and (
                    std is None or (isinstance(std, (int, float)) and math.isfinite(std) and std > 0))
            check(ok, f"decode option {name} must be (mean, std > 0 or None), got {v!r}")
            object.__setattr__(self, name, (float(v[0]), None if v[1] is None else float(v[1])))
        if self.star_stiffness is not None:
            check(isinstance(self.star_stiffness, (int, float)) and not isinstance(self.star_stiffness, bool)
                  and math.isfinite(self.star_stiffness) and self.star_stiffness > 0,
                  f"decode option star_stiffness must be a positive number (px) or None, got {self.star_stiffness!r}")
        if self.brightness_prior is not None:
            bp = tuple(float(v) for v in self.brightness_prior)
            check(len(bp) == 2 and all(math.isfinite(v) for v in bp) and bp[1] > 0,
                  f"decode option brightness_prior must be (mean, std > 0) or None, "
                  f"got {self.brightness_prior!r}")
            object.__setattr__(self, "brightness_prior", bp)


def make_options(options: DecodeOptions | Mapping[str, Any] | None = None, **overrides: Any) -> DecodeOptions:
    """``DecodeOptions`` from keyword overrides (numpy scalars accepted), with a TypeError naming unknown
    options. ``options`` is the base (``DecodeOptions()`` when None); a dict of option names is read as more
    overrides (the keyword overrides win), as ``decode(..., options=dict(max_targets=5))`` passes it."""
    if isinstance(options, Mapping):
        overrides = {**options, **overrides}
        options = None
    elif options is not None and not isinstance(options, DecodeOptions):
        raise TypeError(f"decode option 'options' must be a DecodeOptions or a dict of option names (such as "
                        f"CSIST100K_OPTIONS), got {type(options).__name__}")
    known = {f.name for f in dataclasses.fields(DecodeOptions)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        close = {u: closest_name(u, known) for u in unknown}
        hint = "".join(f" (did you mean {m}?)" if len(unknown) == 1 else f"; {u}: did you mean {m}?"
                       for u, m in close.items() if m)
        raise TypeError(f"unknown decode option(s): {', '.join(unknown)}{hint}; known: {', '.join(sorted(known))}")
    # Values from numpy sweeps (np.int64, np.float32, np.bool_) become Python scalars before validation.
    overrides = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in overrides.items()}
    base = options if options is not None else DecodeOptions()
    return dataclasses.replace(base, **overrides)


def parse_option_items(items: list[str] | tuple[str, ...], source: str = "--decode_option") -> dict[str, Any]:
    """``["max_targets=5", "layout_starts=0"]`` (a command line's ``KEY=VALUE`` items) → decoder options.

    Values are Python literals (``8``, ``0.1``, ``None``, ``True``, ``(235, 8.66)``), else strings. The result is
    checked by :func:`make_options`; a malformed item, an unknown name or an invalid value raises one
    ``ValueError`` line naming ``source`` (an unknown name with the nearest known one).
    """
    import ast

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{source} {item!r}: expected KEY=VALUE, e.g. max_targets=5")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    try:
        make_options(**out)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {' '.join(str(e).split())}") from None
    return out
