"""The reference: a bare pyzmq ROUTER -> PUB relay with no logic at all.

A sender's frames are ``[topic, body]``; the relay publishes them as they came, exactly as the
baseline is described: no decoding, no validation, no storage, no acknowledgement. It runs as its
own process, like the broker.
"""

from __future__ import annotations

import signal
import sys

import zmq


def main() -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    pub = ctx.socket(zmq.PUB)
    for sock in (router, pub):
        sock.setsockopt(zmq.LINGER, 0)
    router_port = router.bind_to_random_port("tcp://127.0.0.1")
    pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
    print(f"relay tcp://127.0.0.1:{router_port} tcp://127.0.0.1:{pub_port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            frames = router.recv_multipart()
            pub.send_multipart(frames[1:])
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        ctx.destroy(linger=0)


if __name__ == "__main__":
    main()
