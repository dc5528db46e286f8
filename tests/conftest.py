"""Fixtures that run the real programs over real sockets, and always stop them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import BrokerProc, ClientFactory


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProc]:
    proc = BrokerProc(tmp_path / "data")
    try:
        yield proc
    finally:
        try:
            proc.stop()
        finally:
            proc.kill()


@pytest.fixture
def clients(broker: BrokerProc) -> Iterator[ClientFactory]:
    factory = ClientFactory(broker)
    try:
        yield factory
    finally:
        factory.kill_all()
