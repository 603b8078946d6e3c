"""Evaluation of a trained method: predicted maps → detections → CSO-mAP, exports and figures.

The paper protocol (SPEC §4): each predicted 33×33 map is thresholded at 70 and every remaining cell is a
detection (``decode="grid"``); only frames 2..T-3 (2..17 of a 20-frame trajectory) are scored, for every
method. Single-image datasets (CSIST-100K, SPEC §9) are one-frame trajectories scored by the same code with
``eval.scored_margin = 0`` and threshold 50; maps of sub-pixel division ``c`` are ``11c × 11c`` and ``c`` is
read from their shape. Methods that predict every frame also get the toolkit's PSNR/SSIM of their maps against
the label grids (:mod:`seqcsist_jax.image_quality`). Other decoders (``peak``, ``refine``, ``trajectory`` —
:mod:`seqcsist_jax.decode`) give continuous
positions and are reported separately, never mixed into the paper-comparison numbers.

Outputs of :func:`evaluate_run` under ``{workdir}/eval/{split}[-{decode}]/``:
``metrics.json`` (CSO-mAP, AP05…AP25, diagnostics, params, FPS), ``detections.csv``
(trajectory, frame, x, y, brightness, score), ``pr_curves.png``, ``samples.png`` and ``loss_curves.png``.
"""

from __future__ import annotations

import csv
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from seqcsist_jax import metrics as metrics_lib
from seqcsist_jax.protocol import DECODERS, METRIC_KEYS, SCORED_MARGIN, scored_frame_range, scored_frames
from seqcsist_jax.fileio import atomic_path, atomic_write, atomic_write_json
from seqcsist_jax.suggest import did_you_mean

PAPER_COLUMNS = METRIC_KEYS


