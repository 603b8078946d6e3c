"""Models: DeRefNet (SPEC §5), its loss and its building blocks."""

from seqcsist_jax.models.derefnet import DeRefNet, build_derefnet
from seqcsist_jax.models.tdfa import pair_indices, window_offsets

__all__ = ["DeRefNet", "build_derefnet", "pair_indices", "window_offsets"]
