"""An open chat's local control endpoint: `zchat send --name alice` sends through alice's open
`zchat connect` (as if she typed it) instead of signing in beside it, which the broker refuses (409).

Each open chat binds one ipc:// ROUTER socket in a private runtime directory (mode 0700, the
user's own), named from the broker and the name; `send_through_chat` asks it. The requests and
answers are JSON objects, one frame each, versioned and bounded in size (`VERSION`, `MAX_BYTES`):

    {"v": 1, "type": "ping", "name": "alice", "broker": "tcp://..."}   -> {"v": 1, "type": "here", "name": ...}
    {"v": 1, "type": "send", "name": ..., "broker": ..., "to": "bob", "text": "hi"}   ("to": "*": everyone)
        -> {"v": 1, "type": "sent", "id": ..., "status": "accepted"}  or  {"v": 1, "type": "refused", "code": 404, "text": ...}
    anything else                                                     -> {"v": 1, "type": "invalid", "text": ...}

The sender pings first, with a short deadline: a chat that does not answer (a process stopped
or hung) is never given the message, so falling back to a session of one's own cannot send it
twice. A file that nothing listens on (its chat was killed) is removed, with no wait.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import queue
import socket
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import zmq

from zchat.client import events as ev
from zchat.client.request import Request
from zchat.client.session import UserRequests
from zchat.client.settings import Settings
from zchat.common.protocol import EVERYONE

log = logging.getLogger("zchat.client.local")

VERSION = 1
#: The largest request or answer, encoded: above it the sender refuses to ask, and the chat's
#: socket (MAXMSGSIZE, a little above) drops a peer that sends more, without reading it.
MAX_BYTES = 4 * 1024 * 1024
#: Seconds a sender waits for an open chat to answer its ping before going on without it. A
#: chat answers in a millisecond or so, from its own thread; only one that is stopped or hung
#: makes a sender wait this long (one killed is found at once), and a loaded machine can take
#: a second or more to schedule it.
PING_TIMEOUT = 3.0
#: Seconds beyond the client's answer timeout that a sender waits for the outcome of a send.
ANSWER_MARGIN = 5.0


class LocalError(Exception):
    """The runtime directory or the control socket cannot be used safely, said with its path."""


# --- the messages, in one table ---------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    """Is the chat of `name` on `broker` here? Answered at once, without asking the broker."""

    name: str
    broker: str


@dataclass(frozen=True)
class Send:
    """Send `text` to `to` (a name, a "#room", or "*" for everyone) as the chat's user."""

    name: str
    broker: str
    to: str
    text: str


@dataclass(frozen=True)
class Here:
    name: str


@dataclass(frozen=True)
class Sent:
    """The broker took it: what the chat's Ack said."""

    msg_id: str
    status: str


@dataclass(frozen=True)
class Refused:
    """Not sent: the broker's or the client's refusal (events.Refusal's code and text)."""

    code: int
    text: str


@dataclass(frozen=True)
class Invalid:
    """The request was not understood (malformed, another version, another chat's)."""

    text: str


LocalRequest = Ping | Send
LocalAnswer = Here | Sent | Refused | Invalid

#: type word -> (the class, its fields on the wire with their types), for both directions.
MESSAGES: dict[str, tuple[type[Any], tuple[tuple[str, type], ...]]] = {
    "ping": (Ping, (("name", str), ("broker", str))),
    "send": (Send, (("name", str), ("broker", str), ("to", str), ("text", str))),
    "here": (Here, (("name", str),)),
    "sent": (Sent, (("id", str), ("status", str))),
    "refused": (Refused, (("code", int), ("text", str))),
    "invalid": (Invalid, (("text", str),)),
}
_TYPE_OF = {cls: word for word, (cls, _) in MESSAGES.items()}
_REQUESTS = ("ping", "send")


class Malformed(ValueError):
    """Bytes that are not one of our messages; the text says why."""


def encode(message: LocalRequest | LocalAnswer) -> bytes:
    word = _TYPE_OF[type(message)]
    names = [name for name, _ in MESSAGES[word][1]]
    data = {"v": VERSION, "type": word, **dict(zip(names, astuple(message), strict=True))}
    # ASCII: a lone surrogate (a byte the terminal could not decode) travels as an escape, for
    # the chat's client to refuse as it refuses one typed.
    return json.dumps(data).encode("ascii")


