"""The client's connection engine alone: no socket, no thread, fake time.

Frames in are built with the codec (p.encode), frames out are read with it
(p.decode_command), so these tests hold whatever the wire format.
"""

from __future__ import annotations

import itertools
import random
from typing import TypeVar

import pytest

from zchat.client import connection as c
from zchat.client import events as ev
from zchat.client.connection import Connection, Phase, Trigger
from zchat.client.events import State
from zchat.client.request import Request
from zchat.client.settings import Settings
from zchat.common import protocol as p

T = TypeVar("T")
START = 1000.0
TOKEN = "t" * 32
ME = p.private_topic("alice")


class Harness:
    """Drives a Connection as the poller thread does: an input, then a tick, then the effects."""

    def __init__(self, broker: str = "tcp://127.0.0.1:5555", **settings: object) -> None:
        ids = itertools.count(1)
        self.conn = Connection(
            Settings("alice", broker, **settings),  # type: ignore[arg-type]
            lambda: f"c-{next(ids)}",
            rng=random.Random(7),
        )
        self.now = START
        self.sent: list[p.ClientCommand] = []
        self.events: list[ev.Event] = []
        self.effects: list[c.Effect] = []
        self.topics: list[bytes] = []  # subscribed now, in order
        self.sub_open = False
        self.dealers = 0  # DEALERs opened so far
        self.opened: list[str] = []  # their endpoints
        self.timing: list[tuple[int, int]] = []  # each DEALER's heartbeat interval and timeout (ms)
        self.first: list[ev.Status | None] = []
        self.heartbeat_ms = 2000
        self.timeout_ms = 6000
        self.seq = 0

    # --- the shell's part ----------------------------------------------------

    def pump(self) -> None:
        self.conn.tick(self.now)
        for effect in self.conn.effects():
            self.effects.append(effect)
            match effect:
                case c.ToBroker(frames):
                    self.sent.append(p.decode_command(frames))
                case c.Notify(event):
                    self.events.append(event)
                case c.Answer(request, outcome):
                    if request.resolve(outcome):
                        self.events.append(outcome)
                case c.Subscribe(topic):
                    assert self.sub_open, "subscribed with no SUB socket"
                    self.topics.append(topic)
                case c.Unsubscribe(topic):
                    self.topics.remove(topic)
                case c.OpenDealer(endpoint, heartbeat_ms, timeout_ms):
                    assert endpoint in self.conn.endpoints
                    self.opened.append(endpoint)
                    self.dealers += 1
                    self.timing.append((heartbeat_ms, timeout_ms))
                    self.sub_open, self.topics = False, []
                case c.OpenSub(endpoint):
                    assert endpoint == "tcp://127.0.0.1:5556"  # the '*' host is the ROUTER's
                    self.sub_open, self.topics = True, []
                case c.CloseSockets():
                    self.sub_open, self.topics = False, []
                case c.FirstOutcome(failure):
                    self.first.append(failure)

    def start(self) -> None:
        self.conn.start(self.now)
        self.pump()

    def deliver(self, message: p.ServerEvent) -> None:
        """A reply or delivery on the DEALER."""
        self.conn.from_dealer(p.encode(message), self.now)
        self.pump()

    def publish(self, topic: bytes, event: p.PublishedEvent, seq: int | None = None) -> None:
        if seq is None:
            self.seq += 1
            seq = self.seq
        self.conn.from_sub(p.encode_published(p.Published(topic, seq, event)), self.now)
        self.pump()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.pump()

    def run_for(self, seconds: float, step: float = 0.05) -> None:
        """Time passes in steps (libzmq keeps the connection alive meanwhile)."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.advance(min(step, end - self.now))

    def ask(self, kind: str, target: str = "", text: str = "", **fields: int) -> Request:
        request = Request(kind, f"u-{len(self.effects)}-{kind}", target, text, **fields)
        self.conn.request(request, self.now)
        self.pump()
        return request

    # --- reading what happened -------------------------------------------------

    def sockets(self) -> tuple[int, bool]:
        """DEALERs opened so far, and whether a SUB is open."""
        return self.dealers, self.sub_open

    def phase(self) -> Phase:
        return self.conn.phase

    def state(self) -> State:
        return self.conn.state

    def take(self, kind: type[T]) -> list[T]:
        """The commands of this kind sent so far, forgotten once taken."""
        found: list[T] = [m for m in self.sent if isinstance(m, kind)]
        self.sent = [m for m in self.sent if not isinstance(m, kind)]
        return found

    def one(self, kind: type[T]) -> T:
        found = self.take(kind)
        assert len(found) == 1, f"expected one {kind.__name__}, sent {found} (and {self.sent})"
        return found[0]

    def of(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]

    def statuses(self, state: State | None = None) -> list[ev.Status]:
        return [s for s in self.of(ev.Status) if state is None or s.state is state]

    # --- the broker's part -----------------------------------------------------

    def welcome(self, hello: p.Hello | None = None, token: str = TOKEN, rate: int = 0, burst: int = 0,
                max_body: int = 65536) -> None:  # fmt: skip
        hello = hello or self.one(p.Hello)
        self.deliver(p.Welcome(hello.msg_id, "alice", token, "tcp://*:5556", self.heartbeat_ms, self.timeout_ms,
                               max_body, 1, rate, burst))  # fmt: skip

    def sign_in(self, rate: int = 0, burst: int = 0, max_body: int = 65536, mine: tuple[str, ...] = (),
                last_seq: int = 0, records: tuple[p.Record, ...] = ()) -> None:  # fmt: skip
        """HELLO to online, and the sign-in's catching up: the lobby's history, then ROOMS."""
        if self.phase() is Phase.DISCONNECTED:
            self.start()
        self.welcome(rate=rate, burst=burst, max_body=max_body)
        self.synced()
        self.deliver(p.Ack(self.one(p.Ready).msg_id, 2, "accepted"))
        assert self.phase() is Phase.ONLINE
        self.run_for(2.5 if rate else 0)  # paced: the sign-in's requests wait for tokens
        history = self.one(p.HistoryRequest)
        self.deliver(p.History(history.msg_id, p.EVERYONE, last_seq, records))
        self.run_for(2.5 if rate else 0)
        self.deliver(p.RoomList(self.one(p.Rooms).msg_id, tuple((room, 1) for room in mine), mine))

    def synced(self) -> None:
        sync = self.take(p.Sync)[-1]
        self.publish(ME, p.Synced(sync.msg_id), seq=0)

    def drop(self) -> None:
        """The DEALER's connection closes (the broker hung up, or libzmq's heartbeats stopped)."""
        self.conn.connection_lost(self.now)
        self.pump()

    def lose_connection(self) -> None:
        """The connection drops: the engine reconnects after its back-off."""
        self.drop()
        assert self.phase() is Phase.DISCONNECTED
        while self.phase() is Phase.DISCONNECTED:  # the back-off
            self.advance(0.01)
        assert self.phase() is Phase.HELLO


def record(seq: int, text: str, room: str = "#dev", sender: str = "bob") -> p.Record:
    return p.Record(seq, f"b-{seq}".encode(), sender, room, 5, text.encode())


def message(text: str, msg_id: str = "b-1", sender: str = "bob", target: str = "alice") -> p.Message:
    return p.Message(msg_id.encode(), sender, target, 5, text.encode())


@pytest.fixture
def h() -> Harness:
    return Harness()


# --- signing in ----------------------------------------------------------------------


def test_sign_in_goes_hello_welcome_subscribe_sync_ready_ack_online(h: Harness) -> None:
    h.start()
    assert h.dealers == 1 and not h.sockets()[1]
    hello = h.one(p.Hello)
    assert (hello.name, hello.token) == ("alice", "")
    assert h.state() is State.CONNECTING

    h.welcome(hello)
    assert h.sockets()[1]
    assert h.topics == [p.LOBBY_TOPIC, ME]  # the own topic last: its SYNCED proves the lobby live
    sync = h.one(p.Sync)
    assert sync.tag == b""
    assert h.phase() is Phase.SYNC and not h.sent

    h.publish(ME, p.Synced(sync.msg_id), seq=0)
    ready = h.one(p.Ready)
    assert h.state() is State.CONNECTING and not h.first  # not online before READY's ACK

    h.deliver(p.Ack(ready.msg_id, 2, "accepted"))
    assert h.state() is State.ONLINE
    assert h.first == [None]
    assert [s.state for s in h.statuses()] == [State.ONLINE]
    # Catching up: the lobby's history, then the rooms we are in.
    history = h.one(p.HistoryRequest)
    assert (history.room, history.before, history.limit, history.after) == (p.EVERYONE, 0, 50, 0)
    assert h.one(p.Rooms)


def test_sync_is_sent_again_until_synced(h: Harness) -> None:
    h.start()
    h.welcome()
    first = h.one(p.Sync)
    h.advance(0.1)
    assert not h.take(p.Sync)
    h.advance(0.11)
    again = h.one(p.Sync)
    assert again.msg_id != first.msg_id
    h.publish(ME, p.Synced(first.msg_id), seq=0)  # an earlier round's SYNCED proves as much
    assert h.one(p.Ready)


def test_lobby_history_at_sign_in_is_shown_as_history_then_what_was_kept(h: Harness) -> None:
    h.start()
    h.welcome()
    h.synced()
    h.publish(p.LOBBY_TOPIC, message("live", "b-3", target="*"), seq=3)  # before the history's answer
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    history = h.one(p.HistoryRequest)
    h.deliver(p.History(history.msg_id, "*", 2, (record(1, "one", "*"), record(2, "two", "*"))))
    shown = [(m.text, m.history, m.seq) for m in h.of(ev.Message)]
    assert shown == [("one", True, 1), ("two", True, 2), ("live", False, 3)]
    h.publish(p.LOBBY_TOPIC, message("live", "b-3", target="*"), seq=3)  # no repeat
    assert len(h.of(ev.Message)) == 3


def test_a_leave_while_the_lobby_history_is_asked_is_shown_in_its_place(h: Harness) -> None:
    h.start()
    h.welcome()
    h.synced()
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    history = h.one(p.HistoryRequest)
    h.publish(p.LOBBY_TOPIC, p.Leave("jo", 1003, "quit"), seq=3)  # kept: HISTORY is asked
    h.publish(p.LOBBY_TOPIC, message("after", "b-4", target="*"), seq=4)
    # HISTORY holds messages only: the LEAVE is in no record. The broker published ann's
    # LEAVE (5) before it answered, but the answer, on the other socket, came first.
    h.deliver(p.History(history.msg_id, "*", 5, (record(1, "one", "*"), record(4, "after", "*"))))
    h.publish(p.LOBBY_TOPIC, p.Leave("ann", 1005, "timeout"), seq=5)
    h.publish(p.LOBBY_TOPIC, message("later", "b-6", target="*"), seq=6)
    shown = [(e.text, e.seq) if isinstance(e, ev.Message) else (e.name, e.event)
             for e in h.events if isinstance(e, ev.Message | ev.Presence)]  # fmt: skip
    assert shown == [("one", 1), ("jo", "leave"), ("after", 4), ("ann", "leave"), ("later", 6)]


def test_no_welcome_in_time_gives_up_on_the_first_connection(h: Harness) -> None:
    h.start()
    h.advance(4.9)
    assert h.phase() is Phase.HELLO
    h.advance(0.2)
    assert h.state() is State.OFFLINE and h.conn.finished
    assert len(h.first) == 1 and h.first[0] is not None and h.first[0].state is State.OFFLINE
    assert h.conn.wakeup() is None


def test_a_first_connection_tries_each_broker_of_the_list_before_it_gives_up() -> None:
    both = "tcp://127.0.0.1:5555,tcp://127.0.0.1:5557"
    h = Harness(broker=both, connect_timeout=2.0)
    h.start()
    h.advance(2.1)  # the first broker does not answer: the second, with a wait of its own
    assert h.opened == ["tcp://127.0.0.1:5555", "tcp://127.0.0.1:5557"] and h.first == []
    (trying,) = h.statuses(State.CONNECTING)
    assert "5555 within 2s" in trying.detail and "trying tcp://127.0.0.1:5557" in trying.detail
    first, second = h.take(p.Hello)  # the first broker's is never answered
    assert first.name == second.name == "alice"
    h.welcome(second)
    h.synced()
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    assert h.state() is State.ONLINE and h.first == [None]
    assert "at tcp://127.0.0.1:5557" in h.statuses(State.ONLINE)[-1].detail

    h = Harness(broker=both, connect_timeout=2.0)
    h.start()
    h.advance(2.1)
    h.advance(2.1)  # neither answers: given up, naming the last
    assert h.state() is State.OFFLINE and len(h.opened) == 2
    assert h.first[0] is not None and "5557" in h.first[0].detail


@pytest.mark.parametrize("code", [p.Code.NAME_TAKEN, p.Code.INVALID_NAME, p.Code.NAME_OWNED])
def test_hopeless_hello_refusal_gives_up(h: Harness, code: p.Code) -> None:
    h.start()
    h.deliver(p.Error(h.one(p.Hello).msg_id, code, "no"))
    assert h.state() is State.OFFLINE
    assert h.first and h.first[0] is not None and f"code {int(code)}" in h.first[0].detail


def test_other_hello_refusal_tries_again_with_back_off(h: Harness) -> None:
    h.start()
    h.deliver(p.Error(h.one(p.Hello).msg_id, p.Code.TOO_MANY, "full"))
    assert h.state() is State.RECONNECTING and not h.first
    assert h.phase() is Phase.DISCONNECTED
    h.advance(0.15)
    assert h.dealers == 2 and h.one(p.Hello)


def test_refused_handshake_is_told_at_once_before_the_first_sign_in(h: Harness) -> None:
    h.start()
    h.conn.handshake_failed("the broker refused the encrypted handshake", h.now)
    h.pump()
    assert h.state() is State.OFFLINE
    assert h.first[0] is not None and "refused the encrypted handshake" in h.first[0].detail


def test_refused_handshake_after_being_online_reconnects(h: Harness) -> None:
    h.sign_in()
    h.lose_connection()
    h.conn.handshake_failed("turned away", h.now)
    h.pump()
    assert h.phase() is Phase.DISCONNECTED and h.state() is State.RECONNECTING


# --- heartbeats and a dead broker ----------------------------------------------------------


def test_an_idle_client_sends_nothing_and_has_nothing_to_wake_for(h: Harness) -> None:
    # libzmq's heartbeats keep the connection alive (PROTOCOL.md 7): no PING of ours.
    h.sign_in()
    h.run_for(60)
    assert h.sent == [] and h.state() is State.ONLINE
    assert h.conn.wakeup() is None


def test_a_lost_connection_is_reconnected_and_the_session_resumed(h: Harness) -> None:
    h.sign_in()
    h.drop()
    assert h.phase() is Phase.DISCONNECTED and not h.sub_open
    assert h.state() is State.RECONNECTING
    lost = h.statuses(State.RECONNECTING)
    assert "lost" in lost[-1].detail and "attempt 1" in lost[-1].detail
    h.run_for(0.2)
    assert h.dealers == 2
    assert h.one(p.Hello).token == TOKEN  # resumes the session


def test_each_dealer_keeps_the_heartbeat_timing_the_broker_last_gave(h: Harness) -> None:
    h.timeout_ms, h.heartbeat_ms = 3000, 500
    h.sign_in()
    h.lose_connection()
    assert h.timing == [(4000, 6000), (500, 3000)]  # the first before any WELCOME: the defaults


def test_a_connection_lost_during_the_first_registration_waits_for_its_deadline(h: Harness) -> None:
    # libzmq connects again by itself; the registration's deadline says whether it came through.
    h.start()
    h.drop()
    assert h.phase() is Phase.HELLO and h.dealers == 1
    h.run_for(5.1)
    assert h.state() is State.OFFLINE


def test_a_connection_lost_while_saying_bye_closes(h: Harness) -> None:
    h.sign_in()
    h.ask("close")
    h.one(p.Bye)
    h.drop()
    assert h.state() is State.CLOSED and h.dealers == 1


def test_back_off_grows_to_a_cap(h: Harness) -> None:
    h.sign_in()
    h.drop()
    gaps = []
    for _ in range(8):
        h.take(p.Hello)
        lost_at = h.now
        dealers = h.dealers
        while h.dealers == dealers:
            h.advance(0.01)
        gaps.append(h.now - lost_at)
        h.advance(5.01)  # no WELCOME within connect_timeout (5 s, less than the broker's 6): given up
    assert gaps[0] < 0.2
    assert all(b >= a * 0.6 for a, b in itertools.pairwise(gaps))
    assert max(gaps) <= 5.0 * 1.2 + 0.02


def test_a_reconnects_hello_waits_as_long_as_the_broker_waits_for_a_silent_client() -> None:
    h = Harness(connect_timeout=30.0)  # the broker's timeout (6 s) is the shorter
    h.sign_in()
    h.lose_connection()
    h.run_for(5.9)
    assert h.phase() is Phase.HELLO and h.dealers == 2  # a busy broker: its answer will come
    h.run_for(0.2)
    assert h.phase() is Phase.DISCONNECTED
    assert "no answer" in h.statuses(State.RECONNECTING)[-1].detail


def test_each_answer_of_a_reconnects_registration_starts_its_wait_again() -> None:
    h = Harness(connect_timeout=30.0)
    h.sign_in()
    h.take(p.Sync)
    h.lose_connection()
    h.run_for(4.0)
    h.welcome()
    h.run_for(4.0)  # 8 s since the HELLO, 4 since the WELCOME: still signing in
    assert h.phase() is Phase.SYNC and h.dealers == 2
    h.synced()
    h.run_for(4.0)
    assert h.phase() is Phase.READY and h.dealers == 2
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    assert h.state() is State.ONLINE and h.dealers == 2
    h.run_for(6.1)
    assert h.state() is State.ONLINE  # online, no registration deadline is left


def test_a_reconnect_waits_at_most_connect_timeout_for_an_answer() -> None:
    h = Harness(connect_timeout=4.0)
    h.sign_in()
    h.lose_connection()
    h.run_for(3.9)
    assert h.phase() is Phase.HELLO
    h.run_for(0.2)
    assert h.phase() is Phase.DISCONNECTED


def test_resume_after_a_lost_connection_sends_again_what_was_unanswered(h: Harness) -> None:
    h.sign_in(mine=("#dev",))
    h.take(p.Sync)
    request = h.ask("send", "bob", "hi")
    first = h.one(p.Send)
    h.lose_connection()
    h.welcome(token=TOKEN)
    h.synced()
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    assert h.state() is State.ONLINE
    assert h.first == [None]  # connect() was answered once
    again = h.one(p.Send)
    assert again == first  # the same id: the recipient drops a repeat
    h.deliver(p.Ack(again.msg_id, 9, "accepted"))
    assert isinstance(request.wait(0), ev.Ack)
    # The rooms are joined again on the new SUB.
    h.run_for(0.1)
    h.take(p.HistoryRequest)
    h.deliver(p.RoomList(h.one(p.Rooms).msg_id, (("#dev", 1),), ("#dev",)))
    assert p.topic_of("#dev") in h.topics


def test_name_taken_after_a_reconnect_is_tried_again_while_our_last_session_may_hold_it(h: Harness) -> None:
    h.sign_in()
    h.lose_connection()
    h.deliver(p.Error(h.one(p.Hello).msg_id, p.Code.NAME_TAKEN, "taken"))
    assert h.state() is State.RECONNECTING  # not given up: it may be our own ghost
    h.run_for(12.5)  # twice the broker's timeout: new connections meanwhile
    h.take(p.Hello)
    while not (hellos := h.take(p.Hello)):
        h.advance(0.05)
    h.deliver(p.Error(hellos[0].msg_id, p.Code.NAME_TAKEN, "taken"))
    assert h.state() is State.OFFLINE


def test_not_registered_reconnects_and_keeps_the_request(h: Harness) -> None:
    h.sign_in()
    request = h.ask("send", "bob", "hi")
    send = h.one(p.Send)
    h.deliver(p.Error(send.msg_id, p.Code.NOT_REGISTERED, "who are you"))
    assert h.phase() is Phase.DISCONNECTED and not request.done()


def test_shutdown_on_the_lobby_reconnects(h: Harness) -> None:
    h.sign_in()
    h.publish(p.LOBBY_TOPIC, p.Shutdown("restart"))
    assert h.phase() is Phase.DISCONNECTED
    assert "shutting down: restart" in h.statuses(State.RECONNECTING)[-1].detail


def test_a_shutdown_reason_that_says_it_all_is_not_said_twice(h: Harness) -> None:
    h.sign_in()
    h.publish(p.LOBBY_TOPIC, p.Shutdown("the broker is shutting down"))
    assert h.statuses(State.RECONNECTING)[-1].detail.count("shutting down") == 1


def test_replaced_stops_for_good(h: Harness) -> None:
    h.sign_in()
    h.deliver(p.Replaced("taken over"))
    assert h.state() is State.OFFLINE and h.conn.finished
    assert "signed in elsewhere" in h.statuses(State.OFFLINE)[-1].detail
    assert h.first == [None]


# --- requests ------------------------------------------------------------------------------


def test_a_request_gets_its_answer(h: Harness) -> None:
    h.sign_in()
    request = h.ask("send", "bob", "hi")
    send = h.one(p.Send)
    assert (send.target, send.body) == ("bob", b"hi")
    h.deliver(p.Ack(send.msg_id, 1_700_000_000_000, "stored"))
    outcome = request.wait(0)
    assert isinstance(outcome, ev.Ack)
    assert (outcome.status, outcome.target, outcome.text) == ("stored", "bob", "hi")
    h.deliver(p.Ack(send.msg_id, 1_700_000_000_000, "accepted"))  # a repeat answers nothing more
    assert len(h.of(ev.Ack)) == 1


def test_one_ack_answers_several_requests(h: Harness) -> None:
    h.sign_in()
    first, second = h.ask("send", "*", "a"), h.ask("send", "*", "b")
    ids = [s.msg_id for s in h.take(p.Send)]
    h.deliver(p.Ack(ids[0], 1, "accepted", (ids[1],)))
    assert first.done() and second.done()


def test_refusal_is_the_brokers_code_and_text(h: Harness) -> None:
    h.sign_in()
    request = h.ask("send", "carol", "hi")
    h.deliver(p.Error(h.one(p.Send).msg_id, p.Code.UNKNOWN_RECIPIENT, "never here"))
    outcome = request.wait(0)
    assert isinstance(outcome, ev.Refusal)
    assert (outcome.code, outcome.target, outcome.message) == (404, "carol", "hi")


def test_who_names_rooms_and_search_get_their_answers(h: Harness) -> None:
    h.sign_in()
    who, names = h.ask("who"), h.ask("names", "#dev")
    search = h.ask("search", text="plan")
    h.deliver(p.Users(h.one(p.Who).msg_id, ("alice", "bob")))
    h.deliver(p.Users(h.one(p.Names).msg_id, ("bob",)))
    h.deliver(p.Found(h.one(p.Search).msg_id, (record(4, "the plan"),)))
    assert who.wait(0) == ev.Users(("alice", "bob"))
    assert names.wait(0) == ev.Users(("bob",), "#dev")
    found = search.wait(0)
    assert isinstance(found, ev.Found) and found.messages[0].text == "the plan"


def test_unanswered_request_times_out_from_when_it_was_sent(h: Harness) -> None:
    h = Harness(answer_timeout=3.0)
    h.sign_in()
    request = h.ask("send", "bob", "hi")
    h.run_for(2.9)
    assert not request.done()
    h.run_for(0.2)
    outcome = request.wait(0)
    assert isinstance(outcome, ev.Refusal) and outcome.code == ev.NOT_ANSWERED


def test_requests_wait_for_the_connection_in_order_up_to_a_limit() -> None:
    h = Harness(max_queued=2)
    h.start()
    first, second, third = h.ask("send", "*", "1"), h.ask("send", "*", "2"), h.ask("send", "*", "3")
    refused = third.wait(0)
    assert isinstance(refused, ev.Refusal) and refused.code == ev.QUEUE_FULL
    assert not h.take(p.Send)
    h.sign_in()
    assert [s.body for s in h.take(p.Send)] == [b"1", b"2"]
    assert not first.done() and not second.done()


def test_request_waiting_for_a_connection_times_out() -> None:
    h = Harness(answer_timeout=2.0, connect_timeout=60.0)
    h.start()
    request = h.ask("who")
    h.advance(2.1)
    outcome = request.wait(0)
    assert isinstance(outcome, ev.Refusal) and outcome.code == ev.NOT_ANSWERED


def test_request_is_sent_on_three_connections_at_most(h: Harness) -> None:
    h.sign_in()
    request = h.ask("send", "bob", "too much")
    h.take(p.Send)
    for tries in range(1, 4):
        h.lose_connection()
        h.welcome()
        h.synced()
        h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
        if tries < 3:
            assert len(h.take(p.Send)) == 1 and not request.done()
    outcome = request.wait(0)
    assert isinstance(outcome, ev.Refusal) and outcome.code == ev.LOST
    assert not h.take(p.Send)


def test_body_over_the_brokers_limit_is_refused_here(h: Harness) -> None:
    h.sign_in(max_body=100)
    too_big = h.ask("send", "bob", "é" * 51)  # 102 bytes
    just_fits = h.ask("send", "bob", "é" * 50)
    refusal = too_big.wait(0)
    assert isinstance(refusal, ev.Refusal) and refusal.code == p.Code.TOO_LARGE
    assert "100" in refusal.text
    assert [s.body for s in h.take(p.Send)] == ["é".encode() * 50]
    assert not just_fits.done()


def test_close_says_bye_and_ends_at_its_ack(h: Harness) -> None:
    h.sign_in()
    pending = h.ask("send", "bob", "hi")
    h.take(p.Send)
    h.ask("close")
    bye = h.one(p.Bye)
    h.ask("send", "bob", "after")
    assert not h.take(p.Send)  # nothing after BYE
    h.deliver(p.Ack(bye.msg_id, 3, "accepted"))
    assert h.conn.finished
    h.conn.stop()
    h.pump()
    outcome = pending.wait(0)
    assert isinstance(outcome, ev.Refusal) and outcome.code == ev.CLOSED
    assert h.statuses()[-1].state is State.CLOSED


def test_close_ends_after_a_while_without_bye_ack(h: Harness) -> None:
    h.sign_in()
    h.ask("close")
    h.advance(1.1)
    assert h.conn.finished


def test_close_before_registering_ends_at_once(h: Harness) -> None:
    h.start()
    h.ask("close")
    assert h.conn.finished and not h.take(p.Bye)
    h.conn.stop()
    h.pump()
    assert h.first and h.first[0] is not None and h.first[0].state is State.CLOSED


def test_request_to_a_finished_client_is_refused(h: Harness) -> None:
    h.start()
    h.ask("close")
    outcome = h.ask("who").wait(0)
    assert isinstance(outcome, ev.Refusal) and outcome.code == ev.CLOSED


# --- flood control -----------------------------------------------------------------------


def test_messages_beyond_the_rate_are_held_back_and_go_in_order() -> None:
    h = Harness()
    h.sign_in(rate=60, burst=1)  # 1 a second (0.95 mirrored)
    h.run_for(2.0)
    requests = [h.ask("send", "*", str(i)) for i in range(3)]
    assert [s.body for s in h.take(p.Send)] == [b"0"]
    assert any("holding messages back" in s.detail for s in h.statuses())
    h.ask("who")
    assert h.one(p.Who)  # not counted by flood control: never held
    sent_at: list[float] = []
    while len(sent_at) < 2:
        h.advance(0.01)
        sent_at += [h.now for _ in h.take(p.Send)]
    assert sent_at[1] - sent_at[0] == pytest.approx(1 / 0.95, abs=0.02)
    assert not any(r.done() for r in requests)


def test_rate_limited_request_goes_again_after_the_retry_after() -> None:
    h = Harness()
    h.sign_in(rate=600, burst=10)
    h.run_for(2.0)
    request = h.ask("send", "*", "hi")
    send = h.one(p.Send)
    h.deliver(p.Error(send.msg_id, p.Code.RATE_LIMITED, "slow down", retry_after_ms=1500))
    assert not request.done()  # held, not refused
    h.run_for(1.45)
    assert not h.take(p.Send)
    h.run_for(0.1)
    assert h.one(p.Send) == send  # the same id, once the broker has a token again


def test_rate_limited_without_flood_control_known_is_refused() -> None:
    h = Harness()
    h.sign_in()
    request = h.ask("send", "*", "hi")
    h.deliver(p.Error(h.one(p.Send).msg_id, p.Code.RATE_LIMITED, "slow down", retry_after_ms=100))
    outcome = request.wait(0)
    assert isinstance(outcome, ev.Refusal) and outcome.code == p.Code.RATE_LIMITED


def test_sign_in_catching_up_is_paced_by_the_rate() -> None:
    h = Harness()
    rooms = tuple(f"#r{i}" for i in range(6))
    h.sign_in(rate=60, burst=2, mine=rooms)
    assert all(p.topic_of(r) in h.topics for r in rooms)
    sync = h.one(p.Sync)
    assert sync.tag and p.sync_topic("alice", sync.tag) == h.topics[-1]  # subscribed after the rooms
    h.publish(p.sync_topic("alice", sync.tag), p.Synced(sync.msg_id), seq=0)
    assert p.sync_topic("alice", sync.tag) not in h.topics
    asked: list[float] = []
    for _ in range(800):
        h.advance(0.01)
        asked += [h.now for _ in h.take(p.HistoryRequest)]
    assert 4 <= len(asked) <= 6  # about one a second, not six at once
    assert all(b - a > 0.9 for a, b in itertools.pairwise(asked[1:]))


def test_catching_up_refused_for_the_rate_is_asked_again() -> None:
    h = Harness()
    h.start()
    h.welcome(rate=600, burst=10)
    h.synced()
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    history = h.one(p.HistoryRequest)
    h.deliver(p.Error(history.msg_id, p.Code.RATE_LIMITED, "slow", retry_after_ms=500))
    h.run_for(0.45)
    assert not h.take(p.HistoryRequest)
    h.run_for(0.1)
    assert h.one(p.HistoryRequest).room == p.EVERYONE


def test_lost_catching_up_answer_is_asked_again(h: Harness) -> None:
    h.start()
    h.welcome()
    h.synced()
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    h.take(p.HistoryRequest)
    rooms = h.one(p.Rooms)
    h.run_for(10.1)
    assert h.one(p.Rooms).msg_id != rooms.msg_id
    assert h.one(p.HistoryRequest).room == p.EVERYONE


# --- rooms -------------------------------------------------------------------------------


def join(h: Harness, room: str = "#dev", last_seq: int = 4, records: tuple[p.Record, ...] = ()) -> Request:
    request = h.ask("enter", room)
    enter = h.one(p.Enter)
    assert p.topic_of(room) in h.topics
    sync = h.one(p.Sync)
    h.publish(p.sync_topic("alice", sync.tag), p.Synced(sync.msg_id), seq=0)
    h.deliver(p.Ack(enter.msg_id, 3, "accepted"))
    history = h.one(p.HistoryRequest)
    h.deliver(p.History(history.msg_id, room, last_seq, records))
    return request


def test_joining_a_room_shows_history_then_live_with_no_gap_or_repeat(h: Harness) -> None:
    h.sign_in()
    request = h.ask("enter", "#dev")
    enter = h.one(p.Enter)
    sync = h.one(p.Sync)
    assert h.topics[-2:] == [p.topic_of("#dev"), p.sync_topic("alice", sync.tag)]
    h.publish(p.topic_of("#dev"), message("early", "b-4", target="#dev"), seq=4)  # kept: not live yet
    h.publish(p.topic_of("#dev"), message("new", "b-5", target="#dev"), seq=5)
    assert not h.of(ev.Message)
    h.publish(p.sync_topic("alice", sync.tag), p.Synced(sync.msg_id), seq=0)
    assert p.sync_topic("alice", sync.tag) not in h.topics
    h.deliver(p.Ack(enter.msg_id, 3, "accepted"))
    assert isinstance(request.wait(0), ev.Ack)
    history = h.one(p.HistoryRequest)
    assert (history.room, history.before, history.limit, history.after) == ("#dev", 0, 50, 0)
    h.deliver(p.History(history.msg_id, "#dev", 4, (record(3, "three"), record(4, "early"))))
    shown = [(m.text, m.history, m.seq) for m in h.of(ev.Message)]
    assert shown == [("three", True, 3), ("early", True, 4), ("new", False, 5)]
    h.publish(p.topic_of("#dev"), p.Join("carol", 6, "#dev"), seq=6)
    assert h.of(ev.Presence)[-1] == ev.Presence("carol", "join", ev.from_ms(6), room="#dev")


def test_a_room_refused_is_not_listened_to(h: Harness) -> None:
    h.sign_in()
    request = h.ask("enter", "#full")
    h.deliver(p.Error(h.one(p.Enter).msg_id, p.Code.TOO_MANY, "too many rooms"))
    assert isinstance(request.wait(0), ev.Refusal)
    assert p.topic_of("#full") not in h.topics


def test_leaving_a_room_unsubscribes_it(h: Harness) -> None:
    h.sign_in()
    join(h)
    h.ask("exit", "#dev")
    assert h.one(p.Exit).room == "#dev"
    assert p.topic_of("#dev") not in h.topics
    h.publish(p.topic_of("#dev"), message("gone", "b-9", target="#dev"), seq=9)
    assert not [m for m in h.of(ev.Message) if m.text == "gone"]


def test_missed_room_events_are_told(h: Harness) -> None:
    h.sign_in()
    join(h, last_seq=4)
    h.publish(p.topic_of("#dev"), message("after a gap", "b-8", target="#dev"), seq=8)
    assert any("missed 3 event(s) of #dev" in s.detail for s in h.statuses())


def test_a_room_gap_after_a_reconnect_is_filled_with_after(h: Harness) -> None:
    h.sign_in()
    join(h, last_seq=7, records=(record(7, "seven"),))
    h.lose_connection()
    h.welcome()
    h.synced()
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    lobby = h.one(p.HistoryRequest)
    h.deliver(p.History(lobby.msg_id, "*", 0, ()))
    h.deliver(p.RoomList(h.one(p.Rooms).msg_id, (("#dev", 1),), ("#dev",)))
    sync = h.one(p.Sync)
    h.publish(p.sync_topic("alice", sync.tag), p.Synced(sync.msg_id), seq=0)
    history = h.one(p.HistoryRequest)
    assert (history.room, history.limit, history.after) == ("#dev", p.MAX_HISTORY, 7)
    h.deliver(p.History(history.msg_id, "#dev", 9, (record(8, "eight"), record(9, "nine"))))
    missed = [(m.text, m.history) for m in h.of(ev.Message)][-2:]
    assert missed == [("eight", False), ("nine", False)]  # what was said meanwhile: as if live


def test_a_gap_larger_than_one_history_is_counted(h: Harness) -> None:
    h.sign_in()
    join(h, last_seq=7, records=(record(7, "seven"),))
    h.lose_connection()
    h.welcome()
    h.synced()
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    h.deliver(p.History(h.one(p.HistoryRequest).msg_id, "*", 0, ()))
    h.deliver(p.RoomList(h.one(p.Rooms).msg_id, (("#dev", 1),), ("#dev",)))
    sync = h.one(p.Sync)
    h.publish(p.sync_topic("alice", sync.tag), p.Synced(sync.msg_id), seq=0)
    history = h.one(p.HistoryRequest)
    records = tuple(record(seq, str(seq)) for seq in range(20, 520))
    h.deliver(p.History(history.msg_id, "#dev", 519, records))
    assert any("12 earlier event(s) of #dev" in s.detail for s in h.statuses())


def test_a_broker_numbering_afresh_is_asked_again_from_the_start(h: Harness) -> None:
    h.sign_in(last_seq=40, records=(record(40, "forty", "*"),))
    h.lose_connection()
    h.welcome()
    h.synced()
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    history = h.one(p.HistoryRequest)
    assert history.after == 40
    h.deliver(p.History(history.msg_id, "*", 3, ()))  # restarted without a store
    h.advance(0.01)
    again = h.one(p.HistoryRequest)
    assert (again.after, again.limit) == (0, 50)


def back_at_a_broker_that_forgot_the_rooms(h: Harness) -> None:
    """Signed in and in #dev; the connection lost; back at a broker that lost its store."""
    h.sign_in()
    join(h)
    h.lose_connection()
    h.welcome()
    h.synced()
    h.deliver(p.Ack(h.one(p.Ready).msg_id, 2, "accepted"))
    h.deliver(p.History(h.one(p.HistoryRequest).msg_id, "*", 0, ()))
    h.deliver(p.RoomList(h.one(p.Rooms).msg_id, (), ()))  # a broker that lost its store


