"""An ``argparse`` parser for the benchmark and helper scripts that accepts both spellings of an option.

The entry points (``experiments.train``, ``evaluate``, ``compare``) use absl flags, spelled with underscores
(``--num_devices``); the benchmark scripts use argparse, whose options are spelled with dashes
(``--no-oracle-seeds``). A user who moves between the two types one for the other; this parser takes
``--no_oracle_seeds`` for ``--no-oracle-seeds`` (and the reverse, for an option defined with underscores) so the
mix-up costs nothing. Only option names are rewritten, never values (``--decode-option trajectory_restarts=0``
keeps its value), and nothing after a bare ``--``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that also accepts an option's name with ``_`` and ``-`` swapped."""

    def _known_spelling(self, name: str) -> str:
        """``name`` (``--a_b``) as this parser spells it: unchanged if known (exactly or as an abbreviation),
        else with ``_`` and ``-`` swapped after the leading ``--`` if that spelling is known; else unchanged (so
        argparse's own error names what the user typed)."""
        known = self._option_string_actions
        if name in known:
            return name
        for alternative in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
            if alternative == name:
                continue
            if alternative in known:
                return alternative
            if self.allow_abbrev and not any(k.startswith(name) for k in known) \
                    and any(k.startswith(alternative) for k in known):
                return alternative
        return name

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None):  # type: ignore[override]
        args = list(sys.argv[1:] if args is None else args)
        rewritten = []
        for i, token in enumerate(args):
            if token == "--":
                rewritten.extend(args[i:])
                break
            if token.startswith("--") and len(token) > 2:
                name, eq, value = token.partition("=")
                token = self._known_spelling(name) + eq + value
            rewritten.append(token)
        return super().parse_known_args(rewritten, namespace)
