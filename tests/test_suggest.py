"""The did-you-mean rule every entry point uses (seqcsist_jax.suggest), and the errors that carry it."""

import difflib
import itertools

import ml_collections
import numpy as np
import pytest

from seqcsist_jax import evaluate as evaluation
from seqcsist_jax.data.splits import check_split
from seqcsist_jax.decode import decode, decode_arrays
from seqcsist_jax.decode.options import DecodeOptions, make_options
from seqcsist_jax.methods import METHOD_TABLE
from seqcsist_jax.suggest import closest_name, did_you_mean, flag_error_line


def test_closest_name_finds_a_misspelling_and_nothing_below_the_cutoff():
    names = ["derefnet", "derefnet_quick", "dista", "istanet"]
    assert closest_name("derefnte", names) == "derefnet"
    assert closest_name("dsita", names) == "dista"
    assert closest_name("completely_else", names) is None
    # The cutoff is difflib's ratio 2·matches / total length: "ab" vs "abcd" is 2·2/6 = 0.667.
    assert closest_name("ab", ["abcd"], cutoff=0.66) == "abcd"
    assert closest_name("ab", ["abcd"], cutoff=0.67) is None
    assert closest_name("x", []) is None


def test_closest_name_does_not_depend_on_the_order_of_the_choices():
    names = ["abd", "abe", "abf", "xyz"]  # three at the same ratio from "abc"
    picks = {closest_name("abc", order) for order in itertools.permutations(names)}
    assert len(picks) == 1
    ratio = difflib.SequenceMatcher(None, "abc", picks.pop()).ratio()
    assert ratio == max(difflib.SequenceMatcher(None, "abc", n).ratio() for n in names)


@pytest.mark.parametrize("written,meant", [
    ("DISTA-Net", "dista"), ("distanet", "dista"), ("ISTA-Net++", "istanet_pp"), ("ISTA-Net+", "istanet_plus"),
    ("SRCNN", "srcnn"), ("DeRefNet", "derefnet"), ("FISTA-Net", "fistanet"),
])
def test_names_as_papers_write_them_find_the_table_name(written, meant):
    assert closest_name(written, METHOD_TABLE) == meant  # edit distance alone sends "distanet" to "istanet"


def test_did_you_mean_is_the_message_suffix():
    assert did_you_mean("tset", ["train", "validation", "test"]) == " (did you mean 'test'?)"
    assert did_you_mean("zzzz", ["train", "validation", "test"]) == ""
    assert closest_name("maxtargets", ["max_targets", "min_targets"]) == "max_targets"
    assert closest_name("SRCNN", ["srcnn", "SRCnn"]) == "SRCnn"  # two spelled alike: the closer by difflib


def test_misspelt_decode_methods_splits_and_eval_decoders_get_a_hint():
    images = np.zeros((2, 11, 11), np.uint8)
    with pytest.raises(ValueError, match=r"got 'refien' \(did you mean 'refine'\?\)"):
        decode(images, method="refien")
    with pytest.raises(ValueError, match=r"got 'Trajectory' \(did you mean 'trajectory'\?\)"):
        decode(images[:, None], method="Trajectory")
    with pytest.raises(ValueError, match=r"got 'refien' \(did you mean 'refine'\?\)"):
        decode_arrays(images[:, None], None, "refien")
    dataset = ml_collections.ConfigDict(dict(name="seqcsist/mini", train_split="train", eval_split="validation",
                                             test_split="test"))
    with pytest.raises(ValueError, match=r"unknown split 'tset' for seqcsist/mini \(did you mean 'test'\?\); "
                                         r"choose from train, validation, test"):
        check_split(dataset, "tset")
    with pytest.raises(evaluation.EvalConfigError, match=r"got 'trajectroy' \(did you mean 'trajectory'\?\)"):
        evaluation.check_eval_config({"decode": "trajectroy"})


def test_decode_options_given_as_a_dict_are_read_as_options():
    assert make_options(options=dict(max_targets=5)).max_targets == 5
    assert make_options(dict(max_targets=5), max_targets=3).max_targets == 3  # the keyword wins
    assert make_options(DecodeOptions(max_targets=5)).max_targets == 5
    with pytest.raises(TypeError, match=r"unknown decode option\(s\): max_targts \(did you mean max_targets\?\)"):
        make_options(options=dict(max_targts=5))
    with pytest.raises(TypeError, match=r"must be a DecodeOptions or a dict of option names \(such as CSIST100K_OPTIONS\), got int"):
        make_options(options=3)


def test_flag_error_line_rewords_absls_unknown_flag_and_keeps_its_other_messages():
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_string("methods", "", "rows", flag_values=fv)
    flags.DEFINE_string("method_steps", "", "steps", flag_values=fv)
    flags.DEFINE_boolean("force", False, "force", flag_values=fv)

    def error(*args):
        with pytest.raises(flags.Error) as caught:
            fv(["prog", *args])
        return flag_error_line(caught.value)

    # absl lists its guesses alphabetically ("method_steps, methods"): the closest comes first here
    assert error("--methodz=a") == ("unknown flag --methodz (did you mean --methods or --method_steps?); "
                                    "--help lists the flags")
    assert error("--zzzzzz=1") == "unknown flag --zzzzzz; --help lists the flags"
    other = error("--force=maybe")  # a value the flag's parser refuses: absl's words, on one line
    assert other.startswith("flag --force=maybe: ") and "Non-boolean" in other and "\n" not in other
    assert other.endswith("; --help lists the flags")


def test_the_data_commands_word_flag_errors_the_same_way(tmp_path, capsys):
    from seqcsist_jax.data import csist100k, simulate

    for main in (simulate.main, csist100k.main):
        assert main(["--outt", str(tmp_path)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            "error: unknown flag --outt (did you mean --out?); --help lists the flags"]


def test_a_misspelt_enum_flag_value_gets_the_closest_choice():
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_enum("decode", "grid", ["grid", "peak", "refine", "trajectory"], "decoder", flag_values=fv)
    for value, hint in (("trajectry", " (did you mean --decode=trajectory?)"), ("zzz", "")):
        with pytest.raises(flags.Error) as caught:
            fv(["prog", f"--decode={value}"])
        want = f"flag --decode={value}: value should be one of <grid|peak|refine|trajectory>{hint}"
        assert flag_error_line(caught.value) == want + "; --help lists the flags"


def test_a_misspelt_checkpoint_kind_gets_a_hint(tmp_path):
    from seqcsist_jax.checkpointing import RunCheckpoints

    ckpt = RunCheckpoints(tmp_path)
    try:
        with pytest.raises(ValueError, match=r"got 'bset' \(did you mean 'best'\?\)$"):
            ckpt.resolve("bset")
    finally:
        ckpt.close()
