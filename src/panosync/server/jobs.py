"""Durable jobs: a SQLite file records every job, a worker thread runs them one at a time, oldest
first, and writes each result atomically to the outputs folder beside the file.

After a crash or a stop, `JobStore.open` marks the jobs that were running as failed ("interrupted")
and leaves the queued ones queued: they run when the server is back. A job that was running is not
started again by itself, because whatever stopped the server may stop it again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..metadata import save_png
from .generation import PanoramaModel

log = logging.getLogger("panosync.server")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
FINISHED = (SUCCEEDED, FAILED, CANCELED)
INTERRUPTED = "interrupted: the server stopped while this job ran; submit it again"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- submission order, the order jobs run in
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    input TEXT NOT NULL,                     -- JSON: the fields as the client sent them
    parameters TEXT NOT NULL,                -- JSON: every parameter, defaults and seed filled in
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    step INTEGER NOT NULL DEFAULT 0,         -- denoising steps done
    total INTEGER NOT NULL,
    sync_weight REAL NOT NULL DEFAULT 0,     -- the sync weight of the latest step done; 0: it did not sync
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    output TEXT,                             -- file name in the outputs folder
    error TEXT,
    pipeline_seconds REAL                    -- the pipeline's own time, to tell the server's overhead
);
"""


class QueueFull(Exception):
    pass


class StateDirInUse(ValueError):
    pass


@dataclass(frozen=True)
class Job:
    seq: int
    id: str
    status: str
    input: dict
    parameters: dict
    created_at: float
    started_at: float | None
    completed_at: float | None
    step: int
    total: int
    sync_weight: float
    cancel_requested: bool
    output: str | None
    error: str | None
    pipeline_seconds: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        values = dict(row)
        values.update(input=json.loads(values["input"]), parameters=json.loads(values["parameters"]),
                      cancel_requested=bool(values["cancel_requested"]))
        return cls(**values)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobStore:
    """The jobs of one state folder: `jobs.sqlite3`, `outputs/`, and `conditions/` (ControlSync's
    condition images, named by content; see uploads.py). One server at a time may use a folder (a
    lock file says so); every method is safe to call from any thread."""

    def __init__(self, state_dir: str | Path):
        self.state_dir = Path(state_dir).expanduser()
        self.outputs = self.state_dir / "outputs"
        self.conditions = self.state_dir / "conditions"
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._lock_file = None

    def open(self) -> int:
        """Open the folder's database and fail the jobs a previous server left running; returns
        how many it failed."""
        self.outputs.mkdir(parents=True, exist_ok=True)
        self._take_folder_lock()
        connection = sqlite3.connect(self.state_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        connection.row_factory = sqlite3.Row
        # WAL: a commit is an append, not a rewrite, so recording every step's progress stays cheap.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(SCHEMA)
        self._connection = connection
        with self._lock:
            return connection.execute(
                "UPDATE jobs SET status=?, error=?, completed_at=? WHERE status=?",
                (FAILED, INTERRUPTED, time.time(), RUNNING)).rowcount

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _take_folder_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one server per folder is then up to the user
            return
        self._lock_file = open(self.state_dir / "server.lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            raise StateDirInUse(f"Another panosync server is using the state folder {self.state_dir}: stop it, "
                                f"or give this one its own --state-dir.") from None

    def _execute(self, sql: str, parameters: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._connection.execute(sql, parameters)

    # ------------------------------------------------------------------------------- reading

    def get(self, job_id: str) -> Job | None:
        row = self._execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def list(self, status: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        where, parameters = ("WHERE status=?", (status,)) if status else ("", ())
        rows = self._execute(f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*parameters, limit))
        return [Job.from_row(row) for row in rows.fetchall()]

    def queue_position(self, job: Job) -> int | None:
        """How many queued jobs run before `job`; None when it is not queued."""
        if job.status != QUEUED:
            return None
        return self._execute("SELECT COUNT(*) FROM jobs WHERE status=? AND seq<?", (QUEUED, job.seq)).fetchone()[0]

    def waiting(self) -> int:
        return self._execute("SELECT COUNT(*) FROM jobs WHERE status=?", (QUEUED,)).fetchone()[0]

    def output_path(self, job: Job) -> Path | None:
        return None if job.output is None else self.outputs / job.output

    # ------------------------------------------------------------------------------- writing

    def add(self, input: dict, parameters: dict, max_queue: int) -> Job:
        """Queue a job, or raise QueueFull when `max_queue` jobs are already waiting."""
        job_id = uuid.uuid4().hex
        with self._lock:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                waiting = connection.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (QUEUED,)).fetchone()[0]
                if waiting >= max_queue:
                    raise QueueFull(waiting)
                connection.execute(
                    "INSERT INTO jobs (id, status, input, parameters, created_at, total) VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, QUEUED, json.dumps(input), json.dumps(parameters), time.time(),
                     parameters["num_inference_steps"]))
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return self.get(job_id)

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running and return it; None when none waits."""
        with self._lock:  # one connection, and the lock held from the look to the update
            row = self._connection.execute("SELECT id FROM jobs WHERE status=? ORDER BY seq LIMIT 1",
                                           (QUEUED,)).fetchone()
            if row is None:
                return None
            self._connection.execute("UPDATE jobs SET status=?, started_at=? WHERE id=?",
                                     (RUNNING, time.time(), row["id"]))
        return self.get(row["id"])

    def record_step(self, job_id: str, step: int, sync_weight: float) -> None:
        self._execute("UPDATE jobs SET step=?, sync_weight=? WHERE id=?", (step, sync_weight, job_id))

    def request_cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled at once; a running one is marked, and its worker stops it
        after the step it is in. A finished job is left as it is."""
        with self._lock:
            self._connection.execute("UPDATE jobs SET status=?, completed_at=? WHERE id=? AND status=?",
                                     (CANCELED, time.time(), job_id, QUEUED))
            self._connection.execute("UPDATE jobs SET cancel_requested=1 WHERE id=? AND status=?", (job_id, RUNNING))
        return self.get(job_id)

    def finish(self, job_id: str, status: str, output: str | None = None, error: str | None = None,
               pipeline_seconds: float | None = None) -> None:
        self._execute("UPDATE jobs SET status=?, output=?, error=?, pipeline_seconds=?, completed_at=? WHERE id=?",
                      (status, output, error, pipeline_seconds, time.time(), job_id))


