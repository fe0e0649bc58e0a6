"""web/heap.py: the gateway's survivors frozen, and an ended session's cycles freed in time."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from zchat.web.heap import ENDED_MIN, Heap


class Node:
    """One object in a cycle, as an ended session's client and its callbacks make."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def heap() -> Iterator[Heap]:
    tended = Heap()
    yield tended
    tended.release()  # the test process back to the collector


def test_survivors_are_frozen_and_skipped_by_later_passes(heap: Heap) -> None:
    kept = Node()
    heap.tend(alive=1)
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects(generation=2))  # frozen: not walked


def test_a_cycle_among_frozen_objects_waits_for_enough_ended_sessions(heap: Heap) -> None:
    cycle = Node()
    gone = weakref.ref(cycle)
    heap.tend(alive=1)  # frozen with the rest
    del cycle
    heap.tend(alive=1)
    assert gone() is not None  # only a full pass frees it, and none is due
    for _ in range(ENDED_MIN):
        heap.session_ended()
    heap.tend(alive=1)
    assert gone() is None
    assert heap.full_passes == 1


def test_release_gives_every_object_back() -> None:
    heap = Heap()
    heap.tend(alive=0)
    heap.release()
    assert gc.get_freeze_count() == 0
