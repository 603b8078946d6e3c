"""Decoder options implied by the dataset: evaluation never caps the count range below the dataset's."""

from __future__ import annotations

import ml_collections

from experiments import configs
from seqcsist_jax.decode import CSIST100K_OPTIONS, DecodeOptions, dataset_decode_options, make_options


def _dataset(name: str, **simulate) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": name, "simulate": simulate})


def test_count_ranges_follow_the_dataset():
    assert dataset_decode_options(_dataset("seqcsist/default")) == {}
    assert make_options().max_targets == 4  # SeqCSIST's 2–4 targets: the decoder's own default covers it
    assert dataset_decode_options(_dataset("seqcsist/targets_2_8")) == {
        "max_targets": 8, "trajectory_restarts": 8, "trajectory_centre_iterations": 20, "centre_softness": 0.1,
        "trajectory_centre_starts": 9}
    assert dataset_decode_options(_dataset("simulated", max_targets=6)) == {"max_targets": 6}
    assert dataset_decode_options(_dataset("simulated", frames_per_trajectory=8)) == {}
    for name in ("csist100k/default", "csist100k/mini", "simulated_csist100k"):
        assert dataset_decode_options(_dataset(name)) == CSIST100K_OPTIONS


def test_presets_are_valid_decoder_options():
    options = make_options(**CSIST100K_OPTIONS)
    assert isinstance(options, DecodeOptions) and options.max_targets == 5 and options.single_pixel
    assert dataset_decode_options(configs.get_config("dista:smoke").dataset)["max_targets"] == 5
