"""Shared by every test: the teacher response store lives in the test's tmp dir, never in the user's cache."""
import pytest

from tinythinker.paths import STORE_ENV


@pytest.fixture(autouse=True)
def response_store(tmp_path_factory, monkeypatch):
    """The machine-level response store for this test (subprocesses inherit it through the environment)."""
    path = tmp_path_factory.mktemp("response-store")
    monkeypatch.setenv(STORE_ENV, str(path))
    return path
