"""seqcsist dataset: sequential closely-spaced infrared small targets (SPEC §3).

One example is one trajectory of ``T = 20`` frames (all fixed-shape ``Tensor`` features):

- ``frames``: ``(20, 11, 11)`` grey levels, ``uint8`` as released (``float32`` for the ``noise_*`` configs);
- ``targets``: ``(20, MAXT, 3)`` float32 rows ``(xc, yc, brightness)`` (``xc`` along image rows), zero padded
  (``MAXT`` = 4, 8 for ``targets_2_8``);
- ``num_targets``: ``(20,)`` int32 real rows per frame;
- ``trajectory_id``: int32 index of the trajectory in its split (examples are stored in this order); the same
  dtype through ``tfds.data_source`` (a NumPy scalar, see :meth:`Builder.as_data_source`) and ``tfds.load``;
- ``frame_numbers``: ``(20,)`` int32 source frame numbers (``N`` of ``image_{N}.png`` for ``public``; for the
  simulated configs ``20·trajectory_id + t``, the numbers the public-format writer gives with start index 0).

Label grids are not stored; :mod:`seqcsist_jax.data.pipeline` computes them from ``targets``.

File format: every split is written as **Parquet** (see README.md): the only TFDS format that both
``tfds.data_source`` (random access, no TensorFlow) and ``tfds.load`` (tf.data) can read, so one prepared copy
serves both readers. ``tfds.data_source`` asks for ``array_record`` when it is called without ``data_dir``;
this builder serves such requests from Parquet (also random access) instead of writing a copy that
``tfds.load`` could not read.

Seeds (simulated configs): split ``s`` uses ``split_seed(base_seed, s')`` with ``s'`` the public release's
folder name (``train``/``val``/``test``), so ``python -m seqcsist_jax.data.simulate --seed 0 --split val``
writes exactly the ``validation`` split of ``default``. All simulated configs share ``base_seed = 0``; the
simulator draws noise from its own stream, so ``noise_*`` holds the same trajectories as ``default``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import errno
import logging
import pathlib
import re
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import writer as tfds_writer

_LOG = logging.getLogger(__name__)

FRAMES_PER_TRAJECTORY = 20
FRAME_SIZE = 11

#: TFDS split name → folder (and split-seed) name of the public release.
PUBLIC_SPLIT_NAMES: dict[str, str] = {"train": "train", "validation": "val", "test": "test"}

#: Trajectories per split of the paper's dataset.
PAPER_SPLIT_SIZES: dict[str, int] = {"train": 3500, "validation": 750, "test": 750}

_FORMAT = file_adapters.FileFormat

#: ``DatasetInfo.description``: what a ``print(builder.info)`` shows. The card (README.md next to this file, which
#: TFDS would otherwise use whole) keeps the details: features, configs, splits, how the data were made.
DESCRIPTION = (
    "SeqCSIST: sequences of closely-spaced infrared small targets (Zhai et al., IEEE TGRS 2025, "
    "arXiv 2507.09556). One example is one trajectory: 20 frames of an 11x11 infrared image in which 2-4 point "
    "targets, less than one pixel apart, move together, blurred by a Gaussian point-spread function. The task is "
    "to recover every target's sub-pixel position and brightness. Features, configs and splits: see the dataset "
    "card, tfds_builders/seqcsist/README.md in seqcsist-jax."
)


class _CanonicalExampleWriter(tfds_writer.ExampleWriter):
    """TFDS's example writer with two fixes that make the prepared files exact and reproducible.

    * Every record is re-serialised with ``deterministic=True`` (map keys sorted). TFDS serialises the
      ``tf.Example`` feature map in an order that differs between processes with and without TensorFlow
      loaded, so builds on two machines decoded to equal arrays but were not byte-identical.
    * Parquet shards receive a list rather than an iterator: ``ParquetFileAdapter.write_examples`` (TFDS
      4.9.10) batches with ``islice(iterator, i, i + 100)``, which on an iterator skips ``i`` examples before
      every batch (a 3,500-example shard was written with 700 rows while ``dataset_info.json`` said 3,500). On a
      list the same code is correct. Shards here are a few MB.
    """

    def write(self, path, examples):
        from tensorflow_datasets.proto import tf_example_pb2

        parse = tf_example_pb2.Example.FromString
        examples = [(key, parse(record).SerializeToString(deterministic=True)) for key, record in examples]
        return super().write(path, examples)


@dataclasses.dataclass(eq=False)
class SeqcsistConfig(tfds.core.BuilderConfig):
    """One variant of the dataset.

    Attributes:
      source: ``"simulate"`` (generated with :func:`seqcsist_jax.data.simulate.simulate_seqcsist`) or
        ``"public"`` (the public release read from ``manual_dir``).
      split_sizes: trajectories per TFDS split (simulated configs).
      base_seed: per-split seeds are ``split_seed(base_seed, folder name)``.
      max_targets: ``MAXT``, the padded target axis of ``targets``.
      frames_dtype: ``"uint8"`` (8-bit as released) or ``"float32"`` (unquantised).
      simulation: extra :class:`~seqcsist_jax.data.simulate.SimulationOptions` fields as ``(name, value)``
        pairs (``output`` and ``max_targets_padded`` are set from ``frames_dtype`` and ``max_targets``).
    """

    source: str = "simulate"
    split_sizes: tuple[tuple[str, int], ...] = tuple(PAPER_SPLIT_SIZES.items())
    base_seed: int = 0
    max_targets: int = 4
    frames_dtype: str = "uint8"
    simulation: tuple[tuple[str, Any], ...] = ()

    def simulation_options(self) -> dict[str, Any]:
        """Keyword options for ``simulate_seqcsist`` of this config."""
        options = dict(self.simulation)
        options.update(
            output=self.frames_dtype,
            max_targets_padded=self.max_targets,
            frames_per_trajectory=FRAMES_PER_TRAJECTORY,
            size=FRAME_SIZE,
        )
        return options


_V1 = tfds.core.Version("1.0.0")
_NOTES = {"1.0.0": "Initial release."}


def _simulated(name: str, description: str, **kwargs: Any) -> SeqcsistConfig:
    return SeqcsistConfig(name=name, version=_V1, release_notes=_NOTES, description=description, **kwargs)


def _noise(sigma: int) -> SeqcsistConfig:
    return _simulated(
        f"noise_{sigma}",
        f"Paper size (3,500 / 750 / 750 trajectories) with additive Gaussian noise of σ = {sigma} grey levels "
        "(the paper's robustness study); same trajectories as `default`. Frames are float32: rendered frame "
        "plus noise, neither rounded nor clipped (DECISION), so the noise is exactly Gaussian.",
        frames_dtype="float32",
        # Clipping at 0 would rectify the noise on the (mostly dark) background and shrink its spread.
        simulation=(("noise_sigma", float(sigma)), ("clip", False)),
    )


BUILDER_CONFIGS: list[SeqcsistConfig] = [
    _simulated(
        "default",
        "Paper size: 3,500 / 750 / 750 trajectories × 20 frames (70,000 / 15,000 / 15,000 frames), 2–4 "
        "targets per frame, noise-free, 8-bit frames. Fixed seeds: every machine builds byte-identical data.",
    ),
    _simulated(
        "mini",
        "The `default` generator at one tenth the size (350 / 75 / 75 trajectories) for CPU experiments and "
        "the README quickstart.",
        split_sizes=tuple((k, v // 10) for k, v in PAPER_SPLIT_SIZES.items()),
    ),
    *[_noise(s) for s in (2, 3, 4, 5)],
    _simulated(
        "targets_2_8",
        "Paper size with 2–8 targets per frame (the paper's density study); more than 4 targets use the 8 "
        "compass directions. `targets` is padded to 8 rows.",
        max_targets=8,
        simulation=(("min_targets", 2), ("max_targets", 8)),
    ),
    SeqcsistConfig(
        name="public",
        version=_V1,
        release_notes=_NOTES,
        description="The public SeqCSIST release (5,000 trajectories: 3,500 / 750 / 750), ingested from "
        "`manual_dir`; see MANUAL_DOWNLOAD_INSTRUCTIONS. Its `val` folder becomes the `validation` split.",
        source="public",
    ),
]

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
The `public` config ingests the SeqCSIST release of Zhai et al. (IEEE TGRS 2025) as distributed by its
authors (https://github.com/GrokCV/SeqCSIST, "Dataset" section; the authors' code calls the folder
`track_5000_20`). Download and extract it, then place (or symlink) it as `manual_dir`, by default
`<data_dir>/downloads/manual/`, or pass
`download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=PATH)}`.

Expected layout (`manual_dir` itself, or a single sub-folder of it such as `track_5000_20/`):

    train/image/image_{N}.png      train/annotation/COS{N}.xml     (70,000 frames)
    val/image/image_{N}.png        val/annotation/COS{N}.xml       (15,000 frames -> split `validation`)
    test/image/image_{N}.png       test/annotation/COS{N}.xml      (15,000 frames)

Frames are 11x11 8-bit grey PNGs; each XML holds one <object><coordinate><xc/><yc/><brightness/></coordinate>
per target. Files sort by the first integer in their name and 20 consecutive numbers form one trajectory
(numbering may start at 0 or 1). A missing or corrupt file stops the build with an error naming it.
"""


