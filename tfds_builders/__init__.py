"""TensorFlow Datasets builders of seqcsist-jax.

Each sub-package is laid out as ``tfds new`` creates it; importing it registers its builder, so that
``tfds.builder``, ``tfds.load`` and ``tfds.data_source`` resolve the dataset by name. ``import seqcsist_jax``
arranges this automatically (see :mod:`seqcsist_jax.data.tfds_registration`).
"""
