"""Slow preparations started when the session starts, so that they run beside the CPU-bound tests.

The image builds and the student's venv are mostly pip downloads, wheel unpacking and the engine's layer
writes: at most one core's work, though not free (unpacking slows the tests beside it; docs/benchmarks.md
has the measured runs). Started in one background thread as the first test starts (conftest's `early`),
they are done when the first test that needs them comes. One thread, so never two of them at once, and
they run in the order given (the order the tests need them in).

A fixture asks with `result(name)`: it waits for a preparation already started, and runs one that was
not started yet (or not started at all: its tests were not collected) in its own thread, at once: a
preparation that needs another (the image build needs the engine) gets it the same way. A preparation's
exception, pytest's skip and fail included, is raised again in every fixture that asks for it.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable


class Early:
    """Named preparations (zero-argument functions), run one after another in one daemon thread.

    Args:
        recipes: name -> function returning the prepared value.
    """

    def __init__(self, recipes: dict[str, Callable[[], object]]):
        self.recipes = recipes
        self.seconds: dict[str, float] = {}  # each preparation's own time
        self.waited: dict[str, float] = {}  # how long the first fixture that asked waited for it
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread = None

    def start(self, *names: str) -> None:
        """Queue `names` in the background thread, in this order; names already queued are left as they are."""
        with self._lock:
            for name in names:
                if name in self._futures:
                    continue
                self._futures[name] = Future()
                self._queue.put(name)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="early-preparations", daemon=True)
                self._thread.start()

    def result(self, name: str):
        """The value of preparation `name`: waited for while it runs; one not running yet runs now, here."""
        with self._lock:
            future = self._futures.setdefault(name, Future())
            mine = self._claim(future)
        if mine:
            self._run(name, future)
            return future.result()
        start = time.monotonic()
        try:
            return future.result()
        finally:
            self.waited.setdefault(name, round(time.monotonic() - start, 1))

    def started(self, name: str, timeout: float = 120.0):
        """The value of preparation `name` if it was started and succeeds within `timeout` s, else None."""
        future = self._futures.get(name)
        if future is None or not (future.running() or future.done()):
            return None
        try:
            error = future.exception(timeout=timeout)  # the preparation's own exception is returned, not raised
        except TimeoutError:
            return None
        return None if error is not None else future.result()

    @staticmethod
    def _claim(future: Future) -> bool:
        """True for the one caller (under the lock) that is to run a preparation nobody has started."""
        return not (future.running() or future.done()) and future.set_running_or_notify_cancel()

    def _run(self, name: str, future: Future) -> None:
        start = time.monotonic()
        try:
            value = self.recipes[name]()
        except BaseException as exc:  # pytest's skip and fail are BaseExceptions: keep them for the fixture
            future.set_exception(exc)
        else:
            future.set_result(value)
        finally:
            self.seconds[name] = round(time.monotonic() - start, 1)

    def _work(self) -> None:
        while True:
            name = self._queue.get()
            with self._lock:
                future = self._futures[name]
                mine = self._claim(future)
            if mine:
                self._run(name, future)
