"""The paper's comparison table on this pipeline: ``python -m experiments.compare``.

For every selected method it trains the method's config (or loads the finished run) in ``WORKDIR/<method>``
with the same, stated budget, scores the best checkpoint (by validation CSO-mAP) on the test split with the
paper's protocol (grid decoding, threshold 70, frames 2..17), measures parameters, FLOPs per trajectory and
inference FPS on this machine, and writes a Markdown table, a JSON file and a figure next to the paper's
published numbers (SPEC §7, clearly labelled: those were trained at full scale on the public data)::

    python -m experiments.compare --dataset=seqcsist/mini --budget_steps=100 --learning_rate=1e-3 --evals=1 \\
        --max_eval_trajectories=25 --workdir=workdirs/compare_mini --output=experiments/benchmarks/results/compare_mini
    python -m experiments.compare --methods=srcnn,edsr --paper_scale --workdir=workdirs/compare_paper

Flags:
  --methods           comma-separated config names (default: all of :data:`DEFAULT_METHODS`)
  --dataset           dataset override (``seqcsist/mini``, ``seqcsist/default``, ``csist100k/mini``, or the in-memory
                      ``simulated`` / ``simulated_csist100k`` generators for quick trials; default: each config's)
  --budget_steps N    training steps for every learned method (or --budget_epochs E); equal for all
  --paper_scale       use each config's own schedule (100 epochs, SRCNN 200) instead of a budget
  --learning_rate     override the configs' learning rate (default: each config's own; the caption names them)
  --variant           config variant for every method (``smoke`` in tests; default: the paper's architecture)
  --evals             validation evaluations per run (best checkpoint among them; default 2)
  --max_eval_trajectories  validation subset size (default: the config's)
  --workdir           one subdirectory per method; finished runs with the same config (and, for a method defined
                      in a user's file, the same source of that file) are reused
  --output            path prefix of the table files (default ``WORKDIR/compare`` → .md, .json, .png)
  --force             recompute even when a finished run with the same config exists
  --restart_changed   a row whose workdir holds a run of another config (or one trained on another device count,
                      hence another global batch) is set aside and restarted
  --jobs N            rows run at once, each in its own process (default 1). XLA runs a convolution on one CPU
                      core, so two jobs cut the 2-core table from 74 to 55 min; the FPS column is re-measured row by
                      row at the end with nothing else running (compilations come from a cache in WORKDIR);
                      rows start longest first by the times in the previous table at --output; a worker's
                      progress lines start with its row's name (``[espcn] step 2: validation …``)

Reuse: a row is reused when its ``WORKDIR/<row>/compare_row.json`` holds the same config and, for a method that is
not part of the package (``config.model.name = "path/to/file.py:build_fn"`` or a config-file row), the same SHA-256
of the file defining its builder and of the row's config file. When that source changed (or a run made before it
was recorded holds the folder), the old row folder is moved aside to ``WORKDIR/<row>.stale-<UTC time>`` (kept, and
said in one line) and the row is trained afresh: its old checkpoints never meet the new code. Only those files are
fingerprinted, not the modules they import.

Exit status: 0 when every row finished; 1 when a row failed (the table is still written, marking it failed, and
the last line names the failed rows; ``main()`` returns the table then, only the command exits 1); 2 for a usage,
config or file-system error (one ``error: ...`` line on stderr; a mistyped row or config and an unwritable --workdir
or --output are refused before anything is trained); 128 + N when signal N stopped it.

Stopping: Ctrl-C or SIGTERM stops the whole table. A row that is training saves a checkpoint first (with
``--jobs``, each worker gets exactly one SIGTERM from the table, or from the kernel on Linux if the table is
SIGKILLed), the command exits with 128 + the signal number, and running it again reuses the finished rows and
resumes the stopped ones.

Classical methods (``model.trainable = False``: ISTA, FISTA) are not trained; they are evaluated directly with
the batched, jitted solver, and their FLOPs are counted analytically from the measured mean iteration count
(XLA's cost analysis counts a ``while_loop`` body once). Learned methods' FLOPs come from XLA's cost analysis of
the jitted inference of one trajectory (a multiply-add counts 2). FPS is predicted frames (output maps) per second of the jitted
inference on batches of ``config.eval.batch_size`` trajectories, after a warm-up call, on this machine: the
test evaluation's own full batches after its first (with ``--jobs`` > 1, a separate pass once every row is
done, so no row is timed while another runs: the same batches, until :data:`FPS_PASS_SECONDS` have been timed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import pathlib
import platform
import signal
import sys
import threading
import time
from typing import Sequence

import numpy as np

from absl import flags

from experiments import cli
from seqcsist_jax.fileio import atomic_path, atomic_write, atomic_write_json
from seqcsist_jax.methods import CSIST100K_METHODS, METHOD_TABLE  # cheap: the table imports no method module
from seqcsist_jax.suggest import closest_name, did_you_mean, flag_error_line
from seqcsist_jax.workdir import latest_checkpoint_step, run_differences

# Every SeqCSIST method (Table 7's 23 rows + FISTA), in the table's order.
DEFAULT_METHODS = tuple(m for m in METHOD_TABLE if m not in CSIST100K_METHODS)

# Named row variants, selected as ``method@variant`` in --methods: the public code's behaviour where it differs
# from our default (issue #13: the rows that disagree with the paper). Each is config overrides and a label.
ROW_VARIANTS: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "public_loss": ((("loss.public_broadcast", "True"),), "public broadcast loss"),
    "shared_storage": ((("model.shared_storage", "True"),), "public shared storage"),
    "public_input": ((("model.input_mode", "public_column"),), "public column input"),
}
# The README's full table (--methods=table): every method, then the paper-faithful variant rows.
TABLE_ROWS = DEFAULT_METHODS + (
    "bid@public_input",
    "lista@public_loss",
    "liht@public_loss",
    "lamp@public_loss",
    "tilista@public_loss",
    "liht@shared_storage",
    "tilista@shared_storage",
)
# Named row lists accepted by --methods.
ROW_LISTS = {"all": DEFAULT_METHODS, "table": TABLE_ROWS}
METRICS = ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25")
ROW_FILE = "compare_row.json"
SOURCE_FILE = "compare_source.json"  # a user method's source fingerprints, written as its row's run starts
FLOPS_FRAMES = 20  # FLOPs are reported per 20-frame trajectory (the paper's), whatever the dataset's length
FPS_PASS_SECONDS = 3.0  # FPS pass of a --jobs > 1 run: test batches are timed (after a warm-up) for this long
COMPILE_CACHE = ".jax_cache"  # under --workdir: the FPS pass reuses the workers' compilations

log = logging.getLogger("compare")


# --------------------------------------------------------------------------------------------- arguments


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("methods", "all", "comma-separated rows: config names, method@variant (variants: "
                        + ", ".join(ROW_VARIANTS) + "), or a list name: 'all' (every method) or 'table' (every "
                        "method and the paper-faithful variant rows), or config file paths "
                        "(path/to/mynet.py[@variant]); available methods: " + ", ".join(DEFAULT_METHODS)
                        + "; for CSIST-100K: " + ", ".join(CSIST100K_METHODS),
                        flag_values=fv)
    flags.DEFINE_string("method_steps", "", "per-row step budgets overriding the common one, e.g. rdn=50,srgan=100 "
                        "(rows marked 'reduced budget' in the table)", flag_values=fv)
    flags.DEFINE_string("dataset", None, "dataset name override: seqcsist/mini, seqcsist/default, csist100k/mini, "
                        "... or the in-memory generators simulated / simulated_csist100k (quick trials)", flag_values=fv)
    flags.DEFINE_integer("budget_steps", None, "training steps per learned method (one of --budget_steps, "
                          "--budget_epochs or --paper_scale is required)", flag_values=fv)
    flags.DEFINE_float("budget_epochs", None, "training epochs per learned method (or --budget_steps or "
                        "--paper_scale)", flag_values=fv)
    flags.DEFINE_bool("paper_scale", False, "each config's own (paper) schedule (instead of a "
                       "--budget_steps / --budget_epochs budget)", flag_values=fv)
    flags.DEFINE_float("learning_rate", None, "learning-rate override for every method", flag_values=fv)
    flags.DEFINE_string("variant", "", "config variant for every method: quick or smoke ('' = paper architecture)",
                        flag_values=fv)
    flags.DEFINE_integer("evals", 2, "validation evaluations per training run", flag_values=fv)
    flags.DEFINE_integer("max_eval_trajectories", None, "validation subset size", flag_values=fv)
    flags.DEFINE_string("workdir", None, "output directory (one subdirectory per method); a finished row is reused "
                        "when its config and, for a method in a user's file, that file are unchanged (a changed "
                        "file's row is moved aside to <row>.stale-<time> and trained afresh)", flag_values=fv)
    flags.DEFINE_string("output", None, "path prefix of compare.{md,json,png} (default WORKDIR/compare)",
                        flag_values=fv)
    flags.DEFINE_bool("force", False, "recompute finished runs", flag_values=fv)
    flags.DEFINE_bool("restart_changed", False, "a row whose workdir holds a run of another config (e.g. another "
                      "budget) or of another global batch (another device count) sets it aside (renamed, kept) and "
                      "starts over", flag_values=fv)
    flags.DEFINE_integer("jobs", 1, "rows run at once in separate processes (2 on a 2-core CPU: 55 instead of 74 "
                         "min for the table, as XLA runs a convolution on one core; rows of a few seconds gain "
                         "nothing, each process pays JAX's start-up); FPS is then re-measured row by row",
                         flag_values=fv)
    flags.DEFINE_enum("lr_schedule", None, ["constant", "cosine"],
                      "learning-rate schedule override (default: the configs' own, constant like the paper)",
                      flag_values=fv)


_FLAG_NAMES = ("methods", "method_steps", "dataset", "budget_steps", "budget_epochs", "paper_scale", "learning_rate", "variant",
               "evals", "max_eval_trajectories", "workdir", "output", "force", "restart_changed",
               "lr_schedule", "jobs")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line (absl flags; ``--config.a.b=value`` overrides apply to every method's config).

    Raises:
      CommandError: a usage error (a ``SystemExit`` with status 2), its ``error: ...`` line printed to stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, overrides = cli.split_overrides(argv)
        fv = flags.FlagValues()
        _define_flags(fv)
        if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in rest):
            paragraphs = cli.plain_text(__doc__).split(chr(10) + chr(10))
            status = next(p for p in paragraphs if p.startswith("Exit status"))
            print(f"{paragraphs[0]}\n\n{status}\n\nflags (--config.a.b=value overrides every method's "
                  f"config):\n{fv.get_help(include_special_flags=False)}")
            raise SystemExit(0)
        try:
            extra = fv(["compare"] + rest)[1:]
        except flags.Error as e:
            raise cli.UsageError(flag_error_line(e)) from None
        if extra:
            raise cli.UsageError(f"unexpected arguments {' '.join(extra)} (flags are --name=value)")
        args = argparse.Namespace(**{name: fv[name].value for name in _FLAG_NAMES}, overrides=overrides)
        if not args.workdir:
            raise cli.UsageError("--workdir is required: the comparison's directory (one run per row, the "
                                 "table), e.g. --workdir=workdirs/compare")
        args.methods = expand_rows(args.methods)
        args.method_steps = parse_method_steps(args.method_steps, args.methods)
        budgets = [args.budget_steps is not None, args.budget_epochs is not None, args.paper_scale]
        if sum(budgets) == 0:
            raise cli.UsageError("give a training budget (--budget_steps or --budget_epochs) or --paper_scale")
        if sum(budgets) > 1:
            raise cli.UsageError("give only one of --budget_steps, --budget_epochs and --paper_scale")
        if args.budget_steps is not None and args.budget_steps <= 0:
            raise cli.UsageError("--budget_steps must be positive")
        if args.budget_epochs is not None and args.budget_epochs <= 0:
            raise cli.UsageError("--budget_epochs must be positive")
        if args.evals < 1:
            raise cli.UsageError("--evals must be >= 1")
        if args.jobs < 1:
            raise cli.UsageError("--jobs must be >= 1")
        if args.method_steps and args.paper_scale:
            raise cli.UsageError("--method_steps reduces a budget; --paper_scale runs each config's own schedule")
    except cli.UsageError as e:
        raise fail(str(e)) from None
    return args


class CommandError(SystemExit):
    """A usage, config or file-system error of the command: ``str()`` is its ``error: ...`` line and ``code`` the
    exit status (2, like ``experiments.train`` and ``experiments.evaluate``)."""

    def __init__(self, line: str, status: int = 2):
        super().__init__(line)
        self.code = status


def fail(message: str) -> CommandError:
    """Prints ``error: message`` (one line) to stderr and returns the :class:`CommandError` to raise."""
    line = f"error: {message}"
    print(line, file=sys.stderr, flush=True)
    return CommandError(line)


def expand_rows(text: str) -> list[str]:
    """The rows of ``--methods``: list names (``all``, ``table``) expanded, each ``method@variant`` checked.

    Raises:
      UsageError: empty list, an unknown variant or method (see :func:`check_rows`).
    """
    rows: list[str] = []
    for item in (m.strip() for m in text.split(",")):
        if not item:
            continue
        for row in ROW_LISTS.get(item, (item,)):
            base, _, variant = row.partition("@")
            if variant and variant not in ROW_VARIANTS:
                from experiments.configs.common import VARIANTS

                if variant in VARIANTS:  # a config variant (name:smoke) typed as a row variant
                    raise cli.UsageError(f"{row!r}: {variant!r} is a config variant, set for every row with "
                                         f"--variant={variant} (row variants after '@': {', '.join(ROW_VARIANTS)})")
                raise cli.UsageError(f"unknown row variant {variant!r} in {row!r}{did_you_mean(variant, ROW_VARIANTS)}; "
                                     f"variants: {', '.join(ROW_VARIANTS)}")
            if row not in rows:
                rows.append(row)
    if not rows:
        raise cli.UsageError("--methods is empty")
    check_rows(rows)
    return rows


def check_rows(rows: Sequence[str]) -> None:
    """Raises UsageError for a row whose method is neither a config name (with did-you-mean) nor a config file
    path, and for two rows that would share a run directory (config files with the same stem as another row)."""
    from experiments import configs

    available = configs.available_configs()
    bases = [r.partition("@")[0] for r in rows]
    unknown = list(dict.fromkeys(b for b in bases if b not in available and not is_config_file(b)))
    if unknown:
        guesses = {m: closest_name(m, [*available, *ROW_LISTS]) for m in unknown}
        if len(unknown) == 1:
            hints = f"did you mean {guesses[unknown[0]]!r}?" if guesses[unknown[0]] else ""
        else:
            hints = "; ".join(f"did you mean {g!r} for {m!r}?" for m, g in guesses.items() if g)
        raise cli.UsageError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                             + (f" ({hints})" if hints else "")
                             + f"; available configs: {', '.join(available)}, the lists "
                             f"{', '.join(ROW_LISTS)}, or a config file path (path/to/mynet.py)")
    missing = list(dict.fromkeys(b for b in bases if is_config_file(b) and not pathlib.Path(b).expanduser().is_file()))
    if missing:
        raise cli.UsageError(f"config file(s) not found: {', '.join(missing)}")
    names: dict[str, str] = {}
    for row in rows:
        other = names.setdefault(row_name(row), row)
        if other != row:
            raise cli.UsageError(f"rows {other!r} and {row!r} would share the run directory {row_name(row)!r}; "
                                 "rename one config file")


def parse_method_steps(text: str, rows: Sequence[str]) -> dict[str, int]:
    """``rdn=50,srgan=100`` → ``{"rdn": 50, "srgan": 100}``; a method name applies to its variant rows too.

    Raises:
      UsageError: malformed entry, non-positive steps, or a name that is not one of the selected rows' methods.
    """
    steps: dict[str, int] = {}
    known = {n for r in rows for n in (r, r.partition("@")[0], row_name(r), row_name(r).partition("@")[0])}
    for item in (m.strip() for m in (text or "").split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            number = int(value)
        except ValueError:
            number = 0
        if not sep or number <= 0:
            raise cli.UsageError(f"--method_steps entry {item!r}: expected NAME=STEPS with STEPS a positive integer")
        if name not in known:
            raise cli.UsageError(f"--method_steps names {name!r}, which is not among the selected rows"
                                 f"{did_you_mean(name, sorted(known))}")
        steps[name] = number
    return steps


def row_steps(row: str, args: argparse.Namespace) -> int | None:
    """The reduced step budget of one row (``--method_steps``: the row's own entry, else its method's), or None."""
    table = getattr(args, "method_steps", None) or {}
    for key in (row, row_name(row), row.partition("@")[0], row_name(row).partition("@")[0]):
        if key in table:
            return table[key]
    return None


def is_config_file(base: str) -> bool:
    """Whether a row's method part is a config file path (``path/to/mynet.py``) rather than a config name."""
    return base.endswith(".py") or "/" in base


