"""Device-resident K-step training (seqcsist_jax.train_multistep): equal to K single steps, resumable."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest

from experiments import configs
from seqcsist_jax import train as train_lib
from seqcsist_jax import train_multistep
from seqcsist_jax.checkpointing import RunCheckpoints, abstract_like


def smoke_config(**overrides) -> ml_collections.ConfigDict:
    config = configs.get_config("derefnet:smoke")
    # Chunks of 4 steps: logging, checkpoints and evaluation on multiples of 4.
    config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 8, 4, 4
    config.eval_every_steps = 8
    for key, value in overrides.items():
        config[key] = value
    return config


def _params(tree):
    return jax.tree_util.tree_leaves(jax.device_get(tree))


def test_scan_k_steps_equal_k_single_steps(tmp_path):
    """One lax.scan call of K steps on device-gathered batches gives the params of K jitted single steps on the
    host loader's batches: the same batches (trajectory ids, frames and labels), the same per-step function.
    ``trainer.multi_step`` is ``train_multistep.jit_multi_step(train_step, mesh)`` (``make_multi_step``'s
    scan, jitted): this checks both with the real DeRefNet train step.

    Not bitwise: XLA:CPU fuses the scanned step body differently from the standalone step, which moves a few
    params by float32 rounding (measured: 6 of 144 leaf entries, ≤ 7.5e-9 absolute, ≤ 3e-7 relative, after 3
    steps). The tolerance, 1e-6 absolute, is 1/1000 of one Adam step (lr 1e-3 moves every param by up to
    ~1e-3 per step), so a wrong batch, a skipped or repeated step would fail it by orders of magnitude.
    """
    trainer = train_lib.Trainer(smoke_config(device_data=True, steps_per_call=3), tmp_path)
    k = 3
    state = trainer.initial_state()
    it = iter(trainer.loader)
    host_ids = []
    for _ in range(k):
        batch = next(it)
        host_ids.append(batch["trajectory_id"].tolist())
        state, host_metrics = trainer.train_step(state, trainer.shard(batch))
    reference, ref_loss = _params(state.params), float(host_metrics["loss"])

    trainer.loader.set_state({"epoch": 0, "position": 0})
    positions = trainer.loader.take_positions(k)
    table = train_multistep.indices_table(trainer.loader, positions)
    assert table.tolist() == host_ids
    state, stacked = trainer.multi_step(trainer.initial_state(), trainer.device_data, table)
    assert stacked["loss"].shape == (k,) and int(state.step) == k
    np.testing.assert_allclose(float(stacked["loss"][-1]), ref_loss, rtol=1e-6)
    for a, b in zip(_params(state.params), reference):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("jitted", [False, True], ids=["make_multi_step", "jit_multi_step"])
def test_multi_step_runs_the_step_on_each_rows_gathered_batch_in_order(jitted):
    """make_multi_step / jit_multi_step with a stand-in train_step: step i sees ``frames[indices[i]]`` cast
    to float32 and ``labels[indices[i]]``, the state threads through the K steps in order and the metrics come
    back stacked along K. Integer-valued float32 sums below 2²⁴ are exact, so the comparison is exact."""
    from seqcsist_jax import sharding

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 2, 11, 11), dtype=np.uint8)  # (N, T, 11, 11) uint8, as stored
    labels = rng.integers(0, 9, (5, 2, 33, 33)).astype(np.float32)
    indices = np.array([[3, 0], [4, 4], [1, 2]], np.int32)  # (K, B): a repeat within a row, any order

    def train_step(state, batch):
        assert batch["frames"].dtype == np.float32 and batch["frames"].shape == (2, 2, 11, 11)
        f, lab = batch["frames"].sum(axis=(1, 2, 3)), batch["labels"].sum(axis=(1, 2, 3))  # per trajectory
        new = {"acc": 2.0 * state["acc"] + f[0] - lab[1], "steps": state["steps"] + 1}
        return new, {"loss": f[1], "step": new["steps"]}

    mesh = sharding.data_mesh(jax.devices()[:1])
    data = train_multistep.DeviceData(frames=jax.numpy.asarray(frames), labels=jax.numpy.asarray(labels))
    make = train_multistep.jit_multi_step if jitted else train_multistep.make_multi_step
    state = {"acc": jax.numpy.float32(1.0), "steps": jax.numpy.int32(0)}
    got, metrics = make(train_step, mesh)(state, data, jax.numpy.asarray(indices))
    acc, want_loss = 1.0, []
    for row in indices:  # the reference: K plain steps on numpy batches
        f = frames[row].astype(np.float64).sum(axis=(1, 2, 3))
        acc = 2.0 * acc + f[0] - labels[row].astype(np.float64).sum(axis=(1, 2, 3))[1]
        want_loss.append(f[1])
    assert float(got["acc"]) == acc and int(got["steps"]) == 3
    np.testing.assert_array_equal(np.asarray(metrics["loss"]), want_loss)
    np.testing.assert_array_equal(np.asarray(metrics["step"]), [1, 2, 3])


def test_device_batches_equal_loader_batches(tmp_path):
    trainer = train_lib.Trainer(smoke_config(device_data=True), tmp_path)
    batch = trainer.loader.batch_at(0, 1)
    idx = trainer.loader.global_indices(0, 1)
    np.testing.assert_array_equal(np.asarray(trainer.device_data.frames[idx], np.float32), batch["frames"])
    np.testing.assert_array_equal(np.asarray(trainer.device_data.labels[idx]), batch["labels"])


def test_calls_stop_at_logging_checkpoint_and_eval_steps(tmp_path):
    config = smoke_config(steps_per_call=100)
    config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 50, 20, 15
    config.eval_every_steps = 40
    trainer = train_lib.Trainer(config, tmp_path)
    step, ends = 0, []
    while step < trainer.num_steps:
        step += trainer.steps_this_call(step)
        ends.append(step)
    assert ends == [15, 20, 30, 40, 45, 50]


@pytest.mark.slow
def test_kill_inside_a_k_step_call_resumes_bitwise(tmp_path, monkeypatch):
    """A run with 4 steps per call killed inside its second call (the call ran on the device, the loop never
    saw it) resumes from the step-4 checkpoint and ends at bitwise the params of the uninterrupted run."""

    def final_params(workdir, config):
        trainer = train_lib.Trainer(config, workdir)
        state, _, _, step = RunCheckpoints(workdir).restore("latest", abstract_like(trainer.initial_state()))
        assert step == 8
        return _params(state.params)

    multi = smoke_config(steps_per_call=4)
    train_lib.train_and_evaluate(multi, tmp_path / "multi")
    reference = final_params(tmp_path / "multi", multi)

    class Killed(Exception):
        pass

    original, calls = train_multistep.split_metrics, {"n": 0}

    def killed_on_second_call(stacked, count):
        calls["n"] += 1
        if calls["n"] == 2:  # steps 5..8 computed on the device, lost with the process
            raise Killed
        return original(stacked, count)

    monkeypatch.setattr(train_multistep, "split_metrics", killed_on_second_call)
    with pytest.raises(Killed):
        train_lib.train_and_evaluate(multi, tmp_path / "killed")
    monkeypatch.undo()
    ckpt = RunCheckpoints(tmp_path / "killed")
    assert ckpt.latest.latest_step() == 4
    ckpt.close()
    train_lib.train_and_evaluate(multi, tmp_path / "killed")
    for a, b in zip(final_params(tmp_path / "killed", multi), reference):
        np.testing.assert_array_equal(a, b)


def test_global_batch_is_fixed_whatever_the_devices():
    config = ml_collections.ConfigDict({"global_batch_size": 4, "per_device_batch_size": 1})
    assert [train_multistep.resolve_global_batch(config, n) for n in (1, 2, 4)] == [4, 4, 4]
    for n, example in ((3, 2), (8, 4)):  # the example count is one these devices have
        expected = (rf"global_batch_size=4 cannot be split evenly over {n} devices: run on 1, 2, 4 devices "
                    rf"\(e.g. --config.num_devices={example}\)")
        with pytest.raises(ValueError, match=expected):
            train_multistep.resolve_global_batch(config, n)
    config.global_batch_size = -1
    assert train_multistep.resolve_global_batch(config, 8) == 8
