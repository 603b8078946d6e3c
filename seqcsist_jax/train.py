"""Training loop: ``train_and_evaluate(config, workdir)``.

The core is pure: an immutable :class:`TrainState` and ``train_step(state, batch) -> (state, metrics)`` built by
:func:`make_train_step`, jitted over a ``('data',)`` device mesh with the batch sharded along its leading
(trajectory) axis and the state replicated — data parallelism the way ``pmap`` is written in current JAX.
Everything with side effects (data building, Q caching, checkpoints, logging, progress bars) lives in
:func:`train_and_evaluate`, which never reads command-line flags so notebooks can call it.

Workdir layout::

    config.json            the resolved config
    qinit.npz              Q computed from the training split (cached; SPEC §2)
    metrics.jsonl          train/eval scalars, one JSON object per line
    tensorboard/           event files
    checkpoints/latest/    periodic checkpoints (resume), checkpoints/best/ best by val CSO-mAP
    eval/<split>/          metrics JSON, detections and figures written by evaluation
"""

from __future__ import annotations

import logging
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from seqcsist_jax import methods, protocol, sharding, train_multistep
from seqcsist_jax.checkpointing import RunCheckpoints, abstract_like, fault_point
from seqcsist_jax.data.public_format import PublicFormatError
from seqcsist_jax.data.splits import (SIMULATED, cached_q, check_dataset_name, check_split_names, is_single_image,
                                     load_arrays, subpixel_c)
from seqcsist_jax.data.tfds_open import DamagedDatasetError
from seqcsist_jax.run_lock import WorkdirLock
from seqcsist_jax.suggest import closest_name, did_you_mean
from seqcsist_jax.fileio import atomic_write_json
from seqcsist_jax.evaluate import check_eval_config, eval_dir
from seqcsist_jax.methods import check_method_name
# make_predict_fn: a public name kept here
from seqcsist_jax.predictor import make_predict_fn, make_predictor, select_devices  # noqa: F401
from seqcsist_jax.workdir import (ConfigMismatchError, inherit_saved_dataset_dirs, run_config_differences,
                                  save_or_check_run_config)
from seqcsist_jax.metric_writers import MetricWriter

log = logging.getLogger(__name__)

Batch = Mapping[str, jax.Array]
DEFAULT_CHECKPOINT_EVERY_SECONDS = 300.0
StepHook = Callable[[int, Mapping[str, float]], None]


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the message names the step."""


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. ``bad_step`` is the first step whose loss or gradients were
    non-finite (-1 while all were finite); such a step leaves params and optimiser state untouched."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    bad_step: jax.Array


# ----------------------------------------------------------------------------------------------- pure core


class OptimizerConfigError(ValueError):
    """``config.optimizer`` holds a value the optimiser cannot use (reported in one line, before anything is
    written to the workdir)."""


def check_learning_rate(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`OptimizerConfigError` unless ``config.learning_rate`` (``config``: ``config.optimizer``) is a
    finite number > 0: 0 trains nothing and a negative rate climbs the loss, and both would run to the end
    without a word."""
    rate = config.get("learning_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not np.isfinite(rate) or rate <= 0:
        raise OptimizerConfigError(f"config.optimizer.learning_rate must be a finite number > 0, got {rate!r}")


#: What ``create_optimizer`` and ``learning_rate_schedule`` build, and the dtypes of ``model.compute_dtype``.
OPTIMIZERS = ("adam",)
SCHEDULES = ("constant", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16")


def check_optimizer_choices(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`OptimizerConfigError` for an ``optimizer.name`` or ``optimizer.schedule`` (``config``:
    ``config.optimizer``) that :func:`create_optimizer` would refuse only after the data is built."""
    for key, choices, default in (("name", OPTIMIZERS, "adam"), ("schedule", SCHEDULES, "constant")):
        value = config.get(key, default)
        if value not in choices:
            raise OptimizerConfigError(f"config.optimizer.{key} must be one of {', '.join(choices)}, got {value!r}"
                                       f"{did_you_mean(str(value), choices)}")


def check_devices(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError when ``config.num_devices`` asks for more devices than exist, or the devices do not
    split a fixed ``global_batch_size`` (the messages of :func:`~seqcsist_jax.predictor.select_devices` and
    :func:`~seqcsist_jax.train_multistep.resolve_global_batch`, which the trainer would raise after building the
    data). Needs the devices, so after ``jax.distributed.initialize()`` in a multi-host run."""
    devices = select_devices(config.get("num_devices", -1))
    train_multistep.resolve_global_batch(config, len(devices), jax.process_count())


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int | None = None) -> optax.Schedule | float:
    """``constant`` (the paper) or ``cosine`` decay to 0 over ``num_steps`` (used by the short CPU configs).

    ``config.warmup_steps`` (optional, default 0) ramps the rate linearly from 0 over the first steps (for
    ``cosine`` the decay then covers the remaining ``num_steps - warmup_steps``); it must be below ``num_steps``.

    Raises:
      OptimizerConfigError: a learning rate that is not a finite number > 0, unknown schedule, negative or too
        long warmup, cosine without ``num_steps``.
    """
    check_learning_rate(config)
    kind = config.get("schedule", "constant")
    warmup = int(config.get("warmup_steps") or 0)
    if warmup < 0:
        raise OptimizerConfigError(f"optimizer.warmup_steps must be >= 0, got {warmup}")
    if warmup and num_steps and warmup >= num_steps:
        raise OptimizerConfigError(f"optimizer.warmup_steps ({warmup}) must be below the number of training steps "
                                   f"({num_steps})")
    if kind == "constant":
        if not warmup:
            return config.learning_rate
        return optax.linear_schedule(0.0, config.learning_rate, warmup)
    if kind == "cosine":
        if not num_steps:
            raise OptimizerConfigError("the cosine schedule needs the number of training steps")
        if not warmup:
            return optax.cosine_decay_schedule(config.learning_rate, num_steps)
        return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, num_steps, end_value=0.0)
    raise OptimizerConfigError(f"unknown learning-rate schedule optimizer.schedule={kind!r} "
                               "(supported: 'constant', 'cosine')")


def create_optimizer(config: ml_collections.ConfigDict, num_steps: int | None = None) -> optax.GradientTransformation:
    """Adam with PyTorch's ``weight_decay`` semantics: L2 added to the gradient before the moments (not AdamW)."""
    if config.name != "adam":
        raise ValueError(f"unknown optimizer {config.name!r} (supported: 'adam')")
    parts = []
    if config.get("grad_clip_norm"):
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    lr = learning_rate_schedule(config, num_steps)
    parts.append(optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps))
    return optax.chain(*parts)


