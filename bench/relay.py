"""The references: pyzmq ROUTER -> PUB relays with no logic at all, each its own process.

A sender's frames are ``[topic, body]``. No decoding, no validation, no storage, no
acknowledgement. Two kinds:

- **bare** (the naive limit): each message published as it came, one PUB send each.
- **batching** (the limit this design can approach): what is waiting (up to ``BATCH``, as the
  broker drains) is coalesced per topic into one PUB send, bodies end to end, at most
  ``PUB_SEND_BYTES`` a send, as the broker's batches are.

High-water marks are the broker's where they mean the same: the ROUTER's receive queue
(``ROUTER_RCVHWM`` messages per sender) and the PUB's queue per subscriber in bytes
(``--subscriber-queue``'s default): in sends for the batching relay, as on the broker; for the bare
relay, whose sends are one message each, that many bytes of messages. room-bench passes both
(``--pub-hwm``); without it, libzmq's default (the cluster bench's relay).
"""

from __future__ import annotations

import argparse
import signal
import sys

import zmq

from broker.config import BATCH, PUB_SEND_BYTES
from broker.loop.sockets import ROUTER_RCVHWM


def main() -> None:
    parser = argparse.ArgumentParser(prog="relay")
    parser.add_argument("--batch", action="store_true", help="coalesce what is waiting")
    parser.add_argument("--pub-hwm", type=int, default=None, help="[default: libzmq's]")
    args = parser.parse_args()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    pub = ctx.socket(zmq.PUB)
    router.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
    if args.pub_hwm is not None:
        pub.setsockopt(zmq.SNDHWM, args.pub_hwm)
    for sock in (router, pub):
        sock.setsockopt(zmq.LINGER, 0)
    router_port = router.bind_to_random_port("tcp://127.0.0.1")
    pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
    print(f"relay tcp://127.0.0.1:{router_port} tcp://127.0.0.1:{pub_port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        (batching if args.batch else bare)(router, pub)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        ctx.destroy(linger=0)


def bare(router: zmq.Socket[bytes], pub: zmq.Socket[bytes]) -> None:
    while True:
        frames = router.recv_multipart()
        pub.send_multipart(frames[1:])


def batching(router: zmq.Socket[bytes], pub: zmq.Socket[bytes]) -> None:
    recv, send = router.recv_multipart, pub.send_multipart
    noblock = int(zmq.NOBLOCK)
    while True:
        _, topic, body = recv()  # wait for the first, then take what is waiting
        waiting = {topic: [body]}
        for _ in range(BATCH - 1):
            try:
                _, topic, body = recv(noblock)
            except zmq.Again:
                break
            waiting.setdefault(topic, []).append(body)
        for topic, bodies in waiting.items():
            step = max(1, PUB_SEND_BYTES // len(bodies[0]))  # bodies: at most this many bytes
            if len(bodies) <= step:
                send([topic, b"".join(bodies)])
            else:
                for at in range(0, len(bodies), step):
                    send([topic, b"".join(bodies[at : at + step])])


if __name__ == "__main__":
    main()