def test_rooms_the_broker_forgot_are_entered_again(h: Harness) -> None:
    back_at_a_broker_that_forgot_the_rooms(h)
    assert h.one(p.Enter).room == "#dev"


def test_history_pages_back_from_the_oldest_shown(h: Harness) -> None:
    h.sign_in()
    join(h, last_seq=30, records=tuple(record(s, str(s)) for s in range(21, 31)))
    request = h.ask("history", "#dev", before=-1, count=10)
    history = h.one(p.HistoryRequest)
    assert (history.before, history.limit) == (21, 10)
    h.deliver(p.History(history.msg_id, "#dev", 30, (record(11, "eleven"),)))
    outcome = request.wait(0)
    assert isinstance(outcome, ev.History) and outcome.messages[0].history


# --- private messages, duplicates and receipts -------------------------------------------


def test_a_repeated_private_message_is_shown_once_and_confirmed(h: Harness) -> None:
    h.sign_in()
    h.deliver(message("hi", "b-1"))
    h.deliver(message("hi", "b-1"))  # resent after a reconnect
    assert [m.text for m in h.of(ev.Message)] == ["hi"]
    received = h.take(p.Received)  # both confirmed: the broker sends a mailbox's again until then
    assert [(r.sender, r.ids) for r in received] == [("bob", (b"b-1",)), ("bob", (b"b-1",))]