def create_train_state(
    rng: jax.Array, model, optimizer: optax.GradientTransformation, frames: jax.Array, phi, q, init_params=None
) -> TrainState:
    """Initialises params from one example batch ``frames (B, T, 11, 11)``; ``init_params(params)`` (optional)
    transforms them before the optimiser state is built (e.g. loads a pretrained generator)."""
    init_rng, rng = jax.random.split(rng)
    params = model.init(init_rng, frames, phi, q)["params"]
    if init_params is not None:
        params = init_params(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=rng,
        bad_step=jnp.full((), -1, jnp.int32),
    )


def make_train_step(model, loss_fn, optimizer: optax.GradientTransformation, phi, q):
    """Returns the pure ``train_step(state, batch) -> (state, metrics)``.

    ``batch`` holds ``frames (B, T, 11, 11)`` and ``labels (B, T, 33, 33)``; the loss is the mean over the B
    trajectories, so sharding B over devices reproduces DDP's gradient averaging.
    """
    phi = jnp.asarray(phi, jnp.float32)
    q = jnp.asarray(q, jnp.float32)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng, _ = jax.random.split(state.rng)

        def loss(params):
            outputs = model.apply({"params": params}, batch["frames"], phi, q)
            return loss_fn(outputs, batch["labels"])

        (total, terms), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        # A non-finite step must not poison the state: keep the last good params so they can be checkpointed.
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = TrainState(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            rng=rng,
            bad_step=jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step),
        )
        metrics = {"loss": total, "grad_norm": grad_norm, **terms}
        return new_state, metrics

    return train_step


# ------------------------------------------------------------------------------------------ the loop


class ModelInitError(ValueError):
    """The model's ``init`` failed on an example batch (a config value it cannot build); chained to the cause."""


class BatchConfigError(ValueError):
    """A global batch larger than the training set (the loader, which drops the remainder, has no batch)."""


class ScheduleConfigError(ValueError):
    """``num_train_steps``/``num_epochs`` give no training schedule (reported in one line, before the workdir is
    created)."""