def padded_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """Trajectories per :func:`predict_maps` call: ``batch_size`` (at least 1) rounded up to a multiple of the
    mesh size."""
    return -(-max(int(batch_size), 1) // mesh.size) * mesh.size


def predict_maps(
    predict: Callable, params: Any, frames: np.ndarray, *, batch_size: int, mesh: jax.sharding.Mesh,
    batch_seconds: list[float] | None = None,
) -> np.ndarray:
    """Runs ``predict(params, frames_batch)`` over all trajectories.

    Batches are padded to a multiple of the mesh size so one compiled shape serves the whole split; with
    several processes each feeds its slice of every batch and the results are gathered on all of them.

    Args:
      frames: ``(N, T, 11, 11)`` raw grey values (any dtype; cast to float32).
      batch_seconds: when given, the wall seconds of each batch (prediction and transfer back to the host)
        are appended to it, in order; a padded last batch costs what a full one does.

    Returns:
      ``(N, T', 33, 33)`` float32 maps.
    """
    n = len(frames)
    per = padded_batch_size(batch_size, mesh)
    pc, pi = jax.process_count(), jax.process_index()
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    outputs = []
    for start in range(0, n, per):
        tic = time.perf_counter()
        chunk = np.asarray(frames[start : start + per], np.float32)
        real = len(chunk)
        if real < per:  # pad with copies of the last trajectory; dropped below
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], per - real, axis=0)])
        local = chunk[pi * per // pc : (pi + 1) * per // pc]
        out = predict(params, jax.make_array_from_process_local_data(sharding, local))
        out = np.asarray(multihost_utils.process_allgather(out, tiled=True))
        outputs.append(out[:real])
        if batch_seconds is not None:
            batch_seconds.append(time.perf_counter() - tic)
    return np.concatenate(outputs).astype(np.float32)


def _frame_targets(arrays: Mapping[str, np.ndarray], frames: np.ndarray) -> np.ndarray:
    return np.asarray(arrays["targets"])[:, frames]


def score_maps(
    maps: np.ndarray,
    frame_index: np.ndarray,
    arrays: Mapping[str, np.ndarray],
    *,
    threshold: float = 70.0,
    decode: str = "grid",
    decode_options: Mapping[str, Any] | None = None,
    margin: int = SCORED_MARGIN,
    ties: str = "input_order",
) -> tuple[dict, list[list[np.ndarray]]]:
    """CSO-mAP of predicted maps on the scored frames.

    Args:
      maps: ``(N, T', 11c, 11c)`` predictions for input frames ``frame_index (T',)`` (33×33 for c = 3; ``c`` is
        ``maps`` side / frame side).
      arrays: the split (``frames (N, T, 11, 11)``, ``targets (N, T, MAXT, 3)``).
      threshold: brightness threshold of the grid decoder (70 for SeqCSIST).
      decode: ``grid`` (paper protocol), ``peak``, ``refine`` or ``trajectory``.
      margin: frames ``margin..T-1-margin`` are scored (2 for SeqCSIST; 0 scores every frame).
      ties: ranking of equal scores, ``"input_order"`` (the published protocol) or ``"grouped"`` (tie-aware).

    Returns:
      ``(metrics, detections)``: metrics from :func:`metrics.cso_map` plus diagnostics; detections a list over
      trajectories of lists over scored frames of ``(M, 4)`` rows ``(x, y, brightness, score)``.
    """
    if decode not in DECODERS:
        raise ValueError(f"decode must be one of {DECODERS}, got {decode!r}{did_you_mean(decode, DECODERS)}")
    frames = np.asarray(arrays["frames"])
    n, t = frames.shape[:2]
    c = subpixel_division(maps, frames)
    frame_index = np.asarray(frame_index)
    first, last = scored_frame_range(t, margin)
    scored = np.arange(first, last + 1)
    missing = np.setdiff1d(scored, frame_index)
    if missing.size:
        raise ValueError(f"the method predicts frames {frame_index.tolist()} but frames {missing.tolist()} are scored")
    if decode == "grid":
        position = {int(f): i for i, f in enumerate(frame_index)}
        selected = maps[:, [position[int(f)] for f in scored]]
        flat = metrics_lib.grids_to_detections(selected.reshape(-1, *maps.shape[-2:]), threshold=threshold, c=c)
        # grid detections carry the cell value as both brightness and score
        flat = [np.concatenate([d[:, :2], d[:, 2:3], d[:, 2:3]], axis=1) for d in flat]
        detections = [flat[i * len(scored) : (i + 1) * len(scored)] for i in range(n)]
    else:
        from seqcsist_jax.decode import decode as decode_fn

        if np.array_equal(frame_index, np.arange(t)) or np.array_equal(frame_index, np.arange(2, t - 2)):
            seeds = maps  # the layouts decode() understands: all frames, or DeRefNet's centre frames
        else:
            seeds = np.zeros((n, t) + maps.shape[-2:], np.float32)
            seeds[:, frame_index] = maps
        options = dict(decode_options or {})
        if c != 3:  # c = 3 is the decoders' default; keeps SeqCSIST calls unchanged
            options.setdefault("c", c)
        decoded = decode_fn(frames, maps=seeds, method=decode, **options)
        detections = [[decoded[i][f] for f in scored] for i in range(n)]
    targets = _frame_targets(arrays, scored).reshape(n * len(scored), *np.asarray(arrays["targets"]).shape[2:])
    flat_dets = [d for traj in detections for d in traj]
    result = metrics_lib.cso_map(flat_dets, list(targets), ties=ties)
    result.pop("scores", None)  # the pooled ranking: large and rarely needed in reports
    result.update(metrics_lib.detection_diagnostics(flat_dets, list(targets)))
    result["decode"] = decode
    result["num_frames_scored"] = len(flat_dets)
    return result, detections


def subpixel_division(maps: np.ndarray, frames: np.ndarray) -> int:
    """``c`` of ``maps (..., 11c, 11c)`` predicted for ``frames (..., 11, 11)``.

    Raises:
      ValueError: the map side is not a multiple of the frame side.
    """
    side, frame_side = int(np.shape(maps)[-1]), int(np.shape(frames)[-1])
    if side % frame_side or np.shape(maps)[-2] != side:
        raise ValueError(f"predicted maps {tuple(np.shape(maps)[-2:])} are not (11c, 11c) maps of "
                         f"{frame_side}×{frame_side} frames")
    return side // frame_side


def map_quality(maps: np.ndarray, frame_index: np.ndarray, arrays: Mapping[str, np.ndarray], *,
                margin: int = SCORED_MARGIN, collision: str = "sum") -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of the predicted maps of the scored frames against their label grids, as the
    GrokCSO toolkit reports them (:func:`seqcsist_jax.image_quality.psnr` / ``ssim``; 8-bit conversion first).

    Args:
      maps: ``(N, T', 11c, 11c)`` predictions for input frames ``frame_index (T',)``.
      arrays: the split (``frames (N, T, 11, 11)``, ``targets (N, T, MAXT, 3)``).
      margin: frames ``margin..T-1-margin`` are scored.
      collision: label-grid rule (:func:`seqcsist_jax.imaging.targets_to_grid`).

    Returns:
      ``{"psnr": dB, "ssim": ...}`` averaged over the ``N × scored`` maps.
    """
    from seqcsist_jax import image_quality, imaging

    frames = np.asarray(arrays["frames"])
    c = subpixel_division(maps, frames)
    scored = scored_frames(frames.shape[1], margin)
    position = {int(f): i for i, f in enumerate(np.asarray(frame_index))}
    pred = np.asarray(maps)[:, [position[int(f)] for f in scored]]
    labels = imaging.targets_to_grid(_frame_targets(arrays, scored), c=c, size=frames.shape[-1], collision=collision)
    labels = np.asarray(labels, np.float64)
    return {"psnr": float(np.mean(image_quality.psnr(pred, labels))),
            "ssim": float(np.mean(image_quality.ssim(pred, labels)))}


def paper_row(name: str, metrics: Mapping[str, Any], params: int | None = None, fps: float | None = None) -> str:
    """One Markdown row in the layout of the paper's table: method, CSO-mAP, AP05…AP25 (×100), FPS, params,
    then PSNR (dB) and SSIM when ``metrics`` holds them (single-image benchmarks; header :func:`table_header`)."""
    cells = [name] + [f"{100 * float(metrics[k]):.2f}" for k in PAPER_COLUMNS]
    cells.append("–" if fps is None else f"{fps:,.0f}")
    cells.append("–" if params is None else _format_params(params))
    if metrics.get("psnr") is not None:
        cells += [f"{float(metrics['psnr']):.2f}", f"{float(metrics['ssim']):.4f}"]
    return "| " + " | ".join(cells) + " |"


PAPER_HEADER = "| method | CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 | FPS | params |\n|---|---|---|---|---|---|---|---|---|"
QUALITY_HEADER = ("| method | CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 | FPS | params | PSNR | SSIM |\n"
                  "|---|---|---|---|---|---|---|---|---|---|---|")


def table_header(metrics: Mapping[str, Any]) -> str:
    """The Markdown header that matches :func:`paper_row` for ``metrics`` (with PSNR/SSIM columns if present)."""
    return QUALITY_HEADER if metrics.get("psnr") is not None else PAPER_HEADER


def _format_params(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} K"
    return str(n)


def measure_fps(predict: Callable, params: Any, frames: np.ndarray, *, batch_size: int, mesh, repeats: int = 1) -> float:
    """Predicted frames per second of ``predict`` on ``frames (N, T, 11, 11)`` after one warm-up call.

    Counts output maps (16 per 20-frame trajectory for DeRefNet, 20 for single-frame methods), as the model
    benchmark does; the host-side batching is included.
    """
    predict_maps(predict, params, frames[:batch_size], batch_size=batch_size, mesh=mesh)  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        maps = predict_maps(predict, params, frames, batch_size=batch_size, mesh=mesh)
    elapsed = (time.perf_counter() - start) / repeats
    return maps.shape[0] * maps.shape[1] / elapsed


def fps_from_batches(batch_seconds: Sequence[float], num_trajectories: int, batch_size: int,
                     maps_per_trajectory: int) -> float | None:
    """Frames per second from the per-batch times of one :func:`predict_maps` pass, or None when it had no
    timed batch to use.

    The first batch is the warm-up (it may compile) and a padded last batch does a full batch's work for
    fewer maps, so only the full batches after the first count: the same quantity :func:`measure_fps`
    measures, taken from the evaluation pass itself instead of a second prediction run.

    Args:
      batch_seconds: wall seconds per batch, in order (``predict_maps(..., batch_seconds=...)``).
      num_trajectories: N of that pass.
      batch_size: trajectories per batch (after rounding up to the mesh size).
      maps_per_trajectory: output maps per trajectory (T').
    """
    full = num_trajectories // batch_size
    timed = list(batch_seconds[1:full])
    if not timed or sum(timed) <= 0:
        return None
    return len(timed) * batch_size * maps_per_trajectory / sum(timed)


def export_detections(path: pathlib.Path, detections: Sequence[Sequence[np.ndarray]], trajectory_ids,
                      frame_numbers: Sequence[int]) -> None:
    """CSV with one row per detection: trajectory, frame, x, y, brightness, score."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trajectory", "frame", "x", "y", "brightness", "score"])
        for tid, traj in zip(trajectory_ids, detections):
            for frame, dets in zip(frame_numbers, traj):
                for x, y, b, s in np.asarray(dets).reshape(-1, 4):
                    w.writerow([int(tid), int(frame), f"{x:.6f}", f"{y:.6f}", f"{b:.4f}", f"{s:.6f}"])


