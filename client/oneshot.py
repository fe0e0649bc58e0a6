"""One question to the broker without registering a name: `zchat who`."""

from __future__ import annotations

import secrets

import zmq

from zchat.common import protocol as p


def who(broker: str, timeout: float) -> list[str]:
    """The names online; TimeoutError when the broker does not answer."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(broker)
        msg_id = secrets.token_hex(4).encode()
        dealer.send_multipart(p.encode_simple(b"WHO", msg_id))
        if not dealer.poll(int(timeout * 1000)):
            raise TimeoutError(f"no answer from the broker at {broker} within {timeout:g}s")
        event = p.decode_event(dealer.recv_multipart())
        if not isinstance(event, p.Users) or event.msg_id != msg_id:
            raise p.ProtocolError(p.Code.MALFORMED, f"unexpected answer {event!r}")
        return list(event.names)
    finally:
        dealer.close()
        context.term()
