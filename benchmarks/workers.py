"""Load processes: start them, exchange ready/go/result with deadlines, stop them.

Each worker is a function `fn(spec, conn, shared)` run in a process of its own
(spawned, so it shares nothing with the coordinator but what it is given):
`conn` is its end of a pipe to the coordinator, `shared` a small array of
64-bit integers in shared memory (fanout.py uses it for flow control).
A worker reports with `conn.send((kind, payload))`; an exception in it comes
back to the coordinator as ("error", traceback) and is raised there.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any

SPAWN = multiprocessing.get_context("spawn")

Worker = Callable[[Any, Connection, Any], None]


class WorkerFailed(RuntimeError):
    pass


def _entry(fn: Worker, spec: Any, conn: Connection, shared: Any) -> None:
    try:
        fn(spec, conn, shared)
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        finally:
            raise SystemExit(1) from None


def expect(conn: Connection, kind: str, timeout: float) -> Any:
    """In a worker: wait for message `kind` from the coordinator."""
    if not conn.poll(timeout):
        raise TimeoutError(f"no {kind!r} from the coordinator within {timeout}s")
    got, payload = conn.recv()
    if got != kind:
        raise RuntimeError(f"expected {kind!r} from the coordinator, got {got!r}")
    return payload


def sleep_until(ns: int) -> None:
    delay = (ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def new_shared(size: int) -> Any:
    """A shared array of `size` signed 64-bit integers, all -1."""
    array = SPAWN.RawArray("q", size)
    for i in range(size):
        array[i] = -1
    return array


class Crew:
    """Worker processes started by us; stopped (and if need be killed) by `stop`."""

    def __init__(self, jobs: Sequence[tuple[Worker, Any]], shared: Any = None) -> None:
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        try:
            for fn, spec in jobs:
                parent, child = SPAWN.Pipe()
                proc = SPAWN.Process(target=_entry, args=(fn, spec, child, shared), daemon=True)
                proc.start()
                child.close()
                self.procs.append(proc)
                self.conns.append(parent)
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def gather(self, kind: str, timeout: float, watch: Callable[[], None] | None = None) -> list[Any]:
        """Wait for message `kind` from every worker; raise on an error or the deadline.

        `watch` is called twice a second meanwhile: it raises to give up early
        (when the server under test has died, say).
        """
        deadline = time.monotonic() + timeout
        answers: dict[int, Any] = {}
        waiting = {conn: i for i, conn in enumerate(self.conns)}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(waiting)} workers sent no {kind!r} within {timeout}s")
            if watch is not None:
                watch()
            ready = set(multiprocessing.connection.wait(list(waiting), min(left, 0.5)))
            for conn in [c for c in waiting if c in ready]:
                i = waiting.pop(conn)
                try:
                    got, payload = conn.recv()
                except EOFError:
                    raise WorkerFailed(f"worker {i} exited (code {self.procs[i].exitcode})") from None
                if got == "error":
                    raise WorkerFailed(f"worker {i} failed:\n{payload}")
                if got != kind:
                    raise WorkerFailed(f"worker {i} sent {got!r}, expected {kind!r}")
                answers[i] = payload
        return [answers[i] for i in range(len(self.conns))]

    def tell(self, kind: str, payload: Any = None) -> None:
        for conn in self.conns:
            conn.send((kind, payload))

    def stop(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        for conn in self.conns:
            conn.close()

    def __enter__(self) -> Crew:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # On failure the workers are not waited for: they may be waiting for us.
        self.stop(10.0 if exc is None else 0.5)


def split(items: Sequence[int], parts: int) -> list[list[int]]:
    """`items` in `parts` nearly equal, contiguous, non-empty groups."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    groups, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        groups.append(list(items[start:end]))
        start = end
    return groups
