"""Command-line training: ``python -m experiments.train --config=derefnet --workdir=DIR``.

``--config=<name>[:<variant>]`` resolves to ``experiments/configs/<name>.py`` (``get_config(variant)``) and
``--config.a.b=value`` overrides any field, e.g.::

    python -m experiments.train --config=derefnet_quick --workdir=workdirs/quick
    python -m experiments.train --config=derefnet --workdir=workdirs/paper --config.dataset.data_dir=~/tfds
    python -m experiments.train --config=derefnet:smoke --workdir=/tmp/smoke --config.num_train_steps=10

An existing run in ``--workdir`` is resumed from its latest checkpoint.
"""

from __future__ import annotations

import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from experiments import configs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and evaluation outputs.", required=True)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config name[:variant] or path.", lock_config=True)


def resolve_config_argv(argv: list[str]) -> list[str]:
    """Rewrites ``--config=name[:arg]`` (or ``--config name``) into the config file's path for ``config_flags``.

    Raises:
      ValueError: unknown config name (the message lists the available ones).
    """
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--config="):
            out[i] = "--config=" + configs.config_path(a[len("--config="):])
        elif a == "--config" and i + 1 < len(out):
            out[i + 1] = configs.config_path(out[i + 1])
    return out


def _quiet_libraries() -> None:
    """Orbax/absl INFO chatter hides the progress bar; keep warnings unless --verbosity was given."""
    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)


def main(argv: list[str]) -> None:
    del argv
    _quiet_libraries()
    from seqcsist_jax.train import train_and_evaluate

    result = train_and_evaluate(_CONFIG.value, FLAGS.workdir)
    best = result.get("best") or {}
    test = result.get("test") or {}
    print(f"done: step {result['step']}; best validation CSO-mAP {100 * best.get('mAP', float('nan')):.2f}; "
          f"test CSO-mAP {100 * test.get('mAP', float('nan')):.2f}")


def run(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    try:
        argv = resolve_config_argv(argv)
    except ValueError as e:
        sys.exit(f"error: {e}")
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
