"""The one exception type of the data package."""

from __future__ import annotations

from collections.abc import Sequence


class DataError(ValueError):
    """Bad input data. The message names the file (or files) and says what is wrong.

    Attributes:
      problems: one message per problem. A folder scan reports every bad file at once,
        so ``problems`` may hold many entries; a single bad file gives one.
    """

    def __init__(self, message: str, problems: Sequence[str] | None = None):
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems is not None else [message]

    @classmethod
    def from_problems(cls, summary: str, problems: Sequence[str]) -> DataError:
        """One error listing ``problems`` (one per line) under ``summary``."""
        listing = "\n".join(f"  - {problem}" for problem in problems)
        return cls(f"{summary} ({len(problems)} problem(s)):\n{listing}", problems)