def decode(frame: bytes, allowed: tuple[str, ...] = tuple(MESSAGES)) -> LocalRequest | LocalAnswer:
    """The message `frame` holds, the inverse of encode(); Malformed if it holds no message of `allowed`."""
    if len(frame) > MAX_BYTES:
        raise Malformed(f"{len(frame)} bytes, more than {MAX_BYTES}")
    try:
        data = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: "[[[[..."
        raise Malformed("not a JSON object in UTF-8") from None
    if not isinstance(data, dict):
        raise Malformed("not a JSON object")
    if data.get("v") != VERSION:
        raise Malformed(f"version {data.get('v')!r} is not understood: this side speaks version {VERSION}")
    word = data.get("type")
    if not isinstance(word, str) or word not in allowed:
        raise Malformed(f"type {word!r} is not one of {', '.join(allowed)}")
    cls, wire = MESSAGES[word]
    if set(data) != {"v", "type", *(name for name, _ in wire)}:
        raise Malformed(f"a {word} has the fields {', '.join(name for name, _ in wire)}")
    values = [data[name] for name, _ in wire]
    for (name, kind), value in zip(wire, values, strict=True):
        if type(value) is not kind:  # bool is an int to isinstance: not here
            raise Malformed(f"{name} must be a {'string' if kind is str else 'number'}")
    return cls(*values)  # type: ignore[no-any-return]


assert all(
    [f.name for f in fields(cls)] == [("msg_id" if n == "id" else n) for n, _ in wire]
    for cls, wire in MESSAGES.values()
), "each class's fields are its wire fields, in order"


# --- where: the runtime directory and the control socket's file --------------------------


def runtime_dir(create: bool = True) -> Path:
    """$XDG_RUNTIME_DIR/zchat, else <temp dir>/zchat-<uid>: made mode 0700 when `create`.

    LocalError if it is not a directory of the user's own that only the user may enter
    (someone else's could hold a socket that pretends to be your chat); FileNotFoundError when
    it does not exist and `create` is false.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "zchat" if base else Path(tempfile.gettempdir()) / f"zchat-{os.getuid()}"
    if create:
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise LocalError(f"cannot make {folder}: {e.strerror}") from None
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise LocalError(f"{folder} is not a directory")
    if info.st_uid != os.getuid():
        raise LocalError(f"{folder} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o077:
        raise LocalError(f"{folder} may be used by others (mode {stat.S_IMODE(info.st_mode):o}, not 700)")
    return folder


def control_path(broker: str, name: str, folder: Path) -> Path:
    """The file of the open chat of `name` on `broker`: one per chat, whatever the name's case."""
    digest = hashlib.blake2s(f"{broker}\n{name.casefold()}".encode(), digest_size=8).hexdigest()
    return folder / f"chat-{digest}.ipc"


