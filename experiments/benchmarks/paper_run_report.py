"""Report of a (possibly unfinished) paper-protocol DeRefNet run: its validation curve, throughput and test row
next to the paper's DeRefNet row, as Markdown + JSON + a figure.

    python -m experiments.benchmarks.paper_run_report --workdir=WORKDIR \
        --output=experiments/benchmarks/results/paper_run_h200 --hardware="NVIDIA H200" \
        --command="bash experiments/benchmarks/run_paper_gpu.sh WORKDIR" [--wall_s=1445] [--note="..."]

It reads only the run directory: ``config.json``, ``metrics.jsonl`` (training records with ``steps_per_second``
and the periodic validation records), ``checkpoints/evals.json`` (the best step) and ``eval/test/metrics.json``
(written by the run's own final test, or by ``python -m experiments.evaluate --workdir=WORKDIR --split=test``).
A run that stopped before its last step is reported as such: its numbers are interim, and the test row (when
present) scores the best checkpoint so far.
"""

from __future__ import annotations

import json
import pathlib
import statistics
from typing import Any

from seqcsist_jax.baselines.published import PUBLISHED, SOURCE
from seqcsist_jax.fileio import atomic_write, atomic_write_json
from seqcsist_jax import workdir as workdir_lib
from seqcsist_jax.metric_writers import read_metrics
from experiments.arg_parser import ArgumentParser

AP_KEYS = ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25")
#: Fields that do not change the result (logging and checkpoint cadence).
CADENCE_FIELDS = ("checkpoint_every_steps", "checkpoint_every_seconds", "progress_bar", "log_every_steps")


def protocol_differences(workdir: str | pathlib.Path) -> list[str]:
    """``"key: run value → paper value"`` lines where the run's ``config.json`` departs from the paper's run:
    ``--config=derefnet`` on seqcsist/default (the TFDS build, or the same splits generated in memory as
    run_paper_gpu.sh does: 3,500 / 750 / 750 trajectories), leaving out :data:`CADENCE_FIELDS`."""
    from experiments import configs

    paper = configs.get_config("derefnet")
    if workdir_lib.load_run_config(workdir).dataset.name == "simulated":
        paper.dataset.name = "simulated"
        paper.dataset.num_train, paper.dataset.num_eval, paper.dataset.num_test = 3500, 750, 750
    diffs = workdir_lib.run_config_differences(workdir, paper)
    return [d for d in diffs if d.split(":")[0] not in CADENCE_FIELDS]


def latest_checkpoint_meta(workdir: str | pathlib.Path) -> dict:
    """The ``meta`` of the newest ``latest`` checkpoint (empty when there is none or it cannot be read)."""
    from seqcsist_jax.checkpointing import RunCheckpoints

    workdir = pathlib.Path(workdir)
    if workdir_lib.latest_checkpoint_step(workdir) is None:
        return {}
    try:
        checkpoints = RunCheckpoints(workdir)
        try:
            meta, _ = checkpoints.restore_meta("latest")
        finally:
            checkpoints.close()
    except Exception:  # noqa: BLE001 - a report of what can be read; the other numbers do not need it
        return {}
    return meta if isinstance(meta, dict) else {}


def checkpoint_train_seconds(workdir: str | pathlib.Path) -> float | None:
    """Training wall seconds that the newest ``latest`` checkpoint records (summed over the calls that resumed
    the run); None when there is no checkpoint, it cannot be read, or it predates the record."""
    return _train_seconds(latest_checkpoint_meta(workdir))


def _train_seconds(meta: dict) -> float | None:
    value = meta.get("train_seconds")
    return float(value) if value is not None else None


