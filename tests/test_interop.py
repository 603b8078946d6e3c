"""Public checkpoint ↔ Flax params conversion (no torch needed except for the `.pth` test)."""

import collections

import jax
import numpy as np
import pytest

from seqcsist_jax import interop

SMALL = dict(num_stages=2, channels=4, num_res_blocks=2)

# The public code's state-dict keys (GrokCV/SeqCSIST DeRefNet, LayerNo=9), written out independently.
_STAGE = ["lambda_step", "soft_thr", "conv1_forward", "conv2_forward", "conv1_backward", "conv2_backward"]
PUBLIC_KEYS = (
    [f"fcs.{i}.{n}" for i in range(9) for n in _STAGE]
    + ["TDDA.mlp.weight", "TDDA.mlp.bias", "TDDA.feat_extract.0.conv.weight", "TDDA.feat_extract.0.conv.bias"]
    + [f"TDDA.feat_aggregate.{c}.{p}" for c in ("conv0_s", "conv1_s", "conv_squeeze") for p in ("weight", "bias")]
    + ["TDDA.align_1.weight", "TDDA.align_1.conv_offset.weight", "TDDA.align_1.conv_offset.bias"]
    + ["TDDA.align_2.weight", "TDDA.align_2.conv_offset.weight", "TDDA.align_2.conv_offset.bias"]
    + ["TDDA.conv.weight", "TDDA.conv.bias", "TDDA.tail_conv.0.conv.weight", "TDDA.tail_conv.0.conv.bias"]
    + [f"TDDA.tail_conv.1.{k}.{c}.{p}" for k in range(5) for c in ("conv1", "conv2") for p in ("weight", "bias")]
    + ["TDDA.tail_conv.2.weight"]
)


@pytest.fixture(scope="module")
def small_state():
    shapes = interop.state_dict_shapes(**SMALL)
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_public_key_names_order_and_shapes():
    shapes = interop.state_dict_shapes()
    assert list(shapes) == PUBLIC_KEYS
    assert shapes["fcs.0.lambda_step"] == (1,)
    assert shapes["fcs.3.conv1_forward"] == (32, 1, 3, 3)
    assert shapes["fcs.8.conv2_backward"] == (1, 32, 3, 3)
    assert shapes["TDDA.mlp.weight"] == (1089, 1089)
    assert shapes["TDDA.feat_aggregate.conv0_s.weight"] == (16, 32, 1, 1)
    assert shapes["TDDA.feat_aggregate.conv_squeeze.weight"] == (2, 2, 3, 3)
    assert shapes["TDDA.align_1.conv_offset.weight"] == (18, 32, 3, 3)
    assert shapes["TDDA.tail_conv.0.conv.weight"] == (32, 5, 3, 3)
    assert shapes["TDDA.tail_conv.2.weight"] == (1, 32, 3, 3)
    assert sum(int(np.prod(s)) for s in shapes.values()) == 1_482_879


def test_layouts_and_round_trip(small_state):
    params = interop.convert_state_dict(small_state, **SMALL)
    w = small_state["TDDA.align_1.weight"]  # OIHW
    k = np.asarray(params["tdfa"]["align_1"]["kernel"])  # HWIO
    assert k[2, 1, 3, 0] == w[0, 3, 2, 1]
    dense = np.asarray(params["time_encoding"]["dense"]["kernel"])
    assert dense[5, 7] == small_state["TDDA.mlp.weight"][7, 5]
    back = interop.params_to_state_dict(params)
    assert list(back) == list(small_state)
    for key, value in small_state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_errors_list_missing_unexpected_and_wrong_shapes(small_state):
    bad = dict(small_state)
    del bad["fcs.1.soft_thr"]
    bad["TDDA.extra.weight"] = np.zeros(3, np.float32)
    bad["TDDA.conv.weight"] = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError) as err:
        interop.convert_state_dict(bad, **SMALL)
    msg = str(err.value)
    assert "missing keys (1): fcs.1.soft_thr" in msg
    assert "unexpected keys (1): TDDA.extra.weight" in msg
    assert "TDDA.conv.weight: got (1, 4, 5, 5), expected (1, 4, 3, 3)" in msg
    # options that do not match the checkpoint are reported the same way
    with pytest.raises(ValueError, match="missing keys"):
        interop.convert_state_dict(small_state, **{**SMALL, "num_stages": 3})


def test_module_prefix_and_npz(tmp_path, small_state):
    prefixed = {f"module.{k}": v for k, v in small_state.items()}
    params = interop.convert_state_dict(prefixed, **SMALL)
    path = tmp_path / "ckpt.npz"
    interop.save_npz(path, prefixed)
    loaded = interop.load_public_checkpoint(path, **SMALL)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError):
        interop.load_public_checkpoint(tmp_path / "missing.pth")
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in small_state.items() if "fcs.0" not in k})
    with pytest.raises(ValueError, match=r"(?s)bad\.npz.*missing keys"):
        interop.load_public_checkpoint(tmp_path / "bad.npz", **SMALL)


_EXECUTED = []


def _side_effect(*args):
    """Stands for foreign code a checkpoint may reference; loading must never call it."""
    _EXECUTED.append(args)
    return args


class _Foreign:
    """Stands for e.g. mmengine's HistoryBuffer inside ``message_hub``."""

    def __reduce__(self):
        return (_side_effect, ("pwned",))


def test_pth_mmengine_like_checkpoint_weights_only(tmp_path, small_state):
    torch = pytest.importorskip("torch")  # the `.pth` path needs the optional `torch` extra
    state = collections.OrderedDict((f"module.{k}", torch.from_numpy(v)) for k, v in small_state.items())
    ckpt = {
        "meta": {"epoch": 3, "seed": np.int64(7), "hook": _Foreign()},
        "state_dict": state,
        "message_hub": {"log_scalars": {"train/loss": _Foreign()}},
    }
    path = tmp_path / "epoch_3.pth"
    torch.save(ckpt, path)
    params = interop.load_public_checkpoint(path, **SMALL)
    assert not _EXECUTED
    np.testing.assert_array_equal(
        np.asarray(params["stage_1"]["conv2_forward"]), small_state["fcs.1.conv2_forward"].transpose(2, 3, 1, 0)
    )