def export_public_predictions(
    directory: pathlib.Path,
    detections: Sequence[Sequence[np.ndarray]],
    frame_numbers: np.ndarray,
    scored: Sequence[int],
    size: int = 11,
    layout: Any = None,
) -> int:
    """Writes predictions as public-layout annotations ``{directory}/annotation/COS{N}.xml`` (SPEC §3), or with
    ``layout=CSIST100K_LAYOUT`` as CSIST-100K's ``{directory}/Annotations/CSO{N}.xml`` (SPEC §9).

    One file per scored frame, one ``<object>`` per detection with its ``(xc, yc, brightness)``; ``N`` is the
    frame's number in the source data (``frame_numbers (N_traj, T)``), so the files line up with the public
    release's images. Detections outside the image are clipped to its border. Returns the number of files.
    """
    from seqcsist_jax.data.public_format import SEQCSIST_LAYOUT, annotation_xml

    layout = SEQCSIST_LAYOUT if layout is None else layout
    out = pathlib.Path(directory) / layout.annotation_dir
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for traj, numbers in zip(detections, np.asarray(frame_numbers)):
        for k, frame in enumerate(scored):
            dets = np.asarray(traj[k], np.float64).reshape(-1, 4)[:, :3].copy()
            dets[:, :2] = np.clip(dets[:, :2], -0.5, size - 0.5)
            number = int(numbers[frame])
            atomic_write(out / f"{layout.annotation_prefix}{number}.xml",
                         annotation_xml(number, dets, size=size, layout=layout), fsync=False)
            written += 1
    return written


