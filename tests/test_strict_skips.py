"""LMFORGE_STRICT_SKIPS=1 (set by .ci/run) fails a run on any skip but a CUDA/GPU one, and lists it."""

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
from tests.strict_skips import register

def pytest_configure(config):
    register(config)
"""

SUITE = """
import pytest

def test_runs():
    assert True

@pytest.mark.skipif(True, reason="tesseract is not installed")
def test_needs_tesseract():
    pass
"""

HARDWARE_ONLY = """
import pytest

def test_runs():
    assert True

@pytest.mark.skipif(True, reason="CUDA is not available")
def test_needs_cuda():
    pass

def test_needs_two_gpus():
    pytest.skip("needs 2 GPUs, 0 present")

@pytest.mark.xfail(reason="known bug, not a skip")
def test_known_bug():
    assert False
"""


@pytest.fixture
def suite(pytester):
    pytester.makeconftest(CONFTEST)
    return pytester


def test_a_disallowed_skip_fails_the_run_and_is_listed(suite, monkeypatch):
    suite.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("LMFORGE_STRICT_SKIPS", "1")
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*unexpected skips*",
                                 "SKIPPED test_suite.py::test_needs_tesseract: tesseract is not installed"])


@pytest.mark.parametrize("value", [None, "0", ""])
def test_without_strict_mode_the_same_skip_passes(suite, monkeypatch, value):
    suite.makepyfile(test_suite=SUITE)
    if value is None:
        monkeypatch.delenv("LMFORGE_STRICT_SKIPS", raising=False)
    else:
        monkeypatch.setenv("LMFORGE_STRICT_SKIPS", value)
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    assert "unexpected skips" not in result.stdout.str()


def test_cuda_and_gpu_skips_are_allowed_and_xfail_is_not_a_skip(suite, monkeypatch):
    suite.makepyfile(test_hardware=HARDWARE_ONLY)
    monkeypatch.setenv("LMFORGE_STRICT_SKIPS", "1")
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "unexpected skips" not in result.stdout.str()


def test_a_module_skipped_at_collection_counts_too(suite, monkeypatch):
    suite.makepyfile(test_optional="import pytest\nnot_there = pytest.importorskip('no_such_module_xyz')\n\n"
                                   "def test_uses_it():\n    pass\n",
                     test_other="def test_runs():\n    assert True\n")
    monkeypatch.setenv("LMFORGE_STRICT_SKIPS", "1")
    result = suite.runpytest("-rs")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*unexpected skips*", "SKIPPED test_optional.py: could not import*no_such_module_xyz*"])


def test_a_real_failure_keeps_its_exit_status(suite, monkeypatch):
    suite.makepyfile(test_suite=SUITE + "\ndef test_broken():\n    assert False\n")
    monkeypatch.setenv("LMFORGE_STRICT_SKIPS", "1")
    result = suite.runpytest("-rs")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIPPED test_suite.py::test_needs_tesseract: tesseract is not installed"])
