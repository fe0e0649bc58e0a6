"""One question to the broker without registering a name: `zchat who`."""

from __future__ import annotations

import secrets
import time

import zmq

from zchat.client.handshake import HandshakeWatch, secure
from zchat.common import protocol as p
from zchat.common.keys import KeyPair

#: How often the wait for an answer looks for a failed handshake.
STEP_MS = 50


def who(
    broker: str, timeout: float, server_key: bytes | None = None, keys: KeyPair | None = None
) -> list[str]:
    """The names online; TimeoutError when the broker does not answer or refuses the handshake.

    With several endpoints (comma-separated, the brokers of a cluster), the first that answers.
    """
    *others, last = [e.strip() for e in broker.split(",")]
    for endpoint in others:
        try:
            return _who(endpoint, timeout, server_key, keys)
        except TimeoutError:
            continue
    return _who(last, timeout, server_key, keys)


def _who(broker: str, timeout: float, server_key: bytes | None, keys: KeyPair | None) -> list[str]:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        secure(dealer, server_key, keys or KeyPair(*zmq.curve_keypair()))
    handshake = HandshakeWatch(dealer, encrypted=server_key is not None)
    try:
        dealer.connect(broker)
        msg_id = secrets.token_hex(4).encode()
        dealer.send_multipart(p.encode(p.Who(msg_id)))
        deadline = time.monotonic() + timeout
        while not dealer.poll(STEP_MS):
            refused = handshake.failure()
            if refused is not None:
                raise TimeoutError(f"{refused} ({broker})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from the broker at {broker} within {timeout:g}s")
        event = p.decode_event(dealer.recv_multipart())
        if not isinstance(event, p.Users) or event.msg_id != msg_id:
            raise p.ProtocolError(p.Code.MALFORMED, f"unexpected answer {event!r}")
        return list(event.names)
    finally:
        handshake.close()
        dealer.close()
        context.term()
