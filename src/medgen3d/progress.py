"""Progress lines for long jobs, printed to standard error so that standard output stays machine-readable."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["progress_printer"]


def progress_printer(task: str) -> Callable[[int, int, str], None]:
    """A ``callback(done, total, item)`` that prints ``task [done/total] item  elapsed, eta`` to stderr."""
    start = time.monotonic()

    def report(done: int, total: int, item: str) -> None:
        elapsed = time.monotonic() - start
        # nothing done yet: no rate to estimate the rest from
        eta = f", ~{elapsed / done * (total - done):.0f}s left" if done else ""
        print(f"{task} [{done}/{total}] {item}  {elapsed:.0f}s elapsed{eta}", file=sys.stderr, flush=True)

    return report
