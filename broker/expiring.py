"""Keys that hold until a time each: bans and cool-offs."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")


class Expiring(Generic[K]):
    """A set whose members leave at their own time; adding again never shortens a stay."""

    def __init__(self) -> None:
        self.until: dict[K, float] = {}

    def add(self, key: K, until: float) -> None:
        self.until[key] = max(until, self.until.get(key, until))

    def holds(self, key: K, now: float) -> bool:
        until = self.until.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self.until[key]
        return False

    def forget_expired(self, now: float) -> None:
        for key in [key for key, until in self.until.items() if until <= now]:
            del self.until[key]
