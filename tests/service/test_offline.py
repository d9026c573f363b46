"""service/offline.py's progress line: rewritten in place on a terminal, one line now and then elsewhere."""

from __future__ import annotations

import io

from dermagan.service.offline import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_log_is_a_line_every_so_often_and_at_the_end() -> None:
    log = io.StringIO()
    p = Progress("edit add", 10, every_s=3600, stream=log)
    for _ in range(9):
        p.update(1)
    assert log.getvalue() == ""  # not yet time for a line
    p.update(1, "1 failed")
    assert log.getvalue().startswith("edit add: 10/10 (") and log.getvalue().endswith(", 1 failed)\n")


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    tty = _Tty()
    p = Progress("sample hand", 4, stream=tty)
    p._last -= 1  # as if half a second had passed
    p.update(2)
    p.update(2)
    lines = tty.getvalue()
    assert lines.startswith("\rsample hand: 2/4 (") and "\rsample hand: 4/4 (" in lines and lines.endswith(")\n")
    assert lines.count("\n") == 1