def _find_public_root(manual_dir: epath.Path, release: str = "SeqCSIST", instructions: str | None = None,
                      layout: Any = None) -> epath.Path:
    """The folder of ``manual_dir`` (itself or one sub-folder) that holds the split folders of ``release``.

    ``layout`` (a :class:`seqcsist_jax.data.public_format.PublicLayout`; default SeqCSIST's) tells the releases
    apart: with both releases side by side in the default ``manual_dir`` (``manual/seqcsist/``,
    ``manual/csist100k/``), each has train/val/test folders, and only the image and annotation folder names inside
    them say which is which.

    Raises:
      PublicFormatError: no such folder, or more than one with this release's layout.
    """
    from seqcsist_jax.data.public_format import SEQCSIST_LAYOUT, PublicFormatError

    layout = SEQCSIST_LAYOUT if layout is None else layout
    wanted = set(PUBLIC_SPLIT_NAMES.values())

    def has_splits(path: epath.Path) -> bool:
        return all((path / s).is_dir() for s in wanted)

    def has_layout(path: epath.Path) -> bool:
        return all((path / s / folder).is_dir() for s in wanted for folder in (layout.image_dir, layout.annotation_dir))

    if has_splits(manual_dir):
        return manual_dir
    candidates = sorted(p for p in manual_dir.iterdir() if p.is_dir() and has_splits(p))
    matching = [p for p in candidates if has_layout(p)]
    if len(candidates) == 1:
        return candidates[0]
    if len(matching) == 1:  # e.g. the other release's folder next to this one
        return matching[0]
    found = (f"found {len(matching)} sub-folders with its layout: {', '.join(p.name for p in matching)}" if matching
             else f"found {len(candidates)} candidates")
    # One line (the entry points print it as their error line): the layout, and where the release comes from.
    link = re.search(r"https://[^\s,)]+", MANUAL_DOWNLOAD_INSTRUCTIONS if instructions is None else instructions)
    raise PublicFormatError(
        f"manual_dir {manual_dir} does not hold the {release} release: expected folders "
        f"{sorted(wanted)} (each with {layout.image_dir}/image_{{N}}.png and "
        f"{layout.annotation_dir}/{layout.annotation_prefix}{{N}}.xml) in it or in exactly one sub-folder ({found})"
        + (f"; the release: {link.group(0)} (the dataset card gives the details)" if link else "")
    )


