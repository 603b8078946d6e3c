"""Command-line evaluation of a training run or of imported weights.

    python -m experiments.evaluate --workdir=DIR [--checkpoint=best|latest|STEP] [--split=test]
                                   [--decode=grid|peak|refine|trajectory] [--config.a.b=value ...]
    python -m experiments.evaluate --workdir=OUT --config=derefnet --torch_checkpoint=derefnet.pth
    python -m experiments.evaluate --pretrained=derefnet_quick --split=test     # weights shipped with the package

The first form reads the run's ``config.json`` from the workdir (``--config.a.b=value`` overrides its fields,
e.g. ``--config.dataset.data_dir``); the second converts a checkpoint trained with the public PyTorch code
(``.pth`` state_dict, or an ``.npz`` of the same keys) and scores it with ``--config``. Scoring needs no
optimiser and never loads the training split when the run cached its Q. Metrics JSON, detections CSV and
figures go to ``{workdir}/eval/{split}[-{decode}]/`` (``…-step{N}/`` for ``--checkpoint`` other than ``best``,
``…-{key}={value}/`` for ``--config.*`` values other than the run's, so the run's own result is never replaced);
the paper's table row is printed. Imported or shipped weights are refused in a workdir that holds a training
run. ``--decode=grid`` is the paper protocol (the default unless the config's ``eval.decode`` says otherwise);
the others are this project's continuous decoders, which first calibrate the imaging model on the training split
(once per workdir, stored as ``imaging.json`` and printed; ``--nocalibrate`` uses the nominal model).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import flags

from experiments import cli
from seqcsist_jax.protocol import CONTINUOUS_DECODERS, DECODERS
from seqcsist_jax.suggest import did_you_mean

FLAGS = flags.FLAGS
IMAGING_FILE = "imaging.json"  # calibrated imaging parameters of a workdir (seqcsist_jax.decode.calibrate)
flags.DEFINE_string("workdir", None, "Run directory (holds config.json and checkpoints/), or the output "
                    "directory for imported or shipped weights (default for --pretrained: workdirs/pretrained/NAME).")
flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
flags.DEFINE_string("split", "test", "Split to score: one of the config's train/eval/test split names.")
flags.DEFINE_enum("decode", None, list(DECODERS), "Map decoder (grid = paper protocol; default: "
                  "config.eval.decode); continuous: trajectory fits a SeqCSIST trajectory's frames together, "
                  "refine each frame alone (the one for CSIST-100K's single images).")
flags.DEFINE_string("torch_checkpoint", None, "Public PyTorch DeRefNet checkpoint (.pth or .npz) to import.")
flags.DEFINE_string("pretrained", None, "Score weights shipped with the package (seqcsist_jax/weights/NAME.npz), "
                    "e.g. derefnet_quick, or exported ones given by path (DIR/NAME.npz, next to its NAME.json card); "
                    "no training, no workdir needed.")
cli.define_config_flag()
flags.adopt_module_key_flags(cli)  # --help lists --config and the config names
flags.DEFINE_bool("geometry_prior", None, "Continuous decoders on SeqCSIST data: add the generator's star geometry "
                  "(DecodeOptions.geometry='star', a simulator-specific DECISION; default: config.eval.geometry_prior "
                  "or off).")
flags.DEFINE_multi_string("decode_option", [], "Continuous decoders: a decoder option KEY=VALUE (repeatable; a "
                          "DecodeOptions field, e.g. max_targets=6), over the dataset's count range and "
                          "config.eval.decode_options; the result goes to its own eval/ folder.")
flags.DEFINE_bool("export_public", False, "Also write the predictions in the public release's layout: "
                  "public/annotation/COS{N}.xml (SeqCSIST) or public/Annotations/CSO{N}.xml (CSIST-100K).")
flags.DEFINE_bool("calibrate", True, "Continuous decoders: fit the imaging model (PSF σ, offset, gain, background, "
                  "noise) to the training split once, store it as WORKDIR/imaging.json and decode with it "
                  "(--nocalibrate: the nominal SPEC model).")


def _continuous_only(flag: str, decode: str) -> None:
    """Raises a one-line UsageError when ``flag`` (a setting of the continuous fits) meets a map decoder."""
    if decode not in CONTINUOUS_DECODERS:
        raise cli.UsageError(f"{flag} applies to the continuous decoders (--decode=refine or trajectory), "
                             f"not --decode={decode}")


def evaluate_workdir(workdir, checkpoint="best", split="test", decode=None, torch_checkpoint=None,
                     config=None, export_public=False, calibrate=True, pretrained=None,
                     geometry_prior=None, decode_options=None) -> dict:
    """Library form of this command (no flags). Returns the metrics dict (plus ``out_dir``, ``protocol_note``
    -- ``""`` unless the threshold/margin differ from the dataset's benchmark protocol -- and, for continuous
    decoders with ``calibrate``, the ``imaging`` parameters used). ``geometry_prior`` (``None``: the config's
    ``eval.geometry_prior``, else off) adds the SeqCSIST star geometry to the continuous decoders.
    ``decode_options`` (``--decode_option``: a dict of :class:`seqcsist_jax.decode.DecodeOptions` fields) override
    the dataset's and ``config.eval.decode_options`` for a continuous decoder; its results go to their own folder
    (``eval/<split>-<decode>-decode.<key>=<value>``), next to the run's own."""
    from seqcsist_jax import evaluate as evaluation
    from seqcsist_jax import protocol
    from seqcsist_jax.data.splits import check_split, is_single_image, load_arrays, q_for_workdir
    from seqcsist_jax.methods import display_name
    from seqcsist_jax.predictor import make_predictor, restore_run
    from seqcsist_jax.run_lock import live_holder

    decode_options_given, workdir = decode_options, pathlib.Path(workdir)
    overridden: list[str] = []
    if (pretrained or torch_checkpoint) and ((workdir / "config.json").exists() or (workdir / "checkpoints").is_dir()):
        # Its eval/ holds the run's own test results: scoring other weights there would replace them silently.
        flag = f"--pretrained={pretrained}" if pretrained else f"--torch_checkpoint={torch_checkpoint}"
        raise cli.UsageError(f"--workdir={workdir} holds a training run (config.json, checkpoints/); {flag} would "
                             "replace its eval/ results with another model's: give a new or empty --workdir"
                             + (" (or leave it out: workdirs/pretrained/NAME)" if pretrained else ""))
    if (pretrained or torch_checkpoint) and workdir.exists() and not workdir.is_dir():
        raise cli.UsageError(f"--workdir={workdir} is a file, not a directory; give a new or empty directory for "
                             "the evaluation's outputs")
    if (pretrained or torch_checkpoint) and str(checkpoint) != "best":
        # Otherwise it would be ignored: a silently different checkpoint than the one asked for.
        flag = "--pretrained" if pretrained else "--torch_checkpoint"
        raise cli.UsageError(f"--checkpoint={checkpoint} chooses a checkpoint of a training run's --workdir; "
                             f"{flag} scores the weights it names (leave --checkpoint out)")
    if pretrained:
        from seqcsist_jax import pretrained as shipped
        from seqcsist_jax.workdir import run_differences

        name, weights_dir = shipped.resolve(pretrained)
        given = config
        config, params = shipped.load_pretrained(name, config=config, weights_dir=weights_dir)
        if given is not None:  # e.g. another dataset: its results go next to the weights' own, not over them
            card = shipped.load_card(name, weights_dir)["config"]
            overridden = [d for d in run_differences(card, config.to_dict()) if not d.startswith("eval.decode:")]
        q = shipped.pretrained_q(name, weights_dir)
        workdir.mkdir(parents=True, exist_ok=True)
        predictor = make_predictor(config, q if q is not None else q_for_workdir(workdir, config.dataset))
        kind = "shipped weights" if weights_dir is None else "exported weights"
        name, step = f"{display_name(config.model.name, predictor.method)} ({kind} {pretrained})", None
    elif torch_checkpoint:
        from experiments import configs
        from seqcsist_jax.interop import load_public_checkpoint

        config = config if config is not None else configs.get_config("derefnet")
        if config.model.name != "derefnet":
            raise cli.UsageError(f"--torch_checkpoint imports DeRefNet weights; the config's model is "
                                 f"{config.model.name!r}")
        workdir.mkdir(parents=True, exist_ok=True)
        predictor = make_predictor(config, q_for_workdir(workdir, config.dataset))
        options = {k: v for k, v in config.model.to_dict().items() if k != "name"}
        params = load_public_checkpoint(torch_checkpoint, **options)
        name, step = f"{config.model.name} (imported {pathlib.Path(torch_checkpoint).name})", None
    else:
        from seqcsist_jax.checkpointing import CheckpointError, ModelMismatchError

        given = config
        try:
            config, predictor, params, step = restore_run(workdir, checkpoint, config)
        except ModelMismatchError:
            raise
        except CheckpointError as e:  # damaged on disk: the trainer repairs it from the newest good checkpoint
            raise CheckpointError(f"{e}; python -m experiments.train --workdir={workdir} repairs the run (it moves "
                                  "a damaged checkpoint aside and restores from the newest good one), or score "
                                  "another with --checkpoint=latest or a step number") from None
        except FileNotFoundError as e:
            from seqcsist_jax.workdir import latest_checkpoint_step

            newest = latest_checkpoint_step(workdir)
            if str(checkpoint) != "best" or not (pathlib.Path(workdir) / "config.json").exists():
                raise
            if not str(e).startswith("no 'best' checkpoint"):  # a file vanished while it was read
                raise FileNotFoundError(f"{e} (a checkpoint changed while it was read: a trainer still running in "
                                        "this workdir deletes older ones; run the command again)") from None
            if newest is None:
                trainer = live_holder(workdir)
                if trainer is not None:  # "train it first" would be refused: that trainer holds the workdir
                    raise FileNotFoundError(
                        f"{e}, and no other checkpoint either: {workdir} is being trained now (PID {trainer['pid']} "
                        f"on {trainer.get('host', '?')}) and has not saved one yet; run this again after its first "
                        "checkpoint") from None
                raise FileNotFoundError(f"{e}, and no other checkpoint either (the run has not saved one yet); train "
                                        f"it first: python -m experiments.train --workdir={workdir}") from None
            raise FileNotFoundError(f"{e} (an unfinished run: no validation has finished yet); pass "
                                    f"--checkpoint=latest to score its newest checkpoint (step {newest})") from None
        name = display_name(config.model.name, predictor.method)
        if given is not None:
            from seqcsist_jax.workdir import run_config_differences

            # --decode / eval.decode already name the folder
            overridden = [d for d in run_config_differences(workdir, config) if not d.startswith("eval.decode:")]
    try:
        check_split(config.dataset, split)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    decode = decode or config.eval.get("decode", "grid") or "grid"
    if geometry_prior:  # it would be ignored without a word
        _continuous_only("--geometry_prior", decode)
    decode_options, imaging = {}, None
    if decode != "grid":
        from seqcsist_jax.decode import dataset_decode_options

        # The dataset's count range (and CSIST-100K's geometry): a fit must never cap the count silently.
        if geometry_prior is None:
            geometry_prior = bool(config.eval.get("geometry_prior", False))
        try:
            decode_options.update(dataset_decode_options(config.dataset, geometry_prior=geometry_prior))
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
        decode_options.update(config.eval.get("decode_options") or {})
    extra = dict(decode_options_given or {})
    if extra:
        _continuous_only(f"--decode_option ({', '.join(extra)})", decode)
        try:
            evaluation.check_decode_options(extra, "--decode_option")
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
        decode_options.update(extra)
        overridden += [f"decode.{key}: {value!r}" for key, value in sorted(extra.items())]
    if decode != "grid" and calibrate:
        from seqcsist_jax.decode import load_or_calibrate

        imaging, fresh = load_or_calibrate(workdir / IMAGING_FILE,
                                           lambda: load_arrays(config.dataset, config.dataset.train_split),
                                           calibrated_on=calibration_data(config.dataset))
        print(imaging_line(imaging, fresh, workdir / IMAGING_FILE))
        decode_options["imaging"] = imaging
    arrays = load_arrays(config.dataset, split)
    out_dir = evaluation.eval_dir(workdir, split, decode)
    if step is not None and str(checkpoint) != "best":
        # eval/<split>[-<decode>]/ is the run's result (its best checkpoint, as the trainer's final test writes it);
        # another checkpoint's outputs go next to it, named by its step, and never replace it.
        out_dir = out_dir.with_name(f"{out_dir.name}-step{step}")
    if overridden:  # a config other than the run's (e.g. --config.eval.threshold): next to the result, not over it
        out_dir = out_dir.with_name(f"{out_dir.name}-{overrides_folder_suffix(overridden)}")
        whose = "the weights' model card" if pretrained else "the run's"
        print(f"scoring with a config that differs from {whose} ({'; '.join(overridden)}): writing {out_dir}/ "
              "next to the " + ("weights' own results" if pretrained else "run's own result"))
    trainer = live_holder(workdir)
    if trainer is not None:  # scoring a run in progress is fine, but its own final test replaces the result
        final = out_dir == evaluation.eval_dir(workdir, config.dataset.test_split,
                                               config.eval.get("decode", "grid") or "grid")
        which = f"best checkpoint so far (step {step})" if str(checkpoint) == "best" else f"checkpoint of step {step}"
        print(f"note: {workdir} is being trained now (PID {trainer['pid']} on {trainer.get('host', '?')}): this "
              f"scores its {which}" + (f"; the run writes its own result to {out_dir}/ when it finishes"
                                       if final else ""))
    result = evaluation.evaluate_run(
        predictor.predict, params, arrays, config.eval, frame_index=predictor.method.frame_index,
        mesh=predictor.mesh, name=name, split=split, decode=decode, step=step, out_dir=out_dir,
        export_public=export_public, metrics_log=training_log(workdir), decode_options=decode_options,
    )
    result["out_dir"] = str(out_dir)
    result["single_image"] = is_single_image(config.dataset.name)
    # Training says this at its start; a later evaluation (perhaps with overrides) says it again.
    result["protocol_note"] = protocol.protocol_difference(
        is_single_image(config.dataset.name), result["threshold"],
        int(config.eval.get("scored_margin", protocol.SCORED_MARGIN)))
    if imaging is not None:
        result["imaging"] = json.loads(imaging.to_json())
    return result