def stale(path: Path) -> bool:
    """Provably nobody's: the socket file is there, and connecting to it is refused."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PING_TIMEOUT)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False  # gone already, or too busy to tell: nothing proves it stale
    finally:
        probe.close()
    return False


# --- the chat's side ---------------------------------------------------------------------


class LocalEndpoint:
    """An open chat's control endpoint: a thread that owns the ROUTER socket, answers pings at
    once, and hands each send to `client` (as typed), answering with its outcome.

    Outcomes are awaited by a second thread (they take a broker's round trip, or the answer
    timeout), so that a ping is never kept waiting behind a send. `on_request` is told of each
    request sent for someone else (from the endpoint's thread, as soon as it exists).
    """

    def __init__(self, client: UserRequests, name: str, broker: str, answer_timeout: float,
                 folder: Path | None = None,
                 on_request: Callable[[Request], None] | None = None) -> None:  # fmt: skip
        """Bind the socket (LocalError if that cannot be done safely) and start answering."""
        self.client = client
        self.name = name
        self.broker = broker
        self.answer_timeout = answer_timeout
        self.on_request = on_request
        self.path = control_path(broker, name, folder or runtime_dir())
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._answers: queue.SimpleQueue[tuple[list[bytes], LocalAnswer]] = queue.SimpleQueue()
        self._waiting: queue.SimpleQueue[tuple[list[bytes], Request] | None] = queue.SimpleQueue()
        self._stopping = False
        self._closed = False
        self._inode = (0, 0)
        bound: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # the bind's failure, or None
        self._thread = threading.Thread(
            target=self._run, args=(bound,), name=f"zchat-local-{name}", daemon=True
        )
        self._waiter = threading.Thread(target=self._await, name=f"zchat-local-wait-{name}", daemon=True)
        self._thread.start()
        failure = bound.get()  # binding a file takes no time worth bounding
        if failure is not None:
            self._thread.join()
            os.close(self._wake_w)
            raise LocalError(failure)
        self._waiter.start()

    def _identity(self) -> tuple[int, int]:
        info = self.path.lstat()
        return info.st_dev, info.st_ino

    def close(self, timeout: float = 3.0) -> None:
        """Remove the file (if still ours: a chat after us may have bound the same), answer the
        sends in flight, stop, and join the threads, bounded by `timeout` each.

        Close the client first: its close answers what it has not sent (a refusal), which is
        then this endpoint's answer to the sender, instead of the sender waiting in vain."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._identity() == self._inode:
                self.path.unlink()
        except OSError:
            pass  # gone already
        self._waiting.put(None)
        self._waiter.join(timeout)  # each outcome queued, and the endpoint thread woken
        self._stopping = True
        self._wake()
        self._thread.join(timeout)
        if not self._waiter.is_alive():  # else it may still write: the number must not be reused
            os.close(self._wake_w)

    def __enter__(self) -> LocalEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already holds wake-ups
            os.write(self._wake_w, b"!")

    # --- the endpoint thread ----------------------------------------------------------

    def _run(self, bound: queue.SimpleQueue[str | None]) -> None:
        context = zmq.Context()
        router: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_BYTES + 1024)
        try:
            try:
                router.bind(f"ipc://{self.path}")  # libzmq replaces a file left behind there
                self._inode = self._identity()
            except (zmq.ZMQError, OSError) as e:
                bound.put(f"cannot listen on {self.path}: {e}")
                return
            bound.put(None)
            self._router = router
            self._loop(router)
        finally:
            router.close()
            context.term()
            os.close(self._wake_r)

    def _loop(self, router: zmq.Socket[bytes]) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            while not self._answers.empty():
                envelope, answer = self._answers.get()
                self._reply(envelope, answer)
            if self._stopping:  # after the last answers: close() queued them before it woke us
                return
            if router in ready:
                self._drain()

    def _drain(self) -> None:
        while True:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope, body = frames[:-1], frames[-1]  # a REQ's [id, b""], a DEALER's [id]
            try:
                answer = self._take(body, envelope)
            except Exception:  # a bug here answers that one request and keeps the chat up
                log.exception("the control endpoint failed on a request")
                answer = Invalid("the chat failed on this request")
            if answer is not None:
                self._reply(envelope, answer)

    def _take(self, body: bytes, envelope: list[bytes]) -> LocalAnswer | None:
        """The answer now, or None when it comes later (a send, once its outcome is known)."""
        try:
            request = decode(body, _REQUESTS)
        except Malformed as e:
            return Invalid(str(e))
        assert isinstance(request, Ping | Send)
        if request.name.casefold() != self.name.casefold() or request.broker != self.broker:
            return Invalid(f"this is the chat of {self.name} on {self.broker}")
        if isinstance(request, Ping):
            return Here(self.name)
        sending = (
            self.client.broadcast(request.text)
            if request.to == EVERYONE
            else self.client.send(request.to, request.text)
        )
        if self.on_request is not None:
            self.on_request(sending)
        self._waiting.put((envelope, sending))
        return None

    def _reply(self, envelope: list[bytes], answer: LocalAnswer) -> None:
        with contextlib.suppress(zmq.Again):  # a sender that stopped reading has given up on us
            self._router.send_multipart([*envelope, encode(answer)], zmq.NOBLOCK)

    # --- the waiter thread: owns no socket ----------------------------------------------

    def _await(self) -> None:
        while (item := self._waiting.get()) is not None:
            envelope, request = item
            try:
                outcome = request.wait(self.answer_timeout + ANSWER_MARGIN)
            except TimeoutError:
                answer: LocalAnswer = Refused(ev.NOT_ANSWERED, "no answer from the chat's client in time")
            else:
                answer = outcome_of(request, outcome)
            self._answers.put((envelope, answer))
            self._wake()


