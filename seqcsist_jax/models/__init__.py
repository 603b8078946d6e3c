"""Models: DeRefNet (SPEC §5) and its building blocks."""

from seqcsist_jax.models.derefnet import DeRefNet, count_params, flops_per_trajectory
from seqcsist_jax.models.tdfa import pair_indices, window_offsets

__all__ = ["DeRefNet", "count_params", "flops_per_trajectory", "pair_indices", "window_offsets"]
