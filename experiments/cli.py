"""One command-line style for every entry point: absl flags, ``--config=<name>[:<variant>]`` and
``--config.a.b=value`` overrides, and one-line errors instead of tracebacks for anything a user can mistype.

``--config`` is an ordinary string flag (so ``--help`` lists the config names); the ``--config.a.b=value``
overrides are taken out of ``argv`` before absl parses it and applied with the type of the field they replace.
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
import re
import signal
import sys
from typing import Any, Callable, Sequence

import ml_collections
from absl import app, flags
from absl import logging as absl_logging

from experiments import configs
from seqcsist_jax.suggest import closest_name, flag_error_line

OVERRIDE_PREFIX = "--config."


class UsageError(ValueError):
    """A mistyped command line or config field; printed as one ``error: ...`` line (exit status 2)."""


def config_help() -> str:
    return ("config name, optionally with a variant (name:quick, name:smoke), or a path to a config file; "
            f"available: {', '.join(configs.available_configs())}")


def define_config_flag(default: str | None = None) -> flags.FlagHolder:
    """``--config``; whether it is required is checked by :func:`require_config` (absl's own check prints a
    two-line FATAL message without the list of configs)."""
    return flags.DEFINE_string("config", default, config_help())


def require_config(value: str | None, workdir: str | None = None) -> str:
    """Raises UsageError listing the configs when ``--config`` was not given; with ``workdir`` (where a saved
    run would have been resumed without ``--config``) it also says that none is saved there, for a mistyped
    path."""
    if not value:
        nothing_saved = f" (no run is saved in {workdir} to resume)" if workdir else ""
        raise UsageError(f"--config is required{nothing_saved}; available configs: "
                         f"{', '.join(configs.available_configs())} (e.g. --config=derefnet_quick)")
    return value


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates ``--config.a.b=value`` (or ``--config.a.b value``) overrides from the other arguments.

    Returns:
      ``(other_argv, [(dotted_key, raw_value), ...])`` in command-line order.

    Raises:
      UsageError: an override without a value.
    """
    rest, overrides = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith(OVERRIDE_PREFIX):
            body = a[len(OVERRIDE_PREFIX):]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                key, value = body, args[i + 1]
                i += 1
            else:
                raise UsageError(f"{a} needs a value (--config.{body}=VALUE)")
            overrides.append((key, value))
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def _leaf_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key in config.keys():
        value = config[key]
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, ml_collections.ConfigDict):
            out.extend(_leaf_paths(value, path + "."))
    return out


def _suggest(key: str, config: ml_collections.ConfigDict) -> str:
    paths = _leaf_paths(config)
    # A misspelling of one full path (model.nam, modle.name) names only that path; a right name at the wrong
    # level (learning_rate, train.learning_rat) lists the fields of that name.
    close = closest_name(key, paths, cutoff=0.8)
    if close is not None:
        return f"; did you mean {close}?"
    last = key.split(".")[-1]
    same_leaf = [p for p in paths if p.split(".")[-1] == last and p != key]
    if not same_leaf:  # a misspelt field name: compare names, then prefer the closest full path
        ratio = lambda a, b: difflib.SequenceMatcher(None, a, b).ratio()  # noqa: E731
        named = [p for p in paths if ratio(p.split(".")[-1], last) >= 0.75]
        same_leaf = sorted(named, key=lambda p: -ratio(p, key))[:2]
    return f"; did you mean {' or '.join(same_leaf)}?" if same_leaf else ""


def _parse_value(raw: str, current: Any, field_type: type | None, key: str) -> Any:
    """``raw`` converted to the type of the field it replaces (None/none/null → None where allowed)."""
    kind = field_type if field_type is not None else (type(current) if current is not None else None)
    if raw.lower() in ("none", "null"):
        if current is None or field_type is not None:
            return None
        raise UsageError(f"--config.{key}: this field cannot be None (it holds {type(current).__name__})")
    try:
        if kind is bool:
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if kind is int:
            value = ast.literal_eval(raw)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError
            return value
        if kind is float:
            return float(raw)
        if kind in (tuple, list):
            value = ast.literal_eval(raw)
            if not isinstance(value, (tuple, list)):
                value = (value,)
            return kind(value)
        if kind is str or kind is None:
            return raw
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        name = kind.__name__ if kind is not None else "value"
        raise UsageError(f"--config.{key}={raw!r}: expected {'a' if name[0] not in 'aeiou' else 'an'} {name}") from None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
    """Sets each ``(dotted_key, raw_value)`` on ``config`` (in place; returns it).

    Raises:
      UsageError: unknown field (with a did-you-mean when a field of that name exists at another level) or a
        value that does not parse as the field's type.
    """
    for key, raw in overrides:
        parts = key.split(".")
        node = config
        if parts[:2] == ["eval", "decode_options"] and not _has_path(config, parts):
            # A dict of decoder options, empty by default: the command line has its own flag for its keys.
            raise UsageError(f"--config.{key}: the continuous decoder's options are set with experiments.evaluate "
                             "--decode_option KEY=VALUE (e.g. --decode_option=max_targets=6), or in a config file "
                             "as config.eval.decode_options = {'max_targets': 6}")
        for depth, part in enumerate(parts[:-1]):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise UsageError(f"unknown config field {key}{_suggest(key, config)}")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node:
            raise UsageError(f"unknown config field {key}{_suggest(key, config)}")
        if isinstance(node[leaf], ml_collections.ConfigDict):
            raise UsageError(f"--config.{key} is a group of fields ({', '.join(node[leaf].keys())}); set one of them")
        field_type = None
        try:
            ref = node.get_ref(leaf)
            field_type = ref.get_type() if ref is not None else None
        except Exception:  # noqa: BLE001 (plain values have no FieldReference)
            field_type = None
        value = _parse_value(raw, node[leaf], field_type, key)
        try:
            node[leaf] = value
        except TypeError as e:
            raise UsageError(f"--config.{key}={raw!r}: {e}") from None
    return config