def check_schedule(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`ScheduleConfigError` unless ``num_train_steps`` is positive, or -1 with a positive
    ``num_epochs``: 0 or another negative step count is a typo, not a request for the config's (possibly
    100-epoch) schedule."""
    steps = config.get("num_train_steps", -1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < -1 or steps == 0:
        raise ScheduleConfigError(f"config.num_train_steps must be a positive number of steps, or -1 to train "
                                  f"config.num_epochs epochs ({config.get('num_epochs')!r}); got {steps!r}")
    if steps <= 0 and not float(config.get("num_epochs", 0) or 0) > 0:
        raise ScheduleConfigError(f"config.num_train_steps={steps} trains config.num_epochs epochs, which must be "
                                  f"positive; got num_epochs={config.get('num_epochs')!r}")


def _steps_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[int, int]:
    if config.num_train_steps > 0:
        num_steps = int(config.num_train_steps)
    else:
        num_steps = int(round(config.num_epochs * steps_per_epoch))
    eval_every = int(
        config.eval_every_steps if config.eval_every_steps > 0 else round(config.eval_every_epochs * steps_per_epoch)
    )
    if num_steps <= 0:
        raise ValueError(f"nothing to train: {num_steps} steps ({steps_per_epoch} steps per epoch)")
    return num_steps, max(1, eval_every)


def _subset(arrays: Mapping[str, np.ndarray], limit: int | None) -> dict[str, np.ndarray]:
    if not limit:
        return dict(arrays)
    return {k: v[:limit] if np.ndim(v) else v for k, v in arrays.items()}


def _write_json(path: pathlib.Path, data: Any) -> None:
    if jax.process_index() != 0:
        return
    atomic_write_json(path, data, strict=True, sort_keys=True)


class Trainer:
    """Holds what one run needs (model, data, shardings, jitted functions); built by :func:`train_and_evaluate`.

    Tests and notebooks may use it for finer control; its methods have side effects only on ``workdir``.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
        from seqcsist_jax.data.pipeline import TrajectoryLoader, make_source

        self.config = config
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        ds = config.dataset
        self.train_arrays = load_arrays(ds, ds.train_split)
        q = cached_q(self.workdir, ds.name, self.train_arrays, ds.collision, subpixel_c(config))
        self.predictor = make_predictor(config, q)
        self.method, self.phi, self.q = self.predictor.method, self.predictor.phi, self.predictor.q
        self.mesh, self.predict = self.predictor.mesh, self.predictor.predict
        self.replicated = sharding.replicated(self.mesh)
        self.data_sharding = sharding.batch_sharding(self.mesh)
        self.global_batch = train_multistep.resolve_global_batch(config, self.mesh.size, jax.process_count())
        num_train = len(self.train_arrays["frames"])
        if self.global_batch > num_train:  # the loader drops the remainder: not one batch per epoch
            fixed = int(config.get("global_batch_size", -1) or -1) > 0
            how = ("config.global_batch_size" if fixed else
                   f"config.per_device_batch_size={config.per_device_batch_size} × {self.mesh.size} device(s)")
            knob = ("config.global_batch_size" if fixed else "config.per_device_batch_size"
                    + (" or config.num_devices" if self.mesh.size > 1 else ""))
            raise BatchConfigError(f"the global batch of {self.global_batch} trajectories ({how}) exceeds the "
                                   f"{num_train} training trajectories (dataset {config.dataset.name}): lower {knob}, "
                                   "or train on more data")

        self.loader = TrajectoryLoader(
            make_source(self.train_arrays),
            batch_size=self.global_batch,
            shuffle=config.shuffle,
            seed=config.seed,
            num_epochs=None,
            drop_remainder=True,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            collision=ds.collision,
            c=subpixel_c(config),
            sampler=config.get("sampler", "sequential"),
        )
        self.steps_per_epoch = len(self.loader)
        self.resumed_train_seconds = 0.0  # set by restore_or_init from the checkpoint it resumes
        self._clock_start: float | None = None
        self.num_steps, self.eval_every = _steps_schedule(config, self.steps_per_epoch)
        # Methods with their own optimiser / step (the GANs) provide them through optional Method hooks.
        self.optimizer = (self.method.make_optimizer or create_optimizer)(config.optimizer, self.num_steps)

        frames_shape = (self.global_batch,) + self.train_arrays["frames"].shape[1:]
        self._frames_shape, self._contract_checked = frames_shape, False
        model, opt, init_params = self.method.model, self.optimizer, self.method.init_params
        init = lambda rng: create_train_state(
            rng, model, opt, jnp.zeros(frames_shape, jnp.float32), self.phi, self.q, init_params
        )
        self._init = jax.jit(init, out_shardings=self.replicated)
        make_step = self.method.make_train_step or make_train_step
        step_fn = make_step(model, self.method.loss_fn, opt, self.phi, self.q)
        self.train_step = jax.jit(
            step_fn,
            in_shardings=(self.replicated, self.data_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )
        # Device-resident K-step calls (seqcsist_jax.train_multistep); K = 1 without device data is the host loop.
        self.steps_per_call = max(1, int(config.get("steps_per_call", 1)))
        self.device_resident = bool(config.get("device_data", False)) or self.steps_per_call > 1
        self.device_data = None
        if self.device_resident:
            self.device_data = train_multistep.device_data(self.train_arrays, self.mesh, ds.collision, self.loader.c)
            self.multi_step = train_multistep.jit_multi_step(step_fn, self.mesh)
        self.checkpoints = RunCheckpoints(self.workdir, keep=config.keep_checkpoints)
        self._split_cache: dict[str, dict[str, np.ndarray]] = {ds.train_split: self.train_arrays}

    def split_arrays(self, split: str, max_trajectories: int | None = None) -> dict[str, np.ndarray]:
        """A split's arrays (cached), truncated to ``max_trajectories``."""
        if split not in self._split_cache:
            self._split_cache[split] = load_arrays(self.config.dataset, split)
        return _subset(self._split_cache[split], max_trajectories)

    def initial_state(self) -> TrainState:
        try:
            state = self._init(jax.random.PRNGKey(self.config.seed))
        except (ArithmeticError, ValueError, TypeError) as e:  # e.g. --config.model.channels=0
            first = str(e).splitlines()[0] if str(e) else ""
            where = methods.user_code_line(self.config.model.name, e)
            if where:  # a user's method failed in its own code: say where, not "check the config values"
                raise ModelInitError(
                    f"config.model ({self.config.model.name}): the model failed at initialisation{where} "
                    f"({type(e).__name__}: {first}); check that code or its config.model values "
                    "(train_and_evaluate in Python shows the full traceback)") from e
            raise ModelInitError(
                f"config.model ({self.config.model.name}): the model cannot be initialised with these settings "
                f"({type(e).__name__}: {first}); check the config.model values "
                "(train_and_evaluate in Python shows the full traceback)") from e
        if self.config.model.name not in methods.METHOD_TABLE and not self._contract_checked:
            # A user's method: a wrong output or loss shape is one line now, not a JAX error inside the step.
            methods.check_method_contract(self.method, state.params, self._frames_shape, self.phi, self.q)
            self._contract_checked = True
        return state

    def shard(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Per-process batch → global arrays sharded over the ``('data',)`` mesh."""
        return sharding.shard_batch(batch, self.mesh, keys=("frames", "labels"))

    def steps_this_call(self, step: int) -> int:
        """Steps the next call may run from ``step``: ``steps_per_call``, cut so that no call crosses the end of
        the run or a logging, checkpoint or evaluation step (they stay exactly where the step-by-step loop has
        them)."""
        c = self.config
        k = min(self.steps_per_call, self.num_steps - step)
        for every in (c.log_every_steps, c.checkpoint_every_steps, self.eval_every):
            if every and every > 0:
                k = min(k, every - step % every)
        return max(1, k)

    def run_steps(self, state: TrainState, step: int, iterator) -> tuple[TrainState, list]:
        """Runs the next :meth:`steps_this_call` steps from ``step``; returns the state and one metrics dict per
        step. Host loop: one loader batch per call. Device-resident: one jitted ``lax.scan`` over the loader's
        next K batch positions, gathered on the devices."""
        if not self.device_resident:
            batch = self.shard(next(iterator))
            state, metrics = self.train_step(state, batch)
            return state, [metrics]
        k = self.steps_this_call(step)
        table = train_multistep.indices_table(self.loader, self.loader.take_positions(k))
        indices = jax.make_array_from_callback(table.shape, self.replicated, lambda index: table[index])
        state, stacked = self.multi_step(state, self.device_data, indices)
        return state, train_multistep.split_metrics(stacked, k)

    def meta(self) -> dict:
        return {"config": self.config.to_dict(), "steps_per_epoch": self.steps_per_epoch,
                "global_batch": self.global_batch, "train_seconds": self.train_seconds()}

    def train_seconds(self) -> float:
        """Wall seconds of training (compilation, steps, validation, checkpoints) that produced the current
        state, summed over every call that resumed it: the time of the call that restored it (from its
        checkpoint's meta) plus this call's since :meth:`restore_or_init`. Work lost to a kill between
        checkpoints is not counted (it is redone, and counted, by the resumed call)."""
        if self._clock_start is None:
            return self.resumed_train_seconds
        return self.resumed_train_seconds + time.monotonic() - self._clock_start

    def restore_or_init(self) -> tuple[TrainState, int]:
        """The newest good ``latest`` checkpoint (a damaged one is moved aside with a warning) or a fresh state;
        leftovers of killed saves are removed and the evaluation journal reconciled with the resume step (see
        :mod:`seqcsist_jax.checkpointing`). Call it only while holding the workdir lock."""
        self._clock_start = time.monotonic()
        state = self.initial_state()
        self.checkpoints.clean_leftovers()
        if self.checkpoints.latest.latest_step() is None and self.checkpoints.latest_from_best() is None:
            self.checkpoints.reconcile(0)
            return state, 0
        # a malformed saved position is a damaged checkpoint: it falls back to the previous one
        state, loader_state, meta, step = self.checkpoints.restore(
            "latest", abstract_like(state), check_loader=self.loader.check_state_format)
        try:
            self.loader.set_state(loader_state)
        except ValueError as e:
            hint = self._device_count_hint(loader_state)
            raise ValueError(f"{hint} ({e})" if hint else str(e)) from None
        # checkpoints written before the time was recorded count from this call on
        self.resumed_train_seconds = float((meta or {}).get("train_seconds") or 0.0)
        self.checkpoints.reconcile(int(step))
        _say(f"resumed from {self.checkpoints.latest.directory} at step {step}")
        return state, int(step)

    def _device_count_hint(self, loader_state: Any) -> str:
        """Why a saved global batch differs from this one when the device count sets it (``global_batch_size``
        <= 0: per-device batch × devices): the run was trained on another number of devices, and what to do.
        '' otherwise."""
        saved = loader_state.get("batch_size") if isinstance(loader_state, dict) else None
        per_device = int(self.config.get("per_device_batch_size", 1))
        if (not isinstance(saved, int) or saved == self.global_batch or self.config.get("global_batch_size", -1) > 0
                or per_device <= 0 or saved % per_device):
            return ""
        trained_on = saved // per_device
        return (f"this run was trained on {trained_on} device(s) and this process has {self.mesh.size}: its global "
                f"batch is per_device_batch_size={per_device} × the devices, so resume it on {trained_on} device(s) "
                "(the same batches), or train into a new --workdir")

    def evaluate(self, params, split: str, max_trajectories: int | None = None, **options) -> dict:
        """CSO-mAP of ``params`` on a split (frames 2..17 of each trajectory, SPEC §4.6), through
        :func:`seqcsist_jax.evaluate.evaluate_run` (``options`` are passed on; by default nothing is written and
        the paper protocol's grid decoding is used)."""
        from seqcsist_jax.evaluate import evaluate_run

        options.setdefault("decode", "grid")
        return evaluate_run(self.predict, params, self.split_arrays(split, max_trajectories), self.config.eval,
                            frame_index=self.method.frame_index, mesh=self.mesh,
                            name=methods.display_name(self.config.model.name, self.method),
                            split=split, **options)


# The fields the trainer and evaluation read, per section ("" = top level; ``model``, ``loss`` and
# ``dataset.simulate`` belong to the method or generator and are not listed). A field outside these would be
# saved and silently ignored (``config.learning_rate = 1e-3`` in a notebook instead of
# ``config.optimizer.learning_rate``); the command line refuses it already (``experiments.cli.apply_overrides``).
CONFIG_FIELDS: dict[str, frozenset[str]] = {
    "": frozenset({
        "checkpoint_every_seconds", "checkpoint_every_steps", "dataset", "device_data", "eval", "eval_every_epochs",
        "eval_every_steps", "global_batch_size", "keep_checkpoints", "log_every_steps", "loss", "model", "multihost",
        "num_devices", "num_epochs", "num_train_steps", "optimizer", "per_device_batch_size", "progress_bar",
        "sampler", "seed", "shuffle", "steps_per_call"}),
    "dataset": frozenset({
        "build_if_missing", "c", "collision", "data_dir", "eval_split", "manual_dir", "max_eval_trajectories", "name",
        "num_eval", "num_test", "num_train", "simulate", "test_split", "train_split"}),
    "eval": frozenset({
        "batch_size", "collision", "decode", "decode_options", "geometry_prior", "image_quality",
        "num_figure_samples", "scored_margin", "threshold", "ties"}),
    "optimizer": frozenset({
        "b1", "b2", "eps", "grad_clip_norm", "learning_rate", "name", "schedule", "warmup_steps", "weight_decay"}),
}


class UnknownConfigFieldError(ValueError):
    """``config`` holds a field nothing reads (a typo or a field at the wrong level); the message names it and
    the nearest known field."""


def check_config_fields(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`UnknownConfigFieldError` for a field of a section in :data:`CONFIG_FIELDS` that is not
    listed there, suggesting a field of that name at another level or the closest name in its section."""
    known = {f"{section}.{name}" if section else name for section, names in CONFIG_FIELDS.items() for name in names}
    for section, names in CONFIG_FIELDS.items():
        node = config if not section else config.get(section)
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            continue
        for name in sorted(set(node.keys()) - names):
            path = f"{section}.{name}" if section else name
            elsewhere = sorted(k for k in known if k.rsplit(".", 1)[-1] == name)
            close = closest_name(path, known)
            hint = elsewhere or ([close] if close else [])
            raise UnknownConfigFieldError(
                f"config.{path}: unknown config field{f'; did you mean {hint[0]}?' if hint else ''} (nothing reads it: "
                "a run would ignore it)")


def unused_dataset_dirs(dataset: ml_collections.ConfigDict) -> str | None:
    """A one-line note when ``dataset.data_dir`` or ``dataset.manual_dir`` is set for an in-memory dataset
    (``simulated``, ``simulated_csist100k``: e.g. a ``:smoke`` config), which reads neither; ``None`` otherwise."""
    if dataset.get("name") not in SIMULATED:
        return None
    given = [f"dataset.{key}={dataset.get(key)}" for key in ("data_dir", "manual_dir") if dataset.get(key)]
    if not given:
        return None
    return (f"{' and '.join(given)} not read: dataset {dataset.name!r} is generated in memory (set "
            "--config.dataset.name to a TFDS dataset, e.g. seqcsist/mini or csist100k/mini, to train on one)")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every check that needs no data and no workdir, in one call (``train_and_evaluate`` and
    ``experiments.compare`` run it before anything is created): the dataset, split and method names, a user's
    builder (built once: it must return a ``Method``), the sub-pixel division ``c``, the schedule, ``config.eval``,
    the optimizer (learning rate, name, schedule), ``model.compute_dtype``, the seed and the checkpoint intervals
    (the devices: :func:`check_devices`, which needs them). Each failure is one line naming the key (the exceptions
    listed in :func:`train_and_evaluate`)."""
    check_config_fields(config)
    check_dataset_name(config.dataset.name, config.dataset.get("data_dir"))
    check_split_names(config.dataset)
    check_method_name(config.model.name)
    if config.model.name not in methods.METHOD_TABLE:  # a user's builder: its return value is checked now
        methods.build_method(config.model, config.loss)
    subpixel_c(config)
    check_schedule(config)
    check_eval_config(config.eval)
    if "optimizer" in config:
        check_learning_rate(config.optimizer)
        check_optimizer_choices(config.optimizer)
    dtype = config.model.get("compute_dtype", "float32")
    if dtype not in COMPUTE_DTYPES:
        raise ModelInitError(f"config.model.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}"
                             f"{did_you_mean(str(dtype), COMPUTE_DTYPES)}")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"config.seed must be a whole number in [0, 2**32), got {seed!r}")
    _checkpoint_intervals(config)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    hooks: Sequence[StepHook] = (),
    force_config: bool = False,
) -> dict:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint, then scores the best checkpoint.

    Args:
      config: an experiment config (see ``experiments/configs``).
      workdir: output directory; an existing run there is resumed automatically.
      hooks: callables ``hook(step, scalars)`` run after every step (e.g. to interrupt a test run).
      force_config: continue a workdir whose saved ``config.json`` differs from ``config`` (overwrites it).

    Returns:
      dict with ``step``, ``best`` (validation metrics of the best checkpoint), ``test`` (its test metrics),
      ``eval_dir`` (where the test outputs were written), ``train_seconds`` (wall seconds of the training, summed
      over every call that resumed the run; the test evaluation is not included) and ``resumed_train_seconds``
      (the part of it done by earlier calls).

    Raises:
      NonFiniteLossError: a step produced a non-finite loss; the latest good checkpoint is kept.
      ConfigMismatchError: the workdir holds a run of another config (nothing in it is changed).
      UnknownDatasetError: ``config.dataset.name`` is no known dataset (raised before the workdir is created).
      UnknownMethodError: ``config.model.name`` names no method (not in ``methods.METHOD_TABLE``, no importable
        builder; idem).
      ScheduleConfigError: ``num_train_steps``/``num_epochs``/``checkpoint_every_*`` give no schedule (idem).
      EvalConfigError: a ``config.eval`` value the evaluations cannot use (idem).
      OptimizerConfigError: ``optimizer.learning_rate`` is not a finite number > 0, or ``optimizer.name`` /
        ``optimizer.schedule`` is not one of :data:`OPTIMIZERS` / :data:`SCHEDULES` (idem).
      ModelInitError: ``model.compute_dtype`` is not one of :data:`COMPUTE_DTYPES` (idem), or the model's
        ``init`` fails on an example batch.
      UnknownConfigFieldError: a field nothing reads, e.g. ``config.learning_rate`` (idem).
      ValueError: ``config.seed`` is not a whole number in [0, 2**32), or ``config.dataset.c`` is not a positive odd
        integer (idem); ``config.num_devices`` asks for more devices than exist, or the devices do not split a
        fixed ``global_batch_size`` (idem, checked after ``jax.distributed.initialize()``).
    """
    # Before the checks: the dataset name is checked against the data_dir the run will read.
    config, inherited = inherit_saved_dataset_dirs(workdir, config)
    for field, value in inherited.items():
        _say(f"dataset.{field} not given: using this run's saved {value}")
    check_config(config)
    save_every_steps, save_every_seconds = _checkpoint_intervals(config)
    if config.get("multihost") and not jax.distributed.is_initialized():
        jax.distributed.initialize()
    check_devices(config)
    workdir = pathlib.Path(workdir)
    created = not workdir.exists()
    was_empty = created or (workdir.is_dir() and not any(workdir.iterdir()))
    workdir.mkdir(parents=True, exist_ok=True)
    # One trainer per workdir: a second one exits here, naming the holder, before touching anything.
    lock = WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
    try:
        return _train_locked(config, workdir, hooks, force_config, save_every_steps, save_every_seconds)
    except (methods.MethodContractError, ModelInitError, BatchConfigError, PublicFormatError, DamagedDatasetError):
        # Refused before the first step (a user's method that breaks the contract, a model that cannot be built,
        # a batch the data cannot fill, a damaged or missing public release): leave the workdir as it was, not a
        # run that evaluate would then report as having no checkpoint.
        if lock is not None and was_empty:
            _remove_unstarted_run(workdir, remove_dir=created, lock=lock)
            lock = None
        raise
    finally:
        if lock is not None:
            lock.release()


#: What a run writes before its first step: the saved config, the Q cache, the (empty) checkpoint folders and the
#: TensorBoard writer's opened event file (a step adds ``metrics.jsonl``, which keeps everything).
_UNSTARTED_RUN_FILES = frozenset({"config.json", "qinit.npz", "checkpoints", "tensorboard"})


def _remove_unstarted_run(workdir: pathlib.Path, *, remove_dir: bool, lock: WorkdirLock) -> None:
    """Removes what a run refused before its first step wrote into a workdir that was empty (``remove_dir``: that
    did not exist), then releases ``lock``. Anything else found there (another file, a checkpoint) keeps it all."""
    import shutil

    from seqcsist_jax.run_lock import LOCK_NAME

    try:
        names = {p.name for p in workdir.iterdir()} - {LOCK_NAME}
        checkpoints = workdir / "checkpoints"
        started = checkpoints.is_dir() and any(p for p in checkpoints.rglob("*") if p.is_file())
        if names <= _UNSTARTED_RUN_FILES and not started:
            for name in names:
                target = workdir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            lock.release()
            (workdir / LOCK_NAME).unlink(missing_ok=True)
            if remove_dir:
                workdir.rmdir()
            return
    except OSError as e:  # best effort: the refusal itself is the error to report
        log.debug("could not tidy the unstarted run in %s: %s", workdir, e)
    lock.release()


def _checkpoint_intervals(config: ml_collections.ConfigDict) -> tuple[int, float]:
    """``(checkpoint_every_steps, checkpoint_every_seconds)``; 0 disables either (checkpoints are then still
    written at evaluations, at the end and on SIGTERM/SIGINT). Negative values are refused."""
    steps = config.get("checkpoint_every_steps", 0)
    seconds = config.get("checkpoint_every_seconds", DEFAULT_CHECKPOINT_EVERY_SECONDS)
    for name, value in (("checkpoint_every_steps", steps), ("checkpoint_every_seconds", seconds)):
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ScheduleConfigError(f"config.{name} must be >= 0 (0 disables it), got {value!r}")
    if steps != int(steps):
        raise ScheduleConfigError(f"config.checkpoint_every_steps must be a whole number of steps, got {steps!r}")
    return int(steps), float(seconds)


#: A repeated stop signal this soon after the first is the same request: ``timeout`` signals the command and
#: then its whole process group, and a killed parent's death signal can come once per exiting thread. Generous,
#: so a loaded machine that delivers the repeat late still counts it once; a user who wants a hard stop presses
#: Ctrl-C again after it.
REPEAT_SIGNAL_GRACE_SECONDS = 5.0


class _StopSignals:
    """Turns SIGTERM/SIGINT during training into a flag the loop checks after each step (it then saves a
    checkpoint and stops cleanly); a second signal at least :data:`REPEAT_SIGNAL_GRACE_SECONDS` later stops at
    once (KeyboardInterrupt), earlier repeats are the same request. The previous handlers are restored on exit.
    Only installs itself in the main thread (signal handlers cannot be set elsewhere)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._received_at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.received is not None:
            if now - self._received_at < REPEAT_SIGNAL_GRACE_SECONDS:
                return  # the same stop request, delivered twice
            raise KeyboardInterrupt  # a second request: stop at once
        self.received, self._received_at = signum, now
        # The loop stops at the end of the current step (seconds on a slow machine): say so at once.
        sys.stderr.write(f"{signal.Signals(signum).name} received: stopping after the current step, with a "
                         "checkpoint (send it again to stop at once)\n")
        sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training after a checkpoint was saved; running the same command resumes.

    ``signum`` is the signal that stopped it, so a caller can exit as the signal would (status 128 + signum)."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = int(signum)


def _no_detection_note(metrics: dict, config: ml_collections.ConfigDict, said: set[str] | None = None,
                       step: int | None = None) -> str:
    """A hint appended to an evaluation line (at training ``step``) that found no detection at all: expected
    after a few steps, a collapsed map output later on. Each kind of hint is said in full once per call (the
    kinds said so far are kept in ``said``), then only a short reminder, so early evaluations do not repeat it
    and the collapse hint still comes after a short-run one."""
    from seqcsist_jax.evaluate import is_short_run, no_detection_note

    note = no_detection_note(metrics, config.eval.get("threshold", 70.0), step)
    if not note:
        return ""
    kind = "short run" if is_short_run(step) else "collapse"
    if said is not None:
        if kind in said:
            return " — still no detection (see the first such line)"
        said.add(kind)
    return f" — {note}"


def _has_trained(workdir: pathlib.Path) -> bool:
    """Whether a run in ``workdir`` got as far as a logged step or a committed checkpoint (latest or best)."""
    metrics = workdir / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size > 0:
        return True
    return any(p.name.isdigit() for kind in ("latest", "best") for p in (workdir / "checkpoints" / kind).glob("*"))


def _train_locked(config, workdir, hooks, force_config, save_every_steps, save_every_seconds) -> dict:
    # Checked before anything is written: a mistyped --config must never overwrite another run's config.json.
    # A saved config whose run never trained a step (e.g. a value that failed at initialisation) holds
    # nothing to protect: the corrected command replaces it instead of being refused.
    try:
        if not force_config and not _has_trained(workdir) and run_config_differences(workdir, config):
            _say(f"{workdir}/config.json belongs to a run that never trained a step; replacing it with this config")
            force_config = True
        save_or_check_run_config(workdir, config, force=force_config, write=False)
    except ConfigMismatchError:
        raise
    except ValueError as e:  # a damaged config.json (load_run_config names the file and the damage)
        raise ValueError(f"{e}; --force_config replaces it with this command's config and continues from the "
                         "checkpoints") from None
    # Built (and the optimiser config validated) before config.json is written, so an invalid value leaves no
    # saved config that would refuse the corrected command.
    trainer = Trainer(config, workdir)
    save_or_check_run_config(workdir, config, force=True, write=jax.process_index() == 0)  # checked above
    writer = MetricWriter(workdir)
    state, step = trainer.restore_or_init()
    writer.forget_after(step)  # records of steps after the checkpoint are redone: one record per step and split
    lost = writer.missing_history(step, config.log_every_steps)
    if lost:
        log.warning("%s", lost)
    num_steps = trainer.num_steps
    start_step, resumed_seconds = step, trainer.resumed_train_seconds
    if step >= num_steps:
        best = trainer.checkpoints.best_metrics() or {}
        _say(f"this run already finished ({step} of {num_steps} steps, best validation CSO-mAP "
             f"{100 * float(best.get('mAP', float('nan'))):.2f}); re-scoring its best checkpoint on the "
             f"{config.dataset.test_split} split")
    else:
        _say(
            f"training {config.model.name} on {config.dataset.name}: {num_steps} step{'' if num_steps == 1 else 's'} "
            f"({trainer.steps_per_epoch} per epoch), global batch {trainer.global_batch} on {trainer.mesh.size} "
            f"{jax.default_backend()} device(s); workdir {workdir}"
        )
    note = protocol.protocol_difference(is_single_image(config.dataset.name), config.eval.get("threshold", 70.0),
                                        config.eval.get("scored_margin", protocol.SCORED_MARGIN))
    if note:
        _say(f"note: {note}")
    unused_dirs = unused_dataset_dirs(config.dataset)
    if unused_dirs:
        _say(f"note: {unused_dirs}")
    eta = _EtaNotice(num_steps, step)

    progress = None
    if show_progress_bar(config) and jax.process_index() == 0 and step < num_steps:  # a finished run trains nothing
        from tqdm.auto import tqdm

        progress = tqdm(total=num_steps, initial=step, desc=MESSAGE_PREFIX + "train", unit="step", dynamic_ncols=True)

    progress_lines = _ProgressLines(num_steps)  # the bar's stand-in in logs (progress_bar off, or no terminal)

    def check_finite(s: TrainState) -> None:
        bad = int(jax.device_get(s.bad_step))
        if bad >= 0:
            last = trainer.checkpoints.latest.latest_step()
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {bad + 1} (0-based {bad}); training stopped. "
                f"Last good checkpoint: {'none' if last is None else f'step {last}'} in {workdir / 'checkpoints'}"
            )

    last_save = [time.monotonic()]
    said_no_detection: set[str] = set()  # each no-detection hint is said once per call, then a short reminder

    def save_latest(s: TrainState, at: int) -> None:
        check_finite(s)
        trainer.checkpoints.save_latest(at, s, trainer.loader.get_state(), trainer.meta())
        last_save[0] = time.monotonic()
        fault_point("after_latest_save", at)

    iterator = iter(trainer.loader)
    pending: list[dict] = []
    window_start = time.perf_counter()
    window_steps = 0
    stop = _StopSignals()
    try:
        stop.__enter__()
        in_flight = None
        while step < num_steps:
            state, chunk = trainer.run_steps(state, step, iterator)  # 1 step, or K on device (steps_per_call)
            # Dispatch is asynchronous: without a bound the loop queues every step up to the next sync (a log or
            # evaluation step), and a stop signal would wait for all of them. Waiting for the previous call while
            # this one runs keeps the device busy and a stop within one call of the signal.
            if in_flight is not None:
                jax.block_until_ready(in_flight)
            in_flight = chunk[-1]
            first = step + 1
            step += len(chunk)
            eta.after_step(step)
            pending.extend(chunk)
            window_steps += len(chunk)
            last = step == num_steps
            if step % config.log_every_steps == 0 or last:
                check_finite(state)
                scalars = {k: float(np.mean([jax.device_get(m[k]) for m in pending])) for k in pending[0]}
                elapsed = time.perf_counter() - window_start
                scalars["steps_per_second"] = window_steps / max(elapsed, 1e-9)
                scalars["epoch"] = step / trainer.steps_per_epoch
                writer.write(step, scalars, "train")
                if progress is not None:
                    progress.set_postfix(loss=f"{scalars['loss']:.4g}", sps=f"{scalars['steps_per_second']:.2f}")
                else:
                    progress_lines.maybe_say(step, scalars)
                pending, window_steps, window_start = [], 0, time.perf_counter()
            if progress is not None:
                progress.update(len(chunk))
            if step % trainer.eval_every == 0 or last:
                # Commit order (checkpointing module docstring): journal + best before latest, so that a run
                # resumed from any latest checkpoint has every evaluation up to it committed.
                check_finite(state)
                metrics_eval = trainer.evaluate(
                    state.params, config.dataset.eval_split, config.dataset.max_eval_trajectories
                )
                writer.write(step, _scalar_metrics(metrics_eval), config.dataset.eval_split)
                best = trainer.checkpoints.save_best(
                    step, state, trainer.loader.get_state(), trainer.meta(), _scalar_metrics(metrics_eval)
                )
                save_latest(state, step)
                trainer.checkpoints.drop_old_best()
                note = _no_detection_note(metrics_eval, config, said_no_detection, step=step)
                _say(f"step {step}: {config.dataset.eval_split} CSO-mAP {100 * metrics_eval['mAP']:.2f}"
                     + (" (new best)" if best else "") + note)
            elif (last or (save_every_steps and step % save_every_steps == 0)
                  or (save_every_seconds and time.monotonic() - last_save[0] >= save_every_seconds)):
                save_latest(state, step)
            for hook in hooks:
                for i, metrics in enumerate(chunk):
                    hook(first + i, metrics)
            if stop.received is not None:
                save_latest(state, step)  # a no-op when this step was just saved
                name = signal.Signals(stop.received).name
                # One line says it all (the entry points print it as their error line; compare logs it per row).
                raise TrainingInterrupted(
                    f"stopped by {name} at step {step} of {num_steps}; checkpoint saved in "
                    f"{workdir / 'checkpoints' / 'latest'}; run the same command again to resume",
                    signum=stop.received,
                )
    finally:
        stop.__exit__()
        if progress is not None:
            progress.close()
        writer.close()

    # train_seconds: the whole run's training wall time across resumed calls (a call that trained nothing adds
    # nothing); resumed_train_seconds: the part done by earlier calls (a caller timing this call adds it)
    result = {"step": step, "best": trainer.checkpoints.best_metrics(),
              "train_seconds": trainer.train_seconds() if step > start_step else resumed_seconds,
              "resumed_train_seconds": resumed_seconds}
    result["test"] = _final_test(trainer, state)
    result["eval_dir"] = str(eval_dir(workdir, config.dataset.test_split, config.eval.get("decode", "grid") or "grid"))
    _write_json(workdir / "result.json", result)
    trainer.checkpoints.close()
    return result


class _EtaNotice:
    """Says once, a few steps in, how long the run will take at the measured rate when that is long on a
    machine without an accelerator (the paper schedule takes days on a CPU)."""

    SKIP = 2  # the first steps include compilation
    MEASURE = 5
    LONG_SECONDS = 30 * 60

    def __init__(self, num_steps: int, start_step: int):
        self.num_steps, self.start_step = num_steps, start_step
        self.t0: float | None = None
        self.done = jax.default_backend() not in ("cpu",)

    def after_step(self, step: int) -> None:
        if self.done:
            return
        if self.t0 is None and step >= self.start_step + self.SKIP:
            self.t0 = time.perf_counter()
        elif self.t0 is not None and step >= self.start_step + self.SKIP + self.MEASURE:
            self.done = True
            rate = self.MEASURE / max(time.perf_counter() - self.t0, 1e-9)
            remaining = (self.num_steps - step) / rate
            if remaining > self.LONG_SECONDS:
                _say(f"note: no accelerator found; at the measured {rate:.2f} steps/s on this CPU the remaining "
                     f"{self.num_steps - step} steps take about {_duration(remaining)}. The run checkpoints and "
                     "resumes; see README 'Training at paper scale, on GPUs and TPUs' for the GPU/TPU setup, or "
                     "use --config=derefnet_quick for a 5-minute CPU run.")


def show_progress_bar(config: ml_collections.ConfigDict, stream: Any = None) -> bool:
    """Whether training draws a tqdm bar: ``config.progress_bar`` and the bar has a screen to draw on.

    A terminal (``stream``, default ``sys.stderr``, is a TTY) or a notebook kernel (Jupyter, Colab: tqdm draws a
    widget there while stderr is no TTY). Redirected to a file or a pipe (``train ... > log``, ``| tail``, a batch
    job), a bar would write every refresh into the log, so the run prints its ``step s of n`` lines instead.
    """
    if not config.get("progress_bar", True):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        pass
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel")


class _ProgressLines:
    """Without a progress bar (``config.progress_bar`` off, or no terminal: :func:`show_progress_bar`), a line
    every :attr:`EVERY_SECONDS` at most, at the logging cadence, so a long stretch between evaluations is not
    silent."""

    EVERY_SECONDS = 60.0

    def __init__(self, num_steps: int):
        self.num_steps = num_steps
        self.last = time.monotonic()

    def maybe_say(self, step: int, scalars: Mapping[str, float]) -> None:
        now = time.monotonic()
        if now - self.last < self.EVERY_SECONDS or step >= self.num_steps:
            return
        self.last = now
        rate = scalars.get("steps_per_second", 0.0)
        eta = f", about {_duration((self.num_steps - step) / rate)} left" if rate > 0 else ""
        _say(f"step {step} of {self.num_steps} ({100 * step / self.num_steps:.0f}%): loss {scalars['loss']:.4g}, "
             f"{rate:.2f} steps/s{eta}")


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} s"


# Leads every progress line and the bar's label. Empty for a run of its own; ``experiments.compare --jobs``
# sets it to ``"[row] "`` in each worker, so lines from several rows sharing one terminal say whose they are.
MESSAGE_PREFIX = ""


def _say(message: str) -> None:
    """A progress message on process 0 that does not break tqdm's bar."""
    if jax.process_index() == 0:
        from tqdm.auto import tqdm

        tqdm.write(MESSAGE_PREFIX + message)


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    # Undefined diagnostics (e.g. the RMSE of a split without a single match) are left out rather than logged
    # as NaN, which TensorBoard warns about on every write.
    scalars = {k: float(v) for k, v in metrics.items()
               if v is not None and np.ndim(v) == 0 and not isinstance(v, (str, dict))}
    return {k: v for k, v in scalars.items() if np.isfinite(v)}


def _final_test(trainer: Trainer, state: TrainState) -> dict:
    """Scores the best checkpoint (by validation CSO-mAP) on the test split, as the paper does, and writes the
    evaluation outputs under ``eval/<test split>/``."""

    try:
        best_state, _, _, step = trainer.checkpoints.restore_best(abstract_like(state))
    except FileNotFoundError as e:  # both the best folder and the journal were lost: nothing better to score
        best_state, _, _, step = trainer.checkpoints.restore("latest", abstract_like(state))
        _say(f"warning: {e} (the records of this run's evaluations were lost); scoring the latest checkpoint, "
             f"step {step}, instead")
    config = trainer.config
    decode = config.eval.get("decode", "grid") or "grid"
    decode_options = {}
    if decode != "grid":
        from seqcsist_jax.decode import dataset_decode_options

        decode_options = {**dataset_decode_options(config.dataset, bool(config.eval.get("geometry_prior", False))),
                          **(config.eval.get("decode_options") or {})}
    return trainer.evaluate(best_state.params, config.dataset.test_split, None, decode=decode, step=int(step),
                            decode_options=decode_options,
                            out_dir=eval_dir(trainer.workdir, config.dataset.test_split, decode),
                            metrics_log=trainer.workdir / "metrics.jsonl")