def _json_ready(metrics: Mapping[str, Any]) -> dict:
    out = {}
    for k, v in metrics.items():
        if k == "pr_curves":
            out[k] = {t: {a: np.asarray(b).tolist() for a, b in c.items()} for t, c in v.items()}
        elif isinstance(v, (np.ndarray, np.generic)):
            out[k] = v.tolist()
        else:
            out[k] = v
    return out


class EvalConfigError(ValueError):
    """A ``config.eval`` value the evaluation cannot use (one line naming the key; raised before anything runs)."""


def check_eval_config(eval_config: Mapping[str, Any]) -> None:
    """Raises :class:`EvalConfigError` for a ``config.eval`` value that would score silently wrong or crash late.

    ``threshold`` must be a finite number >= 0 (a NaN threshold drops every detection: CSO-mAP 0 with no error;
    a negative one scores negative map cells as targets),
    ``batch_size`` a positive whole number, ``num_figure_samples`` and ``scored_margin`` whole numbers >= 0,
    ``decode`` one of :data:`~seqcsist_jax.protocol.DECODERS` and ``ties`` ``input_order`` or ``grouped``.
    Missing keys take their defaults and are not checked.
    """
    def number(key: str) -> Any:
        value = eval_config.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise EvalConfigError(f"config.eval.{key} must be a number, got {value!r}")
        return value

    def whole(key: str, minimum: int) -> None:
        value = number(key)
        if not np.isfinite(value) or value != int(value) or value < minimum:
            raise EvalConfigError(f"config.eval.{key} must be a whole number >= {minimum}, got {value!r}")

    if "threshold" in eval_config and not (np.isfinite(number("threshold")) and number("threshold") >= 0):
        # A negative threshold is no brightness: it would score the maps' negative cells as targets.
        raise EvalConfigError(f"config.eval.threshold must be a finite brightness >= 0 (SPEC §4.1: 70 for SeqCSIST, "
                              f"50 for CSIST-100K), got {eval_config.get('threshold')!r}")
    for key, minimum in (("batch_size", 1), ("num_figure_samples", 0), ("scored_margin", 0)):
        if key in eval_config:
            whole(key, minimum)
    decode = eval_config.get("decode", "grid")
    if decode not in (None, "", *DECODERS):
        raise EvalConfigError(f"config.eval.decode must be one of {', '.join(DECODERS)}, got {decode!r}"
                              f"{did_you_mean(str(decode), DECODERS)}")
    if eval_config.get("ties", "input_order") not in ("input_order", "grouped"):
        raise EvalConfigError(f"config.eval.ties must be 'input_order' or 'grouped', got {eval_config.get('ties')!r}")
    options = eval_config.get("decode_options")
    if options:  # checked now, not after a whole training at its final test
        check_decode_options(options, "config.eval.decode_options")


