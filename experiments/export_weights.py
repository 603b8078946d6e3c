"""Publishes a finished run's best checkpoint as ``seqcsist_jax/weights/<name>.{npz,json}`` with its model card.

    python -m experiments.export_weights --workdir=/tmp/run --name=derefnet_quick \
        --command="python -m experiments.train --config=derefnet_quick" [--wall_time_s=2700] \
        [--hardware="one NVIDIA H200"] [--note=...]

The card records the run config, data config, protocol, seed, commit, validation/test CSO-mAP (from the run's
``result.json`` and ``metrics.jsonl``), the wall time (default: the training wall time the run recorded, summed
over the calls that resumed it) and the hardware it trained on (default: this machine, which is right only when
the export runs where the training did).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess


def _commit(repo: pathlib.Path = pathlib.Path(__file__).resolve().parents[1]) -> str:
    """HEAD of ``repo``, with ``-dirty`` when tracked files differ from it (the weights then came from code that
    no commit holds); ``unknown`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=repo).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], capture_output=True, cwd=repo).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty == 1 else "")


def main(argv: list[str] | None = None) -> pathlib.Path:
    """Exports the weights (see the module docstring); returns the ``.npz`` path written."""
    parser = argparse.ArgumentParser(prog="python -m experiments.export_weights",
                                     description=__doc__.split("\n")[0].replace("``", "`"))
    parser.add_argument("--workdir", required=True, help="a finished training run's directory")
    parser.add_argument("--name", required=True, help="the weights' name (NAME.npz and NAME.json)")
    parser.add_argument("--command", required=True, help="the command that trained the run")
    parser.add_argument("--wall_time_s", type=float, default=None,
                        help="training wall time (default: what the run recorded in result.json)")
    parser.add_argument("--hardware", default=None, help="where it trained (default: this machine)")
    parser.add_argument("--checkpoint", default="best", help="best, latest or a step number (default: best)")
    parser.add_argument("--commit", default=None,
                        help="commit the run was trained at (default: HEAD, with -dirty for uncommitted changes)")
    parser.add_argument("--note", default="", help="a free-text note for the model card")
    parser.add_argument("--weights_dir", default=None, help="where to write (default: seqcsist_jax/weights)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing weights of the same name")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir)
    from seqcsist_jax.workdir import config_path

    if not config_path(workdir).exists():
        parser.error(f"--workdir={workdir}: no config.json there; expected a training run's directory "
                     "(python -m experiments.train --workdir=...)")
    from seqcsist_jax.pretrained import WEIGHTS_DIR

    target = pathlib.Path(args.weights_dir or WEIGHTS_DIR) / f"{args.name}.npz"
    if target.exists() and not args.overwrite:
        parser.error(f"--name={args.name}: {target} exists already; pass --overwrite to replace it, or choose "
                     "another name")

    import jax

    from seqcsist_jax import pretrained
    from seqcsist_jax.predictor import restore_run

    config, predictor, params, step = restore_run(str(workdir), args.checkpoint)
    result = json.loads((workdir / "result.json").read_text()) if (workdir / "result.json").exists() else {}
    evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [{"step": e.get("step"), "mAP": e.get("mAP")} for e in evals
             if e.get("split") == config.dataset.eval_split and "mAP" in e]
    card = {
        "trained_with": args.command,
        "checkpoint": f"{args.checkpoint} (step {step})",
        "data": config.dataset.to_dict(),
        "protocol": {k: config.get(k) for k in ("global_batch_size", "per_device_batch_size", "sampler", "shuffle",
                                                "num_epochs", "num_train_steps", "eval_every_epochs")}
        | {"optimizer": config.optimizer.to_dict(), "loss": config.loss.to_dict(),
           "collision": config.dataset.collision},
        "seed": config.seed,
        "commit": args.commit or _commit(),
        # A finished run's result.json; else the validation of the exported checkpoint's step.
        "validation_cso_map": (result.get("best") or {}).get("mAP")
        or next((c["mAP"] for c in curve if c["step"] == step), None),
        "test_cso_map": (result.get("test") or {}).get("mAP"),
        "validation_curve": curve,
        "wall_time_s": args.wall_time_s if args.wall_time_s is not None else result.get("train_seconds"),
        "hardware": args.hardware or (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                                      f"{jax.default_backend()} backend (the machine that exported the weights)"),
        "note": args.note,
    }
    path = pretrained.save_pretrained(args.name, jax.device_get(params), config, card, q=predictor.q,
                                      weights_dir=args.weights_dir)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return path


if __name__ == "__main__":
    main()
