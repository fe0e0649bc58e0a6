"""Every kind of message between clients on different brokers of a cluster (issue 14, test 2).

One nats-server and three brokers for the module; each test uses its own names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from tests.chat import Watcher, chat
from tests.cluster_support import cluster
from tests.support import Broker, wait_for
from zchat.client import events as ev
from zchat.common import protocol as p

pytestmark = pytest.mark.timeout(120)
DEADLINE = 10.0


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Broker]]:
    with cluster(tmp_path_factory.mktemp("cluster")) as (_, brokers):
        yield brokers


def ack(outcome: ev.Outcome) -> ev.Ack:
    assert isinstance(outcome, ev.Ack), outcome
    return outcome


def who(context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> tuple[str, ...]:
    """Who `endpoint`'s broker lists online, asked on a DEALER of its own."""
    with context.socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        dealer.send_multipart(p.encode(p.Who(b"w")))
        assert dealer.poll(int(DEADLINE * 1000)), "no answer to WHO"
        users = p.decode_event(dealer.recv_multipart())
    assert isinstance(users, p.Users)
    return users.names


def online(watcher: Watcher, *names: str) -> None:
    """Wait until `watcher`'s broker lists every one of `names` (they signed in elsewhere)."""

    def listed() -> bool:
        users = watcher.client.who().wait(DEADLINE)
        return isinstance(users, ev.Users) and set(names) <= set(users.names)

    wait_for(listed, DEADLINE, interval=0.05, what=f"{names} online")


def test_a_private_message_reaches_a_user_on_another_broker_and_its_receipt_comes_back(
    three: list[Broker],
) -> None:
    with chat("pam", three[0].endpoint) as pam, chat("quinn", three[1].endpoint) as quinn:
        online(pam, "quinn")
        sent = pam.client.send("quinn", "across brokers")
        assert ack(sent.wait(DEADLINE)).status == "accepted"
        message = quinn.message("across brokers")
        assert message.sender == "pam" and message.target == "quinn"
        # quinn's client confirms on its broker; the receipt crosses back to pam's.
        receipt = pam.expect(lambda e: isinstance(e, ev.Receipt), DEADLINE, "a receipt")
        assert isinstance(receipt, ev.Receipt) and receipt.recipient == "quinn"
        assert receipt.msg_id == sent.msg_id


def test_a_private_message_between_users_on_the_same_broker_gets_its_receipt_and_leaves_the_mailbox(
    three: list[Broker],
) -> None:
    """As between brokers: also the case after a failover brings a user to the other's broker."""
    with chat("rae", three[2].endpoint) as rae, chat("tom", three[0].endpoint) as tom:
        with chat("sid", three[2].endpoint) as sid:
            sent = rae.client.send("sid", "on one broker")
            assert ack(sent.wait(DEADLINE)).status == "accepted"
            assert sid.message("on one broker").sender == "rae"
            receipt = rae.expect(lambda e: isinstance(e, ev.Receipt), DEADLINE, "a receipt")
            assert isinstance(receipt, ev.Receipt) and receipt.recipient == "sid"
            assert receipt.msg_id == sent.msg_id
        # The confirmation reaches the other brokers' copies of the mailbox through the log, a
        # moment later: once tom's broker has read on past it, it hands nothing again.
        ack(rae.client.broadcast("rae, after the receipt").wait(DEADLINE))
        tom.message("rae, after the receipt")
        with chat("sid", three[0].endpoint) as sid:  # confirmed: no broker's mailbox hands it again
            online(rae, "sid")
            rae.client.send("sid", "after the sign-in").wait(DEADLINE)
            sid.message("after the sign-in")  # what the mailbox had came before, at the sign-in
            assert [m.text for m in sid.messages() if m.private] == ["after the sign-in"]


def test_a_broadcast_reaches_everyone_on_every_broker_once_in_one_order(three: list[Broker]) -> None:
    with (
        chat("bea", three[0].endpoint) as bea,
        chat("cal", three[1].endpoint) as cal,
        chat("dot", three[2].endpoint) as dot,
    ):
        online(bea, "cal", "dot")
        texts = [f"lobby {i}" for i in range(5)]
        for text in texts:
            ack(bea.client.broadcast(text).wait(DEADLINE))
        ack(cal.client.broadcast("from cal").wait(DEADLINE))
        for watcher in (bea, cal, dot):
            watcher.message("from cal")
            for text in texts:
                watcher.message(text)
        orders = []
        for watcher in (bea, cal, dot):
            live = [m.text for m in watcher.messages() if not m.history and m.target == "*"]
            assert sorted(live) == sorted([*texts, "from cal"]), live  # each exactly once
            orders.append(live)
        assert orders[0] == orders[1] == orders[2]  # the same order everywhere


