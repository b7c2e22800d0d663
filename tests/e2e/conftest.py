"""Fixtures shared by the end-to-end modules."""

import shutil
import tempfile
from pathlib import Path

import pytest

from testkit.emperor import require_root_and_system_python, server_layout


@pytest.fixture(scope="module")
def emperor_layout():
    """A baked emperor service in the server layout <base>/srv/my_service/{current,shared}, in a
    directory every user can enter (testkit/emperor.py); removed after the module."""
    require_root_and_system_python()
    base = Path(tempfile.mkdtemp(prefix="shipshape-emperor-", dir="/tmp"))
    try:
        yield server_layout(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
