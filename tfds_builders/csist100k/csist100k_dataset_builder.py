"""csist100k dataset: single 11×11 images of 1–5 closely-spaced infrared small targets (SPEC §9).

One example is one image (all fixed-shape ``Tensor`` features):

- ``image``: ``(11, 11)`` uint8 grey levels (``xc`` along rows);
- ``targets``: ``(5, 3)`` float32 rows ``(xc, yc, brightness)``, real rows first, zero padded;
- ``num_targets``: int32 real rows;
- ``image_number``: int32 ``N`` of ``image_{N}.png`` (``public``), else the index in the split (the number the
  public-layout writer gives with start index 0).

Label grids (c = 3, 5, 7) are not stored: :func:`seqcsist_jax.data.csist100k.labels` computes them from
``targets``.

File format and reproducibility are those of the ``seqcsist`` builder, which this one extends: Parquet (read by
both ``tfds.data_source`` and ``tfds.load``), records serialised deterministically, and the row count of every
shard checked after writing. Seeds (simulated configs): split ``s`` uses ``split_seed(base_seed, s')`` with ``s'``
the release folder name (``train``/``val``/``test``), so ``python -m seqcsist_jax.data.csist100k --seed 0
--split val`` writes exactly the ``validation`` split of ``default`` in the public layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tfds_builders.seqcsist import seqcsist_dataset_builder as _seqcsist

IMAGE_SIZE = 11
MAX_TARGETS = 5

#: TFDS split name → folder (and split-seed) name of the public release.
PUBLIC_SPLIT_NAMES: dict[str, str] = {"train": "train", "validation": "val", "test": "test"}

#: Images per split of the published dataset.
PAPER_SPLIT_SIZES: dict[str, int] = {"train": 80000, "validation": 10000, "test": 10000}


@dataclasses.dataclass(eq=False)
class Csist100kConfig(tfds.core.BuilderConfig):
    """One variant of the dataset.

    Attributes:
      source: ``"simulate"`` (:func:`seqcsist_jax.data.csist100k.simulate_csist100k`) or ``"public"`` (the
        public release read from ``manual_dir``).
      split_sizes: images per TFDS split (simulated configs).
      base_seed: per-split seeds are ``split_seed(base_seed, folder name)``.
      simulation: extra :class:`~seqcsist_jax.data.csist100k.Csist100kOptions` fields as ``(name, value)``
        pairs (``output`` and ``max_targets_padded`` are fixed by the features).
    """

    source: str = "simulate"
    split_sizes: tuple[tuple[str, int], ...] = tuple(PAPER_SPLIT_SIZES.items())
    base_seed: int = 0
    simulation: tuple[tuple[str, Any], ...] = ()

    def simulation_options(self) -> dict[str, Any]:
        """Keyword options for ``simulate_csist100k`` of this config."""
        options = dict(self.simulation)
        options.update(output="uint8", max_targets_padded=MAX_TARGETS, size=IMAGE_SIZE)
        return options


_V1 = tfds.core.Version("1.0.0")
_NOTES = {"1.0.0": "Initial release."}

BUILDER_CONFIGS: list[Csist100kConfig] = [
    Csist100kConfig(
        name="default", version=_V1, release_notes=_NOTES,
        description="Published size: 80,000 / 10,000 / 10,000 images, 1–5 targets inside one pixel, pairwise "
        "≥ 0.52 Rayleigh units apart, brightness 220–250, noise-free, 8-bit. Fixed seeds: every machine builds "
        "byte-identical data.",
    ),
    Csist100kConfig(
        name="mini", version=_V1, release_notes=_NOTES,
        description="The `default` generator at one tenth the size (8,000 / 1,000 / 1,000) for CPU experiments.",
        split_sizes=tuple((k, v // 10) for k, v in PAPER_SPLIT_SIZES.items()),
    ),
    Csist100kConfig(
        name="public", version=_V1, release_notes=_NOTES,
        description="The public CSIST-100K release (80,000 / 10,000 / 10,000 images), ingested from "
        "`manual_dir`; see MANUAL_DOWNLOAD_INSTRUCTIONS. Its `val` folder becomes the `validation` split.",
        source="public",
    ),
]

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
The `public` config ingests the CSIST-100K release of Han et al. (DISTA-Net, ICCV 2025) as distributed by its
authors (https://github.com/GrokCV/GrokCSO, "CSIST-100K Dataset" section). Download and extract it, then place
(or symlink) it as `manual_dir`, by default `<data_dir>/downloads/manual/`, or pass
`download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=PATH)}`.

Expected layout (`manual_dir` itself, or a single sub-folder of it):

    train/cso_img/image_{N}.png    train/Annotations/CSO{N}.xml    (80,000 images)
    val/cso_img/image_{N}.png      val/Annotations/CSO{N}.xml      (10,000 images -> split `validation`)
    test/cso_img/image_{N}.png     test/Annotations/CSO{N}.xml     (10,000 images)

Images are 11x11 8-bit grey PNGs; each XML holds one <object><coordinate><xc/><yc/><brightness/></coordinate>
per target (at most 5). Files sort by the first integer in their name (numbering may start anywhere). A missing
or corrupt file stops the build with an error naming it.
"""