def test_a_room_joined_on_several_brokers_has_one_history_on_each(three: list[Broker]) -> None:
    with chat("ema", three[0].endpoint) as ema, chat("fay", three[1].endpoint) as fay:
        ack(ema.client.enter("#ops").wait(DEADLINE))
        ack(fay.client.enter("#ops").wait(DEADLINE))
        for i in range(3):
            ack(ema.client.send("#ops", f"ops {i}").wait(DEADLINE))
        ack(fay.client.send("#ops", "fay here").wait(DEADLINE))
        for watcher in (ema, fay):
            watcher.message("fay here")
        # A third member, on the third broker, joins without a gap: the history is the same.
        with chat("gus", three[2].endpoint) as gus:
            ack(gus.client.enter("#ops").wait(DEADLINE))
            for watcher in (ema, fay):  # every broker has read gus's JOIN: the same last seq
                watcher.expect(
                    lambda e: isinstance(e, ev.Presence) and e.name == "gus" and e.room == "#ops",
                    DEADLINE, "gus joining #ops",
                )  # fmt: skip
            histories = []
            for watcher in (ema, fay, gus):
                got = watcher.client.history("#ops").wait(DEADLINE)
                assert isinstance(got, ev.History), got
                histories.append((got.last_seq, [m.text for m in got.messages]))
            assert histories[0] == histories[1] == histories[2]
            assert histories[0][1] == ["ops 0", "ops 1", "ops 2", "fay here"]
            ack(fay.client.send("#ops", "welcome gus").wait(DEADLINE))
            gus.message("welcome gus")


def gone(watcher: Watcher, name: str) -> None:
    """Wait until `watcher`'s broker no longer lists `name`."""

    def unlisted() -> bool:
        users = watcher.client.who().wait(DEADLINE)
        return isinstance(users, ev.Users) and name not in users.names

    wait_for(unlisted, DEADLINE, interval=0.05, what=f"{name} gone")


def test_mail_for_an_offline_user_is_delivered_by_another_broker_once(three: list[Broker]) -> None:
    with chat("ivy", three[1].endpoint) as ivy:
        with chat("hal", three[0].endpoint):
            online(ivy, "hal")  # hal is known to the cluster from now on
        gone(ivy, "hal")
        sent = ivy.client.send("hal", "while you were out")
        assert ack(sent.wait(DEADLINE)).status == "stored"
        with chat("hal", three[2].endpoint) as hal:
            assert hal.message("while you were out").sender == "ivy"
            # hal's client confirms on its broker: the receipt reaches ivy on hers.
            receipt = ivy.expect(lambda e: isinstance(e, ev.Receipt), DEADLINE, "a receipt")
            assert isinstance(receipt, ev.Receipt) and receipt.msg_id == sent.msg_id
            ack(hal.client.send("ivy", "thanks").wait(DEADLINE))  # the log has read on past the receipt
            ivy.message("thanks")
        gone(ivy, "hal")
        # Confirmed mail is gone from every broker's copy of the mailbox.
        for broker in three:
            with chat("hal", broker.endpoint) as again:
                ack(again.client.send("ivy", f"back on {broker.port}").wait(DEADLINE))
                ivy.message(f"back on {broker.port}")
                assert "while you were out" not in [m.text for m in again.messages()]
            gone(ivy, "hal")


