"""A user's method that breaks the contract (README: Adding a method) is one line naming what, not a JAX error
inside the train step; a checkpoint scored with another model is one line naming the first parameter."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs
from experiments.examples import tiny_method
from seqcsist_jax import imaging, methods
from seqcsist_jax.checkpointing import CheckpointError, ModelMismatchError, check_params_match

REPO = pathlib.Path(__file__).resolve().parents[1]


class _Small(nn.Module):  # 11×11 maps instead of 33×33
    @nn.compact
    def __call__(self, frames, phi, q):
        return {"output": nn.Conv(1, (3, 3))(frames[..., None])[..., 0]}


class _Bare(nn.Module):  # an array instead of {"output": ...}
    @nn.compact
    def __call__(self, frames, phi, q):
        return tiny_method.TinyRefiner()(frames, phi, q)["output"]


class _Missing(nn.Module):  # a dict without "output"
    @nn.compact
    def __call__(self, frames, phi, q):
        return {"maps": tiny_method.TinyRefiner()(frames, phi, q)["output"]}


def _scalar_loss(outputs, labels):
    return jnp.mean((outputs["output"] - labels) ** 2)


def _vector_total(outputs, labels):
    per = jnp.mean((outputs["output"] - labels) ** 2, axis=(1, 2, 3))
    return per, {"mse": per.mean()}


def _check(method, frames_shape=(2, 8, 11, 11)):
    phi = imaging.measurement_matrix()
    q = np.zeros(phi.T.shape, np.float32)
    params = jax.eval_shape(lambda f: method.model.init(jax.random.PRNGKey(0), f, phi, q)["params"],
                            jax.ShapeDtypeStruct(frames_shape, jnp.float32))
    methods.check_method_contract(method, params, frames_shape, phi, q)


def test_the_example_method_and_the_built_in_ones_keep_the_contract():
    _check(methods.Method("tiny", tiny_method.TinyRefiner(4), tiny_method.mse_loss))
    for name in ("srcnn", "derefnet"):
        config = configs.get_config(f"{name}:smoke")
        _check(methods.build_method(config.model, config.loss))


@pytest.mark.parametrize("method,words", [
    (methods.Method("small", _Small(), tiny_method.mse_loss), "'output' has shape (2, 8, 11, 11); expected "
                                                               "(2, 8, 33, 33)"),
    (methods.Method("bare", _Bare(), tiny_method.mse_loss), "the model returned an array float32[2, 8, 33, 33]"),
    (methods.Method("missing", _Missing(), tiny_method.mse_loss), "a mapping with keys ['maps']"),
    (methods.Method("scalar", tiny_method.TinyRefiner(4), _scalar_loss), "the loss returned an array float32[]"),
    (methods.Method("vector", tiny_method.TinyRefiner(4), _vector_total), "the loss returned a tuple of 2"),
    (methods.Method("index", tiny_method.TinyRefiner(4), tiny_method.mse_loss,
                    frame_index=lambda t: np.arange(2, t - 2)), "expected (2, 4, 33, 33)"),
])
def test_contract_breaks_are_one_line_naming_what(method, words):
    with pytest.raises(methods.MethodContractError) as info:
        _check(method)
    message = str(info.value)
    assert words in message and f"method {method.name!r}" in message and "\n" not in message


def _builders(tmp_path) -> pathlib.Path:
    path = tmp_path / "builders.py"
    path.write_text(
        "from experiments.examples import tiny_method as tiny\n"
        "def build_tuple(model_config, loss_config):\n"
        "    return tiny.TinyRefiner(), tiny.mse_loss\n"
        "def build_noargs():\n"
        "    return None\n")
    return path


def test_a_builder_that_returns_no_method_or_takes_no_configs_is_one_line(tmp_path):
    path = _builders(tmp_path)
    config = configs.get_config("srcnn:smoke")
    config.model.name = f"{path}:build_tuple"
    with pytest.raises(methods.MethodContractError, match=r"returned tuple; expected seqcsist_jax.methods.Method"):
        methods.build_method(config.model, config.loss)
    config.model.name = f"{path}:build_noargs"
    with pytest.raises(methods.MethodContractError, match=r"must take \(model_config, loss_config\); its signature "
                                                          r"is build_noargs\(\)"):
        methods.build_method(config.model, config.loss)


def test_train_with_a_broken_builder_is_one_line_before_the_workdir_exists(tmp_path):
    path = _builders(tmp_path)
    workdir = tmp_path / "w"
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--config=srcnn:smoke",
                           f"--config.model.name={path}:build_tuple", f"--workdir={workdir}"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: config.model.name: the builder")
    assert not workdir.exists()


def test_params_mismatch_names_missing_extra_and_reshaped_parameters():
    model = {"conv": {"kernel": np.zeros((3, 3, 1, 4)), "bias": np.zeros(4)}}
    with pytest.raises(CheckpointError, match=r"W holds another model or width: parameter \['conv'\]\['bias'\] is "
                                              r"shape \(8,\) in the checkpoint but the model expects \(4,\)"):
        check_params_match(model, {"conv": {"kernel": np.zeros((3, 3, 1, 4)), "bias": np.zeros(8)}}, "W")
    with pytest.raises(CheckpointError, match=r"the model's parameter \['conv'\]\['bias'\] \(shape \(4,\)\) is not "
                                              r"in the checkpoint \(2 model parameters, 1 in the checkpoint\)"):
        check_params_match(model, {"conv": {"kernel": np.zeros((3, 3, 1, 4))}}, "W")
    with pytest.raises(CheckpointError, match=r"parameter \['lambda'\] \(shape \(\)\) is in the checkpoint but not "
                                              r"in the model"):
        check_params_match(model, {**model, "lambda": np.zeros(())}, "W")
    check_params_match(model, model, "W")
    # its own type: restores re-raise it instead of moving a readable checkpoint aside as damaged
    with pytest.raises(ModelMismatchError):
        check_params_match(model, {"conv": {"kernel": np.zeros((3, 3, 1, 4))}}, "W")


def test_evaluate_with_the_config_of_another_model_is_one_line(tmp_path):
    from seqcsist_jax import train as train_lib

    workdir = tmp_path / "srcnn"
    train_lib.train_and_evaluate(configs.get_config("srcnn:smoke"), workdir)
    proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}",
                           "--config=derefnet:smoke"], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and " holds another model or width: " in lines[0] and "('best', step " in lines[0]


def test_display_names_of_builders_given_by_path_are_short():
    method = methods.Method("tiny", tiny_method.TinyRefiner(4), tiny_method.mse_loss)
    assert methods.display_name("/abs/path/tiny_method.py:build_tiny", method) == "tiny (build_tiny)"
    assert methods.display_name("mypkg.models:build_tiny", method) == "tiny (build_tiny)"
    assert methods.display_name("srcnn", method) == "srcnn"  # table methods keep their table name


def test_a_bug_in_a_users_model_names_its_file_and_line(tmp_path):
    from seqcsist_jax import train as train_lib

    path = tmp_path / "buggy.py"
    path.write_text(
        "import flax.linen as nn\n"
        "import jax.numpy as jnp\n"
        "from experiments.examples import tiny_method as tiny\n"
        "from seqcsist_jax import methods\n"
        "class Buggy(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, frames, phi, q):\n"
        "        out = tiny.TinyRefiner()(frames, phi, q)['output']\n"
        "        return {'output': out @ jnp.ones((5, 5))}\n"
        "def build(model_config, loss_config):\n"
        "    return methods.Method('buggy', Buggy(), tiny.mse_loss)\n")
    config = configs.get_config("srcnn:smoke")
    config.model.name = f"{path}:build"
    with pytest.raises(train_lib.ModelInitError) as info:
        train_lib.train_and_evaluate(config, tmp_path / "w")
    message = str(info.value)
    assert f"failed at initialisation at {path}, line 9 (TypeError: dot_general" in message and "\n" not in message
    assert not (tmp_path / "w").exists()  # the refused run leaves no workdir behind
    assert methods.user_code_line("srcnn", info.value.__cause__) == ""  # a table method: no user file to point at


def test_evaluate_after_the_methods_file_changed_names_the_file(tmp_path):
    from seqcsist_jax import train as train_lib
    from seqcsist_jax.predictor import restore_run

    source = (REPO / "experiments" / "examples" / "tiny_method.py").read_text()
    path = tmp_path / "mine.py"
    path.write_text(source)
    config = configs.get_config(f"{path}:smoke")
    train_lib.train_and_evaluate(config, tmp_path / "w")
    path.write_text(source.replace("nn.Conv(self.channels, (3, 3)", "nn.Conv(self.channels + 1, (3, 3)"))
    with pytest.raises(CheckpointError, match=rf"holds another model or width: .*; the model is defined in {path}: "
                                              r"if that file changed since this run was trained"):
        restore_run(str(tmp_path / "w"))


def test_a_contract_break_at_train_time_leaves_the_workdir_as_it_was(tmp_path):
    """The abstract check runs before the first step, after the run wrote its config and Q cache: those go again,
    so evaluate does not find a run without checkpoints. A workdir that held something else is left alone."""
    from seqcsist_jax import train as train_lib

    path = tmp_path / "small.py"
    path.write_text(
        "import flax.linen as nn\n"
        "from experiments.examples import tiny_method as tiny\n"
        "from seqcsist_jax import methods\n"
        "class Small(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, frames, phi, q):\n"
        "        return {'output': nn.Conv(1, (3, 3))(frames[..., None])[..., 0]}\n"
        "def build(model_config, loss_config):\n"
        "    return methods.Method('small', Small(), tiny.mse_loss)\n")
    config = configs.get_config("srcnn:smoke")
    config.model.name = f"{path}:build"
    new, empty, other = tmp_path / "new" / "w", tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for workdir in (new, empty, other):
        with pytest.raises(methods.MethodContractError, match="'output' has shape"):
            train_lib.train_and_evaluate(config, workdir)
    assert not new.exists() and (tmp_path / "new").is_dir()  # only the folder the run created goes
    assert list(empty.iterdir()) == []
    assert {p.name for p in other.iterdir()} >= {"notes.txt", "config.json"}  # not ours alone: kept as it was


# ------------------------------------------------------------------------------------------------ predictor


def _tiny_predictor(frame_index=methods.all_frames):
    from seqcsist_jax.predictor import Predictor

    phi = imaging.measurement_matrix().astype(np.float64)
    q = np.random.default_rng(0).normal(size=phi.T.shape) / 121  # float64, as runs store Q
    method = methods.Method("tiny", tiny_method.TinyRefiner(2), tiny_method.mse_loss, frame_index=frame_index)
    return Predictor(method=method, phi=phi, q=q, mesh=None, predict=None)


def test_select_devices_takes_all_or_the_first_n_and_refuses_too_many():
    from seqcsist_jax.predictor import select_devices

    devices = jax.devices()
    assert select_devices() == devices and select_devices(-1) == devices and select_devices(0) == devices
    assert select_devices(1) == devices[:1] and select_devices(len(devices)) == devices
    n = len(devices) + 1
    exist = "device exists" if len(devices) == 1 else "devices exist"
    with pytest.raises(ValueError, match=rf"^config.num_devices={n} but only {len(devices)} {exist}$"):
        select_devices(n)


def test_predictor_frame_index_is_the_methods_as_an_array():
    predictor = _tiny_predictor(frame_index=lambda t: list(range(2, t - 2)))  # a method may return a list
    got = predictor.frame_index(20)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, np.arange(2, 18))
    np.testing.assert_array_equal(_tiny_predictor().frame_index(5), np.arange(5))  # default: every frame


def test_check_params_fit_passes_the_models_params_and_names_where_for_others():
    from seqcsist_jax.predictor import check_params_fit

    predictor = _tiny_predictor()
    frames = jax.ShapeDtypeStruct((1, 3, 11, 11), jnp.float32)  # another T: parameter shapes do not use it
    params = jax.eval_shape(lambda f: predictor.method.model.init(jax.random.PRNGKey(0), f, predictor.phi,
                                                                   predictor.q)["params"], frames)
    check_params_fit(predictor, params, "run/checkpoints ('best', step 3)")  # fits: no error
    wider = jax.eval_shape(lambda f: tiny_method.TinyRefiner(3).init(jax.random.PRNGKey(0), f, predictor.phi,
                                                                     predictor.q)["params"], frames)
    with pytest.raises(ModelMismatchError) as info:
        check_params_fit(predictor, wider, "run/checkpoints ('best', step 3)")
    assert str(info.value) == ("run/checkpoints ('best', step 3) holds another model or width: parameter "
                               "['Conv_0']['bias'] is shape (3,) in the checkpoint but the model expects "
                               "(2,) (4 model parameters, 4 in the checkpoint)")
    assert isinstance(info.value, CheckpointError)


def test_make_predict_fn_is_model_apply_with_float32_constants():
    from seqcsist_jax.predictor import make_predict_fn

    predictor = _tiny_predictor()
    model = predictor.method.model
    frames = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (2, 3, 11, 11)), jnp.float32)
    phi32, q32 = jnp.asarray(predictor.phi, jnp.float32), jnp.asarray(predictor.q, jnp.float32)
    params = model.init(jax.random.PRNGKey(0), frames, phi32, q32)["params"]
    predict = make_predict_fn(model, predictor.phi, predictor.q)  # float64 Φ and Q in: cast once to float32
    got = predict(params, frames)
    want = model.apply({"params": params}, frames, phi32, q32)["output"]
    assert got.shape == (2, 3, 33, 33) and got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # the same computation, bit for bit
    # and it is model.apply: other params give other maps
    other = jax.tree_util.tree_map(lambda p: p + 0.5, params)
    assert not np.allclose(np.asarray(predict(other, frames)), np.asarray(got))
