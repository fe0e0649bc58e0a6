"""Any client command, with any field values, to the core with the SQLite store on a file.

The decoder's fuzz (test_protocol.py) and test_core.py run against MemoryStore, where
no value can make a store fail; here whatever a client may send reaches SQLite: every
command gets the one answer PROTOCOL.md promises, and the core keeps working after.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zchat.broker.core import Action, BrokerCore, CoreConfig, Forward, Publish, SendOld, SendTo
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
    if rarely(draw):  # not ZCHAT/2: an older client's frames, or none of any version
        frames = [draw(st.sampled_from([b"ZCHAT/1", b"", b"zchat/1", b"\xc1"])), command, msg_id]
    answer_id = msg_id if fields and p.MSG_ID_RE.fullmatch(msg_id) else b""
    if len(frames) == 3 and not p.OTHER_VERSION_RE.fullmatch(frames[0]):
        answer_id = b""  # garbage: no id can be read
    return (
        draw(st.sampled_from(PEERS)),
        frames,
        answer_id,
        draw(st.sampled_from(["delivered", "busy", "gone"])),
    )


def replies(core: BrokerCore, actions: list[Action], peer: bytes, fate: str, now: float) -> list[list[bytes]]:
    """What reaches `peer`, encoded, carrying out private deliveries as the shell would."""
    out: list[list[bytes]] = []
    for action in actions:
        if isinstance(action, Forward):
            if action.peer == peer:
                out.append(p.encode(action.message))  # a message to oneself
            if fate == "delivered":
                core.forwarded(action)
                answer: list[Action] = [SendTo(action.sender, action.ack)]
            else:
                answer = core.undeliverable(action, busy=fate == "busy", now=now)
            out += [p.encode(a.message) for a in answer if isinstance(a, SendTo) and a.peer == peer]
        elif isinstance(action, SendTo) and action.peer == peer:
            out.append(p.encode(action.message))
        elif isinstance(action, SendOld) and action.peer == peer:  # for ZCHAT/1: read as it would
            code, text = int(action.frames[3]), action.frames[4].decode()
            out.append(p.encode(p.Error(action.frames[2], code, text, 0)))
    return out


def answered(frames_out: list[list[bytes]], msg_id: bytes) -> list[p.ServerEvent | p.PublishedEvent]:
    events = [p.decode_event(f) for f in frames_out]  # every reply is well formed
    return [e for e in events if isinstance(e, ANSWERS) and e.msg_id == msg_id]


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=5, max_size=30))
def test_any_command_with_any_fields_is_answered_once_and_the_core_goes_on(
    sent: list[tuple[bytes, list[bytes], bytes, str]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore.open(Path(folder) / "z.db")
        tokens = (f"t{i}" for i in itertools.count())
        core = BrokerCore(CoreConfig("tcp://127.0.0.1:5556", max_body=64), store=store,
                          new_token=lambda: next(tokens))  # fmt: skip
        try:
            for peer, name in ((b"A", "alice"), (b"B", "bob")):  # most commands need a session
                core.receive(peer, p.encode_hello(b"h", name), 999.0)
                core.receive(peer, p.encode_command(b"ENTER", b"e", "#dev"), 999.0)
            for n, (peer, frames, answer_id, fate) in enumerate(sent):
                now = 1000.0 + n
                out = replies(core, core.receive(peer, frames, now), peer, fate, now)
                store.commit()  # as the shell does at each wake-up
                got = answered(out, answer_id)
                assert len(got) == 1, (frames, got)
                if n % 7 == 0:
                    store.catch_up()
            # A normal client is served as ever.
            now = 2000.0
            hello = core.receive(b"Z", p.encode_hello(b"zh", "zed"), now)
            assert [type(e) for e in answered(replies(core, hello, b"Z", "", now), b"zh")] == [p.Welcome]
            for target in ("*", "#zz"):
                if target != "*":
                    entered = core.receive(b"Z", p.encode_command(b"ENTER", b"ze", target), now)
                    assert [type(e) for e in answered(replies(core, entered, b"Z", "", now), b"ze")] == [
                        p.Ack
                    ]
                sent_now = core.receive(b"Z", p.encode_send(b"zs" + target.encode()[-1:], target, "hi"), now)
                got = answered(replies(core, sent_now, b"Z", "", now), b"zs" + target.encode()[-1:])
                assert [type(e) for e in got] == [p.Ack]
                assert any(isinstance(a, Publish) for a in sent_now)
            store.commit()
        finally:
            store.close()