def test_a_receipt_for_an_offline_sender_reaches_it_on_another_broker_once(three: list[Broker]) -> None:
    with chat("obs", three[0].endpoint) as obs:
        with chat("lee", three[1].endpoint):
            online(obs, "lee")  # lee is known to the cluster from now on
        gone(obs, "lee")
        with chat("kim", three[0].endpoint) as kim:
            sent = kim.client.send("lee", "for when you are back")
            assert ack(sent.wait(DEADLINE)).status == "stored"
        gone(obs, "kim")
        # lee confirms on b1 while kim is offline: the receipt is kept on every broker.
        with chat("lee", three[1].endpoint) as lee:
            assert lee.message("for when you are back").sender == "kim"
            ack(lee.client.send("*", "lee has read it").wait(DEADLINE))  # after its RECEIVED
        obs.message("lee has read it")
        with chat("kim", three[2].endpoint) as kim:
            receipt = kim.expect(lambda e: isinstance(e, ev.Receipt), DEADLINE, "the receipt kept for kim")
            assert isinstance(receipt, ev.Receipt) and receipt.msg_id == sent.msg_id
            assert receipt.recipient == "lee"
            ack(kim.client.send("*", "kim has the receipt").wait(DEADLINE))
        obs.message("kim has the receipt")  # b0 has read on past the receipt's taking
        gone(obs, "kim")
        with chat("kim", three[0].endpoint) as kim:  # handed over once: not again on b0
            assert isinstance(kim.client.who().wait(DEADLINE), ev.Users)  # after what follows WELCOME
            came = []
            while (event := kim.client.next_event(0)) is not None:
                came.append(event)
            assert not [e for e in came if isinstance(e, ev.Receipt)], came


def test_search_answers_the_same_on_every_broker(three: list[Broker]) -> None:
    with chat("ora", three[0].endpoint) as ora, chat("pia", three[1].endpoint) as pia:
        online(ora, "pia")
        ack(ora.client.enter("#quartz").wait(DEADLINE))
        ack(pia.client.enter("#quartz").wait(DEADLINE))
        ack(ora.client.send("#quartz", "quartz in the room").wait(DEADLINE))
        ack(ora.client.send("pia", "quartz in private").wait(DEADLINE))
        ack(pia.client.send("*", "quartz in the lobby").wait(DEADLINE))
        pia.message("quartz in private")
        ora.message("quartz in the lobby")
    expected = ["quartz in the lobby", "quartz in private", "quartz in the room"]  # newest first
    for name in ("ora", "pia"):
        for broker in three:
            with chat(name, broker.endpoint) as user:
                found = user.client.search("quartz").wait(DEADLINE)
                assert isinstance(found, ev.Found), found
                assert [m.text for m in found.messages] == expected, (name, broker.port)


def test_joins_and_leaves_on_one_broker_are_seen_on_the_others(three: list[Broker]) -> None:
    with chat("olga", three[0].endpoint) as olga:
        with chat("pete", three[1].endpoint):
            olga.expect(lambda e: isinstance(e, ev.Presence) and e.name == "pete" and e.event == "join",
                        DEADLINE, "pete's JOIN")  # fmt: skip
        olga.expect(lambda e: isinstance(e, ev.Presence) and e.name == "pete" and e.event == "leave",
                    DEADLINE, "pete's LEAVE")  # fmt: skip
        gone(olga, "pete")


def test_away_set_on_one_broker_is_seen_on_the_others(three: list[Broker]) -> None:
    with chat("rita", three[0].endpoint) as rita, chat("sam", three[1].endpoint) as sam:
        online(sam, "rita")
        assert isinstance(rita.client.away("at lunch").wait(DEADLINE), ev.Ack)

        def listed_away() -> bool:
            users = sam.client.who().wait(DEADLINE)
            return isinstance(users, ev.Users) and ("rita", "at lunch") in users.away

        wait_for(listed_away, DEADLINE, interval=0.05, what="rita away in sam's WHO")
        # A private message from the other broker is answered with her away text, and delivered.
        sent = sam.client.send("rita", "back soon?")
        notice = sam.expect(lambda e: isinstance(e, ev.Away), DEADLINE, "the away notice")
        assert isinstance(notice, ev.Away) and (notice.name, notice.text) == ("rita", "at lunch")
        assert ack(sent.wait(DEADLINE)).status == "accepted"
        rita.message("back soon?")
        assert isinstance(rita.client.away("").wait(DEADLINE), ev.Ack)  # back: no longer listed
        wait_for(lambda: not listed_away(), DEADLINE, interval=0.05, what="rita back in sam's WHO")


