"""Fixtures that run the real programs over real sockets, and always stop them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from procs import BrokerProc, ClientFactory


@contextlib.contextmanager
def running_broker(data_dir: Path, *extra: str) -> Iterator[BrokerProc]:
    """A broker that is stopped (SIGTERM, then SIGKILL) however the test ends."""
    proc = BrokerProc(data_dir, *extra)
    try:
        yield proc
    finally:
        try:
            proc.stop()
        finally:
            proc.kill()


@contextlib.contextmanager
def client_factory(broker: BrokerProc) -> Iterator[ClientFactory]:
    factory = ClientFactory(broker)
    try:
        yield factory
    finally:
        factory.kill_all()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProc]:
    with running_broker(tmp_path / "data") as proc:
        yield proc


@pytest.fixture
def clients(broker: BrokerProc) -> Iterator[ClientFactory]:
    with client_factory(broker) as factory:
        yield factory


@pytest.fixture
def curve_broker(tmp_path: Path) -> Iterator[BrokerProc]:
    """A broker whose chat sockets are CURVE servers too (``--curve``)."""
    with running_broker(tmp_path / "data", "--curve") as proc:
        yield proc


@pytest.fixture
def curve_clients(curve_broker: BrokerProc) -> Iterator[ClientFactory]:
    with client_factory(curve_broker) as factory:
        yield factory


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A ZeroMQ context whose sockets are all dropped at the end (linger 0)."""
    context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)
