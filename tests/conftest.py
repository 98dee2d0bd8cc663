"""Test-wide setup: every cache lmforge writes under ~ goes to a temporary home, never the real one."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def isolated_home(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    yield
    patch.undo()