def summarize_run(workdir: str | pathlib.Path) -> dict[str, Any]:
    """The numbers of a run directory (see the module docstring).

    Returns a dict with ``total_steps``, ``steps_done``, ``steps_per_epoch``, ``global_batch``, ``validation``
    (one dict per periodic evaluation: ``step``, ``epoch`` and the CSO-mAP/AP values ×100 plus count accuracy,
    precision and recall in %), ``best_step``, ``test`` (``eval/<test split>/metrics.json`` ×100 with the
    ``step`` it scored, or None),
    ``steps_per_second`` (median of the logged rates, leaving out the first record and each record that
    follows an evaluation; the median discounts the one slow record after a resume) and
    ``trajectories_per_second`` and ``train_seconds`` (:func:`checkpoint_train_seconds`).
    """
    workdir = pathlib.Path(workdir)
    if not workdir_lib.config_path(workdir).exists():
        raise FileNotFoundError(f"{workdir_lib.config_path(workdir)}: no config.json; is {workdir} a training run "
                                "directory?")
    config = workdir_lib.load_run_config(workdir)
    records = read_metrics(workdir / "metrics.jsonl")
    train = sorted((r for r in records if r.get("split") == "train"), key=lambda r: r["step"])
    eval_split, test_split = config.dataset.eval_split, config.dataset.test_split
    meta = latest_checkpoint_meta(workdir)
    global_batch = int(config.global_batch_size)
    if global_batch <= 0:  # derived from the devices at run time (-1): the checkpoint records what it was
        global_batch = int(meta.get("global_batch") or -1)
    # logged epochs are step / steps_per_epoch, so any record gives the rate (global_batch_size may be -1)
    steps_per_epoch = next((r["step"] / r["epoch"] for r in train if r.get("epoch")), None)
    if config.num_train_steps > 0:
        total_steps = int(config.num_train_steps)
    elif steps_per_epoch:
        total_steps = int(round(config.num_epochs * steps_per_epoch))
    else:
        total_steps = None

    def scaled(r: dict) -> dict:
        # metrics.json writes undefined diagnostics (no detection yet) as null
        row = {k: 100 * float(r[k]) for k in AP_KEYS if r.get(k) is not None}
        for k in ("count_accuracy", "precision", "recall"):
            if r.get(k) is not None:
                row[k] = 100 * float(r[k])
        return row

    validation = []
    for r in sorted((r for r in records if r.get("split") == eval_split and "mAP" in r), key=lambda r: r["step"]):
        validation.append({"step": r["step"],
                           "epoch": r["step"] / steps_per_epoch if steps_per_epoch else None, **scaled(r)})
    test_path = workdir / "eval" / test_split / "metrics.json"
    test = json.loads(test_path.read_text()) if test_path.exists() else None
    evals_path = workdir / "checkpoints" / "evals.json"
    best_step = json.loads(evals_path.read_text()).get("best_step") if evals_path.exists() else None
    if best_step is None and validation:
        best_step = max(validation, key=lambda v: v["mAP"])["step"]
    # A training record's rate covers the steps since the previous record; after a restart or an evaluation it
    # includes compilation or evaluation time, so those records are left out of the steady rate.
    after_eval = {v["step"] for v in validation}
    steady = [r["steps_per_second"] for prev, r in zip(train, train[1:])
              if "steps_per_second" in r and prev["step"] not in after_eval and r["step"] > prev["step"]]
    sps = statistics.median(steady) if steady else None
    return {
        "config_name": config.model.name,
        # dataset.num_train sizes in-memory data only; a TFDS split's size follows from the logged epochs
        "num_train": (int(config.dataset.num_train) if config.dataset.name == "simulated" else
                      round(steps_per_epoch * global_batch) if steps_per_epoch and global_batch > 0 else None),
        "global_batch": global_batch,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "steps_done": max(train[-1]["step"] if train else 0, workdir_lib.latest_checkpoint_step(workdir) or 0),
        "protocol_differences": protocol_differences(workdir),
        "validation": validation,
        "best_step": best_step,
        "test": {"step": test.get("step"), **scaled(test)} if test else None,
        "steps_per_second": sps,
        "trajectories_per_second": sps * global_batch if sps and global_batch > 0 else None,
        "train_seconds": _train_seconds(meta),
    }


def _cell(value: float | None) -> str:
    """A ×100 table cell; "–" where the metric is undefined (e.g. precision with no detection)."""
    return "–" if value is None or value != value else f"{value:.2f}"


