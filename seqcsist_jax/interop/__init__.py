"""Interoperability with the public PyTorch code: checkpoint import/export (no torch needed for ``.npz``)."""

from seqcsist_jax.interop.torch_checkpoint import (
    convert_state_dict,
    load_public_checkpoint,
    params_to_state_dict,
    read_state_dict,
    save_npz,
    state_dict_shapes,
    torch_key,
)

__all__ = [
    "convert_state_dict",
    "load_public_checkpoint",
    "params_to_state_dict",
    "read_state_dict",
    "save_npz",
    "state_dict_shapes",
    "torch_key",
]
