"""Published weight files (``<name>.npz``) and their model cards (``<name>.json``); see
:mod:`seqcsist_jax.pretrained`."""
