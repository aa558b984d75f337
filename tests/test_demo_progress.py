"""`awb demo`'s progress (issue 10, item 10): on a terminal, one line rewritten in place that
names the step at work and is cleared before each result line; piped, nothing but the results."""

from __future__ import annotations

import io

from awb_dagster.demo.quiet import StepLine


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_one_line_rewritten_in_place_on_a_terminal():
    terminal = _Terminal()
    line = StepLine(terminal)
    line.show("awb demo: clip demo-tiny-clip@bf761d8229 over 6 plates ...")
    line.show("awb demo: atlas, disagreement and topology report ...")
    line.clear()
    terminal.write("atlas (2.5 s)\n")
    text = terminal.getvalue()
    assert "\n" not in text.removesuffix("atlas (2.5 s)\n")  # every update stays on one line
    assert text.count("\r\033[K") == 3 and text.endswith("\r\033[Katlas (2.5 s)\n")
    line.show("x" * 1000)
    assert len(terminal.getvalue().rsplit("\r\033[K", 1)[1]) < 1000  # clipped to the terminal's width


def test_piped_output_gets_no_progress():
    piped = io.StringIO()
    line = StepLine(piped)
    line.show("awb demo: scanning plates ...")
    line.clear()
    assert piped.getvalue() == ""
