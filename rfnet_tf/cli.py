"""The one top-level handler of every command line: evaluate.py, train_coarse.py,
train_f2m.py and ``python -m rfnet_tf.export``.

Exit codes (the README's table "What happens on bad input" lists the cases):

* 0: done.
* 2: a known error, one the user can fix (bad input, flags, weights, output location, a
  non-finite training loss, no checkpoint that restores): one line on stderr,
  ``PROGRAM: error: MESSAGE``. Flags that absl cannot parse and unexpected positional
  arguments are known errors too.
* 1: an internal error (a bug): one line naming the exception; ``--debug`` prints its
  traceback first.
* 130 / 143 (128 + the signal number): SIGINT / SIGTERM: one line. Either signal raises
  :class:`Stopped` in the main thread, so every ``finally`` runs on the way out and
  staging folders are removed before the process exits. A signal that lands outside the
  program's own code (in TensorFlow's Python code, or in an import that its C++ makes) is
  delivered again a moment later, until it lands in the program's own code: raised
  there, TensorFlow's C++ could print it with a traceback or swallow it.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags

from rfnet_tf.data.errors import DataError

KNOWN_ERROR_EXIT = 2
INTERNAL_ERROR_EXIT = 1
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A stop swallowed by a finalizer, or that landed outside the program's code, is
# delivered again after this long (seconds).
_REDELIVERY_DELAY_S = 0.01
_PROGRAM_ROOT = Path(__file__).resolve().parents[1]
_PACKAGE_FOLDERS = {"site-packages", "dist-packages"}

# The stop signals guarded() has received in this run, for check_stop().
_received_signals: list[int] = []

flags.DEFINE_bool(
    "debug", False, "On an internal error (exit code 1), also print the Python traceback."
)


class UsageError(ValueError):
    """The command line holds something other than flags."""


class Stopped(BaseException):
    """Raised by SIGINT and SIGTERM: a ``BaseException``, so no ``except Exception`` stops it."""


def one_line(error: BaseException) -> str:
    """A one-line message for ``error``: a multi-problem ``DataError`` lists its problems
    separated by ``;``."""
    if isinstance(error, DataError) and len(error.problems) > 1:
        text = f"{len(error.problems)} problems in the input: " + "; ".join(error.problems)
        text += " (--skip_bad skips bad pairs)"
    elif isinstance(error, DataError) and error.problems:
        text = error.problems[0]
    else:
        text = str(error)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def guarded(
    main: Callable[[list[str]], object],
    program: str,
    known_errors: tuple[type[BaseException], ...],
    argv: Sequence[str],
) -> int:
    """Runs ``main(argv)`` and turns its ending into an exit code and at most one line on
    stderr (module docstring); ``main`` returns ``None`` or ``0`` on success.

    A signal's :class:`Stopped` may reach this function as another exception (TensorFlow
    turns exceptions raised while it traces a function into its own), so the signal is
    also recorded, and any exception after it counts as the stop. A signal that lands
    outside the program's code, and a :class:`Stopped` that a finalizer swallows, are
    delivered again, and a ``main`` that returns after a
    signal still ends as stopped.
    """
    received = _received_signals
    received.clear()
    redeliveries = []

    def redeliver(number: int) -> None:
        timer = threading.Timer(_REDELIVERY_DELAY_S, os.kill, (os.getpid(), number))
        redeliveries.append(timer)
        timer.start()

    def stop(number: int, frame) -> None:
        received.append(number)
        if not in_program(frame):
            redeliver(number)
            return
        raise Stopped(signal.Signals(number).name)

    def unraisable(report) -> None:
        # A Stopped raised inside a finalizer (a tf.data iterator's __del__) cannot
        # propagate: Python would print it with a traceback and carry on. Deliver the
        # signal again shortly, when the finalizer has returned.
        if isinstance(report.exc_value, Stopped):
            redeliver(received[-1])
        else:
            previous_unraisable(report)

    previous = {number: signal.signal(number, stop) for number in _STOP_SIGNALS}
    previous_unraisable, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        if len(argv) > 1:
            raise UsageError(
                f"unexpected arguments: {' '.join(argv[1:])} (flags take --name=value)"
            )
        code = main(list(argv)) or 0
        if received:
            raise Stopped(signal.Signals(received[0]).name)
        return code
    except BaseException as error:
        if received:
            print(f"{program}: stopped by {signal.Signals(received[0]).name}", file=sys.stderr)
            return 128 + received[0]
        if not isinstance(error, Exception):
            raise
        if flags.FLAGS["debug"].value:
            traceback.print_exc()
        if isinstance(error, (UsageError, *known_errors)):
            print(f"{program}: error: {one_line(error)}", file=sys.stderr)
            return KNOWN_ERROR_EXIT
        hint = "" if flags.FLAGS["debug"].value else " (--debug shows the traceback)"
        print(
            f"{program}: internal error: {type(error).__name__}: {one_line(error)}{hint}",
            file=sys.stderr,
        )
        return INTERNAL_ERROR_EXIT
    finally:
        received.clear()
        for timer in redeliveries:
            timer.cancel()
        sys.unraisablehook = previous_unraisable
        for number, handler in previous.items():
            signal.signal(number, handler)


def check_stop() -> None:
    """Raises :class:`Stopped` if :func:`guarded` has received SIGINT or SIGTERM.

    A loop whose time goes to a library's code calls it between iterations: a training
    step spends nearly all of its time in TensorFlow, so a stop delivered again every
    few milliseconds kept landing in TensorFlow's frames and training went on for
    minutes after SIGTERM.
    """
    if _received_signals:
        raise Stopped(signal.Signals(_received_signals[0]).name)


def in_program(frame) -> bool:
    """Whether ``frame`` (the innermost Python frame when a signal lands, or ``None``:
    unknown, counted as the program's) runs this repository's code, not a library's
    (an installed package, the standard library, frozen import machinery)."""
    if frame is None:
        return True
    path = Path(frame.f_code.co_filename)
    return path.is_relative_to(_PROGRAM_ROOT) and _PACKAGE_FOLDERS.isdisjoint(path.parts)


def parse_flags(program: str, argv: list[str]) -> list[str]:
    """absl's flag parsing, with an unparsable flag as a known error (one line, exit 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"{program}: error: {one_line(error)}", file=sys.stderr)
        sys.exit(KNOWN_ERROR_EXIT)


def run(
    main: Callable[[list[str]], object],
    program: str,
    known_errors: tuple[type[BaseException], ...],
) -> None:
    """``absl.app.run(main)`` under :func:`guarded`; never returns.

    Args:
      main: the script's ``main(argv)``.
      program: the name the messages start with (``"evaluate.py"``).
      known_errors: the exception types that are the user's to fix (exit code 2).
    """
    app.run(
        functools.partial(guarded, main, program, known_errors),
        flags_parser=functools.partial(parse_flags, program),
    )
