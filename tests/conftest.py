"""Fixtures shared by the template's tests: the wheelhouse, a clean environment, baking with a venv.
The helpers they use, and the tests too, are in testkit/ at the checkout's root."""

import sys

import pytest

# testkit's assertion helpers report as the tests' own asserts do (the values compared).
pytest.register_assert_rewrite("testkit")
from testkit.bake import bake, build_wheelhouse  # noqa: E402
from testkit.env import WHEELHOUSE, isolate_environment  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment():
    """Hooks skip the venv unless a test asks for one; the developer's shell cannot leak in."""
    isolate_environment()


@pytest.fixture(scope="session")
def wheelhouse():
    """The machine's wheelhouse with uWSGI built once (scripts/wheelhouse is idempotent)."""
    build_wheelhouse(sys.executable)
    return WHEELHOUSE


@pytest.fixture
def bake_with_venv(tmp_path, wheelhouse):
    """bake() into this test's temporary directory."""
    return lambda **answers: bake(tmp_path, **answers)
