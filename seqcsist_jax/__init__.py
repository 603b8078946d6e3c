"""seqcsist-jax: Sequential CSIST unmixing in JAX/Flax.

Modules by job:
  imaging      pixel-integrated Gaussian imaging model, Φ, Q, label grids, 8-bit quantisation (SPEC §1–2)
  data         simulator, public on-disk format, TFDS-backed input pipeline (SPEC §3)
  metrics      CSO-mAP exactly as the public toolkit computes it, plus diagnostics (SPEC §4)
"""

__version__ = "0.1.0"
