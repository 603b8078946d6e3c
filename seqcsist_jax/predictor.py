"""What scoring a method needs and nothing more: the method, Φ, Q, a device mesh and a jitted predict function.

Training builds one inside :class:`seqcsist_jax.train.Trainer`; evaluation of a saved run or of imported
weights builds one directly (:func:`make_predictor`), without loading the training split or building an
optimiser.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seqcsist_jax import imaging, methods, sharding


def make_predict_fn(model, phi, q) -> Callable[[Any, jax.Array], jax.Array]:
    """``predict(params, frames (B, T, 11, 11)) -> maps (B, T', 33, 33)`` (not jitted)."""
    phi = jnp.asarray(phi, jnp.float32)
    q = jnp.asarray(q, jnp.float32)

    def predict(params, frames):
        return model.apply({"params": params}, frames, phi, q)["output"]

    return predict


def select_devices(num_devices: int = -1) -> list[jax.Device]:
    """All devices, or the first ``num_devices`` of them (> 0).

    Raises:
      ValueError: more devices asked for than exist.
    """
    devices = jax.devices()
    if num_devices and num_devices > 0:
        if num_devices > len(devices):
            exist = "device exists" if len(devices) == 1 else "devices exist"
            raise ValueError(f"config.num_devices={num_devices} but only {len(devices)} {exist}")
        devices = devices[:num_devices]
    return devices


@dataclasses.dataclass
class Predictor:
    """A built method with its constants and its jitted, data-parallel inference.

    ``predict(params, frames)`` takes ``frames (B, T, 11, 11)`` sharded over ``mesh`` (B divisible by the mesh
    size; :func:`seqcsist_jax.evaluate.predict_maps` pads) and returns ``(B, T', 33, 33)`` maps for input frames
    ``method.frame_index(T)``.
    """

    method: methods.Method
    phi: np.ndarray
    q: np.ndarray
    mesh: jax.sharding.Mesh
    predict: Callable[[Any, jax.Array], jax.Array]

    def frame_index(self, num_frames: int) -> np.ndarray:
        return np.asarray(self.method.frame_index(num_frames))


def make_predictor(
    config: ml_collections.ConfigDict, q: np.ndarray, devices: Sequence[jax.Device] | None = None
) -> Predictor:
    """Builds ``config.model`` / ``config.loss`` with Q ``((11c)², 121)`` on a ``('data',)`` mesh of ``devices``
    (default: ``config.num_devices`` of the local devices); Φ is ``imaging.measurement_matrix(c)`` with
    ``c = config.dataset.c`` (default 3)."""
    from seqcsist_jax.data.splits import subpixel_c

    method = methods.build_method(config.model, config.loss)
    phi = imaging.measurement_matrix(c=subpixel_c(config)).astype(np.float64)
    mesh = sharding.data_mesh(devices if devices is not None else select_devices(config.get("num_devices", -1)))
    predict = jax.jit(
        make_predict_fn(method.model, phi, q),
        in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
        out_shardings=sharding.batch_sharding(mesh),
    )
    return Predictor(method=method, phi=phi, q=np.asarray(q), mesh=mesh, predict=predict)


def restore_run(
    workdir: str, checkpoint: str | int = "best", config: ml_collections.ConfigDict | None = None
) -> tuple[ml_collections.ConfigDict, Predictor, Any, int]:
    """A trained run ready to score: ``(config, predictor, params, step)``.

    Reads the run's ``config.json`` (unless ``config`` is given), its cached Q and the parameters of
    ``checkpoint`` (``"best"``, ``"latest"`` or a step); the training split is loaded only when Q was never
    cached.
    """
    import pathlib

    from seqcsist_jax.checkpointing import ModelMismatchError, RunCheckpoints
    from seqcsist_jax.data.splits import q_for_workdir
    from seqcsist_jax.workdir import load_run_config

    workdir = pathlib.Path(workdir)
    if config is None:
        config = load_run_config(workdir)  # its errors say what a missing or mistyped workdir is
    elif not (workdir / "checkpoints").is_dir():
        # Checked here: opening the checkpoint managers would create the folders of an empty run.
        what = "does not exist" if not workdir.exists() else "is a file" if not workdir.is_dir() else \
            "holds no checkpoints/ folder"
        raise FileNotFoundError(f"{workdir} {what}: pass a training run's directory (to score weights that were "
                                "not trained here pass --pretrained or --torch_checkpoint with --config)")
    checkpoints = RunCheckpoints(workdir, keep=config.get("keep_checkpoints", 2))
    try:
        params, step = checkpoints.restore_params(checkpoint)
    finally:
        checkpoints.close()
    predictor = make_predictor(config, q_for_workdir(workdir, config.dataset))
    try:
        check_params_fit(predictor, params, f"{workdir / 'checkpoints'} ({checkpoint!r}, step {int(step)})")
    except ModelMismatchError as e:
        source = methods.builder_file(config.model.name)
        if source is None:
            raise
        raise ModelMismatchError(f"{e}; the model is defined in {source}: if that file changed since this run was "
                              "trained, restore the version it was trained with, or train again") from None
    return config, predictor, params, int(step)


def check_params_fit(predictor: Predictor, params: Any, where: str) -> None:
    """Raises :class:`~seqcsist_jax.checkpointing.ModelMismatchError` (a ``CheckpointError``) in one line naming
    the first parameter whose shape differs between ``params`` and the predictor's model (an abstract init: no
    FLOPs), e.g. a checkpoint scored with ``--config`` of another model or width, or a user's method edited after
    training."""
    from seqcsist_jax.checkpointing import check_params_match

    frames = jax.ShapeDtypeStruct((1, 20, 11, 11), jnp.float32)  # parameter shapes do not depend on B or T
    phi, q = jnp.asarray(predictor.phi, jnp.float32), jnp.asarray(predictor.q, jnp.float32)
    expected = jax.eval_shape(lambda f: predictor.method.model.init(jax.random.PRNGKey(0), f, phi, q)["params"],
                              frames)
    check_params_match(expected, params, where)
