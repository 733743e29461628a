"""The engine of one process: the model loaded once, here, and the tasks run in turn; and `run_all`,
which feeds any engine a list of tasks."""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

from .maker import Canceled, Done, ModelSpec, PanoramaMaker, ProgressCallback, where


class LocalEngine:
    """Runs tasks one at a time in this process. The model loads at the first task (or `geometry`),
    so a batch whose panoramas are all made already loads nothing."""

    slots = 1

    def __init__(self, spec: ModelSpec, on_step: ProgressCallback | None = None):
        self.spec, self.on_step = spec, on_step
        self._maker: PanoramaMaker | None = None
        self._queue: deque = deque()
        self._canceled: set = set()

    @property
    def maker(self) -> PanoramaMaker:
        if self._maker is None:
            self._maker = PanoramaMaker(self.spec)
        return self._maker

    @property
    def workers(self) -> list[dict]:
        return [where()]

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def free(self) -> int:
        return self.slots - len(self._queue)

    def geometry(self):
        return self.maker.geometry()

    def family_defaults(self, explicit=()) -> dict:
        return self.maker.family_defaults(explicit)

    def runs_on(self) -> tuple[str, str]:
        return self.maker.runs_on()

    def submit(self, key, call: dict) -> None:
        self._queue.append((key, call))

    def cancel(self, key) -> None:
        self._canceled.add(key)

    def wait(self, timeout: float | None = None) -> list[Done]:
        """Run the submitted task (here, so `timeout` does not apply) and return what became of it."""
        if not self._queue:
            return []
        key, call = self._queue.popleft()
        place = where()

        def on_step(step: int, sync_weight: float) -> None:
            if self.on_step is not None:
                self.on_step(key, step, sync_weight, place)
            if key in self._canceled:
                raise Canceled()

        try:
            return [self.maker.attempt(key, call, on_step)]
        finally:
            self._canceled.discard(key)

    def close(self) -> None:
        if self._maker is not None:
            self._maker.close()
            self._maker = None


def run_all(engine, tasks: Iterable[tuple[object, dict]], on_done: Callable[[Done], None],
            poll_seconds: float = 0.25) -> None:
    """Run every (key, call) of `tasks` on `engine`, as many at once as it has free workers,
    calling `on_done` with each as it ends (in the order they end)."""
    pending = deque(tasks)
    while pending or engine.busy:
        while pending and engine.free() > 0:
            engine.submit(*pending.popleft())
        for done in engine.wait(poll_seconds):
            on_done(done)
