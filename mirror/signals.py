"""Stop signals handed to a thread: a handler runs on the main thread between two of its bytecodes.

That thread may be inside `stop.wait()` holding the event's own lock (threading.Event.set would
then wait for it forever), or inside a write to stderr. So the handler only puts the signal on a
`queue.SimpleQueue`, whose `put` the Python documentation calls safe in a signal handler, and a
relay thread does the work.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def relayed(signals: Iterable[signal.Signals], first: Callable[[int], None],
            again: Callable[[int], None]) -> Iterator[None]:
    """While inside, the first of `signals` runs `first(signum)` on a relay thread; each later one runs
    `again(signum)` in the handler itself, so it must take no lock (raising or os._exit is fine)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    relay: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            again(signum)
            return
        received.append(signum)
        relay.put(signum)

    def run() -> None:
        signum = relay.get()
        if signum is not None:
            first(signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}  # a signal before the thread runs waits for it
    threading.Thread(target=run, name="signal-relay", daemon=True).start()
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        relay.put(None)  # ends the relay thread if no signal came
