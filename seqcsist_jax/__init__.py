"""seqcsist-jax: Sequential CSIST unmixing in JAX/Flax.

Modules by job:
  imaging      pixel-integrated Gaussian imaging model, Φ, Q, label grids, 8-bit quantisation (SPEC §1–2)
  data         simulator, public on-disk format, TFDS-backed input pipeline (SPEC §3)
  metrics      CSO-mAP exactly as the public toolkit computes it, plus diagnostics (SPEC §4)
  ops          hand-written deformable convolution (DCN v1, torchvision/mmcv semantics; SPEC §6)
  models       DeRefNet (SPEC §5); losses: its three-term loss
  baselines    the paper's comparison methods (ISTA … TDAN)
  methods      registry: config → (Flax module, loss)
  train        TrainState, pure train_step, data parallelism over a ('data',) mesh, train_and_evaluate
  evaluate     CSO-mAP of a run on frames 2..17, exports and figures (plots)
  decode       continuous sub-pixel decoding (grid, peak, refine, trajectory)
  interop      import of public PyTorch checkpoints
"""

__version__ = "0.1.0"

# Registers the TFDS builders, so that `tfds.builder('seqcsist')`, `tfds.load('csist100k')` & co. resolve by
# name after `import seqcsist_jax` (imports tensorflow_datasets: ~0.3 s; see data/tfds_registration.py).
from seqcsist_jax.data import tfds_registration as _tfds_registration  # noqa: E402

_tfds_registration.register()
