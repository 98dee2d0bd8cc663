"""Progress bars that suit where the output goes.

In a terminal a bar redraws in place several times a second. Written to a file or a pipe (CI, nohup,
a GPU job's log) every redraw is kept: 30 s of data preparation left 11 KB of bars in one log. There
a bar redraws at most every LOG_INTERVAL seconds, still showing that the work goes on.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

TERMINAL_INTERVAL = 0.5  # seconds between redraws in a terminal
LOG_INTERVAL = 15.0      # ... and in a file or a pipe


def progress_bar(iterable=None, **options) -> tqdm:
    """tqdm on standard error, redrawn as often as the place it is written to deserves (options as tqdm's)."""
    stream = options.setdefault("file", sys.stderr)
    options.setdefault("mininterval", TERMINAL_INTERVAL if _is_terminal(stream) else LOG_INTERVAL)
    return tqdm(iterable, **options)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
