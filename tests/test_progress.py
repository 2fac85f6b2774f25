from __future__ import annotations

from medgen3d.progress import progress_printer


def test_progress_lines_go_to_stderr_with_an_estimate_once_something_is_done(capsys):
    report = progress_printer("task")
    report(0, 4, "starting")
    report(2, 4, "case-1")
    out, err = capsys.readouterr()
    first, second = err.splitlines()
    assert out == ""
    assert first.startswith("task [0/4] starting  ") and first.endswith("s elapsed")  # no estimate from nothing
    assert second.startswith("task [2/4] case-1  ") and second.endswith("s left")