def test_messages_of_one_wake_up_are_confirmed_together(h: Harness) -> None:
    h.sign_in()
    for i in range(3):
        h.conn.from_dealer(p.encode(message(str(i), f"b-{i}")), h.now)
    h.pump()
    assert h.one(p.Received).ids == (b"b-0", b"b-1", b"b-2")


def test_receipt_shows_what_was_sent(h: Harness) -> None:
    h.sign_in()
    h.ask("send", "bob", "hello bob")
    send = h.one(p.Send)
    h.deliver(p.Ack(send.msg_id, 1, "stored"))
    h.deliver(p.Receipt("bob", 7, (send.msg_id,)))
    assert h.of(ev.Receipt) == [ev.Receipt(send.msg_id.decode(), "bob", ev.from_ms(7), "hello bob")]


def test_receipts_wait_for_the_rate_and_gather_meanwhile() -> None:
    h = Harness()
    h.sign_in(rate=60, burst=1)
    h.run_for(1.2)
    h.ask("send", "*", "uses the token")
    h.take(p.Send)
    h.deliver(message("1", "b-1"))
    h.deliver(message("2", "b-2"))
    assert not h.take(p.Received)
    h.run_for(1.2)
    assert h.one(p.Received).ids == (b"b-1", b"b-2")


def test_mailbox_messages_before_ready_are_confirmed(h: Harness) -> None:
    h.start()
    h.welcome()
    h.deliver(message("kept for you", "b-7"))
    assert h.one(p.Received).ids == (b"b-7",)


