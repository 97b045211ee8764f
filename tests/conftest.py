"""Shared test fixtures.

Real material lives in ``../shared/data`` beside the project (never copied into it). Tests that
need it skip with a reason on a user's fresh clone, and fail when REQUIRE_SHARED_DATA=1 (CI).
"""
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """Path of a file in ../shared/data; skip (or fail under REQUIRE_SHARED_DATA=1) if missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"needs shared test data {path} (../shared/data beside the project)"
        if os.environ.get("REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message + " but REQUIRE_SHARED_DATA=1")
        pytest.skip(message)
    return path


@pytest.fixture
def shared_data():
    """Call as shared_data('flow', 'rubberwhale', 'RubberWhale.flo')."""
    return shared_path


@pytest.fixture(scope="module")
def module_engines(tmp_path_factory):
    """Engine servers (real subprocesses) shared by one test module, stopped at its end."""
    from engine_process import Engines

    engines = Engines(tmp_path_factory.mktemp("engines"))
    yield engines
    engines.close_all()


@pytest.fixture
def engines(tmp_path):
    """Engine servers for one test (for crashes and restarts), stopped at its end."""
    from engine_process import Engines

    engines = Engines(tmp_path)
    yield engines
    engines.close_all()
