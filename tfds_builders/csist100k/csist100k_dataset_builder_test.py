"""csist100k dataset: the standard TFDS builder test on dummy data (needs TensorFlow).

``dummy_data/`` is a tiny public release (5 images per split, numbered from 1) written by::

    python -m seqcsist_jax.data.csist100k --out tfds_builders/csist100k/dummy_data --split all \\
        --num_images 5 --seed 7 --start_index 1

``tests/test_csist100k.py`` runs this test under pytest (marked ``tf``).
"""

import tensorflow_datasets as tfds

from tfds_builders.csist100k import csist100k_dataset_builder


class Csist100kPublicTest(tfds.testing.DatasetBuilderTestCase):
    """Ingests ``dummy_data/`` as ``manual_dir`` with the ``public`` config and reads it with ``tfds.load``."""

    DATASET_CLASS = csist100k_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ["public"]
    SPLITS = {"train": 5, "validation": 5, "test": 5}
    SKIP_CHECKSUMS = True  # nothing is downloaded


if __name__ == "__main__":
    tfds.testing.test_main()