def test_malformed_messages_are_ignored(h: Harness) -> None:
    h.sign_in()
    h.conn.from_dealer([p.SIGNATURE, b"ACK", b"x"], h.now)
    h.conn.from_sub([b"*\x00", b"nope"], h.now)
    h.pump()
    assert h.state() is State.ONLINE


def test_the_sessions_of_a_process_decode_a_published_frame_once(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[list[bytes]] = []
    decode = p.decode_published

    def counting(frames: list[bytes]) -> p.Published:
        decoded.append(frames)
        return decode(frames)

    monkeypatch.setattr(p, "decode_published", counting)
    c._decode_published.cache_clear()
    pages = [Harness(), Harness()]
    for page in pages:
        page.sign_in(last_seq=3)
    run = p.Presence("*", tuple(p.Change(f"u{i}", 1000 + i, "") for i in range(500)))
    frames = p.encode_published(p.Published(p.LOBBY_TOPIC, 4, run))
    before = len(decoded)
    for page in pages:
        page.conn.from_sub(list(frames), page.now)  # the same bytes, received by each
        page.pump()
        assert [e.changes for e in page.events if isinstance(e, ev.Presences)] == [run.changes]
    assert len(decoded) == before + 1
    for page in pages:  # a malformed frame is not remembered: each ignores it, and stays online
        page.conn.from_sub([b"*\x00nope"], page.now)
        page.pump()
        assert page.state() is State.ONLINE
    assert len(decoded) == before + 3


# --- the state table -----------------------------------------------------------------------


def test_every_phase_can_stop_and_finished_phases_only_stop() -> None:
    for phase, moves in c.TRANSITIONS.items():
        assert moves[Trigger.STOP] is Phase.CLOSED
        if phase in c.FINISHED:
            assert set(moves) == {Trigger.STOP}
    assert set(c.TRANSITIONS) == set(Phase)


def test_a_trigger_the_table_does_not_allow_is_a_bug(h: Harness) -> None:
    with pytest.raises(c.InvalidTransition):
        h.conn._go(Trigger.ANNOUNCED)


def test_internal_failure_is_told_and_ends_the_client(h: Harness) -> None:
    h.sign_in()
    h.conn.fail("internal error: boom")
    h.pump()
    assert h.state() is State.OFFLINE
    assert h.statuses(State.OFFLINE)[-1].detail == "internal error: boom"


# --- deadlines: the poller sleeps until wakeup(), so every timer must be in it ------------


def wake_as_the_poller_does(h: Harness) -> None:
    """Time passes to the engine's next deadline (at most 1 s, the idle poll), then a tick."""
    wake = h.conn.wakeup()
    h.advance(1.0 if wake is None else min(max(wake - h.now, 0.001), 1.0))


def sleep_as_the_poller_does(h: Harness, seconds: float) -> None:
    end = h.now + seconds
    while h.now < end:
        wake_as_the_poller_does(h)


def test_held_message_goes_when_its_token_comes_not_at_the_next_idle_wake_up() -> None:
    h = Harness()
    h.sign_in(rate=30, burst=1)  # a token every 2.1 s
    sleep_as_the_poller_does(h, 3.0)
    h.ask("send", "*", "first")
    h.ask("send", "*", "second")
    assert [s.body for s in h.take(p.Send)] == [b"first"]
    first_at = h.now
    while not h.take(p.Send):
        wake_as_the_poller_does(h)
    assert h.now - first_at == pytest.approx(60 / 30 / 0.95, abs=0.01)


def test_sync_is_sent_again_on_time_by_a_sleeping_poller(h: Harness) -> None:
    h.start()
    h.welcome()
    h.take(p.Sync)
    synced_at = h.now
    wake_as_the_poller_does(h)
    assert len(h.take(p.Sync)) == 1
    assert h.now - synced_at == pytest.approx(0.2, abs=0.002)


def test_reconnect_and_expiry_happen_on_time_by_a_sleeping_poller() -> None:
    h = Harness(answer_timeout=2.5)
    h.sign_in()
    request = h.ask("send", "bob", "hi")
    asked_at = h.now
    while not request.done():
        wake_as_the_poller_does(h)
    assert h.now - asked_at == pytest.approx(2.5, abs=0.002)
    h.deliver(p.Shutdown("restart"))
    lost_at, dealers = h.now, h.dealers
    while h.dealers == dealers:
        wake_as_the_poller_does(h)
    assert h.now - lost_at <= 0.1 * 1.2 + 0.002  # the first back-off, not the 1 s idle wake-up


def test_receipts_waiting_for_a_token_go_when_it_comes() -> None:
    h = Harness()
    h.sign_in(rate=30, burst=1)
    sleep_as_the_poller_does(h, 3.0)
    h.ask("send", "*", "takes the token")
    h.take(p.Send)
    sent_at = h.now
    h.deliver(message("hi", "b-1"))
    while not h.take(p.Received):
        wake_as_the_poller_does(h)
    assert h.now - sent_at == pytest.approx(60 / 30 / 0.95, abs=0.01)


def test_room_sync_and_catching_up_happen_on_time_by_a_sleeping_poller() -> None:
    h = Harness()
    h.sign_in(rate=30, burst=1)
    sleep_as_the_poller_does(h, 3.0)
    h.ask("enter", "#dev")
    h.take(p.Enter)
    sync = h.one(p.Sync)
    asked_at = h.now
    wake_as_the_poller_does(h)
    assert h.now - asked_at == pytest.approx(0.2, abs=0.002) and h.one(p.Sync).tag == sync.tag
    h.publish(p.sync_topic("alice", sync.tag), p.Synced(sync.msg_id), seq=0)
    while not h.take(p.HistoryRequest):  # the ENTER took the token: the join's HISTORY waits for the next
        wake_as_the_poller_does(h)
    assert h.now - asked_at == pytest.approx(60 / 30 / 0.95, abs=0.01)


# --- away and room subjects (PROTOCOL.md 13.7) ----------------------------------------


def test_away_is_sent_and_an_away_notice_is_told(h: Harness) -> None:
    h.sign_in()
    request = h.ask("away", text="lunch")
    away = h.one(p.Away)
    assert away.text == "lunch"
    h.deliver(p.Ack(away.msg_id, 3, "accepted"))
    assert isinstance(request.wait(0), ev.Ack)
    sent = h.ask("send", "bob", "are you there?")
    send = h.one(p.Send)
    h.deliver(p.AwayNotice(send.msg_id, "bob", "at the dentist"))
    assert h.of(ev.Away) == [ev.Away(sent.msg_id, "bob", "at the dentist")]
    assert not sent.done()  # the ACK still answers it
    h.deliver(p.Ack(send.msg_id, 4, "accepted"))
    assert isinstance(sent.wait(0), ev.Ack)


def test_who_gives_who_is_away(h: Harness) -> None:
    h.sign_in()
    request = h.ask("who")
    h.deliver(p.Users(h.one(p.Who).msg_id, ("alice", "bob"), (("bob", "lunch"),)))
    assert request.wait(0) == ev.Users(("alice", "bob"), "", (("bob", "lunch"),))


def test_a_rooms_subject_is_shown_on_joining_and_when_changed(h: Harness) -> None:
    h.sign_in()
    request = h.ask("enter", "#dev")
    enter = h.one(p.Enter)
    sync = h.one(p.Sync)
    h.publish(p.sync_topic("alice", sync.tag), p.Synced(sync.msg_id), seq=0)
    h.deliver(p.Ack(enter.msg_id, 3, "accepted"))
    h.deliver(p.Subject(enter.msg_id, "#dev", "release friday", "bob", 2))
    assert isinstance(request.wait(0), ev.Ack)
    assert h.of(ev.Topic) == [ev.Topic("#dev", "release friday", "bob", ev.from_ms(2))]
    h.deliver(p.History(h.one(p.HistoryRequest).msg_id, "#dev", 0, ()))
    h.publish(p.topic_of("#dev"), p.SubjectChanged("#dev", "", "carol", 9), seq=1)
    assert h.of(ev.Topic)[-1] == ev.Topic("#dev", "", "carol", ev.from_ms(9), changed=True)


def test_a_subject_is_asked_and_set(h: Harness) -> None:
    h.sign_in()
    asked = h.ask("topic", "#dev")
    h.deliver(p.Subject(h.one(p.SubjectRequest).msg_id, "#dev", "", "", 0))
    assert asked.wait(0) == ev.Topic("#dev", "", "", None)
    set_ = h.ask("settopic", "#dev", "hello")
    command = h.one(p.SetSubject)
    assert (command.room, command.text) == ("#dev", "hello")
    h.deliver(p.Ack(command.msg_id, 5, "accepted"))
    assert isinstance(set_.wait(0), ev.Ack)


def test_a_subject_after_an_enter_of_our_own_catching_up_is_not_shown(h: Harness) -> None:
    back_at_a_broker_that_forgot_the_rooms(h)
    enter = h.one(p.Enter)  # entered again by the engine, not asked by the user
    h.deliver(p.Ack(enter.msg_id, 3, "accepted"))
    h.deliver(p.Subject(enter.msg_id, "#dev", "old news", "bob", 2))
    assert h.of(ev.Topic) == []


def test_an_unannounced_client_is_online_without_ready() -> None:
    h = Harness(announce=False)
    h.start()
    h.welcome()
    h.synced()
    assert h.take(p.Ready) == []
    assert h.state() is State.ONLINE and h.first == [None]