def check_decode_options(options: Any, source: str) -> None:
    """Raises :class:`EvalConfigError` (one line naming ``source``) unless ``options`` is a mapping of valid
    continuous-decoder options (:func:`seqcsist_jax.decode.make_options`: known names, valid values)."""
    if hasattr(options, "to_dict"):
        options = options.to_dict()
    if not isinstance(options, Mapping):
        raise EvalConfigError(f"{source} must be a mapping of decoder options (e.g. {{'max_targets': 5}}), got "
                              f"{type(options).__name__}")
    from seqcsist_jax.decode import make_options

    try:
        make_options(**options)
    except (TypeError, ValueError) as e:
        raise EvalConfigError(f"{source}: {' '.join(str(e).split())}") from None


def evaluate_run(
    predict: Callable,
    params: Any,
    arrays: Mapping[str, np.ndarray],
    eval_config: Mapping[str, Any],
    *,
    frame_index: np.ndarray | Callable[[int], np.ndarray],
    mesh: jax.sharding.Mesh,
    name: str = "model",
    split: str = "test",
    decode: str | None = None,
    decode_options: Mapping[str, Any] | None = None,
    out_dir: str | pathlib.Path | None = None,
    step: int | None = None,
    export_public: bool = False,
    metrics_log: str | pathlib.Path | None = None,
    measure_speed: bool | None = None,
) -> dict:
    """Scores ``params`` on a split: the one evaluation path (training's validation, ``experiments.evaluate``,
    ``compare``, the benchmarks and the README figure all call it).

    Args:
      predict: ``predict(params, frames (B, T, 11, 11) sharded over mesh) -> (B, T', 33, 33)`` (jitted).
      params: the method's parameters.
      arrays: the split (``frames (N, T, 11, 11)``, ``targets (N, T, MAXT, 3)``; optional ``trajectory_id``,
        ``frame_numbers``).
      eval_config: ``config.eval``: ``threshold``, ``batch_size``, ``num_figure_samples``, ``decode`` (used when
        ``decode`` is None) and optionally ``scored_margin`` (default 2, SPEC §4.6; 0 for single images),
        ``image_quality`` (PSNR/SSIM of the maps; default: when ``scored_margin`` is 0) and ``collision``
        (label-grid rule of those maps, default ``"sum"``).
      frame_index: input frames of the outputs, ``(T',)`` or a function of T (``Method.frame_index``).
      mesh: the ``('data',)`` mesh ``predict`` was jitted for.
      name: the method's label in the table row.
      decode: ``grid`` (paper protocol) or a continuous decoder (see :mod:`seqcsist_jax.decode`).
      out_dir: where to write ``metrics.json``, ``detections.csv`` and the figures (None: write nothing).
      export_public: also write the detections as public-layout ``public/annotation/COS{N}.xml`` (CSIST-100K
        images, i.e. one-frame trajectories: ``public/Annotations/CSO{N}.xml``).
      metrics_log: a run's ``metrics.jsonl`` for the loss-curve figure.
      measure_speed: report inference FPS (default: when writing outputs), timed on this pass's full batches
        after the first (:func:`fps_from_batches`).

    Returns:
      The metrics dict (CSO-mAP, AP05…AP25, diagnostics, ``params``, ``fps``, ``table_row``; ``psnr``/``ssim``
      when the method predicts every scored frame and image quality is on) without PR curves (those are in the
      JSON file).

    Raises:
      EvalConfigError: an unusable ``eval_config`` value (:func:`check_eval_config`; before anything runs).
      WorkdirLockedError: another process is writing ``out_dir`` (checked before anything is computed).
    """
    check_eval_config(eval_config)
    lock = None
    if out_dir is not None and jax.process_index() == 0:
        from seqcsist_jax.run_lock import WorkdirLock

        # Two evaluations writing one folder would interleave their files; the second is refused at once.
        lock = WorkdirLock(out_dir, holder="another evaluation writing there",
                           hint="wait for it to finish (its outputs replace this folder's)").acquire()
    try:
        return _evaluate_run(predict, params, arrays, eval_config, frame_index=frame_index, mesh=mesh, name=name,
                             split=split, decode=decode, decode_options=decode_options, out_dir=out_dir, step=step,
                             export_public=export_public, metrics_log=metrics_log, measure_speed=measure_speed)
    finally:
        if lock is not None:
            lock.release()