def row_name(row: str) -> str:
    """A row's short name: the config name, or a config file's stem (``path/to/mynet.py@v`` → ``mynet@v``)."""
    base, sep, variant = row.partition("@")
    return (pathlib.Path(base).stem if is_config_file(base) else base) + sep + variant


def row_dir(root: pathlib.Path, row: str) -> pathlib.Path:
    """The row's run directory under the comparison's workdir (named by :func:`row_name`)."""
    return pathlib.Path(root) / row_name(row)


def row_label(row: str) -> str:
    """Display name of a row: the method's label, with the variant's label in parentheses."""
    from seqcsist_jax.baselines import published

    base, _, variant = row_name(row).partition("@")
    return published.label(base) + (f" ({ROW_VARIANTS[variant][1]})" if variant else "")


# ------------------------------------------------------------------------------------------------ configs


def method_config(name: str, args: argparse.Namespace):
    """The config of one row (``method`` or ``method@variant``) with the comparison's overrides applied (dataset,
    budget, learning rate, the variant's settings, ``--method_steps``).

    Raises:
      ValueError: unknown config name (the message lists the available ones).
      cli.UsageError: a variant whose fields the method's config does not have.
    """
    from experiments import configs

    base, _, variant = name.partition("@")
    spec = f"{base}:{args.variant}" if args.variant else base
    config = configs.get_config(spec)
    if variant:
        try:
            cli.apply_overrides(config, ROW_VARIANTS[variant][0])
        except cli.UsageError as e:
            sets = ", ".join(f"{key}={value}" for key, value in ROW_VARIANTS[variant][0])
            rows = [r for r in TABLE_ROWS if r.endswith(f"@{variant}")]
            raise cli.UsageError(f"row variant {variant!r} ({sets}) does not apply to {base}: {e}"
                                 + (f"; it is for {', '.join(rows)}" if rows else "")) from None
    if args.dataset:  # with that benchmark's protocol (CSIST-100K: every image scored at threshold 50)
        from experiments.configs import common

        common.set_dataset(config, args.dataset)
    if args.max_eval_trajectories:
        config.dataset.max_eval_trajectories = args.max_eval_trajectories
    if args.learning_rate is not None:
        config.optimizer.learning_rate = args.learning_rate
    if getattr(args, "lr_schedule", None):
        config.optimizer.schedule = args.lr_schedule
    cli.apply_overrides(config, getattr(args, "overrides", []))
    if not args.paper_scale:
        reduced = row_steps(name, args)
        if reduced:
            config.num_train_steps = int(reduced)
        elif args.budget_steps:
            config.num_train_steps = int(args.budget_steps)
        else:
            config.num_train_steps = -1
            config.num_epochs = float(args.budget_epochs)
    return config  # main() checks it (train.check_config: a mistyped --dataset too) before any row runs


