"""The command-line handler: exit codes, one-line messages, signals.

The scripts' own runs (subprocesses) are in tests/test_evaluate.py,
tests/test_train_scripts.py and tests/rfnet_tf/test_export.py; here ``guarded`` runs
in-process on small ``main`` functions.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from rfnet_tf import cli
from rfnet_tf.data import DataError


class KnownError(ValueError):
    pass


def run_guarded(main, capsys, argv=("prog",)):
    code = cli.guarded(main, "prog", (KnownError,), list(argv))
    return code, capsys.readouterr().err


def test_success_is_exit_0_and_silent(capsys):
    assert run_guarded(lambda argv: None, capsys) == (0, "")


def test_a_known_error_is_one_line_and_exit_2(capsys):
    def main(argv):
        raise KnownError("bad.png: not\n  an image")

    assert run_guarded(main, capsys) == (2, "prog: error: bad.png: not an image\n")


def test_positional_arguments_are_a_known_error(capsys):
    code, err = run_guarded(lambda argv: None, capsys, argv=("prog", "stray"))
    assert code == 2 and err == "prog: error: unexpected arguments: stray (flags take --name=value)\n"


def test_an_internal_error_is_one_line_and_exit_1_with_the_traceback_only_under_debug(capsys):
    def main(argv):
        raise RuntimeError("a bug")

    code, err = run_guarded(main, capsys)
    assert code == 1
    assert err == "prog: internal error: RuntimeError: a bug (--debug shows the traceback)\n"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli.flags.FLAGS["debug"], "value", True)
        code, err = run_guarded(main, capsys)
    assert code == 1
    assert err.startswith("Traceback (most recent call last):") and "in main" in err
    assert err.splitlines()[-1] == "prog: internal error: RuntimeError: a bug"


@pytest.mark.parametrize("number,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_with_one_line_and_runs_every_finally(number, code, capsys):
    cleaned = []

    def main(argv):
        try:
            os.kill(os.getpid(), number)
            raise AssertionError("the signal did not interrupt main")
        finally:
            cleaned.append(True)

    before = signal.getsignal(number)
    assert run_guarded(main, capsys) == (code, f"prog: stopped by {signal.Signals(number).name}\n")
    assert cleaned == [True]
    assert signal.getsignal(number) is before


def test_a_signal_turned_into_another_exception_still_counts_as_the_stop(capsys):
    """TensorFlow re-raises an exception raised while it traces as its own (a TypeError)."""

    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except BaseException as error:
            raise TypeError("Failed to convert elements to Tensor") from error

    assert run_guarded(main, capsys) == (143, "prog: stopped by SIGTERM\n")


def test_a_signal_that_lands_in_a_finalizer_still_stops_the_run(capsys):
    """A handler's exception raised inside ``__del__`` (e.g. a tf.data iterator's) cannot
    propagate: Python prints it as "Exception ignored ... Traceback" and carries on. The
    stop must still end the run, with one line and no traceback."""
    cleaned = []

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            cleaned.append("del")  # the handler runs by here, inside __del__

    def main(argv):
        try:
            Finalised()
            time.sleep(5)  # the stop is delivered again meanwhile
            cleaned.append("went on")
        finally:
            cleaned.append("main")

    assert run_guarded(main, capsys) == (143, "prog: stopped by SIGTERM\n")
    assert cleaned[-1] == "main" and "went on" not in cleaned


@pytest.mark.parametrize(
    "library_file", ["/venv/lib/python3.11/site-packages/library.py", "<frozen importlib._bootstrap>"]
)
def test_a_signal_that_lands_in_a_library_is_raised_back_in_the_program(library_file, capsys):
    """Raised outside the program's code, a stop can be printed with a traceback or
    swallowed: an evaluation once printed "SystemError: <built-in function __import__>
    returned a result with an exception set" from TensorFlow's nest.flatten, the signal
    having landed in an import its C++ made. Landing in a library's code (an installed
    package, the import machinery), the stop lets that code finish and ends the program
    at its next line of its own."""
    library = {}
    source = (
        "def busy(seconds, os, signal, time):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    end = time.monotonic() + seconds\n"
        "    while time.monotonic() < end:\n"
        "        pass\n"
        "    return 'library finished'\n"
    )
    exec(compile(source, library_file, "exec"), library)
    events = []

    def main(argv):
        try:
            events.append(library["busy"](0.3, os, signal, time))
            time.sleep(5)  # the stop is delivered again meanwhile
            events.append("went on")
        finally:
            events.append("main")

    assert run_guarded(main, capsys) == (143, "prog: stopped by SIGTERM\n")
    assert events == ["library finished", "main"]


def test_a_loop_in_a_library_stops_at_its_check_between_iterations(capsys):
    """A stop that keeps landing in a library's code (here every iteration runs there
    and the redelivery lands in the next one) ends the program at the loop's
    :func:`cli.check_stop`, after the iteration it arrived in."""
    library = {}
    source = (
        "def busy(seconds, time, stop=None):\n"
        "    if stop:\n"
        "        stop()\n"
        "    end = time.monotonic() + seconds\n"
        "    while time.monotonic() < end:\n"
        "        pass\n"
    )
    exec(compile(source, "/venv/lib/python3.11/site-packages/library.py", "exec"), library)
    iterations = []

    def main(argv):
        for index in range(100):
            cli.check_stop()
            iterations.append(index)
            stop = (lambda: os.kill(os.getpid(), signal.SIGTERM)) if index == 1 else None
            library["busy"](0.05, time, stop)

    assert run_guarded(main, capsys) == (143, "prog: stopped by SIGTERM\n")
    assert iterations == [0, 1]
    cli.check_stop()  # guarded forgets the stop once it has ended the run


def test_one_line_messages():
    single = DataError.from_problems("root: bad input data", ["root/vis/a.png: file not found"])
    assert cli.one_line(single) == "root/vis/a.png: file not found"
    several = DataError.from_problems("root: bad", ["x.png: corrupt", "y.png: NaN"])
    line = cli.one_line(several)
    assert "\n" not in line and "x.png: corrupt; y.png: NaN" in line and "2 problems" in line
    assert cli.one_line(ValueError("a\n  b")) == "a b"
