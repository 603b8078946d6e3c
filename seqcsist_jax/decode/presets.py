"""Decoder options that follow from a dataset's known design, so evaluation never caps the count range silently.

:data:`CSIST100K_OPTIONS` encodes what CSIST-100K guarantees (SPEC §9; each a DECISION, off for SeqCSIST whose
groups span several pixels): up to 5 targets, all inside one pixel, pairwise at least 0.52 Rayleigh units
(0.494 px) apart; ``uniform_slots`` (counts 3–5 share one compiled program) only saves compilation time. :func:`dataset_decode_options` picks the options of a run's ``config.dataset``.
"""

from __future__ import annotations

from typing import Any, Mapping

CSIST100K_OPTIONS: dict[str, Any] = dict(max_targets=5, single_pixel=True, layout_starts=6, min_separation=0.494,
                                         uniform_slots=True)

# Count ranges of the SeqCSIST builder configs (SPEC §3; targets_2_8 is the paper's 2–8 targets study).
_SEQCSIST_MAX_TARGETS = {"targets_2_8": 8}


def dataset_decode_options(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """Decoder options implied by ``dataset`` (a ``config.dataset`` block): the count range for every dataset
    and, for CSIST-100K, :data:`CSIST100K_OPTIONS`. Explicit ``config.eval.decode_options`` override these."""
    name = str(dataset.get("name", ""))
    if name.startswith("csist100k") or name == "simulated_csist100k":
        return dict(CSIST100K_OPTIONS)
    if name == "simulated":
        simulate = dataset.get("simulate") or {}
        most = simulate.get("max_targets")
        return {} if most is None else {"max_targets": max(int(most), 4)}
    config = name.split("/", 1)[1] if "/" in name else ""
    if config in _SEQCSIST_MAX_TARGETS:
        return {"max_targets": _SEQCSIST_MAX_TARGETS[config]}
    return {}
