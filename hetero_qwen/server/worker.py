"""One generation at a time: a FIFO of jobs served by one thread that owns the engine.

`submit` refuses at once (503) when `max_waiting` jobs already wait. A job cancelled while it waits
is skipped; one cancelled while it runs stops at its next token (generation.py checks the flag).
A job that fails reports the error to its request and the thread goes on with the next one.
`changed` (a Condition) is notified on every queue change, so tests can wait for a state without
sleeping.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from .errors import queue_full
from .generation import Job


class Worker:
    def __init__(self, run: Callable[[Job], None], max_waiting: int):
        self.run = run
        self.max_waiting = max_waiting
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: Job | None = None
        self.served = 0
        self.changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="hetero-qwen-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.changed:
            self._stopping = True
            for job in self.waiting:
                job.cancelled.set()
            self.changed.notify_all()
        if self._thread.is_alive():
            if self.running is not None:
                self.running.cancelled.set()
            self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self.changed:
            if len(self.waiting) >= self.max_waiting and (self.running is not None or self.waiting):
                raise queue_full(len(self.waiting))
            self.waiting.append(job)
            self.changed.notify_all()

    def _loop(self) -> None:
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.waiting or self._stopping)
                if self._stopping:
                    return
                job = self.waiting.popleft()
                self.running = job
                self.changed.notify_all()
            try:
                if job.cancelled.is_set():
                    job.emit(("end", "cancelled", None))
                else:
                    self.run(job)
            except BaseException as error:  # the request hears about it; the server goes on
                job.emit(("error", error))
            finally:
                with self.changed:
                    self.running = None
                    self.served += 1
                    self.changed.notify_all()
