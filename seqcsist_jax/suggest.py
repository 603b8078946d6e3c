"""Did-you-mean hints for the one-line errors on misspelt names (configs, config fields, datasets, methods,
decode options): one matching rule for every entry point."""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["closest_name"]


def closest_name(name: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The entry of ``choices`` most similar to ``name`` (difflib's ratio, 0–1), or None when none reaches
    ``cutoff``. Ties go to the alphabetically last entry whatever the order of ``choices``."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=cutoff)
    return match[0] if match else None
