"""Command-line training: ``python -m experiments.train --config=derefnet --workdir=DIR``.

``--config=<name>[:<variant>]`` resolves to ``experiments/configs/<name>.py`` (``get_config(variant)``) and
``--config.a.b=value`` overrides any field, e.g.::

    python -m experiments.train --config=derefnet_quick --workdir=workdirs/quick
    python -m experiments.train --config=derefnet --workdir=workdirs/paper --config.dataset.data_dir=~/tfds
    python -m experiments.train --config=derefnet:smoke --workdir=/tmp/smoke --config.num_train_steps=10
    python -m experiments.train --config=dista:quick --workdir=workdirs/dista   # DISTA-Net on CSIST-100K (mini)

Every config trains on SeqCSIST except ``dista``, which trains on CSIST-100K's single images (SPEC §9).

An existing run in ``--workdir`` is resumed from its latest checkpoint; a workdir that holds a run of another
config is refused (the differing keys are printed) unless ``--force_config``; without ``--config`` the run saved
in ``--workdir`` is resumed with its own config. ``python -m experiments.train --help`` lists the config names;
``--config=dista:quick --print_config`` prints every field of that config (with the overrides) and exits.
"""

from __future__ import annotations

import os

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS
# Not absl-required: its message ("Flag --workdir must have a value other than None") says less than ours below.
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and evaluation outputs (required).")
cli.define_config_flag()
flags.adopt_module_key_flags(cli)  # --help lists --config and the config names
flags.DEFINE_bool("force_config", False, "Continue a workdir whose saved config differs (overwrites config.json).")
flags.DEFINE_bool("print_config", False, "Print the resolved config (the named one with its --config.a.b "
                  "overrides, or the run saved in --workdir) after checking it, and exit without training; every "
                  "field shown can be overridden.")


def main(argv: list[str], overrides: list[tuple[str, str]]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {' '.join(argv[1:])} (flags are --name=value)")
    if FLAGS.print_config:
        saved = os.path.join(FLAGS.workdir or "", "config.json")
        if not FLAGS.config and FLAGS.workdir and os.path.isfile(saved):
            config, source = cli.saved_run_config(FLAGS.workdir, overrides, resuming=False), f"the run saved in {saved}"
        elif not FLAGS.config and FLAGS.workdir:
            raise cli.UsageError(f"--print_config: {FLAGS.workdir} holds no saved run ({saved} not found); pass "
                                 "--config to print a named config")
        else:
            config, source = cli.load_config(cli.require_config(FLAGS.config), overrides), f"--config={FLAGS.config}"
        from seqcsist_jax.train import check_config, check_devices

        check_config(config)  # the same checks as a run: unknown fields, dataset and method names, schedule
        if not config.get("multihost"):  # a multi-host run counts its devices after jax.distributed.initialize()
            check_devices(config)  # and whether these devices split the global batch
        shown = ", ".join(f"--config.{key}={value}" for key, value in overrides)
        print(f"# {source}" + (f" with {shown}" if shown else ""))  # a YAML comment: the output stays YAML
        print(str(config).rstrip("\n"))
        return
    if FLAGS.workdir is None:
        raise cli.UsageError("--workdir is required: the run's directory (checkpoints, logs, results), e.g. "
                             "--workdir=workdirs/quick")
    if not FLAGS.workdir.strip():  # an empty value would train into the current directory
        raise cli.UsageError("--workdir is empty; give the run's directory, e.g. --workdir=workdirs/quick")
    if os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
        raise cli.UsageError(f"--workdir={FLAGS.workdir} is a file, not a directory; give the run's directory")
    if not FLAGS.config and os.path.isfile(os.path.join(FLAGS.workdir, "config.json")):
        config = cli.saved_run_config(FLAGS.workdir, overrides)  # resuming: the run's own config, as it was saved
    else:
        config = cli.load_config(cli.require_config(FLAGS.config, FLAGS.workdir), overrides)
    from seqcsist_jax.train import train_and_evaluate

    result = train_and_evaluate(config, FLAGS.workdir, force_config=FLAGS.force_config)
    best = result.get("best") or {}
    test = result.get("test") or {}
    print(f"done: step {result['step']}; best validation CSO-mAP {100 * best.get('mAP', float('nan')):.2f}; "
          f"test CSO-mAP {100 * test.get('mAP', float('nan')):.2f}; training wall time "
          f"{result.get('train_seconds', float('nan')) / 60:.1f} min (all calls of this run); outputs in "
          f"{result.get('eval_dir', FLAGS.workdir)}")
    from seqcsist_jax.evaluate import no_detection_note

    note = no_detection_note(test, config.eval.get("threshold", 70.0), test.get("step", result.get("step")))
    if note:
        print(f"note: the test evaluation found no detection: {note}")


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story (one ``error:`` line, no traceback); imported only when the run
    raises, so that ``--help`` and usage errors answer without importing JAX."""
    from seqcsist_jax.checkpointing import CheckpointError, CheckpointWriteError
    from seqcsist_jax.data.public_format import PublicFormatError
    from seqcsist_jax.data.names import UnknownDatasetError
    from seqcsist_jax.metric_writers import MetricsFileError, MetricsWriteError
    from seqcsist_jax.run_lock import WorkdirLockedError
    from seqcsist_jax.methods import UnknownMethodError
    from seqcsist_jax.train import (NonFiniteLossError, OptimizerConfigError, ScheduleConfigError,
                                    TrainingInterrupted)
    from seqcsist_jax.workdir import ConfigMismatchError

    return (ConfigMismatchError, FileNotFoundError, WorkdirLockedError, CheckpointError, CheckpointWriteError,
            MetricsFileError, MetricsWriteError, TrainingInterrupted, OptimizerConfigError, PublicFormatError,
            UnknownDatasetError, ScheduleConfigError, UnknownMethodError, NonFiniteLossError,
            ValueError)  # ValueError: a config value the code refuses (it says which)


def run(argv: list[str] | None = None) -> None:
    cli.run(main, argv, expected=_expected_errors)


if __name__ == "__main__":
    run()