class ScalarTypedSource(collections.abc.Sequence):
    """A random-access source whose examples hold their scalar features as NumPy scalars of a fixed dtype.

    Wraps a TFDS data source (``len``, ``source[i]``, ``source.__getitems__(indices)``); other attributes
    (``dataset_info``, ``split``) are the wrapped source's.

    Args:
      source: the TFDS data source.
      scalar_dtypes: feature name → dtype of the shape-``()`` features to cast (e.g. ``trajectory_id`` → int32).
    """

    def __init__(self, source: Any, scalar_dtypes: dict[str, np.dtype]):
        self.source = source
        self.scalar_dtypes = dict(scalar_dtypes)

    def _typed(self, example: Any) -> Any:
        if not isinstance(example, dict):
            return example
        example = dict(example)
        for name, dtype in self.scalar_dtypes.items():
            if name in example:
                example[name] = np.asarray(example[name], dtype=dtype)[()]
        return example

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        return self._typed(self.source[key])

    def __getitems__(self, keys) -> list[Any]:
        return [self._typed(e) for e in self.source.__getitems__(keys)]

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("source", "scalar_dtypes"):  # unpickling looks these up early
            raise AttributeError(name)
        return getattr(self.source, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r})"


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the SeqCSIST dataset (one example = one 20-frame trajectory)."""

    VERSION = _V1
    RELEASE_NOTES = _NOTES
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_BUILDER_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    #: Format written when none is requested: readable by both `tfds.data_source` and `tfds.load`.
    DEFAULT_FILE_FORMAT = _FORMAT.PARQUET

    def _log_download_bytes(self) -> None:
        # Replaces TFDS's "Downloading and preparing dataset Unknown size (download: Unknown size, ...)" line, which
        # reads as if something were fetched: every config is generated here or read from the manual folder.
        # (A private TFDS hook: a TFDS without it prints its own line instead, nothing breaks.)
        source = "reading the manual folder" if self.builder_config.source == "public" else "generating it here"
        print(f"Preparing {self.name}/{self.builder_config.name} {self.version} in {self.data_dir} ({source}; "
              "nothing is downloaded)...", flush=True)

    def _log_download_done(self) -> None:
        # Replaces TFDS's "Dataset seqcsist downloaded and prepared to ..." (no config name, and nothing downloaded).
        print(f"Prepared {self.name}/{self.builder_config.name} {self.version} in {self.data_dir}; later calls "
              "reuse it.", flush=True)

    def __init__(self, *, file_format: str | Any | None = None, **kwargs: Any):
        requested = None if file_format is None else _FORMAT.from_value(file_format)
        # Random-access requests (tfds.data_source asks for array_record by default) are resolved below:
        # they must neither clash with an existing prepared copy nor create one that tf.data cannot read.
        passthrough = requested if requested in (_FORMAT.TFRECORD, _FORMAT.RIEGELI) else None
        super().__init__(file_format=passthrough, **kwargs)
        if passthrough is not None:
            return
        if (self.data_path / "dataset_info.json").exists():
            available = self.info.available_file_formats()
            if requested is not None and requested in available:
                self.info.set_file_format(requested, override=True, override_if_initialized=True)
            # Otherwise keep the prepared format (restored from dataset_info.json); as_data_source picks a
            # random-access one itself and reports a clear error if there is none.
            return
        if requested not in (None, self.DEFAULT_FILE_FORMAT):
            _LOG.info("seqcsist: writing %s instead of the requested %s so that both tfds.data_source and "
                      "tfds.load can read the prepared data", self.DEFAULT_FILE_FORMAT.value, requested.value)
        self.info.set_file_format(self.DEFAULT_FILE_FORMAT, override=True)

    def is_prepared(self) -> bool:
        # TFDS checks the version folder even when it does not exist yet and then warns "Variant folder … has no
        # dataset_info.json" before every first build; a missing folder is simply "not prepared".
        return self.data_path.exists() and super().is_prepared()

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """TFDS's preparation, safe when another process prepares the same config at the same time (two direct
        ``tfds.data_source`` calls, a trainer and a notebook): it holds the project's build lock
        (``seqcsist_jax.data.tfds_open.build_lock``), so the second waits and then reuses the data; folders of
        killed builds (``incomplete.*``) are removed first. A builder created before another process finished,
        or one racing a process without the lock, uses the other's prepared copy (every generated build is
        byte-identical) instead of failing."""
        from seqcsist_jax.data.tfds_open import build_lock, remove_stale_incomplete

        root = pathlib.Path(self.data_path).parent.parent.parent
        try:
            with build_lock(f"{self.name}/{self.builder_config.name}", root):
                if not self.is_prepared():
                    remove_stale_incomplete(self.data_path)
                super().download_and_prepare(*args, **kwargs)
        except FileExistsError:
            if not (self.data_path / "dataset_info.json").exists():
                raise
            _LOG.warning("%s: another process prepared it at the same time; using its copy", self.data_path)
        except Exception as e:  # noqa: BLE001 - only a full disk is translated; anything else is re-raised
            from seqcsist_jax.fileio import is_disk_full

            if not is_disk_full(e):
                raise
            # TFDS's writers say "Failed to finalize writing of split ..." without the folder or an errno; its
            # incomplete.* folder is removed (by TFDS, or by the next build), so the same command then builds it.
            version = pathlib.Path(self.data_path)
            damaged = sorted(version.parent.glob(f"{version.name}.damaged-*"))  # moved aside by the loaders
            kept = (f" (damaged copies kept aside take space there: {', '.join(p.name for p in damaged)} in "
                    f"{version.parent}; delete them once you no longer need them)" if damaged else "")
            full = OSError(errno.ENOSPC, f"No space left on device while preparing {self.name}/"
                           f"{self.builder_config.name} in data_dir{kept}", str(root))
            full.rerun_note = "the dataset is built anew; nothing half-written is read"  # the CLI's error line
            raise full from e
        if not self.info.splits and (self.data_path / "dataset_info.json").exists():
            # TFDS "reuses" data that appeared after this builder was created without reading its split info
            self.info.read_from_directory(self.data_path)

    def _example_writer(self) -> tfds_writer.ExampleWriter:
        return _CanonicalExampleWriter(file_format=self.info.file_format)

    def _download_and_prepare(self, dl_manager, download_config) -> None:
        super()._download_and_prepare(dl_manager, download_config)
        self._check_parquet_row_counts()
        self._record_shard_checksums()

    def _record_shard_checksums(self) -> None:
        """Writes the SHA-256 of every shard next to them (``shards.sha256.json``), still inside TFDS's
        ``incomplete.*`` folder, so the record is renamed into place with the data it describes. Parquet pages
        carry no checksum: a changed bit otherwise reads as other data without any error. The project's loaders
        (``seqcsist_jax.data.tfds_open.read_tfds_split``) verify it and rebuild a copy that differs."""
        from seqcsist_jax.data.tfds_open import write_shard_checksums

        files = [pathlib.Path(i.filename) for split in self.info.splits.values() for i in split.file_instructions]
        if files:
            write_shard_checksums(files[0].parent, files)

    def _check_parquet_row_counts(self) -> None:
        """Fails the build if a Parquet shard holds fewer rows than its split info claims (see above)."""
        if self.info.file_format != _FORMAT.PARQUET:
            return
        import pyarrow.parquet as pq

        for split in self.info.splits.values():
            for instruction in split.file_instructions:
                rows = pq.ParquetFile(instruction.filename).metadata.num_rows
                if rows != instruction.examples_in_shard:
                    raise RuntimeError(
                        f"{instruction.filename}: {rows} rows written, {instruction.examples_in_shard} expected; "
                        "the TFDS Parquet writer lost examples"
                    )

    def _info(self) -> tfds.core.DatasetInfo:
        """Returns the dataset metadata (features depend on the config's dtype and MAXT)."""
        cfg: SeqcsistConfig = self.builder_config
        t, s = FRAMES_PER_TRAJECTORY, FRAME_SIZE
        raw = tfds.features.Encoding.BYTES  # raw bytes: fast to encode and decode, exact for floats
        features = tfds.features.FeaturesDict({
            "frames": tfds.features.Tensor(
                shape=(t, s, s), dtype=np.dtype(cfg.frames_dtype), encoding=raw,
                doc="grey levels, xc along rows"),
            "targets": tfds.features.Tensor(
                shape=(t, cfg.max_targets, 3), dtype=np.float32, encoding=raw,
                doc="(xc, yc, brightness) per target in px / grey levels; rows with brightness 0 are padding"),
            "num_targets": tfds.features.Tensor(shape=(t,), dtype=np.int32, doc="real target rows per frame"),
            # Scalar (stored exactly like a shape-() Tensor) so that printed infos show its description too.
            "trajectory_id": tfds.features.Scalar(
                dtype=np.int32, doc="0-based index of the trajectory in its split (examples are stored in this "
                                    "order)"),
            "frame_numbers": tfds.features.Tensor(shape=(t,), dtype=np.int32, doc="source frame numbers"),
        })
        # Not dataset_info_from_configs: it would replace the short description by the whole card.
        return tfds.core.DatasetInfo(
            builder=self,
            description=DESCRIPTION,
            citation=self.get_metadata().citation,
            features=features,
            supervised_keys=None,
            homepage="https://github.com/GrokCV/SeqCSIST",
            # The stored order is the paper's fixed order; shuffling happens in the input pipeline.
            disable_shuffling=True,
        )

    def as_data_source(self, split=None, **kwargs: Any):
        """``tfds.data_source`` readers whose scalar features have the feature's dtype, as ``tfds.load`` gives.

        TFDS' Parquet reader returns shape-``()`` features (``trajectory_id``) as Python ``int``; each example
        here holds them as NumPy scalars of the declared dtype (``np.int32``), as
        ``tfds.as_numpy(tfds.load(...))`` does.
        Arguments as :meth:`tfds.core.DatasetBuilder.as_data_source`; ``decoders`` given for a feature and
        ``deserialize_method`` other than decoding leave the examples as TFDS returns them.
        """
        sources = super().as_data_source(split, **kwargs)
        method = kwargs.get("deserialize_method", tfds.decode.DeserializeMethod.DESERIALIZE_AND_DECODE)
        if method != tfds.decode.DeserializeMethod.DESERIALIZE_AND_DECODE:
            return sources
        decoded_elsewhere = set(kwargs.get("decoders") or ())
        scalars = {
            name: np.dtype(feature.np_dtype)
            for name, feature in self.info.features.items()
            if isinstance(feature, tfds.features.Tensor) and feature.shape == () and name not in decoded_elsewhere
        }
        if not scalars:
            return sources
        if isinstance(sources, dict):
            return {name: ScalarTypedSource(source, scalars) for name, source in sources.items()}
        if isinstance(sources, list):
            return [ScalarTypedSource(source, scalars) for source in sources]
        return ScalarTypedSource(sources, scalars)

    def _public_root(self, manual_dir: epath.Path) -> epath.Path:
        """The folder holding the public release's split folders (subclasses with another layout override it)."""
        return _find_public_root(manual_dir)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """One generator per split: simulated in one vectorised call, or read from the public release."""
        cfg: SeqcsistConfig = self.builder_config
        if cfg.source == "public":
            try:
                manual_dir = dl_manager.manual_dir
            except AssertionError as e:  # TFDS asserts, with its whole instructions, that the folder has files
                from seqcsist_jax.data.public_format import PublicFormatError

                raise PublicFormatError(
                    f"{str(e).split('. ', 1)[0]}: put the public release's train/, val/ and test/ folders there "
                    "(the dataset card gives the layout)") from None
            root = self._public_root(epath.Path(manual_dir))
            return {
                split: self._generate_examples(source="public", root=root, split=folder)
                for split, folder in PUBLIC_SPLIT_NAMES.items()
            }
        if cfg.source != "simulate":
            raise ValueError(f"config {cfg.name}: unknown source {cfg.source!r}")
        sizes = dict(cfg.split_sizes)
        return {
            split: self._generate_examples(source="simulate", num=sizes[split], split=PUBLIC_SPLIT_NAMES[split])
            for split in PUBLIC_SPLIT_NAMES
        }

    def _generate_examples(
        self, source: str, split: str, num: int = 0, root: epath.Path | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yields ``(trajectory_id, example)`` in the stored (paper) order."""
        cfg: SeqcsistConfig = self.builder_config
        if source == "public":
            # Deferred import: the public-format reader pulls in PIL only when needed.
            from seqcsist_jax.data.public_format import read_public_split

            arrays = read_public_split(root, split, frames_per_trajectory=FRAMES_PER_TRAJECTORY,
                                       max_targets=cfg.max_targets)
            frame_numbers = arrays["frame_numbers"]
        else:
            # Deferred import: the simulator imports JAX (through the imaging model); registering the builder
            # must stay cheap.
            from seqcsist_jax.data.simulate import simulate_seqcsist, split_seed

            arrays = simulate_seqcsist(num, split_seed(cfg.base_seed, split), **cfg.simulation_options())
            frame_numbers = np.arange(num * FRAMES_PER_TRAJECTORY).reshape(num, FRAMES_PER_TRAJECTORY)
        frames = np.asarray(arrays["frames"], dtype=np.dtype(cfg.frames_dtype))
        targets = np.asarray(arrays["targets"], dtype=np.float32)
        num_targets = np.asarray(arrays["num_targets"], dtype=np.int32)
        frame_numbers = np.asarray(frame_numbers, dtype=np.int64)
        limit = np.iinfo(np.int32)
        if frame_numbers.size and (frame_numbers.max() > limit.max or frame_numbers.min() < limit.min):
            worst = int(frame_numbers.max() if frame_numbers.max() > limit.max else frame_numbers.min())
            raise ValueError(f"split {split}: frame number {worst} does not fit the int32 'frame_numbers' feature "
                             f"(|N| <= {limit.max}); renumber the files from 0")
        frame_numbers = frame_numbers.astype(np.int32)
        if targets.shape[2] != cfg.max_targets:
            raise ValueError(f"config {cfg.name}: targets have {targets.shape[2]} rows per frame, the features "
                             f"expect MAXT={cfg.max_targets}")
        for i in range(frames.shape[0]):
            yield i, {
                "frames": frames[i],
                "targets": targets[i],
                "num_targets": num_targets[i],
                "trajectory_id": np.int32(i),
                "frame_numbers": frame_numbers[i],
            }
