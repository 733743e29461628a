"""The worker: one thread that runs the queued jobs of a store one at a time, oldest first, on one
loaded model, and writes each result atomically to the store's outputs folder.

Nothing a job or the store raises stops it: a job that fails is recorded failed with a sentence
and the next one runs; while the state folder is degraded (JobStore.health), queued jobs wait for
it, and retention runs every few seconds so that `--keep` can give the folder its reserve back.
"""

from __future__ import annotations

import logging
import threading
import time

from ..metadata import save_png
from .folder_health import HEALTH_CACHE_SECONDS
from .generation import PanoramaModel
from .jobs import CANCELED, FAILED, INTERRUPTED, SUCCEEDED, Job, JobStore, failure_reason
from .state_files import remove_file

log = logging.getLogger("panosync.server")


class JobCanceled(Exception):
    pass


class ServerStopping(Exception):
    pass


# While the state folder is degraded, the worker looks at it again this often (its health is cached as long).
DEGRADED_PAUSE_SECONDS = HEALTH_CACHE_SECONDS
# After a fault outside any job (the store), the worker pauses this long before it looks again.
FAULT_PAUSE_SECONDS = 0.5
# A job's end that the store cannot record is tried again after pauses growing to this.
RECORD_RETRY_MAX_SECONDS = 5.0
# Retention runs when the worker starts and after each job, and besides: at most this often while
# the state folder is degraded (deleting finished jobs may give it its reserve back, when --keep
# allows), and this often while no job waits (so that jobs age out of an idle server).
RETENTION_DEGRADED_SECONDS = 5.0
RETENTION_IDLE_SECONDS = 60.0


class Worker:
    """Runs the queued jobs of a store one at a time, oldest first, on one loaded model (one worker
    per model, and so per GPU). Nothing a job or the store raises stops it: a job that fails is
    recorded failed, and while the state folder is degraded (health()) queued jobs wait."""

    def __init__(self, store: JobStore, model: PanoramaModel):
        self.store = store
        self.model = model
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel = threading.Event()  # for the running job
        self._running: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._holding = False  # queued jobs wait for the state folder to recover
        self._retained_at = -float("inf")  # time.monotonic() of the latest retention

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run_forever, name="panosync-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current denoising step; the job that was running is failed as interrupted."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def notify(self) -> None:
        """A job was queued."""
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop `job_id` after its current step if it is running (the store has marked it)."""
        with self._lock:
            if self._running == job_id:
                self._cancel.set()

    def _run_forever(self) -> None:
        self._apply_retention()
        while not self._stopping.is_set():
            try:
                self._run_next()
            except Exception:  # the store failed outside a job: say so, pause, and look again
                log.exception("the worker met a fault; it tries again in %.1f s", FAULT_PAUSE_SECONDS)
                self._stopping.wait(FAULT_PAUSE_SECONDS)

    def _run_next(self) -> None:
        self._wake.clear()  # before looking, so that a job queued while we look wakes us
        if not self._folder_healthy():
            self._apply_retention(every=RETENTION_DEGRADED_SECONDS)
            self._stopping.wait(DEGRADED_PAUSE_SECONDS)
            return
        job = self.store.claim_next()
        if job is None:
            self._apply_retention(every=RETENTION_IDLE_SECONDS)
            self._wake.wait(self._idle_timeout())
        else:
            self._run(job)
            self._apply_retention()

    def _idle_timeout(self) -> float | None:
        """How long an idle worker may sleep: until retention is due again; for ever without one."""
        if self.store.retention is None:
            return None
        return max(0.0, self._retained_at + RETENTION_IDLE_SECONDS - time.monotonic())

    def _folder_healthy(self) -> bool:
        """Whether the state folder can take a job's output. While it cannot, queued jobs stay
        queued rather than each failing in turn: they run once space is freed."""
        health = self.store.health()
        holding = health["status"] != "ok"
        if holding != self._holding:
            if holding:
                log.warning("queued jobs wait: %s", health["reason"])
            else:
                log.warning("the state folder has recovered; queued jobs run again")
            self._holding = holding
        return not holding

    def _apply_retention(self, every: float = 0.0) -> None:
        """Apply the store's retention, unless it ran less than `every` seconds ago."""
        if self.store.retention is None or time.monotonic() - self._retained_at < every:
            return
        self._retained_at = time.monotonic()
        try:
            self.store.apply_retention()
        except Exception:  # retention is housekeeping: it must never stop jobs from running
            log.exception("retention failed; it runs again later")

    def _run(self, job: Job) -> None:
        with self._lock:
            self._running = job.id
            self._cancel.clear()
        try:
            self._record(job, *self._outcome(job))
        finally:
            with self._lock:
                self._running = None

    def _outcome(self, job: Job) -> tuple[str, dict]:
        """Run `job`: its status and the fields to record with it."""
        def after_step(step: int, sync_weight: float) -> None:
            self.store.record_step(job.id, step, sync_weight)
            if self._cancel.is_set():
                raise JobCanceled()
            if self._stopping.is_set():
                raise ServerStopping()

        try:
            if self.store.get(job.id).cancel_requested:  # asked between the claim and now
                self._cancel.set()
            started = time.perf_counter()
            image = self.model.generate(job.parameters, after_step)
            pipeline_seconds = time.perf_counter() - started
            output = f"{job.id}.png"
            save_png(image, self.store.outputs / output, self.model.metadata(job.parameters, image))
            return SUCCEEDED, dict(output=output, pipeline_seconds=pipeline_seconds)
        except JobCanceled:
            return CANCELED, {}
        except ServerStopping:
            return FAILED, dict(error=INTERRUPTED)
        except Exception as error:
            log.exception("job %s failed", job.id)
            return FAILED, dict(error=failure_reason(error, self.store.state_dir))

    def _record(self, job: Job, status: str, fields: dict) -> None:
        """Record how `job` ended. When the store cannot, the job is recorded failed with the
        store's reason, tried again and again until it can (the disk is freed), so that it never
        stays "running"; only a stopping server gives up, and the next start fails it as interrupted."""
        try:
            self.store.finish(job.id, status, **fields)
            return
        except Exception as error:
            log.error("could not record the end of job %s: %s", job.id, error)
            reason = failure_reason(error, self.store.state_dir)
        if fields.get("output"):  # a PNG no record names; it takes space the store needs
            remove_file(self.store.outputs / fields["output"])
        pause = FAULT_PAUSE_SECONDS
        while True:
            try:
                self.store.finish(job.id, FAILED, error=reason)
                return
            except Exception as error:
                log.error("job %s: still cannot record its failure (%s); trying again in %.1f s", job.id, error, pause)
            if self._stopping.wait(pause):
                return
            pause = min(2 * pause, RECORD_RETRY_MAX_SECONDS)