def _evaluate_run(predict, params, arrays, eval_config, *, frame_index, mesh, name, split, decode, decode_options,
                  out_dir, step, export_public, metrics_log, measure_speed) -> dict:
    from seqcsist_jax import plots
    from seqcsist_jax.model_stats import count_params

    decode = decode or eval_config.get("decode", "grid") or "grid"
    margin = int(eval_config.get("scored_margin", SCORED_MARGIN))
    frames = np.asarray(arrays["frames"])
    index = np.asarray(frame_index(frames.shape[1]) if callable(frame_index) else frame_index)
    batch_size = int(eval_config.get("batch_size", 8))
    if measure_speed is None:
        measure_speed = out_dir is not None
    batch_seconds: list[float] = []
    maps = predict_maps(predict, params, frames, batch_size=batch_size, mesh=mesh, batch_seconds=batch_seconds)
    fps = None
    if measure_speed:
        per = padded_batch_size(batch_size, mesh)
        fps = fps_from_batches(batch_seconds, len(frames), per, maps.shape[1])
        if fps is None:  # too few trajectories for a timed batch after the warm-up: time a second pass
            fps = float(measure_fps(predict, params, frames[: per * 4], batch_size=batch_size, mesh=mesh))
    start = time.perf_counter()
    result, detections = score_maps(maps, index, arrays, threshold=float(eval_config.get("threshold", 70.0)),
                                    decode=decode, decode_options=decode_options, margin=margin,
                                    ties=str(eval_config.get("ties", "input_order")))
    result["decode_seconds"] = time.perf_counter() - start
    result["threshold"] = float(eval_config.get("threshold", 70.0))
    quality = eval_config.get("image_quality", None)
    if quality is None:
        quality = margin == 0  # the single-image benchmarks report PSNR/SSIM (GrokCSO's toolkit)
    if quality and np.isin(scored_frames(frames.shape[1], margin), index).all():  # the method predicts them all
        result.update(map_quality(maps, index, arrays, margin=margin,
                                  collision=str(eval_config.get("collision", "sum"))))
    result["params"] = int(count_params(params))
    result["fps"] = fps
    result["split"] = split
    result["num_trajectories"] = int(len(frames))
    if step is not None:
        result["step"] = int(step)
    result["table_row"] = paper_row(name, result, result["params"], fps)

    if out_dir is not None and jax.process_index() == 0:
        out = pathlib.Path(out_dir)
        # metrics.json is written last and removed first: when it exists, every file next to it is of the
        # same evaluation (a killed or failed write leaves no metrics.json, and the rerun rewrites them all).
        (out / "metrics.json").unlink(missing_ok=True)
        # ... and files an earlier evaluation wrote that this one does not rewrite go too (its public/ export,
        # whose files for other frames would otherwise outlive it; its loss figure)
        shutil.rmtree(out / "public", ignore_errors=True)
        if metrics_log is None:
            (out / "loss_curves.png").unlink(missing_ok=True)
        first, last = scored_frame_range(frames.shape[1], margin)
        ids = arrays.get("trajectory_id", np.arange(len(frames)))
        export_detections(out / "detections.csv", detections, ids, range(first, last + 1))
        if export_public:
            t = frames.shape[1]
            numbers = arrays.get("frame_numbers")
            if numbers is None:  # generated data: number frames consecutively from 0 like the simulator's CLI
                numbers = np.asarray(ids)[:, None] * t + np.arange(t)
            from seqcsist_jax.data.public_format import CSIST100K_LAYOUT, SEQCSIST_LAYOUT

            # one-frame trajectories are CSIST-100K images (splits.load_arrays): that release's layout
            layout = CSIST100K_LAYOUT if t == 1 else SEQCSIST_LAYOUT
            export_public_predictions(out / "public", detections, numbers, range(first, last + 1),
                                      size=frames.shape[-1], layout=layout)
        plots.plot_pr_curves(result, out / "pr_curves.png", title=f"{name} — {split} ({decode} decoding)")
        plots.plot_samples(arrays, maps, index, detections, out / "samples.png",
                           num=int(eval_config.get("num_figure_samples", 4)),
                           threshold=float(eval_config.get("threshold", 70.0)), first_scored=margin,
                           decode=decode)
        if metrics_log is not None:
            plots.plot_loss_curves(pathlib.Path(metrics_log), out / "loss_curves.png")
        atomic_write_json(out / "metrics.json", _json_ready(result), strict=True)  # rmse etc. undefined: null
    return {k: v for k, v in result.items() if k != "pr_curves"}


