"""Presence in storms: runs of JOINs and LEAVEs published as one PRESENCE, and a storm's
lobby held a moment so that its runs are long (PROTOCOL.md 6.4).

After a broker restarts, every client signs in again within seconds, and every JOIN goes
to every subscriber of the lobby: 2,000 clients read 2,000 joins each. The broker puts
the runs its batching lays side by side in one PRESENCE each (`packed`); but a broker
that shares two cores with its clients wakes for a few READYs at a time, and its runs
were 4-5 changes long (docs/BENCHMARKS.md). So once `storm` JOINs and LEAVEs come within
one `window`, the lobby's messages are held for `window` and go out together, their runs
packed. The lobby's everyday coming and going, even a crowd of sign-ins (fewer than
`storm` a window: 200 a second by default), and everything outside a storm, goes at once:
a held storm's changes reach every subscriber together, and a web gateway with a thousand
pages writes them all in one go (docs/WEB.md), no price to pay for a handful of joins.
Everything on the lobby topic is held alike, so nothing is reordered: a broadcast waits
behind the JOIN before it, at most `window`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from zchat.broker.core import Effect, Publish
from zchat.common import protocol as p

#: Seconds a storm's lobby is held (the broker's --presence-hold, in ms), and how many
#: changes within one window make a storm.
WINDOW = 0.25
STORM = 50
CHANGES = (p.Join, p.Leave)


def packed(effects: Sequence[Effect]) -> list[Effect]:
    """The effects with each run of JOINs and LEAVEs published one after the other on
    one topic, with consecutive numbers, as PRESENCE messages (PROTOCOL.md 6.4).

    Presence comes in storms (everyone signs in again after a restart), and every
    event goes to every subscriber: a run in one message costs each of them one read.
    Nothing is reordered: a run ends at any other effect.
    """
    out: list[Effect] = []
    run: list[tuple[p.Published, p.Join | p.Leave]] = []

    def end_run() -> None:
        if len(run) == 1:
            out.append(run[0][0])
        elif run:
            first, event = run[0]
            changes = tuple(
                p.Change(e.name, e.time_ms, e.reason if type(e) is p.Leave else "") for _, e in run
            )
            out.append(p.Published(first.topic, first.seq, p.Presence(event.room, changes)))
        run.clear()

    for effect in effects:
        event = effect.event if type(effect) is Publish else None
        if type(event) is p.Join or type(event) is p.Leave:
            assert isinstance(effect, p.Published) and isinstance(event, p.Join | p.Leave)
            if run:
                last = run[-1][0]
                if effect.topic != last.topic or effect.seq != last.seq + 1 or len(run) == p.MAX_PRESENCE:
                    end_run()
            run.append((effect, event))
            continue
        end_run()
        out.append(effect)
    end_run()
    return out


class LobbyHold:
    """What the lobby publishes during a presence storm, held for one window at a time."""

    def __init__(self, window: float = WINDOW, storm: int = STORM) -> None:
        self.window = window
        self.storm = storm
        self.held: list[p.Published] = []
        #: Lobby messages are held while the clock is before this.
        self.until = 0.0
        #: When the last `storm` changes came (outside a storm's windows).
        self._changes: deque[float] = deque(maxlen=storm)

    def wanted(self, effects: Sequence[Effect]) -> bool:
        """Whether `filter` has anything to do with these (the common case: no)."""
        if self.held:
            return True
        # A loop, not any() over a generator: this runs for every command's effects.
        for e in effects:  # noqa: SIM110
            if type(e) is Publish and e.topic == p.LOBBY_TOPIC:
                return True
        return False

    def filter(self, effects: Sequence[Effect], now: float) -> list[Effect]:
        """The effects to carry out now; the lobby's, during a storm, kept for `due`."""
        out: list[Effect] = []
        for effect in effects:
            if type(effect) is not Publish or effect.topic != p.LOBBY_TOPIC:
                out.append(effect)
                continue
            if not self.held and now >= self.until:
                changes = self._changes
                if isinstance(effect.event, CHANGES):
                    changes.append(now)
                if len(changes) < self.storm or now - changes[0] >= self.window:
                    out.append(effect)
                    continue
                self.until = now + self.window  # `storm` changes within a window: a storm
                changes.clear()
            self.held.append(effect)
        return out

    def due(self, now: float) -> list[Effect]:
        """What was held, packed, once its window is over (else nothing); the next window
        holds too if a change was among them (the storm goes on)."""
        if not self.held or now < self.until:
            return []
        held, self.held = self.held, []
        if any(isinstance(e.event, CHANGES) for e in held):
            self.until = now + self.window
        return packed(held)

    def release(self) -> list[Effect]:
        """Everything held, now (the broker stops)."""
        held, self.held = self.held, []
        return packed(held)

    def wait_ms(self, now: float, longest: int) -> int:
        """How long the broker may sleep before something held is due."""
        if not self.held:
            return longest
        return max(0, min(longest, int((self.until - now) * 1000) + 1))
