"""The trainer's batch checks: a global batch the data cannot fill, and a run resumed on another device count."""

from __future__ import annotations

import re
import types

import ml_collections
import pytest

from experiments import configs
from seqcsist_jax import train as train_lib


def test_a_global_batch_larger_than_the_training_set_names_the_knob(tmp_path):
    config = configs.get_config("derefnet:smoke")
    config.per_device_batch_size = 64  # more than the smoke set's trajectories on any device count
    with pytest.raises(ValueError) as error:
        train_lib.Trainer(config, str(tmp_path / "w"))
    message = str(error.value)
    found = re.search(r"global batch of (\d+) trajectories \(config\.per_device_batch_size=64 × (\d+) device\(s\)\) "
                      r"exceeds the (\d+) training trajectories", message)
    assert found, message
    batch, devices, num_train = map(int, found.groups())
    assert batch == 64 * devices and num_train < batch
    assert f"lower config.per_device_batch_size{' or config.num_devices' if devices > 1 else ','}" in message
    with pytest.raises(train_lib.BatchConfigError):  # refused before the first step: no workdir left behind
        train_lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def _trainer_view(global_batch: int, devices: int, per_device: int = 1, fixed: int = -1):
    config = ml_collections.ConfigDict({"per_device_batch_size": per_device, "global_batch_size": fixed})
    return types.SimpleNamespace(config=config, global_batch=global_batch, mesh=types.SimpleNamespace(size=devices))


def test_resuming_on_another_device_count_says_so():
    hint = train_lib.Trainer._device_count_hint(_trainer_view(1, 1), {"batch_size": 4})
    assert hint.startswith("this run was trained on 4 device(s) and this process has 1: ")
    assert "resume it on 4 device(s)" in hint
    hint = train_lib.Trainer._device_count_hint(_trainer_view(4, 2, per_device=2), {"batch_size": 8})
    assert "per_device_batch_size=2" in hint and "trained on 4 device(s) and this process has 2" in hint


@pytest.mark.parametrize("view, state", [
    (_trainer_view(4, 4), {"batch_size": 4}),  # the same batch: the mismatch is elsewhere (seed, split size)
    (_trainer_view(4, 1, fixed=4), {"batch_size": 2}),  # a fixed global batch does not depend on the devices
    (_trainer_view(2, 1, per_device=2), {"batch_size": 3}),  # not a multiple of the per-device batch
    (_trainer_view(1, 1), "garbage"),
])
def test_no_device_hint_when_the_device_count_is_not_the_cause(view, state):
    assert train_lib.Trainer._device_count_hint(view, state) == ""
