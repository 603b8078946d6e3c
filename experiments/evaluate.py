"""Command-line evaluation of a training run or of an imported public PyTorch checkpoint.

    python -m experiments.evaluate --workdir=DIR [--checkpoint=best|latest|STEP] [--split=test]
                                   [--decode=grid|peak|refine|trajectory]
    python -m experiments.evaluate --workdir=OUT --config=derefnet --torch_checkpoint=derefnet.pth

The first form reads the run's ``config.json`` from the workdir; the second converts a checkpoint trained with
the public PyTorch code (``.pth`` state_dict, or an ``.npz`` of the same keys) and scores it with ``--config``.
Metrics JSON, detections CSV and figures go to ``{workdir}/eval/{split}[-{decode}]/``; the paper's table row
is printed. ``--decode=grid`` is the paper protocol; the others are this project's continuous decoders.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory (holds config.json and checkpoints/).", required=True)
flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
flags.DEFINE_string("split", "test", "Split to score: train | validation | test.")
flags.DEFINE_enum("decode", "grid", ["grid", "peak", "refine", "trajectory"], "Map decoder (grid = paper).")
flags.DEFINE_string("torch_checkpoint", None, "Public PyTorch DeRefNet checkpoint (.pth or .npz) to import.")
flags.DEFINE_string("config", None, "Config name[:variant] for --torch_checkpoint (default: derefnet).")
flags.DEFINE_string("data_dir", None, "Override config.dataset.data_dir.")
flags.DEFINE_string("dataset", None, "Override config.dataset.name, e.g. seqcsist/public.")
flags.DEFINE_bool("export_public", False, "Also write predictions as public-layout COS{N}.xml annotations.")


def load_run_config(workdir: pathlib.Path):
    """The resolved config a training run saved in its workdir."""
    import ml_collections

    path = workdir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {workdir} a training workdir? "
                                "(to score a PyTorch checkpoint pass --torch_checkpoint and --config)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def evaluate_workdir(workdir, checkpoint="best", split="test", decode="grid", torch_checkpoint=None,
                     config=None, export_public=False) -> dict:
    """Library form of this command (no flags). Returns the metrics dict."""
    from seqcsist_jax import evaluate as evaluation
    from seqcsist_jax.checkpointing import abstract_like
    from seqcsist_jax.train import Trainer

    workdir = pathlib.Path(workdir)
    if torch_checkpoint:
        from experiments import configs
        from seqcsist_jax.interop import load_public_checkpoint

        config = config if config is not None else configs.get_config("derefnet")
        if config.model.name != "derefnet":
            raise ValueError(f"--torch_checkpoint imports DeRefNet weights; the config's model is {config.model.name!r}")
        trainer = Trainer(config, workdir)
        options = {k: v for k, v in config.model.to_dict().items() if k != "name"}
        params = load_public_checkpoint(torch_checkpoint, **options)
        name, step = f"{config.model.name} (imported {pathlib.Path(torch_checkpoint).name})", None
    else:
        config = config if config is not None else load_run_config(workdir)
        trainer = Trainer(config, workdir)
        state, _, _, step = trainer.checkpoints.restore(checkpoint, abstract_like(trainer.initial_state()))
        params, name = state.params, config.model.name
    return evaluation.evaluate_run(trainer, params, split=split, decode=decode, name=name, step=step,
                                   export_public=export_public)


def _quiet_libraries() -> None:
    """Orbax/absl INFO chatter hides the progress bar; keep warnings unless --verbosity was given."""
    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)


def main(argv) -> None:
    del argv
    _quiet_libraries()
    config = None
    if FLAGS.config or FLAGS.torch_checkpoint:
        from experiments import configs

        try:
            config = configs.get_config(FLAGS.config or "derefnet")
        except ValueError as e:
            sys.exit(f"error: {e}")
    elif FLAGS.data_dir or FLAGS.dataset:
        config = load_run_config(pathlib.Path(FLAGS.workdir))
    if config is not None:
        if FLAGS.data_dir:
            config.dataset.data_dir = FLAGS.data_dir
        if FLAGS.dataset:
            config.dataset.name = FLAGS.dataset
    result = evaluate_workdir(FLAGS.workdir, FLAGS.checkpoint, FLAGS.split, FLAGS.decode,
                              FLAGS.torch_checkpoint, config, FLAGS.export_public)
    print(json.dumps({k: v for k, v in result.items() if k not in ("table_row",)}, indent=1, default=float))


if __name__ == "__main__":
    app.run(main)