def test_a_topic_set_on_one_broker_is_the_topic_on_the_others(three: list[Broker]) -> None:
    with chat("tess", three[0].endpoint) as tess, chat("ugo", three[2].endpoint) as ugo:
        assert isinstance(tess.client.enter("#plans").wait(DEADLINE), ev.Ack)
        assert isinstance(tess.client.set_topic("#plans", "ship friday").wait(DEADLINE), ev.Ack)

        def topic_there() -> bool:
            topic = ugo.client.topic("#plans").wait(DEADLINE)
            return isinstance(topic, ev.Topic) and topic.text == "ship friday"

        wait_for(topic_there, DEADLINE, interval=0.05, what="the topic on another broker")
        topic = ugo.client.topic("#plans").wait(DEADLINE)
        assert isinstance(topic, ev.Topic) and topic.setter == "tess"
        # A member on the other broker sees a change as it happens.
        assert isinstance(ugo.client.enter("#plans").wait(DEADLINE), ev.Ack)
        assert isinstance(tess.client.set_topic("#plans", "ship monday").wait(DEADLINE), ev.Ack)
        changed = ugo.expect(lambda e: isinstance(e, ev.Topic) and e.changed, DEADLINE, "the change")
        assert isinstance(changed, ev.Topic) and changed.text == "ship monday"


def test_a_burst_of_private_messages_to_two_users_on_other_brokers_arrives_once_each_in_order(
    three: list[Broker],
) -> None:
    # Sent in one go, they cross in batches (one request per broker and wake-up).
    with (
        chat("vi", three[0].endpoint) as vi,
        chat("wu", three[1].endpoint) as wu,
        chat("xi", three[2].endpoint) as xi,
    ):
        online(vi, "wu", "xi")
        sent = [vi.client.send(to, f"{to} {i}") for i in range(200) for to in ("wu", "xi")]
        assert all(isinstance(request.wait(DEADLINE), ev.Ack) for request in sent)
        for watcher in (wu, xi):
            name = watcher.client.name
            watcher.message(f"{name} 199")
            texts = [m.text for m in watcher.messages() if m.sender == "vi"]
            assert texts == [f"{name} {i}" for i in range(200)], texts[:5]


def test_a_private_message_resent_at_once_to_a_user_on_another_broker_is_delivered_once(
    three: list[Broker],
) -> None:
    """PROTOCOL.md 13.4: a resend (same sender, same id) is answered again, never delivered
    twice, also when it comes before the other broker has said the first reached its recipient.
    Raw DEALERs: the library would drop the second copy itself, and send each id once."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets = []

    def signed_in(endpoint: str, name: str) -> zmq.Socket[bytes]:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        sockets.append(dealer)
        dealer.connect(endpoint)
        dealer.send_multipart(p.encode(p.Hello(b"h", name, "")))
        assert dealer.poll(int(DEADLINE * 1000)), f"no WELCOME for {name}"
        assert isinstance(p.decode_event(dealer.recv_multipart()), p.Welcome)
        return dealer

    def events(dealer: zmq.Socket[bytes], until: float) -> Iterator[p.ServerEvent | p.PublishedEvent]:
        while (left := until - time.monotonic()) > 0:
            if dealer.poll(int(left * 1000) + 1):
                yield p.decode_event(dealer.recv_multipart())

    try:
        ulla = signed_in(three[1].endpoint, "ulla")
        wait_for(lambda: "ulla" in who(context, three[0].endpoint), DEADLINE, 0.05, "ulla online on b0")
        sender = signed_in(three[0].endpoint, "yves")
        for _ in range(2):  # back to back: the second before the first's outcome comes back
            sender.send_multipart(p.encode(p.Send(b"m1", "ulla", b"only once")))
        answers: list[p.ServerEvent | p.PublishedEvent] = []
        for event in events(sender, time.monotonic() + DEADLINE):
            answers.append(event)
            if sum(len(a.ids()) for a in answers if isinstance(a, p.Ack)) >= 2:
                break
        acks = [a for a in answers if isinstance(a, p.Ack)]
        assert [a.ids() for a in acks] in ([(b"m1", b"m1")], [(b"m1",), (b"m1",)]), answers
        assert all(a.status == "accepted" for a in acks), answers
        # A later message, after both are answered: once it is there, a second copy would be too.
        sender.send_multipart(p.encode(p.Send(b"m2", "ulla", b"after")))
        heard = []
        for event in events(ulla, time.monotonic() + DEADLINE):
            if isinstance(event, p.Message):
                heard.append(event.msg_id)
                if event.msg_id == b"m2":
                    break
        assert heard == [b"m1", b"m2"]
    finally:
        for dealer in sockets:
            dealer.close()
        context.term()
