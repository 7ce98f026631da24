"""Quiet start-up of the command-line scripts (imports no TensorFlow itself)."""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced():
    """Sends file descriptor 2 to /dev/null for a moment.

    TensorFlow's C++ runtime logs start-up lines (oneDNN, CUDA probing) to stderr
    before ``TF_CPP_MIN_LOG_LEVEL`` takes effect; they would bury a script's one-line
    errors. Python exceptions raised inside are reported after stderr is restored.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
