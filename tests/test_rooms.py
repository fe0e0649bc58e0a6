"""A room's gapless join without I/O: history, then what came live meanwhile, each message once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zchat.client.rooms import Live, Room
from zchat.common import protocol as p


def message(seq: int) -> p.Message:
    return p.Message(b"m%d" % seq, "bob", "#dev", 1000 + seq, b"text %d" % seq)


def record(seq: int) -> p.Record:
    return p.Record(seq, b"m%d" % seq, "bob", "#dev", 1000 + seq, b"text %d" % seq)


def leave(seq: int) -> p.Leave:
    return p.Leave(f"user{seq}", 1000 + seq, "quit", "#dev")


@st.composite
def joins(draw: st.DrawFn) -> tuple[int, int, int, int, int, set[int]]:
    """(total published, live from, history's last_seq, history count, how many live ones come
    before it, the numbers that are a JOIN or a LEAVE rather than a message).

    The subscription is live from some number on (SYNCED proved it), and HISTORY,
    asked after that, knows at least as far; the rest arrive in order.
    """
    total = draw(st.integers(0, 60))
    live_from = draw(st.integers(1, total + 1))  # the first number the subscription sees
    last_seq = draw(st.integers(live_from - 1, total))
    count = draw(st.integers(1, 20))
    before = draw(st.integers(0, total - live_from + 1))  # live ones that beat the HISTORY reply
    presence = draw(st.sets(st.integers(1, max(total, 1))))
    return total, live_from, last_seq, count, before, presence


@given(joins())
def test_history_then_live_shows_every_event_once_in_order_without_a_gap(
    join: tuple[int, int, int, int, int, set[int]],
) -> None:
    total, live_from, last_seq, count, before, presence = join
    room = Room("#dev")
    room.watch()
    room.synced()  # HISTORY is asked
    live = list(range(live_from, total + 1))

    def published(seq: int) -> p.PublishedEvent:
        return leave(seq) if seq in presence else message(seq)

    shown: list[int] = []
    for seq in live[:before]:
        assert room.take_published(seq, published(seq)) == ([], 0)  # kept until the history
    stored = [seq for seq in range(1, last_seq + 1) if seq not in presence]  # HISTORY: messages only
    records = [record(seq) for seq in stored[-count:]]
    shown += [item[0] for item in room.take_history(last_seq, records)]
    for seq in live[before:]:
        now, missed = room.take_published(seq, published(seq))
        assert missed == 0
        shown += [s for s, _ in now]
    # The records, and every event since the subscription was live but the messages up to
    # last_seq (records, or older than them); a JOIN or a LEAVE is in no record: each is
    # shown, also one that came just before the HISTORY reply or was overtaken by it. Each
    # once, in order but for an overtaken JOIN or LEAVE, shown late.
    late = [seq for seq in live[before:] if seq <= last_seq]
    expected = {r.seq for r in records} | {s for s in live if s > last_seq or s in presence}
    assert sorted(shown) == sorted(expected)
    assert [s for s in shown if s not in late] == sorted(set(expected) - set(late))


def test_a_gap_in_live_numbers_is_counted_as_missed() -> None:
    room = Room("#dev")
    room.watch()
    room.synced()
    room.take_history(3, [record(3)])
    shown: tuple[list[Live], int] = room.take_published(7, message(7))
    assert [seq for seq, _ in shown[0]] == [7] and shown[1] == 3


def test_numbers_below_what_was_seen_mean_the_broker_counts_afresh() -> None:
    room = Room("#dev", seen_seq=40)
    room.watch()
    room.synced()
    shown = room.take_history(2, [record(1), record(2)])  # the broker lost its store
    assert [item[0] for item in shown] == [1, 2] and room.seen_seq == 2


def test_a_new_subscription_forgets_what_was_kept() -> None:
    room = Room("#dev")
    room.watch()
    room.take_published(5, message(5))
    room.unwatch()
    room.watch()
    room.synced()
    assert room.take_history(4, []) == []