def _has_path(config: ml_collections.ConfigDict, parts: Sequence[str]) -> bool:
    """Whether ``config`` holds the dotted field ``parts`` (e.g. ``["eval", "decode_options", "max_targets"]``)."""
    node: Any = config
    for part in parts:
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            return False
        node = node[part]
    return True


def load_config(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """``name[:variant]`` (or a path) → config with overrides applied. Raises UsageError."""
    try:
        config = configs.get_config(spec)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return apply_overrides(config, overrides)


def saved_run_config(workdir: str, overrides: Sequence[tuple[str, str]] = (),
                     resuming: bool = True) -> ml_collections.ConfigDict:
    """The config a run saved in ``workdir`` (``python -m experiments.train --workdir=DIR`` without ``--config``
    resumes it, and says so when ``resuming``), with the command line's overrides applied. Raises UsageError (one
    line) for a damaged file."""
    from seqcsist_jax.workdir import load_run_config

    try:
        config = load_run_config(workdir)
    except (OSError, ValueError) as e:
        raise UsageError(f"{e}; pass --config to choose the run's config") from None
    if resuming:
        print(f"resuming the run saved in {os.path.join(workdir, 'config.json')} (no --config given)")
    return apply_overrides(config, overrides)


def quiet_libraries() -> None:
    """Orbax/absl INFO chatter hides the progress bar; keep warnings unless --verbosity was given."""
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
    one_line_logs()


class OneLineFormatter(logging.Formatter):
    """Log records as the commands' own lines: ``[prefix]warning: <message>`` / ``error: …`` for WARNING and
    above, ``[prefix]<message>`` below (absl's default adds a level letter, time, thread id and ``file:line]``)."""

    def __init__(self, prefix: str = ""):
        super().__init__("%(message)s")
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"{self.prefix}{level}{text}"


def stream_handler(prefix: str = "") -> logging.Handler:
    """A stderr handler with :class:`OneLineFormatter` (for ``logging.basicConfig(handlers=[...])``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter(prefix))
    return handler


def one_line_logs() -> None:
    """Formats absl's log handler (train, evaluate) with :class:`OneLineFormatter`, and Python warnings with
    :func:`one_line_warnings`."""
    absl_logging.get_absl_handler().setFormatter(OneLineFormatter())
    one_line_warnings()


def one_line_warnings() -> None:
    """Python warnings as one ``warning: <Category>: <message>`` line each: the default adds the file, line and
    the source line that raised it, which tells a user of the command nothing (our warnings say what to do)."""
    import warnings

    def format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ARG001 (warnings' API)
        text = " ".join(str(message).split())
        return f"warning: {category.__name__}: {text}\n"

    warnings.formatwarning = format_warning


def close_progress_bars() -> int:
    """Closes the progress bars an exception left open (TFDS's, while it prepared a dataset), so that their
    final redraw does not land after, or over, the error line printed next; returns how many it closed."""
    std = sys.modules.get("tqdm.std")
    if std is None:  # nothing imported tqdm: no bar can be open
        return 0
    closed = 0
    classes = [std.tqdm]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        for bar in list(cls.__dict__.get("_instances", ())):
            try:
                bar.close()
                closed += 1
            except Exception:  # noqa: BLE001 - a bar that cannot redraw must not hide the error itself
                pass
    return closed


def fail(message: str, status: int = 2) -> None:
    """Prints one ``error: ...`` line to stderr (after closing any open progress bar) and exits."""
    # a closed nested bar leaves the cursor mid-line on the bar above it: start the error on a line of its own
    start = "\n" if close_progress_bars() else ""
    print(f"{start}error: {message}", file=sys.stderr)
    sys.exit(status)


def os_error_line(error: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and what to do."""
    import errno

    where = f" ({error.filename})" if error.filename else ""
    text = str(error) if error.errno is None or error.strerror is None else f"{error.strerror}{where}"
    if error.errno == errno.ENOSPC:
        # what the rerun does; the code that raised may say it (a dataset build starts over, it does not resume)
        rerun = getattr(error, "rerun_note", "finished outputs are kept; a training run resumes from its last "
                                             "checkpoint")
        return f"{text}: the disk is full; free space and run the same command again ({rerun})"
    if error.errno == errno.EFBIG:
        return f"{text}: the file-size limit (ulimit -f) was reached; raise it and run the same command again"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{text}: cannot write there; choose a writable --workdir (or data_dir)"
    if error.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return f"{text}: a path that must be a directory is a file (or the reverse); check --workdir"
    return text


#: exception types whose message is the whole story (see :func:`run`)
ErrorTypes = tuple[type[BaseException], ...]


def plain_text(doc: str) -> str:
    """A module docstring as a terminal shows it: reST markup (````code````, ``:func:`name```, a literal block's
    ``::``) removed, the words and line breaks kept."""
    doc = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)  # :func:`run` -> run
    doc = re.sub(r"(\S)::$", r"\1:", doc, flags=re.M)  # "e.g.::" -> "e.g.:"; a bare "::" line is dropped
    doc = re.sub(r"^[ \t]*::[ \t]*\n", "", doc, flags=re.M)
    return doc.replace("``", "")


def run(main: Callable[[list[str], list[tuple[str, str]]], None], argv: Sequence[str] | None = None,
        expected: ErrorTypes | Callable[[], ErrorTypes] = ()) -> None:
    """Runs ``main(argv, overrides)`` under absl with the overrides taken out of ``argv``.

    Usage errors, and the exception types in ``expected`` (errors whose message is the whole story: a bad
    file, a mismatched workdir), end with one ``error:`` line and exit status 2 instead of a traceback; an
    expected exception with a ``signum`` (a run stopped by a signal, checkpoint saved) ends with its message and
    status 128 + signum, as a shell reports a stopped command. ``expected`` may be a function returning the
    tuple: it is called only when ``main`` raises, so that ``--help`` and usage errors do not import the
    modules (and JAX) that define those types.
    """
    argv = list(sys.argv if argv is None else argv)
    try:
        rest, overrides = split_overrides(argv)
    except UsageError as e:
        fail(str(e))
    if any(a in ("--help", "-h", "-?", "--helpshort") for a in rest[1:]):
        # absl's own --help exits with status 1; asking for help is not an error.
        doc = plain_text(sys.modules["__main__"].__doc__ or "").strip()
        print(f"{doc}\n\nflags (and --config.a.b=value to override any config field):\n"
              f"{flags.FLAGS.main_module_help()}")
        sys.exit(0)

    try:  # absl would print "FATAL Flags parsing error" and exit 1; say it in this project's style instead
        flags.FLAGS(rest)
    except flags.Error as e:
        fail(flag_error_line(e))
    from seqcsist_jax.compile_threads import compile_threads

    try:  # environment settings the run reads later (the decoder's compile threads): refused before any work
        compile_threads()
    except ValueError as e:
        fail(str(e))

    def absl_main(parsed_argv: list[str]) -> None:
        quiet_libraries()
        try:
            main(parsed_argv, overrides)
        except UsageError as e:
            fail(str(e))
        except KeyboardInterrupt:  # Ctrl-C where no stop handler turns it into a message (evaluate, a 2nd Ctrl-C)
            start = "\n" if close_progress_bars() else ""
            print(f"{start}interrupted by Ctrl-C (SIGINT): each output file is replaced whole, never left "
                  "half-written; run the same command again (a training run resumes from its last checkpoint)",
                  file=sys.stderr)
            sys.exit(128 + signal.SIGINT)
        except BrokenPipeError:  # stdout's reader went away (`... | head`): it read all it wanted, not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # else the exit's flush fails again
            sys.exit(128 + 13)  # as a command killed by SIGPIPE (the shell's 141)
        except SystemExit:
            raise
        except BaseException as e:
            if isinstance(e, expected() if callable(expected) else expected):
                signum = getattr(e, "signum", None)
                if isinstance(signum, int) and signum > 0:  # a stop asked for (Ctrl-C, SIGTERM): not an error
                    print(str(e), file=sys.stderr)
                    sys.exit(128 + signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
                fail(str(e))
            if isinstance(e, OSError):  # the machine, not the code: a full disk, a read-only --workdir
                fail(os_error_line(e))
            raise

    app.run(absl_main, argv=rest)
