"""Fixtures of the teacher tests: makers of the fake servers in fakes.py, each server closed when its test ends."""
import pytest

from tests.teacher.fakes import BatchAPI, Teacher, closing_servers


@pytest.fixture
def server_factory():
    yield from closing_servers(Teacher)


@pytest.fixture
def api_factory():
    yield from closing_servers(BatchAPI)
