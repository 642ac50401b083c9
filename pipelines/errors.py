"""User-facing errors: one line that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class MeshtalkError(Exception):
    """An error caused by the user's input, shown as one line without a traceback.

    Args:
        path: the file or directory the problem is about (None when it is about no file).
        problem: what is wrong with it, in a few words.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)