def listen(client: UserRequests, settings: Settings, on_request: Callable[[Request], None] | None,
           tell: Callable[[str], None]) -> LocalEndpoint | None:  # fmt: skip
    """The open chat's endpoint (zchat connect's, in each front end); the chat goes on without
    one, told why, when it cannot be made safely."""
    try:
        return LocalEndpoint(client, settings.name, settings.broker, settings.answer_timeout,
                             on_request=on_request)  # fmt: skip
    except LocalError as e:
        tell(f"zchat send --name {settings.name} will not send through this chat: {e}")
        return None


def outcome_of(request: Request, outcome: ev.Outcome) -> LocalAnswer:
    if isinstance(outcome, ev.Refusal):
        return Refused(outcome.code, outcome.text)
    if isinstance(outcome, ev.Ack):
        return Sent(request.msg_id, outcome.status)
    return Invalid(f"unexpected outcome {type(outcome).__name__}")


# --- the sender's side -------------------------------------------------------------------


def send_through_chat(broker: str, name: str, to: str, text: str, answer_timeout: float,
                      ping_timeout: float = PING_TIMEOUT) -> Sent | Refused | None:  # fmt: skip
    """Send `text` to `to` ("*": everyone) through the open chat of `name` on `broker`.

    None when no open chat answered its ping in time (then it was given nothing: send some
    other way); a file left by a chat that is provably gone (nothing listens) is removed. TimeoutError when the
    chat took the message and gave no outcome in time (it may have been sent).
    """
    try:
        path = control_path(broker, name, runtime_dir(create=False))
        info = path.lstat()
    except (FileNotFoundError, LocalError):
        return None  # no open chat; or a directory another could have put a false one in
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        return None
    if stale(path):  # left by a chat that ended without removing it (killed): no wait
        _remove_stale(path, info)
        return None
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        try:
            dealer.connect(f"ipc://{path}")
        except zmq.ZMQError:  # a path too long for a socket: no chat could have bound it
            return None
        # A chat that is listening answers at once; one that does not (stopped, or hung) is not
        # given the message, and nothing of its is removed.
        if not isinstance(_ask(dealer, encode(Ping(name, broker)), ping_timeout), Here):
            return None
        request = encode(Send(name, broker, to, text))
        if len(request) > MAX_BYTES:  # the chat's socket would drop us, unanswered
            return Refused(ev.USAGE, f"{len(request)} bytes is more than an open chat takes ({MAX_BYTES})")
        answer = _ask(dealer, request, answer_timeout + ANSWER_MARGIN)
        if answer is None:
            raise TimeoutError(
                f"no outcome from the open chat of {name} within {answer_timeout + ANSWER_MARGIN:g}s"
            )
        if isinstance(answer, Sent | Refused):
            return answer
        why = answer.text if isinstance(answer, Invalid) else "it answered another question"
        return Refused(ev.USAGE, f"the open chat did not take it: {why}")
    finally:
        dealer.close()
        context.term()


def _ask(dealer: zmq.Socket[bytes], request: bytes, timeout: float) -> LocalAnswer | None:
    """The chat's answer to `request` (encoded), or None when none came within `timeout`."""
    dealer.send_multipart([request])
    if not dealer.poll(int(timeout * 1000)):
        return None
    try:
        answer = decode(dealer.recv_multipart()[-1], ("here", "sent", "refused", "invalid"))
    except Malformed as e:
        return Invalid(str(e))
    assert not isinstance(answer, Ping | Send)
    return answer


def _remove_stale(path: Path, info: os.stat_result) -> None:
    """Remove the file we found stale, not one a chat bound there since."""
    try:
        now = path.lstat()
        if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
            path.unlink()
    except OSError as e:
        if e.errno != errno.ENOENT:
            log.debug("cannot remove %s: %s", path, e)
