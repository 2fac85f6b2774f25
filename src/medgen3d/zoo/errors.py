"""One line for bad input from ``python -m monai.bundle run``.

MONAI's config runner wraps an error raised inside a config expression in its own exceptions and prints some fifty
lines of traceback that end in the expression, not in what was wrong. The medgen3d command line ends a data problem
with one line, ``medgen3d: error: <file>: <problem>``; importing this module gives bundle runs the same ending: an
uncaught exception whose cause chain holds a :class:`~medgen3d.data.io.DataError` prints that line as the last
line, after the traceback only when ``MEDGEN3D_DEBUG`` is set, and the process exits with status 1 as before.

Every stage bundle's configs list ``$import medgen3d.zoo.errors`` first among their imports: MONAI runs every
import of a config before it resolves any item, so the hook is in place before a dataset is read or a checkpoint
loaded. Other exceptions keep Python's own report.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

from medgen3d.data.io import DataError

__all__ = ["find_data_error", "install"]

_INSTALLED = "_medgen3d_one_line"


def find_data_error(err: BaseException | None) -> DataError | None:
    """The first :class:`DataError` in ``err``'s chain of causes and contexts, or ``None``."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, DataError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def install() -> None:
    """Make uncaught data errors end with one ``medgen3d: error:`` line (idempotent)."""
    previous = sys.excepthook
    if getattr(previous, _INSTALLED, False):
        return

    def report(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        problem = find_data_error(value)
        if problem is None or os.environ.get("MEDGEN3D_DEBUG"):
            previous(kind, value, tb)
        if problem is not None:
            print(f"medgen3d: error: {problem}", file=sys.stderr, flush=True)

    setattr(report, _INSTALLED, True)
    sys.excepthook = report


install()
