"""Draws the README's headline figure from a trained run: ``python -m experiments.make_readme_figure``.

For a few test trajectories of the run's dataset it shows, zoomed on the targets: the 11×11 input frame with
the ground truth, the model's 33×33 map with its grid detections (the paper protocol), and the continuous
``trajectory`` decoding of the same frames (:mod:`seqcsist_jax.decode`). Everything drawn is computed here.

    python -m experiments.make_readme_figure --workdir=workdirs/quick --out=docs/headline.png
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from experiments.arg_parser import ArgumentParser
from experiments.cli import plain_text  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=plain_text(__doc__.splitlines()[0]))
    p.add_argument("--workdir", default="workdirs/quick", help="training run (its best checkpoint is used)")
    p.add_argument("--out", default="docs/headline.png")
    p.add_argument("--trajectories", type=int, nargs="+", default=[3, 17, 42], help="test trajectory indices")
    p.add_argument("--frame", type=int, default=10, help="frame shown (scored frames are 2..17)")
    args = p.parse_args(argv)

    from seqcsist_jax import evaluate as evaluation
    from seqcsist_jax import metrics
    from seqcsist_jax.data.splits import load_arrays
    from seqcsist_jax.decode import decode
    from seqcsist_jax.predictor import restore_run

    config, predictor, params, step = restore_run(args.workdir, "best")
    test = load_arrays(config.dataset, config.dataset.test_split)
    idx = np.asarray(args.trajectories)
    frames, targets = np.asarray(test["frames"])[idx], np.asarray(test["targets"])[idx]
    maps = evaluation.predict_maps(predictor.predict, params, frames, batch_size=len(idx), mesh=predictor.mesh)
    frame_index = predictor.frame_index(frames.shape[1])
    k = int(np.nonzero(frame_index == args.frame)[0][0])
    decoded = decode(frames, maps=maps, method="trajectory")

    c, size = 3, frames.shape[-1]
    lo = -((c - 1) // 2) / c - 0.5 / c
    hi = lo + size
    fig, axes = plt.subplots(len(idx), 3, figsize=(8.4, 2.75 * len(idx)), squeeze=False, constrained_layout=True)
    for row in range(len(idx)):
        gt = targets[row, args.frame]
        gt = gt[gt[:, 2] > 0]
        centre = gt[:, :2].mean(axis=0)
        grid = metrics.grid_to_detections(maps[row, k], threshold=config.eval.threshold)
        cont = decoded[row][args.frame]
        panels = [
            (frames[row, args.frame], (-0.5, size - 0.5, size - 0.5, -0.5), "gray", None,
             f"input frame ({len(gt)} targets)"),
            (maps[row, k], (lo, hi, hi, lo), "magma", grid, f"DeRefNet map: {len(grid)} grid detections"),
            (frames[row, args.frame], (-0.5, size - 0.5, size - 0.5, -0.5), "gray", cont,
             f"trajectory fit: {len(cont)} targets"),
        ]
        for col, (image, extent, cmap, dets, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, cmap=cmap, extent=extent, interpolation="nearest")
            ax.scatter(gt[:, 1], gt[:, 0], marker="+", s=140, c="lime", linewidths=1.6, label="truth")
            if dets is not None and len(dets):
                ax.scatter(dets[:, 1], dets[:, 0], marker="x", s=45, c="cyan", linewidths=1.3, label="detections")
            ax.set_xlim(centre[1] - 1.4, centre[1] + 1.4)
            ax.set_ylim(centre[0] + 1.4, centre[0] - 1.4)
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=6)
            if row == 0 and col == 2:
                ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"Test trajectories, frame {args.frame} (axes in pixels; quick CPU run, step {step})", fontsize=9)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
