"""seqcsist dataset: the standard TFDS builder test on dummy data (needs TensorFlow).

``dummy_data/`` is a tiny public release (2 trajectories per split, frames numbered from 1) written by::

    python -m seqcsist_jax.data.simulate --out tfds_builders/seqcsist/dummy_data --split all \\
        --num_trajectories 2 --seed 7 --start_index 1

``tests/test_tfds_builder.py`` runs this test under pytest (marked ``tf``).
"""

import tensorflow_datasets as tfds

from tfds_builders.seqcsist import seqcsist_dataset_builder


class SeqcsistPublicTest(tfds.testing.DatasetBuilderTestCase):
    """Ingests ``dummy_data/`` as ``manual_dir`` with the ``public`` config and reads it with ``tfds.load``."""

    DATASET_CLASS = seqcsist_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["public"]
    SPLITS = {"train": 2, "validation": 2, "test": 2}
    SKIP_CHECKSUMS = True  # nothing is downloaded


if __name__ == "__main__":
    tfds.testing.test_main()
