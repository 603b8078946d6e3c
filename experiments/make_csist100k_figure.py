"""Draws the README's CSIST-100K figure: ``python -m experiments.make_csist100k_figure``.

Left: CSO-mAP of the continuous decoder (``refine`` with :data:`~seqcsist_jax.decode.CSIST100K_OPTIONS`) by
true count on the 10,000 test images, next to a fit started at the truth, read from the benchmark's results
(``experiments/benchmarks/results/bench_decode_csist100k_tfds.json``, written by ``python -m
experiments.benchmarks.bench_decode_csist100k --tag=_tfds``). Right: three test images decoded here, zoomed on
their host pixel, with the true targets and the decoded ones:

* a clipped 5-target image decoded to within 0.05 px of every target;
* a *byte-identical alternative*: the decoded fit puts a target >= 0.1 px from the truth, yet it meets every
  generator constraint and renders (``imaging.render`` + ``imaging.quantize``, the generator's pipeline) to
  exactly the stored bytes, so no decoder can tell it from the truth;
* a miss that the bytes do tell apart: the right count, a target >= 0.1 px off, and a fit whose rendering
  differs from the stored image (a wrong basin of the search).

    python -m experiments.make_csist100k_figure --out=docs/csist100k_decoding.png
"""

from __future__ import annotations

import json
import pathlib
from itertools import permutations
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from experiments.arg_parser import ArgumentParser
from experiments.cli import plain_text  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "benchmarks" / "results" / "bench_decode_csist100k_tfds.json"

#: Titles of the example panels, in :func:`pick_examples`' order.
EXAMPLE_TITLES = ("decoded (clipped, 5 targets)", "byte-identical alternative", "wrong basin")


def max_matched_error(detections: np.ndarray, count: np.ndarray, targets: np.ndarray,
                      num_targets: np.ndarray) -> np.ndarray:
    """``(N,)`` largest distance (px) between a decoded target and its true target under the matching that
    minimises that largest distance; ``inf`` where the decoded count differs from the true one.

    Args:
      detections: ``(N, K, >=2)`` decoded rows ``(x, y, …)``; rows ``>= count`` ignored.
      count: ``(N,)`` decoded targets per image.
      targets: ``(N, K', >=2)`` true rows; rows ``>= num_targets`` ignored.
      num_targets: ``(N,)`` true targets per image (at most 5 here: every permutation is tried).
    """
    out = np.full(len(count), np.inf)
    for i, (k, t) in enumerate(zip(np.asarray(count), np.asarray(num_targets))):
        if k != t:
            continue
        if k == 0:
            out[i] = 0.0
            continue
        p = np.asarray(detections[i, :k, :2], np.float64)
        q = np.asarray(targets[i, :k, :2], np.float64)
        d = np.sqrt(((p[:, None] - q[None]) ** 2).sum(-1))
        out[i] = min(d[np.arange(k), list(perm)].max() for perm in permutations(range(k)))
    return out


def pick_examples(error: np.ndarray, num_targets: np.ndarray, clipped: np.ndarray, alternative: np.ndarray,
                  renders_exactly: np.ndarray) -> list[int | None]:
    """Indices of the three example images (``None`` where no image qualifies), first qualifying image each:

    1. clipped, 5 true targets, every decoded target within 0.05 px (``error < 0.05``);
    2. ``alternative``: a byte-identical alternative (the fit reproduces the bytes, meets the generator's
       constraints, and is >= 0.1 px off), preferring the most targets;
    3. the right count, ``error >= 0.1`` px, and a fit that does not reproduce the bytes (``~renders_exactly``),
       preferring the most targets.

    All arguments are ``(N,)``; ``error`` from :func:`max_matched_error`.
    """
    error, n = np.asarray(error), np.asarray(num_targets)

    def first(mask: np.ndarray) -> int | None:
        idx = np.flatnonzero(mask)
        if not len(idx):
            return None
        return int(idx[np.argmax(n[idx])])  # argmax keeps the first of the largest count

    success = np.asarray(clipped) & (n == 5) & (error < 0.05)
    wrong = np.isfinite(error) & (error >= 0.1) & ~np.asarray(renders_exactly)
    return [first(success), first(np.asarray(alternative)), first(wrong)]


