"""DataError: a ValueError that carries every problem it reports."""

from __future__ import annotations

import pytest

from rfnet_tf.data.errors import DataError


def test_data_error_is_a_value_error_with_its_message_as_the_problem():
    error = DataError("a.png: file not found")
    assert isinstance(error, ValueError)
    assert str(error) == "a.png: file not found"
    assert error.problems == ["a.png: file not found"]


def test_from_problems_lists_every_problem():
    problems = ["a.png: file not found", "b.tif: float image holds 1 NaN", "c.png: not a file"]
    error = DataError.from_problems("/data: bad input data", problems)
    assert error.problems == problems
    message = str(error)
    assert message.startswith("/data: bad input data (3 problem(s))")
    for problem in problems:
        assert problem in message
    with pytest.raises(ValueError):
        raise error
