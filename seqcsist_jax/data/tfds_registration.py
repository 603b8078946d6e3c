"""Registers the ``seqcsist`` and ``csist100k`` TFDS builders: ``import seqcsist_jax`` calls :func:`register`.

TFDS resolves ``tfds.builder('seqcsist')``, ``tfds.load``, ``tfds.data_source`` and ``tfds.builder_cls`` by name
once the module defining the builder has been imported; the builders live in the top-level ``tfds_builders``
package (``tfds_builders.seqcsist``, ``tfds_builders.csist100k``, laid out as ``tfds new`` creates them).
Importing them is plain registration, with no import hook: ``import seqcsist_jax`` therefore imports
``tensorflow_datasets`` (TFDS itself imports neither TensorFlow nor JAX). That costs about 0.3 s on a quiet
machine; the two builder modules add a few milliseconds.

A process that calls ``tfds.load('seqcsist')`` must run ``import seqcsist_jax`` (or ``import
tfds_builders.seqcsist``) first.
"""

from __future__ import annotations

import importlib

BUILDER_MODULES: tuple[str, ...] = ("tfds_builders.seqcsist", "tfds_builders.csist100k")


def register() -> None:
    """Imports the builder modules so TFDS knows ``seqcsist`` and ``csist100k`` by name (idempotent)."""
    for module in BUILDER_MODULES:
        importlib.import_module(module)