class Builder(_seqcsist.Builder):
    """DatasetBuilder for CSIST-100K (one example = one image).

    Extends the ``seqcsist`` builder for its file handling only (Parquet by default, deterministic records,
    row-count check); features, configs and generation are this dataset's own.
    """

    VERSION = _V1
    RELEASE_NOTES = _NOTES
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_BUILDER_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        """Returns the dataset metadata."""
        s, k = IMAGE_SIZE, MAX_TARGETS
        raw = tfds.features.Encoding.BYTES  # raw bytes: fast to encode and decode, exact for floats
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding=raw,
                                          doc="grey levels, xc along rows"),
            "targets": tfds.features.Tensor(
                shape=(k, 3), dtype=np.float32, encoding=raw,
                doc="(xc, yc, brightness) per target in px / grey levels; rows with brightness 0 are padding"),
            "num_targets": tfds.features.Tensor(shape=(), dtype=np.int32, doc="real target rows"),
            "image_number": tfds.features.Tensor(shape=(), dtype=np.int32, doc="source image number"),
        })
        return self.dataset_info_from_configs(
            features=features,
            supervised_keys=None,
            homepage="https://github.com/GrokCV/GrokCSO",
            # Stored in file-number order; shuffling happens in the input pipeline.
            disable_shuffling=True,
        )

    def _public_root(self, manual_dir: epath.Path) -> epath.Path:
        # _split_generators (inherited) is SeqCSIST's; the release's name, instructions and inner folders differ
        # (the split folder names are the same).
        from seqcsist_jax.data.public_format import CSIST100K_LAYOUT

        return _seqcsist._find_public_root(manual_dir, "CSIST-100K", MANUAL_DOWNLOAD_INSTRUCTIONS, CSIST100K_LAYOUT)

    def _generate_examples(
        self, source: str, split: str, num: int = 0, root: epath.Path | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yields ``(index, example)`` in the stored order (file number order for ``public``)."""
        cfg: Csist100kConfig = self.builder_config
        if source == "public":
            # Deferred import: the public-format reader pulls in PIL only when needed.
            from seqcsist_jax.data.public_format import CSIST100K_LAYOUT, read_public_split

            arrays = read_public_split(root, split, frames_per_trajectory=1, max_targets=MAX_TARGETS,
                                       size=IMAGE_SIZE, layout=CSIST100K_LAYOUT)
            image, targets = arrays["frames"][:, 0], arrays["targets"][:, 0]
            num_targets, numbers = arrays["num_targets"][:, 0], arrays["frame_numbers"][:, 0]
        else:
            # Deferred import: the generator imports JAX (through the imaging model); registering the builder
            # must stay cheap.
            from seqcsist_jax.data.csist100k import simulate_csist100k
            from seqcsist_jax.data.simulate import split_seed

            arrays = simulate_csist100k(num, split_seed(cfg.base_seed, split), **cfg.simulation_options())
            image, targets, num_targets = arrays["image"], arrays["targets"], arrays["num_targets"]
            numbers = np.arange(num)
        if numbers.size and numbers.max() > np.iinfo(np.int32).max:
            raise ValueError(f"{root}/{split}: image number {numbers.max()} does not fit the int32 feature")
        image = np.asarray(image, dtype=np.uint8)
        targets = np.asarray(targets, dtype=np.float32)
        num_targets = np.asarray(num_targets, dtype=np.int32)
        numbers = np.asarray(numbers, dtype=np.int32)
        for i in range(image.shape[0]):
            yield i, {
                "image": image[i],
                "targets": targets[i],
                "num_targets": num_targets[i],
                "image_number": numbers[i],
            }
