"""Fixtures that run the real programs over real sockets, and always stop them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from procs import BrokerProc, ClientFactory

# ---- under CI, a skipped test fails the run -----------------------------------------------------


class SkipsFailCI:
    """A test that skips proves nothing, and CI (``.ci/run``) installs everything the tests need:
    when the environment variable CI is set (non-empty), any skip makes the exit status non-zero,
    and one line names the tests skipped."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def _note(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):  # an expected failure is no skip
            self.skipped.append(report.nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:  # a whole module
        self._note(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.skipped:
            n = len(self.skipped)
            names = ", ".join(self.skipped)
            terminalreporter.write_line(
                f"CI fails: {n} test{'' if n == 1 else 's'} skipped, and CI allows none: {names}",
                red=True,
                bold=True,
            )


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI"):
        config.pluginmanager.register(SkipsFailCI(), "skips-fail-ci")


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
