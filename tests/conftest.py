"""Test-wide setup: every cache lmforge writes under ~ goes to a temporary home, never the real one;
with LMFORGE_STRICT_SKIPS=1 (CI) a skip whose requirement should be installed fails the run."""

import pytest

from tests.strict_skips import register as register_strict_skips


def pytest_configure(config):
    register_strict_skips(config)


@pytest.fixture(autouse=True, scope="session")
def isolated_home(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    yield
    patch.undo()