def is_trainable(config) -> bool:
    """``config.model.trainable`` (classical solvers set it False); configs without the field are trainable."""
    return bool(config.model.get("trainable", True))


def _schedule(config, evals: int) -> int:
    """Resolves the number of steps of a run and sets ``evals`` evaluations (and checkpoints) per run."""
    if config.num_train_steps > 0:
        steps = int(config.num_train_steps)
    else:  # an epoch budget or the paper's schedule: one step per global batch of trajectories
        from seqcsist_jax.data.splits import count_split
        from seqcsist_jax.train_multistep import resolve_global_batch

        num_train = count_split(config.dataset, config.dataset.train_split)
        steps_per_epoch = num_train // resolve_global_batch(config, _num_devices(config))
        steps = int(round(config.num_epochs * steps_per_epoch))
    steps = max(1, steps)
    config.num_train_steps = steps
    every = max(1, math.ceil(steps / evals))
    config.eval_every_steps = every
    config.checkpoint_every_steps = every
    config.log_every_steps = max(1, min(config.log_every_steps, every))
    return steps


def _num_devices(config) -> int:
    import jax

    return config.num_devices if config.get("num_devices", -1) > 0 else jax.device_count()


# ------------------------------------------------------------------------------------------------ measuring


def _abstract_inputs(num_frames: int):
    import jax
    import jax.numpy as jnp

    return (
        jax.ShapeDtypeStruct((1, num_frames, 11, 11), jnp.float32),
        jax.ShapeDtypeStruct((121, 1089), jnp.float32),
        jax.ShapeDtypeStruct((1089, 121), jnp.float32),
    )


def learned_flops(method, num_frames: int) -> float:
    """XLA cost-analysis FLOPs of the jitted inference of one trajectory (params as abstract shapes)."""
    import jax

    from seqcsist_jax.model_stats import flops_per_trajectory

    frames, phi, q = _abstract_inputs(num_frames)
    params = jax.eval_shape(method.model.init, jax.random.PRNGKey(0), frames, phi, q)["params"]
    return float(flops_per_trajectory(method.model, params, phi, q, num_frames=num_frames))


def classical_flops(predictor, arrays, num_frames: int = FLOPS_FRAMES, num_trajectories: int = 2) -> tuple[float, float]:
    """Analytic FLOPs of ISTA/FISTA/BID per ``num_frames``-frame trajectory, from the mean iteration count measured
    on the first ``num_trajectories`` test trajectories.

    Returns:
      ``(flops_per_trajectory, mean_iterations)``.
    """
    import jax.numpy as jnp

    from seqcsist_jax.baselines import classical

    frames = jnp.asarray(arrays["frames"][:num_trajectories], jnp.float32)
    out = predictor.method.model.apply({}, frames, jnp.asarray(predictor.phi, jnp.float32), None)
    mean_iter = float(np.mean(np.asarray(out["iterations"])))
    # a solver with its own cost model (BID) says so; ISTA/FISTA use the classical one
    per_frame = getattr(predictor.method.model, "flops_per_frame", classical.flops_per_frame)
    return per_frame(mean_iter) * num_frames, mean_iter


def _paper_row(name: str) -> dict | None:
    from seqcsist_jax.baselines import published

    row = published.published(name.partition("@")[0])
    if row is None:
        return None
    return {"mAP": row.mAP, **{k: getattr(row, k) for k in METRICS[1:]}, "fps": row.fps, "params": row.params}


def run_method(name: str, args: argparse.Namespace, workdir: pathlib.Path) -> dict:
    """Trains (or loads) and evaluates one method; returns its table row (also saved to ``workdir/ROW_FILE``)."""
    from seqcsist_jax import evaluate as evaluation
    from seqcsist_jax import methods
    from seqcsist_jax import train as train_lib

    config = method_config(name, args)
    workdir.mkdir(parents=True, exist_ok=True)
    trainable = is_trainable(config)
    batch = None
    if trainable:
        _schedule(config, args.evals)
        from seqcsist_jax.train_multistep import resolve_global_batch

        devices = _num_devices(config)
        batch = {"global_batch": resolve_global_batch(config, devices), "num_devices": devices}
    key = json.loads(json.dumps(config.to_dict(), default=str))
    source = row_source(name, config)
    if source is not None:  # a user's method: a row of other code is neither reused nor resumed
        _set_aside_changed_source(name, workdir, config, source)

    row_path = workdir / ROW_FILE
    if row_path.exists() and not args.force:
        try:
            cached = json.loads(row_path.read_text())
            if not isinstance(cached, dict):
                raise ValueError(f"a {type(cached).__name__}, not a row")
        except (OSError, ValueError) as e:  # a damaged cache only costs re-scoring the row's run
            log.warning("%s: ignoring the damaged %s (%s); the row is computed again", name, row_path, e)
            cached = {}
        # restart-safe fields (a data_dir left out of a rerun, the progress bar) do not change the row
        same_run = isinstance(cached.get("config"), dict) and not run_differences(cached["config"], key)
        if same_run and cached.get("source") == source:
            if batch is None or cached.get("global_batch") in (None, batch["global_batch"]):
                log.info("%s: reusing the finished run in %s", name, workdir)
                return cached
            # the same config on another device count: per_device_batch_size × devices is another global batch
            _set_aside_other_batch(workdir, cached, batch, force=getattr(args, "restart_changed", False))

    if trainable:
        _set_aside_stale_run(workdir, config, force=args.force or getattr(args, "restart_changed", False))
    if source is not None:  # before the run starts: an interrupted run of this code is resumed, of other code not
        atomic_write_json(workdir / SOURCE_FILE, {"source": source})
    start = time.perf_counter()
    if trainable:
        result = train_lib.train_and_evaluate(config, workdir)
        test = result["test"]
        steps = int(result["step"])
        flops = learned_flops(methods.build_method(config.model, config.loss), FLOPS_FRAMES)
        extra = {"best_validation_mAP": (result.get("best") or {}).get("mAP"),
                 "train_seconds": float(result.get("train_seconds") or 0.0)}
        resumed_seconds = float(result.get("resumed_train_seconds") or 0.0)
    else:
        from seqcsist_jax.data.splits import load_arrays, q_for_workdir
        from seqcsist_jax.predictor import make_predictor

        predictor = make_predictor(config, q_for_workdir(workdir, config.dataset))
        split = config.dataset.test_split
        arrays = load_arrays(config.dataset, split)
        test = evaluation.evaluate_run(predictor.predict, {}, arrays, config.eval, mesh=predictor.mesh,
                                       frame_index=predictor.method.frame_index, name=row_label(name),
                                       split=split, out_dir=evaluation.eval_dir(workdir, split))
        steps = 0
        flops, mean_iter = classical_flops(predictor, arrays, FLOPS_FRAMES)
        extra = {"mean_iterations": mean_iter, "max_iter": int(config.model.max_iter)}
        resumed_seconds = 0.0
    # this call's wall time plus the training earlier calls did before it resumed the row
    seconds = time.perf_counter() - start + resumed_seconds

    row = {
        "method": name,
        "label": row_label(name),
        "trainable": trainable,
        "reduced_budget": bool(trainable and row_steps(name, args)),
        "params": int(test["params"]),
        "flops_per_trajectory": flops,
        "fps": float(test["fps"]),
        **{k: float(test[k]) for k in METRICS},
        "steps": steps,
        "learning_rate": float(config.optimizer.learning_rate) if trainable else None,
        "weight_decay": float(config.optimizer.weight_decay) if trainable else None,
        "seconds": seconds,
        "num_test_trajectories": int(test.get("num_trajectories", 0)),
        "dataset": str(config.dataset.name),
        # the published table is SeqCSIST's: no paper column for single-image datasets
        "paper": None if is_single_image(config.dataset.name) else _paper_row(name),
        **{k: float(test[k]) for k in ("psnr", "ssim") if test.get(k) is not None},
        "config": key,
        "source": source,
        **(batch or {}),
        **extra,
    }
    atomic_write_json(row_path, row)
    return row