def draw(images: np.ndarray, targets: np.ndarray, num_targets: np.ndarray, detections: np.ndarray,
         count: np.ndarray, examples: list[int | None], error: np.ndarray, bench: dict[str, Any],
         out: pathlib.Path, decoded_images: int) -> pathlib.Path:
    """Writes the figure to ``out`` (PNG) and returns it.

    Args:
      images: ``(N, S, S)`` stored 8-bit images; ``targets (N, K, 3)`` and ``num_targets (N,)`` the truth;
        ``detections (N, K, >=2)`` and ``count (N,)`` the decoded targets.
      examples: three indices (or ``None``) from :func:`pick_examples`; ``error (N,)`` from
        :func:`max_matched_error`.
      bench: the benchmark's results (its ``diagnostics`` give the CSO-mAP by true count of the decoder and of
        the truth-started fit, and ``rows[0]`` the decoder's CSO-mAP).
      decoded_images: how many test images were decoded to pick the examples (named in the title).
    """
    diag = bench["diagnostics"]
    counts = sorted(diag["mAP_by_true_count"], key=int)
    ours = [diag["mAP_by_true_count"][c] for c in counts]
    truth = [diag["truth_start_by_true_count"][c] for c in counts]
    fig, axes = plt.subplots(1, 4, figsize=(13.0, 3.6), constrained_layout=True,
                             gridspec_kw={"width_ratios": [1.35, 1, 1, 1]})
    ax = axes[0]
    x = np.arange(len(counts))
    ax.bar(x - 0.2, ours, 0.4, label=f"decoder ({bench['rows'][0]['mAP']:.2f} overall)", color="tab:blue")
    ax.bar(x + 0.2, truth, 0.4, label=f"fit started at the truth ({diag['truth_start']['mAP']:.2f})",
           color="tab:gray")
    for xi, v in zip(x, ours):
        ax.text(xi - 0.2, v + 0.4, f"{v:.1f}", ha="center", fontsize=6)
    ax.set_xticks(x, [str(c) for c in counts])
    ax.set_xlabel("true targets in the image", fontsize=8)
    ax.set_ylabel("CSO-mAP", fontsize=8)
    ax.set_ylim(min(ours + truth) - 8, 101)
    ax.set_title(f"CSIST-100K test split ({bench['images']:,} images)", fontsize=8)
    ax.legend(fontsize=6, loc="lower left")
    ax.tick_params(labelsize=7)
    size = images.shape[-1]
    for col, (idx, title) in enumerate(zip(examples, EXAMPLE_TITLES), start=1):
        ax = axes[col]
        if idx is None:
            ax.set_axis_off()
            ax.set_title(f"{title}: none among the decoded images", fontsize=8)
            continue
        k = int(num_targets[idx])
        gt = np.asarray(targets[idx, :k], np.float64)
        det = np.asarray(detections[idx, : int(count[idx])], np.float64)
        ax.imshow(images[idx], cmap="gray", extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="nearest",
                  vmin=0, vmax=255)
        ax.scatter(gt[:, 1], gt[:, 0], marker="+", s=160, c="lime", linewidths=1.6, label="truth")
        ax.scatter(det[:, 1], det[:, 0], marker="x", s=55, c="cyan", linewidths=1.4, label="decoded")
        host = np.floor(gt[0, :2] + 0.5)
        ax.set_xlim(host[1] - 1.0, host[1] + 1.0)
        ax.set_ylim(host[0] + 1.0, host[0] - 1.0)
        ax.axhline(host[0] - 0.5, c="orange", lw=0.6)
        ax.axhline(host[0] + 0.5, c="orange", lw=0.6)
        ax.axvline(host[1] - 0.5, c="orange", lw=0.6)
        ax.axvline(host[1] + 0.5, c="orange", lw=0.6)
        clipped = int((images[idx] >= 255).sum())
        ax.set_title(f"{title}\ntest image {idx}: {k} targets, {clipped} pixel{'s' * (clipped != 1)} at 255\n"
                     f"worst decoded error {error[idx]:.3f} px", fontsize=7)
        ax.tick_params(labelsize=6)
        if col == 1:
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"Continuous decoding on CSIST-100K (refine, CSIST100K_OPTIONS). Examples: the first qualifying "
                 f"images among the first {decoded_images:,} test images; orange: the host pixel", fontsize=8)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=plain_text(__doc__.splitlines()[0]))
    p.add_argument("--images", type=int, default=2000, help="first test images decoded to pick the examples")
    p.add_argument("--results", type=pathlib.Path, default=RESULTS, help="bench_decode_csist100k results (JSON)")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/csist100k_decoding.png"))
    args = p.parse_args(argv)
    if args.images < 1:
        p.error(f"--images must be at least 1, got {args.images}")
    try:
        bench = json.loads(args.results.read_text())
        bench["diagnostics"]["mAP_by_true_count"], bench["diagnostics"]["truth_start_by_true_count"]
    except (OSError, ValueError, KeyError) as e:
        p.error(f"--results {args.results}: expected the JSON that python -m experiments.benchmarks."
                f"bench_decode_csist100k --tag=_tfds writes ({type(e).__name__}: {e})")

    from experiments.benchmarks.bench_decode_csist100k import (PRESET, byte_identical_alternatives,
                                                               load_test_split, run)
    from seqcsist_jax import imaging

    data, _ = load_test_split(args.images, seed=0)
    dec, seconds, _, _ = run(PRESET, data)
    det, cnt = dec.detections[:, 0], dec.count[:, 0]
    error = max_matched_error(det, cnt, data["targets"], data["num_targets"])
    alternative = byte_identical_alternatives(dec, data)
    fit = np.where((np.arange(det.shape[1]) < cnt[:, None])[..., None], det[..., :3].astype(np.float64), 0.0)
    renders = np.all(np.asarray(imaging.quantize(np.asarray(imaging.render(fit, size=11, sigma=0.5)), clip=True))
                     == data["images"], axis=(1, 2))
    examples = pick_examples(error, data["num_targets"], data["clipped"], alternative, renders)
    out = draw(data["images"], data["targets"], data["num_targets"], det, cnt, examples, error, bench, args.out,
               len(cnt))
    print(f"decoded {len(cnt)} test images in {seconds:.1f} s; examples {examples}; wrote {out}")


if __name__ == "__main__":
    main()
