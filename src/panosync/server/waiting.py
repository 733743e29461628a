"""Clients that wait for their jobs (`Prefer: wait`), without holding a thread.

A waiter awaits an event that one polling task sets when its job has finished. That task looks
all the waited-for jobs up together, in one short call to the store (in a thread, as every
blocking store call) every WAIT_POLL_SECONDS, and stops when nobody waits. So a crowd of waiting
clients costs one thread for a moment each interval, never the threads that accept and answer
other requests.

Each waiter holds a job of its own that is queued or running (it leaves within a poll of its job's
end), so hardly more than `Limits.max_queue` + 1 clients (the queue and the running job) can wait
at once: the waiters' bound, `Limits.max_waiters` (32), is reached only on a server whose
--max-queue is larger than that (the default is 16).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter

from starlette.concurrency import run_in_threadpool

from .jobs import JobStore

log = logging.getLogger("panosync.server")

DEFAULT_WAIT_SECONDS = 60
MAX_WAIT_SECONDS = 600
PREFER_WAIT = re.compile(r"(?:^|[,;]\s*)wait(?:\s*=\s*(\d+))?\s*(?:$|[,;])")
# A waiting client hears of its job at most this late; all of them together cost one store call per poll.
WAIT_POLL_SECONDS = 0.1
# The header that says why a POST with `Prefer: wait` is answered with the job as it was queued.
WAIT_HEADER = "Panosync-Wait"


def wait_seconds(prefer: str | None) -> int | None:
    """The seconds a `Prefer` header asks the server to wait for the result (RFC 7240's "wait")."""
    match = PREFER_WAIT.search(prefer.strip()) if prefer else None
    if match is None:
        return None
    return min(int(match.group(1) or DEFAULT_WAIT_SECONDS), MAX_WAIT_SECONDS)


class JobWaiters:
    """Clients waiting for their jobs to finish, at most `limit` at once (see the module)."""

    def __init__(self, store: JobStore, limit: int, interval: float = WAIT_POLL_SECONDS):
        self.store = store
        self.limit = limit
        self.interval = interval
        self._events: dict[str, asyncio.Event] = {}  # job id → set when it has finished
        self._waiters: Counter[str] = Counter()  # job id → clients waiting for it
        self._poller: asyncio.Task | None = None

    @property
    def count(self) -> int:
        return sum(self._waiters.values())

    def full(self) -> bool:
        return self.count >= self.limit

    async def wait(self, job_id: str, seconds: float) -> None:
        """Return when `job_id` has finished (or is gone), or after `seconds`; at once, with every
        other waiter, when the store cannot be read (the caller's own read says so)."""
        event = self._events.setdefault(job_id, asyncio.Event())
        self._waiters[job_id] += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="panosync-waiters")
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters[job_id] -= 1
            if self._waiters[job_id] == 0:
                del self._waiters[job_id], self._events[job_id]

    def stop(self) -> None:
        """Stop polling (the server is stopping); whoever still waits is answered by its timeout."""
        if self._poller is not None:
            self._poller.cancel()

    async def _poll(self) -> None:
        while self._events:
            await asyncio.sleep(self.interval)
            job_ids = list(self._events)
            try:
                done = await run_in_threadpool(self._finished_among, job_ids)
            except Exception:  # the store failed: answer the waiters now, with whatever they can read
                log.exception("looking up the jobs that clients wait for")
                done = job_ids
            for job_id in done:
                if job_id in self._events:
                    self._events[job_id].set()

    def _finished_among(self, job_ids: list[str]) -> list[str]:
        jobs = {job_id: self.store.get(job_id) for job_id in job_ids}
        return [job_id for job_id, job in jobs.items() if job is None or job.finished]
