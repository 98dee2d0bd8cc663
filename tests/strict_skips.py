"""Strict skips: with LMFORGE_STRICT_SKIPS=1 a skipped test fails the run unless its reason is allowed.

CI installs every optional dependency the tests use (the `dev` extra, Tesseract, a C++ compiler), so
there a skip means a requirement went missing without anyone noticing. The only skips CI may show are
those for hardware it does not have: CUDA, GPUs, more GPUs than the machine holds. tests/conftest.py
turns the plugin on; `register` is also what tests/test_strict_skips.py uses for its inner runs.
"""

from __future__ import annotations

import os
import re
import sys

import pytest

ENV_VAR = "LMFORGE_STRICT_SKIPS"
# A skip whose reason matches one of these is expected even where CI installs everything.
ALLOWED_SKIP_REASONS = (
    re.compile(r"\bCUDA\b", re.IGNORECASE),  # "CUDA is not available", "needs CUDA"
    re.compile(r"\bGPUs?\b", re.IGNORECASE),  # "needs a GPU", "needs 2 GPUs, 1 present"
)


def strict_skips_enabled() -> bool:
    return os.environ.get(ENV_VAR, "").strip() == "1"


def skip_reason(report) -> str:
    """The reason a skipped test or collector reported, without pytest's "Skipped: " prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def is_allowed(reason: str) -> bool:
    return any(pattern.search(reason) for pattern in ALLOWED_SKIP_REASONS)


class StrictSkips:
    """Collects every skip of the session; at its end, any not allowed fails the run and is listed."""

    def __init__(self) -> None:
        self.unexpected: list[tuple[str, str]] = []  # (test or collector id, reason)

    def _note(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is reported as skipped too
            reason = skip_reason(report)
            if not is_allowed(reason):
                self.unexpected.append((report.nodeid or "(collection)", reason))

    def pytest_runtest_logreport(self, report) -> None:
        self._note(report)

    def pytest_collectreport(self, report) -> None:  # module-level skips and importorskip
        self._note(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session) -> None:
        if self.unexpected and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.unexpected and session.config.pluginmanager.get_plugin("terminalreporter") is None:
            sys.stderr.write(self.summary() + "\n")

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.unexpected:
            terminalreporter.write_sep("=", "unexpected skips", red=True)
            terminalreporter.write_line(self.summary())

    def summary(self) -> str:
        lines = [f"{ENV_VAR}=1: {len(self.unexpected)} skip(s) whose requirement should be installed here "
                 "(only CUDA/GPU skips are allowed):"]
        lines += [f"SKIPPED {nodeid}: {reason}" for nodeid, reason in self.unexpected]
        return "\n".join(lines)


def register(config) -> None:
    """Turn strict skips on for this session when LMFORGE_STRICT_SKIPS=1."""
    if strict_skips_enabled() and not config.pluginmanager.has_plugin("lmforge-strict-skips"):
        config.pluginmanager.register(StrictSkips(), "lmforge-strict-skips")
