"""Flood control: a token bucket per client, as IRC servers do.

A client may send `burst` messages at once and `rate` a second after that.
Over the limit a message is refused with a retry-after; a client that goes on
sending into a refusal `burst` times more than it may is disconnected.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens a second
    burst: float  # the bucket's size
    tokens: float
    stamp: float  # when tokens was last brought up to date
    strikes: int = 0  # refusals since the last accepted message

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> float:
        """Spend a token: 0.0 if there was one, else the seconds until there is."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.strikes = 0
            return 0.0
        self.strikes += 1
        return (1 - self.tokens) / self.rate

    def abused(self) -> bool:
        """Refused so often in a row that the client ignores the refusals."""
        return self.strikes > 3 * self.burst