#: Below this many training steps an evaluation without detection is the expected outcome (the ``:smoke``
#: configs train 6), not a sign of a collapsed run.
SHORT_RUN_STEPS = 100


def is_short_run(steps: int | None) -> bool:
    """Whether weights trained ``steps`` steps (None: unknown) are too young to be expected to detect anything."""
    return steps is not None and 0 <= steps < SHORT_RUN_STEPS


def no_detection_note(metrics: Mapping[str, Any], threshold: float, steps: int | None = None) -> str:
    """The hint for an evaluation that found no detection at all although the split has targets ('' otherwise):
    no map cell reached ``threshold``, i.e. the model outputs nothing yet, or its run collapsed. ``steps``, the
    training steps behind the scored weights where known, tells the two apart for runs too short to detect."""
    if metrics.get("num_detections", 1) or not metrics.get("num_gt", 0):
        return ""
    if is_short_run(steps):
        plural = "" if steps == 1 else "s"
        return (f"no map cell reached the threshold {threshold:g}: after {steps} training step{plural} the model "
                "outputs nothing yet, as expected of a run this short (short runs such as the :smoke configs "
                "check the machinery, not the score)")
    return (f"no map cell reached the threshold {threshold:g}: the model outputs nothing yet; if this persists the "
            "run has collapsed (the short CPU recipes do for some seeds, see README 'Quickstart'; try another "
            "--config.seed, a lower --config.optimizer.learning_rate or --config.optimizer.grad_clip_norm)")


def eval_dir(workdir: str | pathlib.Path, split: str, decode: str = "grid") -> pathlib.Path:
    """``{workdir}/eval/{split}`` for the paper protocol, ``{workdir}/eval/{split}-{decode}`` otherwise."""
    return pathlib.Path(workdir) / "eval" / (split if decode == "grid" else f"{split}-{decode}")