def row_source(row: str, config) -> dict | None:
    """Fingerprints of the user code a row runs (:func:`seqcsist_jax.methods.method_source_fingerprint`):
    ``{"builder": sha256}`` of the file defining ``config.model.name``'s builder, and for a config-file row
    ``{"config_file": sha256}`` of that file; None for a row of the package's own code."""
    import hashlib

    from seqcsist_jax import methods

    source = {}
    builder = methods.method_source_fingerprint(str(config.model.name))
    if builder:
        source["builder"] = builder
    base = row.partition("@")[0]
    if is_config_file(base):
        try:
            source["config_file"] = hashlib.sha256(pathlib.Path(base).expanduser().read_bytes()).hexdigest()
        except OSError:
            pass
    return source or None


def _recorded_source(workdir: pathlib.Path) -> tuple[bool, dict | None]:
    """``(holds_a_run, source)``: whether the row's workdir holds anything of an earlier run, and the source
    fingerprints recorded when that run started (:data:`SOURCE_FILE`) or finished (the row file); None when
    neither records them (a run made before they were recorded, or a damaged record)."""
    ignored = {RESULT_FILE, ".lock"}
    if not workdir.is_dir() or not any(p.name not in ignored for p in workdir.iterdir()):
        return False, None
    for path in (workdir / SOURCE_FILE, workdir / ROW_FILE):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("source"), dict):
            return True, record["source"]
    return True, None


def _set_aside_changed_source(name: str, workdir: pathlib.Path, config, source: dict) -> None:
    """A row whose workdir holds a run of other source code of its method (or of unrecorded source) is moved to
    ``<workdir>.stale-<UTC time>`` (kept, said in one line) and starts afresh: reusing its row or resuming its
    checkpoints would put the old model in the table under the new code's name."""
    holds, recorded = _recorded_source(workdir)
    if not holds or recorded == source:
        return
    files = {"builder": str(config.model.name).rpartition(":")[0], "config_file": name.partition("@")[0]}
    keys = [k for k in source if recorded is None or recorded.get(k) != source[k]] or list(source)
    what = " and ".join(dict.fromkeys(files[k] for k in keys))
    aside = _aside_path(workdir, "stale")
    workdir.rename(aside)
    workdir.mkdir(parents=True)
    again = "training it afresh" if is_trainable(config) else "evaluating it afresh"
    if recorded is None:
        log.warning("%s: the run in %s does not record its method's source (%s), so it may be of other code; "
                    "moved it to %s (kept) and %s", name, workdir, what, aside, again)
    else:
        log.warning("%s: the method's source (%s) changed since the row in %s was trained; moved that row to %s "
                    "(kept) and %s", name, what, workdir, aside, again)


