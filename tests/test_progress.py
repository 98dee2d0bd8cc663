"""Progress bars redraw often in a terminal and rarely in a log file (utils/progress.py)."""

import io

from lmforge.utils import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_in_a_log_redraws_rarely_and_in_a_terminal_often():
    in_log = progress.progress_bar(total=3, file=io.StringIO())
    in_terminal = progress.progress_bar(total=3, file=Terminal())
    assert in_log.mininterval == progress.LOG_INTERVAL and in_terminal.mininterval == progress.TERMINAL_INTERVAL


def test_a_log_gets_one_draw_per_log_interval_not_one_per_update():
    """A minute of work, one update per second: a terminal bar redraws at each, a log bar four times."""
    clock = [1000.0]
    lines = {}
    for name, stream in (("log", io.StringIO()), ("terminal", Terminal())):
        bar = progress.progress_bar(total=60, file=stream, desc="reading", miniters=1)
        bar._time = lambda: clock[0]  # tqdm reads the clock through this attribute
        bar.last_print_t = bar.start_t = clock[0]
        for _ in range(60):
            clock[0] += 1.0
            bar.update(1)
        lines[name] = stream.getvalue().count("reading")
    assert lines["terminal"] >= 60
    assert 4 <= lines["log"] <= 6  # the first draw, then every 15 s


def test_options_given_win_and_a_closed_stream_counts_as_no_terminal():
    assert progress.progress_bar(total=1, file=io.StringIO(), mininterval=2.0).mininterval == 2.0
    closed = io.StringIO()
    closed.close()
    assert not progress._is_terminal(closed)
