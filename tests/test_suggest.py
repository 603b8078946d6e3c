"""The did-you-mean rule every entry point uses (seqcsist_jax.suggest.closest_name)."""

import difflib
import itertools

from seqcsist_jax.suggest import closest_name


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