def _aside_path(workdir: pathlib.Path, tag: str) -> pathlib.Path:
    """``<workdir>.<tag>-<UTC time>``, numbered when that exists (two set-asides within a second)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = workdir.with_name(f"{workdir.name}.{tag}-{stamp}")
    number = 1
    while aside.exists():
        aside = workdir.with_name(f"{workdir.name}.{tag}-{stamp}-{number}")
        number += 1
    return aside


def _set_aside_other_batch(workdir: pathlib.Path, cached: dict, batch: dict, force: bool) -> None:
    """A finished row trained with another global batch than this process would use (the same config on another
    device count): with ``force`` it is renamed to ``<workdir>.replaced-<UTC time>`` so the row is trained again;
    without, a clear error (reusing it would put rows of two batch sizes in one table, silently).

    Raises:
      cli.UsageError: ``force`` is off (the message names both batches and device counts).
    """
    size = cached["global_batch"]
    then = f"a global batch of {size} trajector{'y' if size == 1 else 'ies'}"
    if cached.get("num_devices"):
        then += f" on {cached['num_devices']} device(s)"
    now = f"{batch['global_batch']} on {batch['num_devices']} device(s)"
    if not force:
        # --restart_changed first: in a table of rows from several device counts, moving machines only swaps rows
        raise cli.UsageError(f"{workdir} holds a run trained with {then}; here it would be {now}: rerun with "
                             "--restart_changed to set it aside and train this row again here, or run the whole "
                             f"table on {cached.get('num_devices') or 'those'} device(s) to reuse it")
    aside = _aside_path(workdir, "replaced")
    workdir.rename(aside)
    workdir.mkdir(parents=True)
    log.warning("%s held a run trained with %s (here %s); moved it to %s and starting over", workdir, then, now, aside)


def _set_aside_stale_run(workdir: pathlib.Path, config, force: bool) -> None:
    """A row's workdir holding a run of another config (e.g. an earlier budget): with ``force`` it is
    renamed to ``<workdir>.replaced-<UTC time>`` (kept, not deleted) so the row starts over; without, a clear error.
    Continuing it would mix two budgets' schedules in one run.

    Raises:
      cli.UsageError: the workdir holds another config's run and ``force`` is off (the message says what differs).
    """
    from seqcsist_jax.workdir import run_config_differences

    diffs = run_config_differences(workdir, config)
    if not diffs:
        return  # the same run: train_and_evaluate resumes it from its checkpoints
    shown = "; ".join(diffs[:4]) + (f"; … ({len(diffs) - 4} more)" if len(diffs) > 4 else "")
    if not force:
        state = "a finished" if (workdir / "result.json").exists() else "an unfinished"
        raise cli.UsageError(f"{workdir} holds {state} run of another config ({shown}); rerun with "
                             "--restart_changed to set it aside and start this row over, or use another --workdir")
    aside = _aside_path(workdir, "replaced")
    workdir.rename(aside)
    workdir.mkdir(parents=True)
    log.warning("%s held a run of another config (%s); moved it to %s and starting over", workdir, shown, aside)


def log_row_failure(name: str, error: BaseException) -> None:
    """Logs a failed row: one line for errors whose message is the whole story (a config value, a user's method
    that breaks the contract, a diverged run, a damaged checkpoint, the machine), a traceback for anything else
    (a bug, which needs one)."""
    from seqcsist_jax.checkpointing import CheckpointError
    from seqcsist_jax.run_lock import WorkdirLockedError

    if isinstance(error, OSError) and error.filename:  # the machine's: say the file and what to do
        log.error("%s failed: %s: %s", name, type(error).__name__, cli.os_error_line(error))
    elif isinstance(error, (ValueError, FloatingPointError, CheckpointError, WorkdirLockedError, OSError)):
        log.error("%s failed: %s: %s", name, type(error).__name__, " ".join(str(error).split()))
    else:
        log.error("%s failed", name, exc_info=error)


def failed_row(name: str, error: BaseException) -> dict:
    """A table row for a method whose run raised (metrics NaN, the error kept)."""
    return {
        "method": name, "label": row_label(name), "trainable": None, "params": None,
        "flops_per_trajectory": None, "fps": None, **{k: float("nan") for k in METRICS}, "steps": None,
        "paper": _paper_row(name), "error": f"{type(error).__name__}: {error}",
    }  # fmt: skip


def unfinished_row(name: str, workdir: pathlib.Path, stopped: bool) -> dict:
    """The row of a method that a stop request left unfinished (``stopped`` while it ran, or not started): metrics
    NaN, and in ``unfinished`` what a rerun of the command does with it."""
    step = latest_checkpoint_step(workdir)
    status = "stopped" if stopped else "not started"
    status += f"; resumes from step {step}" if step is not None else ("; starts over" if stopped else "")
    return {
        "method": name, "label": row_label(name), "trainable": None, "params": None,
        "flops_per_trajectory": None, "fps": None, **{k: float("nan") for k in METRICS}, "steps": step,
        "paper": _paper_row(name), "unfinished": status,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------- the table


def _fmt_params(n: int | None) -> str:
    if not n:
        return "–"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} K"
    return str(n)


def _fmt_flops(f: float | None) -> str:
    if f is None:
        return "–"
    return f"{f / 1e9:.3g} G" if f >= 1e8 else f"{f / 1e6:.3g} M"


def _fmt_fps(f: float | None) -> str:
    if f is None:
        return "–"
    return f"{f:,.1f}" if f < 10 else f"{f:,.0f}"


def machine_info() -> dict:
    import jax

    device = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "num_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
    }


def _fmt_duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def settings_text(settings: dict, rows: Sequence[dict] = ()) -> str:
    """The table's settings sentence; ``rows`` give the learning rates the configs used when no
    ``--learning_rate`` overrides them."""
    if settings.get("paper_scale"):
        budget = "each config's own schedule (paper scale: 100 epochs, SRCNN 200)"
    elif settings.get("budget_steps"):
        budget = (f"{settings['budget_steps']} step{'' if settings['budget_steps'] == 1 else 's'} (of each config's "
                  "global batch) for every learned method")
    else:
        budget = f"{settings['budget_epochs']} epochs for every learned method"
    lr = settings.get("learning_rate")
    if lr is not None:
        lr_text = f"learning rate {lr:g} for every method"
    else:
        used = sorted({float(r["learning_rate"]) for r in rows if r.get("learning_rate")})
        lr_text = "each config's learning rate" + (f" ({', '.join(f'{x:g}' for x in used)})" if used else "")
    evals = settings.get("evals")
    subset = settings.get("max_eval_trajectories")
    eval_text = (
        f"; best of {evals} validation evaluation(s)" + (f" on {subset} validation trajectories" if subset else "")
        if evals else ""
    )
    if settings.get("lr_schedule"):
        lr_text += f" ({settings['lr_schedule']} schedule)"
    if settings.get("dataset"):
        dataset_text = f"dataset `{settings['dataset']}`"
    else:
        defaults = sorted({str(r["dataset"]) for r in rows if r.get("dataset")})
        dataset_text = "each config's own dataset" + (f" ({', '.join(f'`{d}`' for d in defaults)})" if defaults else "")
    if settings.get("variant"):
        dataset_text += f"; config variant `{settings['variant']}` for every method"
    text = f"{dataset_text}; budget: {budget}; {lr_text}{eval_text}"
    if settings.get("overrides"):
        # (key, value) pairs (lists once read back from compare.json), shown as they were typed
        text += "; overrides " + ", ".join(
            f"`--config.{o[0]}={o[1]}`" if isinstance(o, (list, tuple)) and len(o) == 2 else f"`{o}`"
            for o in settings["overrides"])
    if settings.get("method_steps"):
        reduced = ", ".join(f"{row_label(k)} {v}" for k, v in settings["method_steps"].items())
        text += f"; reduced step budgets (too slow for the common budget on this machine; marked †): {reduced}"
    jobs = settings.get("jobs") or 1
    if jobs > 1 and settings.get("seconds_this_call"):
        text += (f"; {jobs} rows at a time in separate processes: wall time of this call "
                 f"{_fmt_duration(settings['seconds_this_call'])}")
        if settings.get("seconds_all_methods"):
            own = _fmt_duration(settings["seconds_all_methods"])
            text += (f" (the rows' own wall times, sharing the CPU, sum to {own}; rows reused from earlier calls "
                     "count theirs)")
        text += "; FPS timed row by row after every row had finished, nothing else running"
    elif settings.get("seconds_all_methods"):
        text += f"; wall time of all runs {_fmt_duration(settings['seconds_all_methods'])}"
        this_call = settings.get("seconds_this_call")
        if this_call and abs(this_call - settings["seconds_all_methods"]) > max(60.0, 0.1 * this_call):
            # rows reused or resumed from earlier calls count their earlier time; say what this call took
            text += f" (counting earlier calls' training and reused rows; this call {_fmt_duration(this_call)})"
    return text


def is_single_image(dataset_name: str | None) -> bool:
    """Whether the comparison runs on a single-image dataset (CSIST-100K)."""
    from seqcsist_jax.data.names import is_single_image as single

    return bool(dataset_name) and single(dataset_name)


def _protocol_text(settings: dict) -> str:
    if is_single_image(settings.get("dataset")):
        return ("CSIST-100K protocol (grid decoding, threshold 50, every image scored, CSO-mAP and AP ×100; "
                "PSNR/SSIM of the maps in the JSON rows)")
    return "paper protocol (grid decoding, threshold 70, frames 2..17, CSO-mAP and AP ×100)"


def _test_size_text(rows: Sequence[dict]) -> str:
    """`` (750 trajectories)`` — how many test examples the scores rest on ('' when the rows do not say)."""
    sizes = sorted({int(r["num_test_trajectories"]) for r in rows if r.get("num_test_trajectories")})
    if not sizes:
        return ""
    scored = [r for r in rows if r.get("num_test_trajectories")]
    unit = "images" if all(is_single_image(r.get("dataset")) for r in scored) else "trajectories"
    return f" ({' / '.join(map(str, sizes))} {unit})"


def markdown_table(rows: Sequence[dict], settings: dict, machine: dict) -> str:
    """The comparison as Markdown: this run, then the paper's numbers for the same methods."""
    lines = [
        "## Comparison on this pipeline",
        "",
        f"Trained and scored here: {settings_text(settings, rows)}. Test split{_test_size_text(rows)}, "
        f"{_protocol_text(settings)}. "
        "Classical methods are not trained. "
        f"FPS: predicted frames (output maps) per second of the jitted inference on this machine ({machine['device']}, "
        f"{machine['cpu_count']} CPU cores, backend {machine['backend']}); FLOPs per "
        f"{'20 images' if is_single_image(settings.get('dataset')) else '20-frame trajectory'} "
        "(XLA cost analysis; ISTA/FISTA analytic from the mean iteration count); min: wall minutes of the row's "
        "training (summed over the calls that resumed it) and evaluation."
        + (" Rows `method (variant)` run the public code's behaviour where it differs from our default; the paper "
           "column repeats the method's published number." if any("@" in r["method"] for r in rows) else ""),
        "",
        f"| method | params | FLOPs / {'20 images' if is_single_image(settings.get('dataset')) else 'traj'} | FPS | "
        "CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 | steps | min | paper CSO-mAP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = r.get("paper")
        if r.get("unfinished"):
            paper_map = f"{paper['mAP']:.2f}" if paper else "–"
            lines.append(f"| {r['label']} | {r['unfinished']} (rerun the command) |" + " |" * 10 + f" {paper_map} |")
            continue
        if r.get("error"):
            message = r["error"].splitlines()[0][:100].replace("|", "/")
            paper_map = f"{paper['mAP']:.2f}" if paper else "–"
            lines.append(f"| {r['label']} | failed: {message} |" + " |" * 10 + f" {paper_map} |")
            continue
        cells = [
            r["label"],
            _fmt_params(r["params"]),
            _fmt_flops(r["flops_per_trajectory"]),
            _fmt_fps(r["fps"]),
            *[f"{100 * r[k]:.2f}" for k in METRICS],
            (f"{r['steps']} †" if r.get("reduced_budget") else str(r["steps"])) if r["trainable"] else "–",
            f"{r['seconds'] / 60:.1f}" if r.get("seconds") is not None else "–",
            f"{paper['mAP']:.2f}" if paper else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if is_single_image(settings.get("dataset")):  # the published table below is SeqCSIST's
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Published numbers (from the paper, not measured here)",
        "",
        "SeqCSIST paper, comparison table (SPEC §7): trained at full scale (100 epochs, SRCNN 200) on the public "
        "data (3,500 training trajectories, 4 GPUs) and scored on its 750 test trajectories; FPS on the authors' "
        "hardware.",
        "",
        "| method | CSO-mAP | AP05 | AP10 | AP15 | AP20 | AP25 | FPS | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "@" in r["method"]:  # a variant row: the method's published row is listed once
            continue
        paper = r.get("paper")
        if not paper:
            lines.append(f"| {r['label']} | not reported | | | | | | | |")
            continue
        cells = [r["label"], *[f"{paper[k]:.2f}" for k in METRICS], _fmt_fps(paper["fps"]), paper["params"] or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(rows: Sequence[dict], path: pathlib.Path) -> None:
    """Bars: CSO-mAP of this run next to the paper's, per method; and AP per distance threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows]
    ours = [100 * r["mAP"] for r in rows]
    paper = [r["paper"]["mAP"] if r.get("paper") else np.nan for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(rows) + 4), 3.8), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    ax.bar(x - 0.2, ours, 0.4, label="this run")
    ax.bar(x + 0.2, paper, 0.4, label="paper (full scale)", alpha=0.6)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("CSO-mAP (×100)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax = axes[1]
    thresholds = [0.05, 0.10, 0.15, 0.20, 0.25]
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for i, r in enumerate(rows):  # 20 colours and alternating markers keep up to 20 methods apart
        ax.plot(thresholds, [100 * r[k] for k in METRICS[1:]], marker="osd^v<>"[i % 7], ms=3, color=colors[i % 20],
                label=r["label"])
    ax.set_xlabel("distance threshold (px)")
    ax.set_ylabel("AP (×100), this run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


def write_outputs(rows: Sequence[dict], settings: dict, prefix: pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes ``prefix.md``, ``prefix.json`` and ``prefix.png``; returns their paths."""
    machine = machine_info()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = {ext: prefix.with_name(prefix.name + f".{ext}") for ext in ("md", "json", "png")}
    atomic_write(paths["md"], markdown_table(rows, settings, machine))
    public_rows = [{k: v for k, v in r.items() if k != "config"} for r in rows]
    data = {"settings": settings, "machine": machine, "rows": public_rows,
            "paper_source": "SeqCSIST paper comparison table (SPEC §7), full-scale training on the public data"}
    # Unfinished and failed rows have no metrics: ``null`` there, not ``NaN``, so strict JSON readers load it.
    atomic_write_json(paths["json"], data, strict=True)
    plot_comparison(rows, paths["png"])
    return paths


def _print_row(i: int, n: int, row: dict) -> None:
    name = row["method"]
    if row.get("error"):
        print(f"[{i}/{n}] {name}: FAILED ({row['error']})", flush=True)
        return
    print(
        f"[{i}/{n}] {name}: CSO-mAP {100 * row['mAP']:.2f} (paper "
        f"{row['paper']['mAP'] if row.get('paper') else '–'}), {row['steps']} steps, "
        f"{_fmt_params(row['params'])} params, {_fmt_fps(row['fps'])} FPS, {row['seconds']:.0f} s",
        flush=True,
    )


def enable_compile_cache(workdir: pathlib.Path) -> None:
    """Persists XLA compilations under ``workdir/COMPILE_CACHE`` so that a later process (the FPS pass) loads a
    row's compiled inference instead of compiling it again."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(workdir / COMPILE_CACHE))


RESULT_FILE = ".compare_result.json"  # a --jobs worker's row (finished or failed) for the parent to read


class Stopped(KeyboardInterrupt):
    """SIGTERM (or Ctrl-C) asked the table to stop; ``signum`` gives the exit status 128 + signum."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


_stop_requested_at: list[float] = []


def _raise_stopped(signum, frame) -> None:
    """The table's SIGTERM/SIGINT handler: raises :class:`Stopped`, except for a repeat within
    ``REPEAT_SIGNAL_GRACE_SECONDS`` of the first, which is the same request (``timeout`` signals the command and
    then its process group); a later repeat raises again, and :func:`_stop_workers` then kills at once."""
    from seqcsist_jax.train import REPEAT_SIGNAL_GRACE_SECONDS

    now = time.monotonic()
    if _stop_requested_at and now - _stop_requested_at[0] < REPEAT_SIGNAL_GRACE_SECONDS:
        return
    _stop_requested_at[:] = [now]
    raise Stopped(signum)


_parent_gone: list[bool] = []


def _parent_died(signum, frame) -> None:
    # The kernel may send the death signal once per exiting thread of the parent: act on the first only, since a
    # second SIGTERM would make a training run stop at once, without its checkpoint.
    if _parent_gone:
        return
    _parent_gone.append(True)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_setup(parent_pid: int) -> None:
    """Makes a spawned worker stop with the table, exactly once: it leaves the terminal's (and ``timeout``'s)
    process group, so a Ctrl-C or a group SIGTERM reaches only the parent, which sends each worker one SIGTERM
    (a second one would make a training run skip its checkpoint); and on Linux it sends itself one SIGTERM when
    the parent dies, even by SIGKILL, so no orphan keeps training in the workdir a rerun needs."""
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:  # already a group leader, or not permitted: keep the group
            pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            signal.signal(signal.SIGUSR1, _parent_died)
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGUSR1)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        raise SystemExit(0)


def _stop_workers(workers: Sequence) -> None:
    """Sends each live worker one SIGTERM (a training run finishes its step, saves a checkpoint and exits) and
    waits for them; a second Ctrl-C or SIGTERM while waiting kills them at once."""
    alive = [w for w in workers if w.is_alive()]
    if not alive:
        return
    from seqcsist_jax.train import REPEAT_SIGNAL_GRACE_SECONDS

    print(f"stopping {len(alive)} running row(s): a training row saves a checkpoint first (Ctrl-C again, "
          f"{REPEAT_SIGNAL_GRACE_SECONDS:g} s or more after the first, kills them at once)", file=sys.stderr,
          flush=True)
    for worker in alive:
        worker.terminate()
    try:
        for worker in alive:
            worker.join()
    except KeyboardInterrupt:
        for worker in alive:
            worker.kill()
        for worker in alive:
            worker.join()
        raise


_WORKER_WRITE_FAILED = 3  # exit status of a row worker that could not write its result file (e.g. a full disk)


def _row_in_process(name: str, args: argparse.Namespace, workdir: str, parent_pid: int) -> None:
    """One row in its own process (``--jobs`` > 1): trains and scores it and writes the row (or the failed row)
    to ``workdir/RESULT_FILE``. Its FPS is marked as measured while other rows ran, for :func:`_fps_pass` to
    replace."""
    from seqcsist_jax.checkpointing import fault_point

    _worker_setup(parent_pid)
    _logging_in_worker(name)
    from seqcsist_jax import train as train_lib

    train_lib.MESSAGE_PREFIX = f"[{name}] "  # this process runs this one row
    path = pathlib.Path(workdir)
    with _worker_os_errors(name):
        path.mkdir(parents=True, exist_ok=True)
        enable_compile_cache(path.parent)
    fault_point(f"compare_row/{name}", 0)  # test hook: SEQCSIST_FAULT=compare_row/<row>:step=0 kills this worker
    from seqcsist_jax.train import TrainingInterrupted

    try:
        row = run_method(name, args, path)
    except TrainingInterrupted as e:  # told to stop (by the table, or a signal to this worker): no traceback
        log.info("%s: %s", name, e)
        row = failed_row(name, e)  # read only if the table is still running: the row is then not finished
    except Exception as e:  # noqa: BLE001 - reported as the row's failure, like the serial loop
        log_row_failure(name, e)
        row = failed_row(name, e)
    _write_worker_result(name, path, row)


def _write_worker_result(name: str, path: pathlib.Path, row: dict) -> None:
    """Writes a worker's row for the parent (``RESULT_FILE``; ``ROW_FILE`` too for a finished row)."""
    with _worker_os_errors(name):
        if row.get("fps_measured") != "alone" and not row.get("error"):  # a reused row may be re-measured already
            row["fps_measured"] = "shared"
            atomic_write_json(path / ROW_FILE, row)
        atomic_write_json(path / RESULT_FILE, row)


@contextlib.contextmanager
def _worker_os_errors(name: str):
    """A row worker's own file writes failing (e.g. a full disk): one line, and exit status
    ``_WORKER_WRITE_FAILED``, which the parent reports as the row's failure (not a traceback)."""
    try:
        yield
    except OSError as e:
        log.error("%s: %s", name, cli.os_error_line(e))
        raise SystemExit(_WORKER_WRITE_FAILED) from None


def worker_failure_reason(exitcode: int | None) -> str:
    """Why a ``--jobs`` row worker left no result: its exit status ``exitcode`` in words, for the failed row."""
    if exitcode == _WORKER_WRITE_FAILED:
        return "its worker could not write in the row's folder (its error line says why, e.g. a full disk)"
    if (exitcode or 0) < 0:
        return f"its worker process died (killed by signal {-exitcode}, e.g. for memory) before finishing the row"
    return f"its worker process died (exit code {exitcode}) before finishing the row"


def previous_row_seconds(prefix: pathlib.Path) -> dict[str, float]:
    """``{row: seconds}`` from the table a previous call wrote at ``prefix.json`` (empty when there is none or it
    cannot be read): the schedule of a ``--jobs`` run starts the longest rows first."""
    try:
        rows = json.loads(prefix.with_name(prefix.name + ".json").read_text())["rows"]
        return {str(r["method"]): float(r["seconds"]) for r in rows if r.get("seconds")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def longest_first(names: Sequence[str], seconds: dict[str, float]) -> list[str]:
    """``names`` with the rows of known cost longest first, rows of unknown cost before them (they may be long),
    ties in table order: two workers then rarely end with one long row running alone."""
    known = [n for n in names if n in seconds]
    return [n for n in names if n not in seconds] + sorted(known, key=lambda n: -seconds[n])


def _run_rows_in_processes(args: argparse.Namespace, workdir: pathlib.Path, settings: dict,
                           prefix: pathlib.Path, done: dict[str, dict], running_names: list[str]) -> list[dict]:
    """Runs the rows ``args.jobs`` at a time, each in a fresh (spawned) process, longest first by the previous
    table at ``prefix`` (:func:`longest_first`); returns them in table order. ``done`` receives each finished
    row as it ends and ``running_names`` holds the rows running now (the caller's view when it is stopped).

    A worker that dies (SIGKILL, out of memory) fails its own row only, with its exit code in the reason; the
    finished rows are cached in their workdirs, so running the command again continues where it stopped.
    """
    import multiprocessing
    from multiprocessing import connection

    names = list(args.methods)
    context = multiprocessing.get_context("spawn")  # JAX's threads do not survive fork
    print(f"{len(names)} rows, {args.jobs} at a time in separate processes", flush=True)
    pending = longest_first(names, previous_row_seconds(prefix))
    running: dict[int, tuple[str, multiprocessing.process.BaseProcess]] = {}
    try:
        while pending or running:
            while pending and len(running) < args.jobs:
                name = pending.pop(0)
                result = row_dir(workdir, name) / RESULT_FILE
                result.unlink(missing_ok=True)  # a stale result of an earlier call must not pass for this one
                worker = context.Process(target=_row_in_process, name=f"compare-{name}",
                                         args=(name, args, str(row_dir(workdir, name)), os.getpid()))
                worker.start()
                running[worker.sentinel] = (name, worker)
                running_names.append(name)
            for sentinel in connection.wait(list(running)):
                name, worker = running[sentinel]
                worker.join()
                result = row_dir(workdir, name) / RESULT_FILE
                try:
                    done[name] = json.loads(result.read_text())
                except (OSError, ValueError):
                    done[name] = failed_row(name, RuntimeError(
                        f"{worker_failure_reason(worker.exitcode)}; rerun the command to try it again"))
                del running[sentinel]
                running_names.remove(name)
                _print_row(names.index(name) + 1, len(names), done[name])
                _write_table([done[n] for n in names if n in done], settings, prefix)
    finally:  # an interrupted parent (Ctrl-C, SIGTERM) stops its workers; their runs resume from checkpoints
        _stop_workers([worker for _, worker in running.values()])
    return [done[n] for n in names]


def measure_row_fps(name: str, args: argparse.Namespace, workdir: pathlib.Path) -> float:
    """Inference FPS of one finished row (its best checkpoint; classical rows need none), as the serial table
    measures it: the test split's full batches after a warm-up batch, here only until :data:`FPS_PASS_SECONDS`
    of them have been timed (small models get every batch, the 20–30 M-parameter ones one or two)."""
    from seqcsist_jax import evaluate as evaluation
    from seqcsist_jax.data.splits import load_arrays, q_for_workdir
    from seqcsist_jax.predictor import make_predictor, restore_run

    config = method_config(name, args)
    if is_trainable(config):
        config, predictor, params, _ = restore_run(str(workdir))
    else:
        predictor, params = make_predictor(config, q_for_workdir(workdir, config.dataset)), {}
    frames = load_arrays(config.dataset, config.dataset.test_split)["frames"]
    batch = int(config.eval.get("batch_size", 8))
    per = evaluation.padded_batch_size(batch, predictor.mesh)
    seconds: list[float] = []
    maps = evaluation.predict_maps(predictor.predict, params, frames[:per], batch_size=batch, mesh=predictor.mesh,
                                   batch_seconds=seconds)  # the warm-up batch (fps_from_batches skips it)
    start = per
    while start + per <= len(frames) and sum(seconds[1:]) < FPS_PASS_SECONDS:
        evaluation.predict_maps(predictor.predict, params, frames[start : start + per], batch_size=batch,
                                mesh=predictor.mesh, batch_seconds=seconds)
        start += per
    fps = evaluation.fps_from_batches(seconds, len(seconds) * per, per, maps.shape[1])
    if fps is None:  # a test split of one batch: time it again after the warm-up
        return float(evaluation.measure_fps(predictor.predict, params, frames[:per], batch_size=batch,
                                            mesh=predictor.mesh))
    return fps


def _logging_in_worker(row: str | None = None) -> None:
    # force: a handler installed while the worker unpickled its arguments (a module logging at import) would
    # otherwise keep the default "INFO:compare:" format, unlike the serial table's lines. The row's name leads
    # each line: with several workers writing to one terminal, a line must say whose it is.
    prefix = f"[{row}] " if row else ""
    logging.basicConfig(level=logging.WARNING, handlers=[cli.stream_handler(prefix)], force=True)
    cli.one_line_warnings()
    for logger in ("compare", "seqcsist_jax"):
        logging.getLogger(logger).setLevel(logging.INFO)


def _fps_pass_in_process(names: Sequence[str], args: argparse.Namespace, workdir: str, parent_pid: int) -> None:
    """The FPS pass's process: measures each row in turn and rewrites its row file as soon as its FPS is known
    (the compilation cache stays enabled in this process only)."""
    _worker_setup(parent_pid)
    _logging_in_worker()
    root = pathlib.Path(workdir)
    enable_compile_cache(root)
    for i, name in enumerate(names, 1):
        path = row_dir(root, name) / ROW_FILE
        start = time.perf_counter()
        try:
            row = json.loads(path.read_text())
            fps = measure_row_fps(name, args, row_dir(root, name))
        except Exception:  # noqa: BLE001 - keep the shared-CPU number, marked as such, rather than lose the table
            log.exception("%s: FPS pass failed; its FPS stays the one measured while other rows ran", name)
            continue
        log.info("FPS pass [%d/%d] %s: %s FPS (%s while other rows ran), %.0f s", i, len(names), name,
                 _fmt_fps(fps), _fmt_fps(row["fps"]), time.perf_counter() - start)
        row["fps_shared"], row["fps"], row["fps_measured"] = row["fps"], fps, "alone"
        atomic_write_json(path, row)


def _fps_pass(rows: list[dict], args: argparse.Namespace, workdir: pathlib.Path) -> None:
    """Replaces the FPS of rows timed while other rows ran by a measurement with nothing else running: one spawned
    process measures them one after another (so the compilation cache it loads them from never becomes a
    setting of the calling process); ``rows`` are updated from their rewritten row files."""
    import multiprocessing

    todo = [r for r in rows if r.get("fps_measured") == "shared" and not r.get("error")]
    if not todo:
        return
    worker = multiprocessing.get_context("spawn").Process(
        target=_fps_pass_in_process, args=([r["method"] for r in todo], args, str(workdir), os.getpid()),
        name="compare-fps")
    worker.start()
    try:
        worker.join()
    finally:  # the caller was interrupted
        _stop_workers([worker])
    for row in todo:
        try:
            saved = json.loads((row_dir(workdir, row["method"]) / ROW_FILE).read_text())
        except (OSError, ValueError):
            continue
        if saved.get("fps_measured") == "alone":
            row.update(fps=saved["fps"], fps_shared=saved.get("fps_shared"), fps_measured="alone")


# ------------------------------------------------------------------------------------------------ main


def _report_stop(signum: int, args: argparse.Namespace, workdir: pathlib.Path, settings: dict,
                 prefix: pathlib.Path, done: dict[str, dict], running: Sequence[str]) -> None:
    """After a stop request: writes the table with every row (the unfinished ones say what a rerun does) and
    prints one line naming the stopped and the not-started rows."""
    stopped = [n for n in args.methods if n not in done and n in running]
    waiting = [n for n in args.methods if n not in done and n not in running]
    rows = [done.get(n) or unfinished_row(n, row_dir(workdir, n), stopped=n in stopped) for n in args.methods]
    step = {r["method"]: r["steps"] for r in rows if r.get("unfinished")}
    try:
        write_outputs(rows, settings, prefix)
        written = f"; the table so far is in {prefix.with_name(prefix.name + '.md')}"
    except Exception as e:  # noqa: BLE001 - e.g. a full disk: the stop itself is what must be reported
        written = f"; the table could not be written ({type(e).__name__}: {e})"

    parts = [f"{len(done)} of {len(args.methods)} rows finished"]
    if stopped:
        parts.append("stopped: " + ", ".join(n if step[n] is None else f"{n} (step {step[n]})" for n in stopped))
    if waiting:
        parts.append("not started: " + ", ".join(waiting))
    print(f"interrupted by {signal.Signals(signum).name} ({'; '.join(parts)}){written}. A training run saves a "
          "checkpoint before it stops: run the same command again to continue (finished rows are reused, "
          "stopped ones resume)", file=sys.stderr, flush=True)


def config_error_line(row: str, error: BaseException) -> str:
    """One line for a row whose config cannot be made: the row (a config file's path) named once, and for an
    error raised while running a user's config file, its type and the file's line (a SyntaxError says it)."""
    base = row.partition("@")[0]
    text = str(error)
    if not isinstance(error, (cli.UsageError, ValueError, SyntaxError)):
        from seqcsist_jax.methods import line_in_file

        text = f"{type(error).__name__}: {text}"
        line = line_in_file(error, base)
        if line is not None:
            text += f" ({pathlib.Path(base).name}, line {line})"
    if is_config_file(base) and (base in text or str(pathlib.Path(base).expanduser()) in text):
        return text  # the message names the file already
    return f"{row}: {text}"


def _check_output(prefix: pathlib.Path) -> None:
    """Fails in one line, before any row runs, when the table cannot be written at ``prefix`` (a read-only place,
    a path under a file)."""
    import tempfile

    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=prefix.parent, prefix=f".{prefix.name}.probe-"):
            pass
    except OSError as e:
        raise fail(output_error_line(e, prefix)) from None


def output_error_line(error: OSError, prefix: pathlib.Path) -> str:
    """One line for a failure to write the table at ``prefix`` (the rows' runs stay in their workdirs)."""
    import errno

    where = f"cannot write the table {prefix}.{{md,json,png}}"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        text = f"{error.strerror} ({error.filename})" if error.strerror and error.filename else str(error)
        return f"{where}: {text}; choose a writable --output (finished rows are kept in their workdirs)"
    return f"{where}: {cli.os_error_line(error)}"


def _write_table(rows: Sequence[dict], settings: dict, prefix: pathlib.Path) -> dict[str, pathlib.Path]:
    """:func:`write_outputs`, with a failure to write (e.g. a full disk) one ``error:`` line (exit status 2)."""
    try:
        return write_outputs(rows, settings, prefix)
    except OSError as e:
        raise fail(output_error_line(e, prefix)) from None


def failed_rows_line(rows: Sequence[dict]) -> str | None:
    """``1 of 3 rows failed: espcn (FloatingPointError: …); …`` — None when no row failed."""
    failed = [r for r in rows if r.get("error")]
    if not failed:
        return None
    reasons = ", ".join(f"{r['method']} ({str(r['error']).splitlines()[0]})" for r in failed)
    if any("--restart_changed" in str(r["error"]) for r in failed):  # the same command would fail the same way
        advice = ("rerun with --restart_changed where a reason asks for it (or another --workdir); finished rows "
                  "are reused")
    else:
        advice = "run the same command again to retry them (finished rows are reused)"
    return f"{len(failed)} of {len(rows)} rows failed: {reasons}; the table marks them failed; {advice}"


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the comparison; returns ``{"rows": [...], "paths": {...}, "failed": [row names]}``, also when rows
    failed (the command then exits 1 after its last line names them).

    Raises:
      CommandError: a usage, config or file-system error (exit status 2; its one line is on stderr).
      SystemExit: 128 + N after signal N stopped the table.
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, handlers=[cli.stream_handler()])  # quiet orbax/absl chatter
    for name in ("compare", "seqcsist_jax"):
        logging.getLogger(name).setLevel(logging.INFO)
    from seqcsist_jax.train import check_config

    for name in args.methods:  # a mistyped override or variant fails now, not after hours of other methods
        try:
            # the checks train runs before creating a workdir: bad values and a user's broken builder, per row
            check_config(method_config(name, args))
        except (cli.UsageError, ValueError) as e:
            raise fail(config_error_line(name, e)) from None
        except Exception as e:  # noqa: BLE001 - a user's config file that does not run (SyntaxError, ImportError)
            if not is_config_file(name.partition("@")[0]):
                raise
            raise fail(config_error_line(name, e)) from None
    workdir = pathlib.Path(args.workdir)
    prefix = pathlib.Path(args.output) if args.output else workdir / "compare"
    settings = {
        "methods": args.methods,
        "dataset": args.dataset,
        "budget_steps": args.budget_steps,
        "budget_epochs": args.budget_epochs,
        "method_steps": args.method_steps,
        "paper_scale": args.paper_scale,
        "learning_rate": args.learning_rate,
        "variant": args.variant,
        "evals": args.evals,
        "max_eval_trajectories": args.max_eval_trajectories,
        "lr_schedule": args.lr_schedule,
        "overrides": args.overrides,
        "jobs": args.jobs,
    }
    from seqcsist_jax.run_lock import WorkdirLock, WorkdirLockedError

    # Two comparisons in one workdir would each find the other's running rows locked and mark them FAILED,
    # and overwrite each other's tables: the second is refused at once, in one line.
    try:
        lock = WorkdirLock(workdir, holder="another compare",
                           hint="wait for it to finish (a rerun reuses its finished rows) or use another --workdir")
        lock.acquire()
    except WorkdirLockedError as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(cli.os_error_line(e)) from None
    try:
        _check_output(prefix)
        return _compare_locked(args, workdir, prefix, settings)
    except OSError as e:  # the machine, not a row: e.g. a full disk while a worker's row is read back
        raise fail(cli.os_error_line(e)) from None
    finally:
        lock.release()


def _compare_locked(args: argparse.Namespace, workdir: pathlib.Path, prefix: pathlib.Path, settings: dict) -> dict:
    total = time.perf_counter()
    from seqcsist_jax.train import TrainingInterrupted

    # SIGTERM (``timeout``, a scheduler) stops the table like Ctrl-C; a training run inside replaces these
    # handlers with its own while it trains (it checkpoints, then raises TrainingInterrupted).
    _stop_requested_at.clear()
    previous = ({sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
                if threading.current_thread() is threading.main_thread() else {})
    done: dict[str, dict] = {}  # finished (or failed) rows by method
    running: list[str] = []  # the rows running now
    try:
        if args.jobs > 1:
            rows = _run_rows_in_processes(args, workdir, settings, prefix, done, running)
            _fps_pass(rows, args, workdir)
        else:
            for i, name in enumerate(args.methods, 1):
                print(f"[{i}/{len(args.methods)}] {name} ...", flush=True)
                running[:] = [name]
                try:
                    row = run_method(name, args, row_dir(workdir, name))
                except TrainingInterrupted as e:  # a stop request, not the row's failure: stop the table too
                    raise Stopped(e.signum) from e
                except Exception as e:  # a failing method (e.g. a diverged run) must not lose the other rows
                    log_row_failure(name, e)
                    row = failed_row(name, e)
                done[name] = row
                running.clear()
                _print_row(i, len(args.methods), row)
                # partial tables survive an interrupted run
                _write_table([done[n] for n in args.methods if n in done], settings, prefix)
            rows = [done[n] for n in args.methods]
    except KeyboardInterrupt as e:  # Ctrl-C, or Stopped
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        _report_stop(signum, args, workdir, settings, prefix, done, running)
        raise SystemExit(128 + signum) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    settings["seconds_this_call"] = time.perf_counter() - total
    # wall time of every method's train + evaluation, including runs reused from earlier calls
    settings["seconds_all_methods"] = float(sum(r.get("seconds") or 0.0 for r in rows))
    paths = _write_table(rows, settings, prefix)
    print(f"wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    failed = failed_rows_line(rows)
    if failed:
        print(failed, file=sys.stderr, flush=True)
    return {"rows": rows, "paths": paths, "failed": [r["method"] for r in rows if r.get("error")]}


if __name__ == "__main__":
    cli.one_line_warnings()
    sys.exit(1 if main()["failed"] else 0)
