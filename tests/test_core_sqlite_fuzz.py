"""Any client command, with any field values, to the core with the SQLite store on a file.

The decoder's fuzz (test_protocol.py) and test_core.py run against MemoryStore, where
no value can make a store fail; here whatever a client may send reaches SQLite: every
command gets the one answer PROTOCOL.md promises, and the core keeps working after.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from zchat.broker.core import (
    BrokerCore,
    Command,
    Deliver,
    Delivered,
    Effect,
    Flush,
    Input,
    Publish,
    Reply,
    Undelivered,
    Unreadable,
)
from zchat.broker.settings import BrokerSettings
from zchat.broker.sqlite_store import SqliteStore
from zchat.common import protocol as p

PEERS = (b"A", b"B", b"C")
#: What answers a command, carrying its id (PROTOCOL.md 3.4); MESSAGE, RECEIPT and
#: REPLACED also come unasked.
ANSWERS = (p.Welcome, p.Ack, p.Error, p.Users, p.Pong, p.RoomList, p.History, p.Found)

names = st.sampled_from(["alice", "Bob", "carol", "x" * 32, "a.b-c_d"])
rooms = st.sampled_from(["*", "#dev", "#DEV", "#a.b", "#" + "r" * 32])
texts = st.sampled_from([
    st.sampled_from(["a\0b", "\0", '"', "NEAR(x", "*", "body:x", "' OR 1=1 --", "don't", "x\x1by"]),
    st.text(alphabet=st.characters(max_codepoint=0x9F), max_size=12),  # NULs and control characters
    st.text(max_size=40),
]).flatmap(lambda kind: kind)  # fmt: skip
# What is not a number at all comes from anything().
numbers = st.sampled_from([
    st.sampled_from([2**63, 2**64 - 1, 2**63 - 1, 0, 10, -1]),  # past SQLite's integers
    st.integers(min_value=0, max_value=2**64 - 1),
]).flatmap(lambda kind: kind)  # fmt: skip
ids = st.one_of(st.sampled_from([b"m1", b"m2", b"h", b"x" * 64]), st.from_regex(p.MSG_ID_RE, fullmatch=True))


def item(value: str | int) -> bytes | int:
    return value.encode() if isinstance(value, str) else value


def anything(*likely: st.SearchStrategy[str] | st.SearchStrategy[int]) -> st.SearchStrategy[object]:
    """A field: mostly what the command expects, sometimes text, bytes or a number of any
    kind (chosen from a sample: one_of would favour the short and simple)."""
    kinds: list[st.SearchStrategy[object]] = [s.map(item) for s in (*likely * 4, texts)]
    return st.sampled_from([*kinds, st.binary(max_size=24), numbers]).flatmap(lambda kind: kind)


FIELDS: dict[bytes, list[st.SearchStrategy[object]]] = {
    b"HELLO": [anything(names), anything(st.sampled_from(["", "t0", "t1"])), anything(st.just(p.VERSION))],
    b"SEND": [anything(names, rooms), anything(texts)],
    b"WHO": [],
    b"PING": [],
    b"SYNC": [anything(st.sampled_from(["tag", ""]))],
    b"READY": [],
    b"BYE": [],
    b"ENTER": [anything(rooms)],
    b"EXIT": [anything(rooms)],
    b"ROOMS": [],
    b"NAMES": [anything(rooms)],
    b"HISTORY": [anything(rooms), anything(numbers), anything(numbers)],
    b"SEARCH": [anything(texts)],
    b"RECEIVED": [anything(names), st.one_of(st.lists(ids, max_size=3), anything())],
}


def rarely(draw: st.DrawFn) -> bool:
    """True one time in ten or so (hypothesis favours the first of a sample)."""
    return draw(st.sampled_from([False] * 9 + [True]))


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, list[bytes], bytes, str]:
    """(peer, frames, the id a reply must carry, what becomes of a private message sent:
    delivered, busy or gone)."""
    command = draw(st.sampled_from([*FIELDS, b"NOPE"]))
    msg_id = draw(st.binary(max_size=8)) if rarely(draw) else draw(ids)
    fields = [msg_id, *(draw(s) for s in FIELDS.get(command, []))]
    if rarely(draw):
        fields.pop()  # one field short
    frames = p.encode_command(command, *fields)
    answer_id = msg_id if fields and p.MSG_ID_RE.fullmatch(msg_id) else b""
    if rarely(draw):  # not ZCHAT/2: an older client's frames (its id in the third), or garbage
        frames = [draw(st.sampled_from([b"ZCHAT/1", b"", b"zchat/1", b"\xc1"])), command, msg_id]
        old = p.OTHER_VERSION_RE.fullmatch(frames[0]) and p.MSG_ID_RE.fullmatch(msg_id)
        answer_id = msg_id if old else b""
    return (
        draw(st.sampled_from(PEERS)),
        frames,
        answer_id,
        draw(st.sampled_from(["delivered", "busy", "gone"])),
    )


def decoded(peer: bytes, frames: list[bytes], now: float) -> Input:
    """The input the shell makes of these frames."""
    try:
        return Command(peer, p.decode_command(frames), now)
    except p.ProtocolError as e:
        return Unreadable(peer, e, now)


def replies(core: BrokerCore, event: Input, peer: bytes, fate: str, now: float) -> list[p.ServerEvent]:
    """What reaches `peer`, carrying out private deliveries as the shell would, and the
    Flush that ends its wake-up (the engine commits the store there)."""
    out: list[p.ServerEvent] = []
    pending: list[Effect] = [*core.handle(event), *core.handle(Flush(now))]
    while pending:
        effect = pending.pop(0)
        if isinstance(effect, Deliver):
            if effect.peer == peer:
                out.append(effect.message)  # a message to oneself
            outcome: Input = (
                Delivered(effect) if fate == "delivered" else Undelivered(effect, fate == "busy", now)
            )
            pending[:0] = [*core.handle(outcome), *core.handle(Flush(now))]
        elif isinstance(effect, Reply) and effect.peer == peer:
            out.append(effect.event)
    return out


def answered(events: list[p.ServerEvent], msg_id: bytes) -> list[p.ServerEvent]:
    for event in events:  # every reply is well formed: it encodes, and reads back as itself
        assert p.decode_event(p.encode(event)) == event
    return [e for e in events if isinstance(e, ANSWERS) and e.msg_id == msg_id]


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=5, max_size=30))
@example([(b"A", p.encode(p.Hello(b"e", "alice", "")), b"e", "delivered")] * 5)  # found once in a suite run
def test_any_command_with_any_fields_is_answered_once_and_the_core_goes_on(
    sent: list[tuple[bytes, list[bytes], bytes, str]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore.open(Path(folder) / "z.db")
        tokens = (f"t{i}" for i in itertools.count())
        core = BrokerCore(BrokerSettings(max_body=64, rate=0), "tcp://127.0.0.1:5556", store=store,
                          new_token=lambda: next(tokens))  # fmt: skip
        try:
            for peer, name in ((b"A", "alice"), (b"B", "bob")):  # most commands need a session
                core.handle(Command(peer, p.Hello(b"h", name, ""), 999.0))
                core.handle(Command(peer, p.Enter(b"e", "#dev"), 999.0))
            # The set-up's ACKs out now, as at the end of its wake-up: else the first sent
            # command that flushes would carry them, and one with the id "e" seem answered twice.
            core.handle(Flush(999.0))
            for n, (peer, frames, answer_id, fate) in enumerate(sent):
                now = 1000.0 + n
                out = replies(core, decoded(peer, frames, now), peer, fate, now)
                got = answered(out, answer_id)
                assert len(got) == 1, (frames, got)
                if n % 7 == 0:
                    store.catch_up()
            # A normal client is served as ever.
            now = 2000.0
            hello = Command(b"Z", p.Hello(b"zh", "zed", ""), now)
            assert [type(e) for e in answered(replies(core, hello, b"Z", "", now), b"zh")] == [p.Welcome]
            for target in ("*", "#zz"):
                if target != "*":
                    entered = Command(b"Z", p.Enter(b"ze", target), now)
                    assert [type(e) for e in answered(replies(core, entered, b"Z", "", now), b"ze")] == [
                        p.Ack
                    ]
                msg_id = b"zs" + target.encode()[-1:]
                core.handle(Command(b"Z", p.Send(msg_id, target, b"hi"), now))
                flushed = core.handle(Flush(now))
                assert any(type(e) is Publish for e in flushed)
                assert [e.event for e in flushed if isinstance(e, Reply)] == [
                    p.Ack(msg_id, int(now * 1000), "accepted")
                ]
        finally:
            store.close()