def report_markdown(summary: dict[str, Any], hardware: str, command: str, wall_s: float | None,
                    note: str = "") -> str:
    """The Markdown report of :func:`summarize_run`'s dict, with the paper's DeRefNet row beside it (``note``:
    a closing paragraph, e.g. where the test split was scored)."""
    s = summary
    done = s["total_steps"] is not None and s["steps_done"] >= s["total_steps"]
    epochs = s["steps_done"] / s["steps_per_epoch"] if s["steps_per_epoch"] else None
    total_epochs = s["total_steps"] / s["steps_per_epoch"] if s["steps_per_epoch"] and s["total_steps"] else None
    changed = s.get("protocol_differences") or []
    title = "paper protocol" if not changed else "**modified** paper protocol"
    lines = [f"# DeRefNet, {title} (`--config=derefnet`)", ""]
    if changed:
        departures = "; ".join(f"`{d}`" for d in changed)
        lines += [f"Not the paper's run: it departs from `--config=derefnet` (run value → paper value) in {departures}.",
                  ""]
    total = f"{s['total_steps']:,}" if s["total_steps"] is not None else "?"
    status = "finished" if done else f"**unfinished: stopped at step {s['steps_done']:,} of {total}**"
    progress = (f"{epochs:.1f} of {total_epochs:.0f} epochs" if epochs is not None and total_epochs
                else "no training record logged yet")
    lines += [f"Hardware: {hardware}. Command: `{command}`. Run {status} ({progress}"
              + (f", {wall_s:.0f} s of wall time" if wall_s else "")
              + f"); {s['num_train'] if s['num_train'] is not None else '?'} training trajectories, "
              f"global batch {s['global_batch'] if s['global_batch'] > 0 else '?'}.", ""]
    if s["trajectories_per_second"]:
        rate = s["trajectories_per_second"]
        line = (f"Training throughput (median of the logged rates, compilation and evaluations excluded): "
                f"{s['steps_per_second']:.1f} steps/s = **{rate:.0f} trajectories/s**")
        if total_epochs:
            line += (f"; the whole schedule ({total_epochs:.0f} epochs × {s['num_train']} trajectories) takes "
                     f"{total_epochs * s['num_train'] / rate / 60:.1f} min of training at that rate")
        lines += [line + ".", ""]
    lines += ["Validation (the whole split, paper protocol; ×100; count accuracy = frames whose detection count "
              "equals the truth):", "",
              "| step | epoch | CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 | count acc. % | precision % | recall % |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in s["validation"]:
        best = " (best)" if v["step"] == s["best_step"] else ""
        epoch = f"{v['epoch']:.0f}" if v["epoch"] is not None else "?"
        lines.append(f"| {v['step']:,}{best} | {epoch} | " + " | ".join(
            _cell(v.get(k)) for k in (*AP_KEYS, "count_accuracy", "precision", "recall")) + " |")
    paper = PUBLISHED["derefnet"]
    lines += ["", "Test split, best checkpoint by validation CSO-mAP, next to the paper's row (" + SOURCE + "):", "",
              "| | CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 |", "|---|---|---|---|---|---|---|"]
    if s["test"]:
        step = s["test"].get("step") or s["best_step"]
        label = f"this run, step {step:,}" + ("" if done or epochs is None or not total_epochs else
                                               f" (interim: best of the {epochs:.0f} of {total_epochs:.0f} epochs "
                                               "trained so far)")
        lines.append(f"| {label} | " + " | ".join(f"{s['test'][k]:.2f}" for k in AP_KEYS) + " |")
    else:
        lines.append("| this run | not scored yet (`python -m experiments.evaluate --workdir=... --split=test`) "
                     "| | | | | |")
    lines.append("| paper (100 epochs, 4 GPUs) | " + " | ".join(
        f"{getattr(paper, k):.2f}" for k in AP_KEYS) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True,
                        help="run directory of experiments.train (reads config.json, metrics.jsonl, "
                             "checkpoints/evals.json and eval/test/metrics.json)")
    parser.add_argument("--output", required=True, help="path prefix of the .md, .json and .png written")
    parser.add_argument("--hardware", required=True, help="where it trained, e.g. 'NVIDIA H200'")
    parser.add_argument("--command", required=True, help="how the run was launched, as the report states it")
    parser.add_argument("--wall_s", type=float, default=None,
                        help="wall time of the training so far (default: what the latest checkpoint records)")
    parser.add_argument("--note", default="", help="closing paragraph of the report")
    args = parser.parse_args()
    summary = summarize_run(args.workdir)
    if args.wall_s is None:
        args.wall_s = summary["train_seconds"]
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), {**summary, "hardware": args.hardware, "command": args.command,
                                                 "wall_s": args.wall_s, "note": args.note}, indent=2)
    text = report_markdown(summary, args.hardware, args.command, args.wall_s, args.note)
    atomic_write(out.with_suffix(".md"), text)
    from seqcsist_jax import plots

    plots.plot_loss_curves(pathlib.Path(args.workdir) / "metrics.jsonl", out.with_suffix(".png"))
    print(text)
    print(f"wrote {out.with_suffix('.md')}, .json and .png")


if __name__ == "__main__":
    main()
