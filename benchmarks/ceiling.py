"""The ceiling: a minimal raw-pyzmq ROUTER/PUB forwarder, nothing else.

No validation, no registration, no acknowledgements. A client's routing id is
its name. [from, to, body] arriving on the ROUTER goes out as [from, body] to
the peer named `to`, or, when `to` is "*", is published as [topic, from, body]
on the lobby topic. It has the broker's poll-and-drain loop and queue limits,
so the difference to zchat is what zchat does per message. It sends and
receives frame by frame with int flags (wire.send_frames/recv_frames), the
cheapest way pyzmq offers; pyzmq_calls.py measures what send_multipart and
recv_multipart cost on top.

Run: python -m benchmarks.ceiling --port 0 --pub-port 0 (prints its endpoints
like the broker does, and stops on SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

import zmq

from benchmarks.wire import recv_frames, send_frames
from zchat.common.protocol import LOBBY_TOPIC

HWM = 10000
POLL_MS = 100
DRAIN_BATCH = 1000


def serve(host: str, port: int, pub_port: int) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    pub = ctx.socket(zmq.PUB)
    for sock in (router, pub):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
    router.bind(f"tcp://{host}:{port or '*'}")
    pub.bind(f"tcp://{host}:{pub_port or '*'}")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"ceiling forwarder: commands on {router.getsockopt_string(zmq.LAST_ENDPOINT)}, "
        f"broadcasts on {pub.getsockopt_string(zmq.LAST_ENDPOINT)};",
        flush=True,
    )
    routed = published = dropped = 0
    while not stopping:
        if not router.poll(POLL_MS):
            continue
        for _ in range(DRAIN_BATCH):
            try:
                frames = recv_frames(router)
            except zmq.Again:
                break
            if len(frames) != 3:
                dropped += 1
                continue
            sender, to, body = frames
            if to == b"*":
                send_frames(pub, [LOBBY_TOPIC, sender, body])
                published += 1
            else:
                send_frames(router, [to, sender, body])
                routed += 1
    print(f"ceiling forwarder stopped: routed={routed} published={published} dropped={dropped}", flush=True)
    router.close()
    pub.close()
    ctx.term()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pub-port", type=int, default=0)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.pub_port)


if __name__ == "__main__":
    main(sys.argv[1:])
