"""The `csist100k` TFDS dataset. Importing this package registers the builder with TFDS."""

from tfds_builders.csist100k.csist100k_dataset_builder import Builder, Csist100kConfig

__all__ = ["Builder", "Csist100kConfig"]
