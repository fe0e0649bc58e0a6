"""Flood control: a token bucket per client, as IRC servers do.

The broker keeps one per session; a client keeps a mirror of its own (the
broker's rate and burst come in WELCOME) to hold back what would be refused.
A session starts with one second's worth of tokens (`rate`), and saves up
to `burst` while it sends less: so a client may send `burst` messages at
once once it has been quiet a while, and `rate` a second after that. A new
session does not start full, or one who reconnects under new names would
get a whole burst each time.
Over the limit a message is refused with a retry-after. Refusals are counted
as strikes that fade at `rate` a second: a client that keeps sending faster
than twice its rate gathers them, and past 3 x `burst` it is disconnected. A
flooder cannot stay connected by letting one message through now and then.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens a second
    burst: float  # the bucket's size
    tokens: float
    stamp: float  # when tokens was last brought up to date
    strikes: float = 0.0  # refusals, fading at `rate` a second

    @classmethod
    def new_session(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, min(burst, max(1.0, rate)), now)

    @classmethod
    def moved(cls, rate: float, burst: float, now: float) -> TokenBucket:
        """The bucket of a session resumed from another broker of a cluster, whose own
        bucket stayed there: empty, the first token due in 1 / `rate` seconds."""
        return cls(rate, burst, 0.0, now)

    def take(self, now: float) -> float:
        """Spend a token: 0.0 if there was one, else the seconds until there is."""
        elapsed = now - self.stamp
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.strikes = max(0.0, self.strikes - elapsed * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        self.strikes += 1
        return (1 - self.tokens) / self.rate

    def abused(self) -> bool:
        """Refused so often, so fast, that the client ignores the refusals."""
        return self.strikes > 3 * self.burst
