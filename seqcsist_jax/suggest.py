"""Did-you-mean hints for the one-line errors on misspelt names (configs, config fields, datasets, methods,
splits, decode methods and options, command-line flags): one matching rule for every entry point."""

from __future__ import annotations

import difflib
import re
from typing import Iterable

__all__ = ["closest_name", "did_you_mean", "flag_error_line"]


def _spelling_key(text: str) -> str:
    # How papers and people write the same name: case, "-", "_", spaces and "/" ignored, "++" = "pp", "+" = "plus".
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("++", "pp").replace("+", "plus"))


def closest_name(name: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The entry of ``choices`` that ``name`` most likely means, or None.

    First the one entry spelled the same up to case, ``-``/``_``/spaces, ``+`` → ``plus``, ``++`` → ``pp`` and a
    trailing ``net`` (``DISTA-Net`` → ``dista``, ``ISTA-Net++`` → ``istanet_pp``, ``SRCNN`` → ``srcnn``,
    ``maxtargets`` → ``max_targets``): edit distance alone sends ``distanet`` to ``istanet``. Otherwise the
    entry most similar by difflib's ratio (0–1) if it reaches ``cutoff``; ties go to the alphabetically last
    entry whatever the order of ``choices``.
    """
    choices = [str(c) for c in choices]
    same: dict[str, list[str]] = {}
    for choice in choices:
        same.setdefault(_spelling_key(choice), []).append(choice)
    key = _spelling_key(str(name))
    for candidate in (key, key[:-3] if key.endswith("net") else None):
        if candidate and len(same.get(candidate, ())) == 1:
            return same[candidate][0]
    match = difflib.get_close_matches(str(name), choices, n=1, cutoff=cutoff)
    return match[0] if match else None


def did_you_mean(name: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """``" (did you mean 'x'?)"`` with :func:`closest_name`'s pick, or ``""`` when there is none: the suffix
    of the error messages for a misspelt name."""
    guess = closest_name(name, choices, cutoff=cutoff)
    return f" (did you mean {guess!r}?)" if guess else ""


_ABSL_UNKNOWN_FLAG = re.compile(r"Unknown command line flag '([^']+)'(?:\. Did you mean: (.+?) \?)?$")
_ABSL_ENUM_VALUE = re.compile(r"flag --([^=\s]+)=(.*?): value should be one of <([^>]*)>")


def flag_error_line(error: Exception) -> str:
    """absl's flag-parsing error (``flags.Error``) as one line in this project's style.

    absl words an unknown flag ``Unknown command line flag 'confg'. Did you mean: config ?``; this gives
    ``unknown flag --confg (did you mean --config?); --help lists the flags``. Its other messages (a value a
    flag's parser refuses) keep absl's wording, joined into one line, with the same pointer to ``--help``; a
    misspelt choice of an enum flag gets the closest choice (``--decode=trajectry`` → ``did you mean
    --decode=trajectory?``).
    """
    text = " ".join(str(error).split())
    enum = _ABSL_ENUM_VALUE.match(text)
    if enum:
        flag, value, choices = enum.groups()
        guess = closest_name(value, choices.split("|"))
        if guess:
            text += f" (did you mean --{flag}={guess}?)"
    found = _ABSL_UNKNOWN_FLAG.match(text)
    if found:
        name, hints = found.groups()
        text = f"unknown flag --{name}"
        names = [h.strip() for h in (hints or "").split(",") if h.strip()]
        # absl lists its guesses alphabetically; the closest first reads better (--methods, --method_steps)
        names = sorted(names, key=lambda h: -difflib.SequenceMatcher(None, name, h).ratio())
        names = [f"--{h}" for h in names]
        if names:
            text += f" (did you mean {' or '.join(names)}?)"
    return f"{text}; --help lists the flags"
