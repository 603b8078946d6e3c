"""Publishes a finished run's best checkpoint as ``seqcsist_jax/weights/<name>.{npz,json}`` with its model card.

    python -m experiments.export_weights --workdir=/tmp/run --name=derefnet_quick \
        --command="python -m experiments.train --config=derefnet_quick" [--wall_time_s=2700] \
        [--hardware="one NVIDIA H200"] [--note=...]

The card records the run config, data config, protocol, seed, commit, validation/test CSO-mAP (from the run's
``result.json`` and ``metrics.jsonl``), the wall time (default: the training wall time the run recorded, summed
over the calls that resumed it) and the hardware it trained on (default: this machine, which is right only when
the export runs where the training did).

Mistyped flags print the usage; anything wrong with the run or the files (no best checkpoint yet, a name that
is not a plain file stem, an existing name without --overwrite, a read-only or full --weights_dir) is one
``error: ...`` line on stderr and exit status 2. The ``.npz`` and its card are each written atomically, the card
last and with the ``.npz``'s checksum, so an interrupted export never leaves a torn or silently mismatched pair.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import pathlib
import platform
import subprocess
import sys
from typing import NoReturn
from experiments.arg_parser import ArgumentParser


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


class ExportError(Exception):
    """A problem with the run or the files (not with the command line): printed as one ``error:`` line."""


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _checkpoint_arg(value: str) -> str:
    if value in ("best", "latest") or value.isdigit():
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: expected best, latest or a step number")


def _wall_time_arg(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number of seconds >= 0")
    return seconds


def parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    from experiments.cli import plain_text

    p = ArgumentParser(prog="python -m experiments.export_weights",
                       description=plain_text(__doc__.split("\n")[0]))
    p.add_argument("--workdir", required=True, help="a finished training run's directory")
    p.add_argument("--name", required=True,
                   help="the weights' name, a plain file stem (NAME.npz and NAME.json are written)")
    p.add_argument("--command", required=True, help="the command that trained the run")
    p.add_argument("--wall_time_s", type=_wall_time_arg, default=None,
                   help="training wall time (default: what the run recorded in result.json)")
    p.add_argument("--hardware", default=None, help="where it trained (default: this machine)")
    p.add_argument("--checkpoint", type=_checkpoint_arg, default="best",
                   help="best, latest or a step number (default: best)")
    p.add_argument("--commit", default=None,
                   help="commit the run was trained at (default: HEAD, with -dirty for uncommitted changes)")
    p.add_argument("--note", default="", help="a free-text note for the model card")
    p.add_argument("--weights_dir", default=None, help="where to write (default: seqcsist_jax/weights)")
    p.add_argument("--overwrite", action="store_true", help="replace existing weights of the same name")
    return p


def main(argv: list[str] | None = None) -> pathlib.Path:
    """Exports the weights (see the module docstring); returns the ``.npz`` path written.

    Raises:
      SystemExit: status 2 after the usage and an argparse message (a mistyped command line), or after one
        ``error: ...`` line on stderr (a problem with the run or the files).
    """
    args = parser().parse_args(argv)
    try:
        return export(args)
    except ExportError as e:
        _fail(str(e))


def _trained_batch(workdir: pathlib.Path, config, step: int) -> dict:
    """``{"trained_global_batch": B}`` as the checkpoint at ``step`` recorded it (with ``global_batch_size`` <= 0
    it is per_device_batch_size × the devices the run trained on, which the config alone does not say), plus
    ``trained_on_devices`` when that is what set it; ``{}`` for a checkpoint that does not record it."""
    from seqcsist_jax.checkpointing import RunCheckpoints

    checkpoints = RunCheckpoints(workdir, keep=config.get("keep_checkpoints", 2))
    try:
        batch = checkpoints.restore_meta(int(step))[0].get("global_batch")
    except Exception:  # noqa: BLE001 (the params were read; a record the card can do without)
        return {}
    finally:
        checkpoints.close()
    if not isinstance(batch, int):
        return {}
    per_device = int(config.get("per_device_batch_size", 1) or 1)
    if int(config.get("global_batch_size", -1) or -1) > 0 or per_device <= 0 or batch % per_device:
        return {"trained_global_batch": batch}
    return {"trained_global_batch": batch, "trained_on_devices": batch // per_device}


def _no_best_line(workdir: pathlib.Path, error: Exception) -> str:
    """The one line for a run without a best checkpoint: what there is, and the flag that exports it."""
    from seqcsist_jax.workdir import latest_checkpoint_step

    newest = latest_checkpoint_step(workdir)
    if newest is None:
        return (f"--checkpoint=best: {error}, and no other checkpoint either (the run has not saved one yet); "
                f"train it first: python -m experiments.train --workdir={workdir}")
    return (f"--checkpoint=best: {error} (an unfinished run: no validation has finished yet); pass "
            f"--checkpoint=latest to export its newest checkpoint (step {newest})")


def _write_error_line(error: OSError, weights_dir: pathlib.Path) -> str:
    from experiments.cli import os_error_line

    where = f" ({error.filename})" if error.filename else f" (in {weights_dir})"
    text = f"{error.strerror}{where}" if error.strerror else str(error)
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{text}: cannot write the weights there; choose a writable --weights_dir"
    if error.errno == errno.ENOSPC:
        return (f"{text}: the disk is full; free space and export again (files are replaced atomically: no torn "
                "file is left)")
    if error.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return f"{text}: --weights_dir={weights_dir} must be a folder (or a path where one can be made)"
    return os_error_line(error)


def export(args: argparse.Namespace) -> pathlib.Path:
    """The export itself, from parsed arguments; returns the ``.npz`` path.

    Raises:
      ExportError: the run or the files are not what an export needs (one line naming the file or flag).
    """
    from seqcsist_jax import pretrained
    from seqcsist_jax.workdir import config_path

    try:
        pretrained.check_name(args.name)
    except ValueError as e:
        raise ExportError(f"--name={args.name}: {e}") from None
    workdir = pathlib.Path(args.workdir)
    if not config_path(workdir).exists():
        raise ExportError(f"--workdir={workdir}: no config.json there; expected a training run's directory "
                          "(python -m experiments.train --workdir=...)")
    weights_dir = pathlib.Path(args.weights_dir or pretrained.WEIGHTS_DIR)
    target, card_path = weights_dir / f"{args.name}.npz", weights_dir / f"{args.name}.json"
    if (target.exists() or card_path.exists()) and not args.overwrite:
        alone = ("" if target.exists() and card_path.exists() else
                 f" (without its {'card ' + card_path.name if target.exists() else target.name}: left by an "
                 "interrupted export or copy?)")
        shown = target if target.exists() else card_path
        raise ExportError(f"--name={args.name}: {shown} exists already{alone}; pass --overwrite to replace it, or "
                          "choose another name")

    import jax

    from seqcsist_jax.checkpointing import CheckpointError
    from seqcsist_jax.predictor import restore_run

    from experiments.cli import os_error_line
    from seqcsist_jax.fileio import read_json_object
    from seqcsist_jax.metric_writers import read_metrics

    try:
        try:
            config, predictor, params, step = restore_run(str(workdir), args.checkpoint)
        except FileNotFoundError as e:
            if args.checkpoint == "best" and "'best' checkpoint" in str(e):
                raise ExportError(_no_best_line(workdir, e)) from None
            raise ExportError(f"--checkpoint={args.checkpoint}: {e}") from None
        trained = _trained_batch(workdir, config, step)
        result_path, metrics_path = workdir / "result.json", workdir / "metrics.jsonl"
        result = (read_json_object(result_path, "the summary the training run writes", error=ExportError)
                  if result_path.exists() else {})
        # the training run's own reader: a torn last line (a killed write) is skipped with a warning
        evals = read_metrics(metrics_path)
    except (ValueError, CheckpointError) as e:  # MetricsFileError is a ValueError
        raise ExportError(str(e)) from None
    except OSError as e:  # restoring the checkpoint, reading result.json or metrics.jsonl
        raise ExportError(os_error_line(e)) from None
    curve = [{"step": e.get("step"), "mAP": e.get("mAP")} for e in evals
             if e.get("split") == config.dataset.eval_split and "mAP" in e]
    card = {
        "trained_with": args.command,
        "checkpoint": f"{args.checkpoint} (step {step})",
        "data": config.dataset.to_dict(),
        "protocol": {k: config.get(k) for k in ("global_batch_size", "per_device_batch_size", "sampler", "shuffle",
                                                "num_epochs", "num_train_steps", "eval_every_epochs")}
        | trained
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
    try:
        path = pretrained.save_pretrained(args.name, jax.device_get(params), config, card, q=predictor.q,
                                          weights_dir=weights_dir)
    except OSError as e:
        raise ExportError(_write_error_line(e, weights_dir)) from None
    except ValueError as e:  # the checkpoint does not fit the run's own model (a config edited after training)
        raise ExportError(f"{workdir}: {e}") from None
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return path


if __name__ == "__main__":
    import logging

    from experiments import cli

    logging.basicConfig(level=logging.WARNING, handlers=[cli.stream_handler()])
    cli.one_line_warnings()
    main()
