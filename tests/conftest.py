from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server import FixtureServer

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def server(data_dir: Path) -> Iterator[FixtureServer]:
    fixture_server = FixtureServer(data_dir)
    fixture_server.start()
    yield fixture_server
    fixture_server.stop()


@pytest.fixture
def http(server: FixtureServer) -> Iterator[FixtureServer]:
    server.reset()
    yield server
    server.reset()