def calibration_data(dataset: Any) -> dict[str, str]:
    """What a workdir's ``imaging.json`` is calibrated on (stored in it): the dataset and its training split, and
    the manual dir of a release read from one. A file calibrated on other data is calibrated again, not reused."""
    data = {"dataset": str(dataset.name), "split": str(dataset.train_split)}
    if dataset.get("manual_dir"):
        data["manual_dir"] = str(dataset.manual_dir)
    return data


def overrides_folder_suffix(differences: list[str]) -> str:
    """``["eval.threshold: 50.0 → 70.0"]`` → ``"eval.threshold=70.0"``: the folder-name part that keeps an
    evaluation under changed config values apart from the run's own result (long lists: a short hash)."""
    import hashlib
    import re

    parts = []
    for line in differences:
        key, _, change = line.partition(": ")
        parts.append(f"{key}={change.rpartition(' → ')[2]}")
    suffix = re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))
    if len(suffix) > 60:
        suffix = "config-" + hashlib.sha1("\n".join(differences).encode()).hexdigest()[:10]
    return suffix


def decoder_note(decode: str | None, single_image: bool = False, image_quality: bool = False) -> str:
    """The line that tells a reader whose score a continuous fit is ('' for the map decoders, grid and peak);
    on single images (CSIST-100K) ``trajectory`` gets a second line pointing to ``refine``. ``image_quality``:
    the row has PSNR and SSIM columns (:func:`seqcsist_jax.evaluate.table_header`), which the note then names."""
    if decode not in CONTINUOUS_DECODERS:  # these fit the imaging model to the frames
        return ""
    columns = "FPS, PSNR and SSIM are" if image_quality else "FPS is"
    note = (f"note: the {decode} decoder fits the frames themselves; the model's maps only seed it, so this score "
            "measures the decoder more than the model (decoding the frames alone, without the model, scores about "
            f"the same: README 'Beyond the grid: continuous decoding'); the row's {columns} the model's "
            "(its maps), not the decoder's")
    if decode == "trajectory" and single_image:
        # One frame has no motion to share, and trajectory does not use the single-pixel geometry of CSIST-100K.
        note += ("\nnote: this dataset has one image per example: trajectory fits motion across frames and ignores "
                 "CSIST-100K's geometry; --decode=refine (with decode.CSIST100K_OPTIONS) is its decoder")
    return note


