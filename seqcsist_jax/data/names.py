"""Dataset names: which ``config.dataset.name`` values this project reads, their families, and which hold
single images. String logic only, without JAX, so that a config can be resolved and a mistyped command refused
before JAX is imported (``--help`` and usage errors answer in under a second).
"""

from __future__ import annotations

import pathlib

from seqcsist_jax.suggest import did_you_mean


SIMULATED = ("simulated", "simulated_csist100k")  # in-memory datasets (SeqCSIST trajectories, CSIST-100K images)
SINGLE_IMAGE = ("csist100k", "simulated_csist100k")  # dataset families whose examples are single images
TFDS_SPLITS = ("train", "validation", "test")  # every config of both TFDS builders has exactly these


def dataset_family(name: str) -> str:
    """``"seqcsist/mini"`` → ``"seqcsist"``, ``"csist100k:1.0.0"`` → ``"csist100k"``."""
    return name.split("/", 1)[0].split(":", 1)[0]


class UnknownDatasetError(ValueError):
    """``config.dataset.name`` names no dataset this project reads."""


def known_dataset_names() -> tuple[str, ...]:
    """Every ``config.dataset.name`` this project reads: ``seqcsist/<config>``, ``csist100k/<config>`` (the TFDS
    builders' configs) and the in-memory :data:`SIMULATED` datasets."""
    from tfds_builders.csist100k import csist100k_dataset_builder as csist100k
    from tfds_builders.seqcsist import seqcsist_dataset_builder as seqcsist

    names = [f"{family}/{c.name}" for family, module in (("seqcsist", seqcsist), ("csist100k", csist100k))
             for c in module.BUILDER_CONFIGS]
    return (*names, *SIMULATED)


def check_dataset_name(name: str, data_dir: str | None = None) -> None:
    """Raises :class:`UnknownDatasetError` (one line, with the nearest known name) unless ``name`` is a known
    dataset: a TFDS name as :func:`known_dataset_names` lists it (a bare family means its ``default`` config;
    a ``:version`` suffix is allowed), a simulated dataset, or another config of the ``seqcsist``/``csist100k``
    builders already prepared in ``data_dir`` (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), e.g. a
    researcher's own size.

    Checked before anything is built or written: TFDS's own error for an unknown name lists every dataset in its
    catalogue (hundreds of lines) and would leave an empty workdir behind.
    """
    import os

    known = known_dataset_names()
    text = str(name)
    family, rest = dataset_family(text), text.partition("/")[2]
    config = rest.split(":", 1)[0] if rest else "default"
    if text in SIMULATED or f"{family}/{config}" in known:
        return
    families = {n.split("/", 1)[0] for n in known if "/" in n}
    root = pathlib.Path(os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"))
    if family in families and (root / family / config).is_dir():  # a prepared custom config of our builders
        return
    hint = did_you_mean(f"{family}/{config}" if rest else text, known, cutoff=0.5)
    raise UnknownDatasetError(f"config.dataset.name: unknown dataset {text!r}{hint}; known: {', '.join(known)}"
                              + (f", or a config prepared in {root}/{family}/" if family in families else ""))


def is_single_image(name: str) -> bool:
    """Whether dataset ``name`` holds single images (scored without a frame margin, SPEC §9)."""
    return dataset_family(name) in SINGLE_IMAGE


def split_expression_names(split: str) -> list[str]:
    """The base split names of a TFDS split expression: ``"train[:10%]+validation"`` → ``["train",
    "validation"]``."""
    return [part.split("[", 1)[0].strip() for part in str(split).split("+")]


def check_whole_splits(split: str, what: str = "split") -> None:
    """Raises ValueError (naming ``what``) when ``split`` slices a split, e.g. ``"test[:7]"``.

    ``tfds.data_source`` reads this project's Parquet-stored splits whole and ignores a slice without a word
    (TFDS 4.9: ``len(tfds.data_source("seqcsist/mini", split="test[:7]")) == 75``), so a slice would train or
    score on other data than asked. Whole splits joined with ``+`` are read as asked.
    """
    if "[" in str(split):
        raise ValueError(f"{what} {split!r}: slices are not applied to this project's datasets (tfds.data_source "
                         "reads their Parquet-stored splits whole, ignoring the slice); give whole splits "
                         f"({', '.join(TFDS_SPLITS)}; '+' joins them) and slice the arrays you read")


def check_split_names(dataset) -> None:
    """Raises ValueError naming the key unless ``dataset.train_split``, ``eval_split`` and ``test_split`` are
    splits of ``dataset.name`` (:data:`TFDS_SPLITS`, or several joined with ``+``; no slices:
    :func:`check_whole_splits`).

    Checked with the config, before anything is built or trained: TFDS's own error for an unknown split comes
    when the split is first read, for ``test_split`` after the whole training, and names no config key. The
    in-memory :data:`SIMULATED` datasets are generated under the config's own split names, so any name passes.
    ``dataset`` is a ``config.dataset`` (``ml_collections.ConfigDict``).
    """
    if dataset.name in SIMULATED:
        return
    for key in ("train_split", "eval_split", "test_split"):
        value = dataset.get(key)
        for part in split_expression_names(value):
            if part not in TFDS_SPLITS:
                raise ValueError(f"config.dataset.{key}: unknown split {value!r} of {dataset.name}"
                                 f"{did_you_mean(part, TFDS_SPLITS)}; its splits are {', '.join(TFDS_SPLITS)}")
        check_whole_splits(value, f"config.dataset.{key}: split")
