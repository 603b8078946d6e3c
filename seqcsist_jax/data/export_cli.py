"""Shared command line of the public-layout writers (``python -m seqcsist_jax.data.simulate`` and
``python -m seqcsist_jax.data.csist100k``): absl flags like every entry point of the project.

Flags are parsed into a private ``FlagValues`` so the writers can also be called as functions
(``main(["--out=DIR", "--split=test"])``) from tests and notebooks.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Callable, Sequence

from absl import flags

from seqcsist_jax.suggest import flag_error_line

SPLITS = ("train", "val", "test")
#: Split names the rest of the project uses (TFDS, ``--split`` of evaluate) → the public layout's folder names.
SPLIT_ALIASES = {"validation": "val"}


def parse(argv: Sequence[str] | None, prog: str, description: str, count_flag: str, count_help: str,
          define_extra: Callable[[flags.FlagValues], None] | None = None) -> argparse.Namespace | int:
    """Parses the writer's flags. Returns the namespace, or an exit status (0 after ``--help``, 2 after a
    usage error, printed as one ``error:`` line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fv = flags.FlagValues()
    flags.DEFINE_string("out", None, "root directory; each split goes to OUT/{split}/", flag_values=fv)
    flags.DEFINE_multi_enum("split", [], list(SPLITS) + list(SPLIT_ALIASES) + ["all"],
                            "split to write (repeatable; 'all' = train, val and test; 'validation' = val, the "
                            "public folder name)", flag_values=fv)
    flags.DEFINE_integer(count_flag, None, count_help, flag_values=fv)
    flags.DEFINE_integer("seed", 0, "base seed; each split uses split_seed(seed, split)", flag_values=fv)
    flags.DEFINE_integer("start_index", 0, "number N of the first file of each split", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "replace existing files of the split", flag_values=fv)
    flags.DEFINE_bool("progress", True, "show progress bars (--noprogress hides them)", flag_values=fv)
    if define_extra is not None:
        define_extra(fv)
    if any(a in ("--help", "-h", "--helpshort") for a in argv):
        print(f"python -m {prog}: {description}\n\nflags:\n{fv.get_help()}")
        return 0
    try:
        extra = fv([prog] + argv)[1:]
        if extra:
            raise flags.Error(f"unexpected arguments {' '.join(extra)} (flags are --name=value)")
        if not fv["out"].value:
            raise flags.Error("--out is required")
        out = pathlib.Path(fv["out"].value)
        blocker = next((p for p in (out, *out.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise flags.Error(f"--out={fv['out'].value}: {blocker} is a file, not a directory")
        if not fv["split"].value:
            raise flags.Error("give at least one --split (train, val, test or all)")
        count = fv[count_flag].value
        if count is not None and count <= 0:
            raise flags.Error(f"--{count_flag} must be positive, got {count}")
    except flags.Error as e:
        print(f"error: {flag_error_line(e)}", file=sys.stderr)
        return 2
    args = argparse.Namespace(**{name: fv[name].value for name in fv})
    args.split = list(SPLITS) if "all" in args.split else list(
        dict.fromkeys(SPLIT_ALIASES.get(s, s) for s in args.split))
    return args