def imaging_line(imaging: Any, fresh: bool, path: pathlib.Path) -> str:
    """The line that says which imaging model a continuous decoder fits: calibrated now (and saved to ``path``)
    or read back from ``path``."""
    origin = f"calibrated on the training split, saved to {path}" if fresh else f"read from {path}"
    return f"imaging model {origin}: {str(imaging).removeprefix('imaging: ')}"


def training_log(workdir: pathlib.Path) -> pathlib.Path | None:
    """The run's ``metrics.jsonl`` to draw its loss curves from; None where there is none to draw (shipped or
    imported weights, a run killed before its first log line), so no empty figure is written."""
    log = pathlib.Path(workdir) / "metrics.jsonl"
    return log if log.is_file() and log.stat().st_size > 0 else None


def written_files(out_dir: str | pathlib.Path, export_public: bool) -> list[str]:
    """What an evaluation wrote into ``out_dir``, for the closing line: the loss figure only where the run had a
    metrics log to draw it from (a shipped or PyTorch checkpoint has none)."""
    names = ["metrics.json", "detections.csv", "pr_curves.png", "samples.png"]
    if (pathlib.Path(out_dir) / "loss_curves.png").exists():
        names.append("loss_curves.png")
    if export_public:
        names.append("public/ (predictions in the public release's layout)")
    return names


