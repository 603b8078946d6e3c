"""The `seqcsist` TFDS dataset. Importing this package registers the builder with TFDS."""

from tfds_builders.seqcsist.seqcsist_dataset_builder import Builder, SeqcsistConfig

__all__ = ["Builder", "SeqcsistConfig"]