class JobCanceled(Exception):
    pass


class ServerStopping(Exception):
    pass


class Worker:
    """Runs the queued jobs of a store one at a time, oldest first, on one loaded model (one worker
    per model, and so per GPU)."""

    def __init__(self, store: JobStore, model: PanoramaModel):
        self.store = store
        self.model = model
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel = threading.Event()  # for the running job
        self._running: str | None = None
        self._lock = threading.Lock()
        self._finished = threading.Condition()
        self._thread: threading.Thread | None = None

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
        with self._finished:  # a queued job the store cancelled has finished: wake those waiting for it
            self._finished.notify_all()

    def wait(self, job_id: str, timeout: float) -> Job | None:
        """The job once it has finished, or as it is after `timeout` seconds."""
        with self._finished:
            self._finished.wait_for(lambda: (job := self.store.get(job_id)) is None or job.finished, timeout)
        return self.store.get(job_id)

    def _run_forever(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking, so that a job queued while we look wakes us
            job = self.store.claim_next()
            if job is None:
                self._wake.wait()
            else:
                self._run(job)

    def _run(self, job: Job) -> None:
        with self._lock:
            self._running = job.id
            self._cancel.clear()
        if self.store.get(job.id).cancel_requested:  # asked between the claim and now
            self._cancel.set()

        def after_step(step: int, sync_weight: float) -> None:
            self.store.record_step(job.id, step, sync_weight)
            if self._cancel.is_set():
                raise JobCanceled()
            if self._stopping.is_set():
                raise ServerStopping()

        try:
            started = time.perf_counter()
            image = self.model.generate(job.parameters, after_step)
            pipeline_seconds = time.perf_counter() - started
            output = f"{job.id}.png"
            save_png(image, self.store.outputs / output, self.model.metadata(job.parameters, image))
            self.store.finish(job.id, SUCCEEDED, output=output, pipeline_seconds=pipeline_seconds)
        except JobCanceled:
            self.store.finish(job.id, CANCELED)
        except ServerStopping:
            self.store.finish(job.id, FAILED, error=INTERRUPTED)
        except Exception as error:
            log.exception("job %s failed", job.id)
            self.store.finish(job.id, FAILED, error=f"{type(error).__name__}: {error}")
        finally:
            with self._lock:
                self._running = None
            with self._finished:
                self._finished.notify_all()