def main(argv: list[str], overrides: list[tuple[str, str]]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {' '.join(argv[1:])} (flags are --name=value)")
    from seqcsist_jax import evaluate as evaluation
    from seqcsist_jax.workdir import load_run_config

    decode_options = {}
    if FLAGS.decode_option:  # checked before anything is read or created
        from seqcsist_jax.decode.options import parse_option_items

        try:
            decode_options = parse_option_items(FLAGS.decode_option, "--decode_option")
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
    config = None
    workdir = FLAGS.workdir
    if FLAGS.pretrained:
        from seqcsist_jax import pretrained as shipped

        name, weights_dir = shipped.resolve(FLAGS.pretrained)
        if name not in shipped.available(weights_dir):
            if weights_dir is not None:
                raise cli.UsageError(f"--pretrained={FLAGS.pretrained}: no {name}.npz with its card {name}.json in "
                                     f"{weights_dir} (as experiments.export_weights --weights_dir writes them)")
            pending = (" (the paper-schedule DeRefNet weights are not published yet: they come only from a full "
                       "run of the paper protocol, `python -m experiments.train --config=derefnet`, on a GPU)"
                       if name == "derefnet" else "")
            raise cli.UsageError(f"no shipped weights named {name!r}{did_you_mean(name, shipped.available())}"
                                 f"{pending}; available: "
                                 f"{', '.join(shipped.available()) or 'none'}, or a path to an exported NAME.npz")
        workdir = workdir or f"workdirs/pretrained/{name}"
        if FLAGS.config:
            config = cli.load_config(FLAGS.config, overrides)
        elif overrides:
            config = cli.apply_overrides(shipped.load_pretrained(name, weights_dir=weights_dir)[0], overrides)
    elif not workdir:
        raise cli.UsageError("--workdir is required (a training run's directory), unless --pretrained=NAME")
    elif FLAGS.config or FLAGS.torch_checkpoint:
        config = cli.load_config(FLAGS.config or "derefnet", overrides)
    elif overrides:
        config = cli.apply_overrides(load_run_config(pathlib.Path(workdir)), overrides)
    result = evaluate_workdir(workdir, FLAGS.checkpoint, FLAGS.split, FLAGS.decode,
                              FLAGS.torch_checkpoint, config, FLAGS.export_public, FLAGS.calibrate, FLAGS.pretrained,
                              FLAGS.geometry_prior, decode_options)
    print(evaluation.table_header(result))
    print(result["table_row"])
    from seqcsist_jax.fileio import without_non_finite

    # Strict JSON, as metrics.json: undefined values (e.g. the RMSE without a single match) print as null.
    shown = {k: v for k, v in result.items() if k not in ("table_row", "protocol_note", "single_image")}
    print(json.dumps(without_non_finite(json.loads(json.dumps(shown, default=float))), indent=1, allow_nan=False))
    if result["protocol_note"]:
        print(f"note: {result['protocol_note']}")
    note = evaluation.no_detection_note(result, result["threshold"], result.get("step"))
    if note:
        print(f"note: this evaluation found no detection: {note}")
    note = decoder_note(result.get("decode"), result.get("single_image", False), result.get("psnr") is not None)
    if note:
        print(note)
    print(f"wrote {result['out_dir']}/ ({', '.join(written_files(result['out_dir'], FLAGS.export_public))})")


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story (one ``error:`` line, no traceback); imported only when the
    evaluation raises, so that ``--help`` and usage errors answer without importing JAX."""
    from seqcsist_jax.checkpointing import CheckpointError
    from seqcsist_jax.run_lock import WorkdirLockedError
    from seqcsist_jax.workdir import ConfigMismatchError

    return ConfigMismatchError, FileNotFoundError, ValueError, CheckpointError, WorkdirLockedError


def run(argv: list[str] | None = None) -> None:
    cli.run(main, argv, expected=_expected_errors)


if __name__ == "__main__":
    run()
