"""Durable jobs: a SQLite file records every job, and the outputs, condition images and image
inputs beside it; the worker (worker.py) runs them one at a time, oldest first. `JobStore` keeps
the job rows and composes the state folder's two other concerns: its kept images, conditions and
image inputs (condition_files.py), and its health (folder_health.py).

After a crash or a stop, `JobStore.open` marks the jobs that were running as failed ("interrupted")
and leaves the queued ones queued: they run when the server is back. A job that was running is not
started again by itself, because whatever stopped the server may stop it again.

Under faults the service goes on: a write the database refuses (busy, locked, disk full) is tried
again a few times and then raised as a `StoreFault` that says what to do; a job that fails, or
whose end cannot be recorded, is failed with a sentence and the worker takes the next one; while
the state folder is unwritable or short of space, `health()` says so and queued jobs wait for it.
Condition images and image inputs are kept only while a queued, running or succeeded job refers to
them, and a
`Retention` deletes old finished jobs: when the worker starts, after each job, once a minute while
it is idle, and every few seconds while the folder is degraded (so that `--keep` can give a full
folder its reserve back without a restart).
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
from typing import Callable, Iterable, TypeVar

import PIL.Image

from .condition_files import ConditionFiles
from .folder_health import FULL_ERRNOS, FolderHealth, full_sentence
from .retention import DEFAULT_MIN_FREE_BYTES, Retention
from .state_files import file_size, files_in, is_leftover, remove_file

log = logging.getLogger("panosync.server")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
FINISHED = (SUCCEEDED, FAILED, CANCELED)
KEPT = (QUEUED, RUNNING, SUCCEEDED)  # the jobs whose condition images and image inputs are kept
# The parameters that name an image input's file: {"path", "sha256"} (as `panosync generate` records them);
# a region's mask is named likewise, inside `regions`
IMAGE_INPUTS = ("image", "mask_image")
INTERRUPTED = "interrupted: the server stopped while this job ran; submit it again"

# A write the database refuses is tried again after each of these pauses, then reported.
STORE_RETRY_DELAYS = (0.05, 0.2, 0.5)
TRANSIENT = ("locked", "busy", "full", "disk i/o error")  # SQLite's words for faults that can pass

T = TypeVar("T")

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


class StoreFault(Exception):
    """The job database refused a write even after a few tries; the message is one sentence
    saying what to do (the API answers 507 with it, a job fails with it)."""


class JobNotFinished(Exception):
    """A queued or running job cannot be deleted: cancel it first."""


def fault_sentence(error: sqlite3.OperationalError, state_dir: Path) -> str:
    """What a database error means for the person running the server."""
    text = str(error)
    if "full" in text:  # "database or disk is full"
        return full_sentence(state_dir)
    if "locked" in text or "busy" in text:
        return (f"The job database in {state_dir} stayed locked ({text}): another program holds it; close that "
                f"program and try again.")
    return (f"The job database in {state_dir} cannot be written ({text}): make the folder writable and give it "
            f"free space, or start the server with another --state-dir.")


def failure_reason(error: BaseException, state_dir: Path) -> str:
    """The sentence a job that failed with `error` reports."""
    if isinstance(error, StoreFault):
        return str(error)
    if isinstance(error, OSError) and error.errno in FULL_ERRNOS:  # writing the PNG
        return full_sentence(state_dir)
    if isinstance(error, sqlite3.OperationalError):
        return fault_sentence(error, state_dir)
    from ..runner.maker import describe_failure

    return describe_failure(error)  # our sentences as they are (an overflow's NonFiniteError); others with their type


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

    @property
    def conditions(self) -> list[str]:
        """The paths of the condition images this job refers to (ControlSync), else []."""
        return list(self.parameters.get("condition") or [])

    @property
    def images(self) -> list[str]:
        """The paths of the image inputs this job refers to (its image and mask, its regions' masks), else []."""
        return image_paths(self.parameters)


def image_paths(parameters: dict) -> list[str]:
    """The paths of the image inputs that a job's `parameters` name: its image and mask, and its
    regions' masks."""
    kept = [parameters.get(name) for name in IMAGE_INPUTS]
    kept += [region.get("mask") for region in parameters.get("regions") or [] if isinstance(region, dict)]
    return [record["path"] for record in kept if isinstance(record, dict) and isinstance(record.get("path"), str)]


class JobStore:
    """The jobs of one state folder: `jobs.sqlite3`, `outputs/`, `conditions/` (ControlSync's
    condition images, named by content and kept by `condition_files`) and `images/` (the image
    inputs, images and masks, and the regions' masks, likewise kept by `image_files`). One server at
    a time may use a folder (a lock file says so); every method is safe to call from any thread.

    `retention` says which finished jobs `apply_retention` deletes; below `min_free_bytes` of free
    space, `health()` (`folder_health`) reports the folder degraded."""

    def __init__(self, state_dir: str | Path, retention: Retention | None = None,
                 min_free_bytes: int = DEFAULT_MIN_FREE_BYTES):
        self.state_dir = Path(state_dir).expanduser()
        self.outputs = self.state_dir / "outputs"
        self.conditions = self.state_dir / "conditions"
        self.images = self.state_dir / "images"
        self.retention = retention
        self.folder_health = FolderHealth(self.state_dir, self.outputs, self.conditions, min_free_bytes,
                                          images=self.images)
        self.condition_files = ConditionFiles(self.conditions, self._referenced_conditions)
        # kept as they were checked: an image RGB, a mask one channel (uploads.checked_image_input)
        self.image_files = ConditionFiles(self.images, self._referenced_images, stored_form=lambda image: image)
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
        interrupted = self._change("UPDATE jobs SET status=?, error=?, completed_at=? WHERE status=?",
                                   (FAILED, INTERRUPTED, time.time(), RUNNING))
        self._sweep_leftovers()
        return interrupted

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

    def _sweep_leftovers(self) -> None:
        """Remove what a crash can leave: half-written files, PNGs no job names (the server stopped
        between writing one and recording it), and conditions and image inputs no queued or
        succeeded job refers to (it stopped between saving a request's images and queueing it, or
        before cleaning up)."""
        outputs = {row[0] for row in self._rows("SELECT output FROM jobs WHERE output IS NOT NULL")}
        for folder, kept in ((self.outputs, outputs), (self.conditions, self._referenced_conditions()),
                             (self.images, self._referenced_images())):
            for entry in files_in(folder):
                if is_leftover(entry.name) or (entry.name.endswith(".png") and entry.name not in kept):
                    remove_file(Path(entry.path))

    # ------------------------------------------------------------------------------- the database

    def _retrying(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """`operation` on the connection, under the lock. SQLite refuses a write with an
        OperationalError when the file is busy or locked or the disk is full, all of which can
        pass: try again after short pauses (without the lock), then raise a StoreFault; any other
        OperationalError (a read-only file, say) at once."""
        for delay in (*STORE_RETRY_DELAYS, None):
            try:
                with self._lock:
                    return operation(self._connection)
            except sqlite3.OperationalError as error:
                if delay is None or not any(word in str(error).lower() for word in TRANSIENT):
                    raise StoreFault(fault_sentence(error, self.state_dir)) from error
                log.warning("the job database refused a write (%s); trying again in %.2f s", error, delay)
                time.sleep(delay)

    def _rows(self, sql: str, parameters: tuple = ()) -> list[sqlite3.Row]:
        return self._retrying(lambda connection: connection.execute(sql, parameters).fetchall())

    def _change(self, sql: str, parameters: tuple = ()) -> int:
        """Run one statement that writes; how many rows it changed."""
        return self._retrying(lambda connection: connection.execute(sql, parameters).rowcount)

    def _transaction(self, body: Callable[[sqlite3.Connection], T]) -> T:
        def run(connection: sqlite3.Connection) -> T:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = body(connection)
                connection.execute("COMMIT")
                return result
            except BaseException:
                if connection.in_transaction:  # SQLite may have rolled back already (a full disk does)
                    try:
                        connection.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

        return self._retrying(run)

    # ------------------------------------------------------------------------------- reading

    def get(self, job_id: str) -> Job | None:
        rows = self._rows("SELECT * FROM jobs WHERE id=?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def list(self, status: str | None = None, limit: int = 100) -> list[Job]:
        """Newest first."""
        where, parameters = ("WHERE status=?", (status,)) if status else ("", ())
        rows = self._rows(f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*parameters, limit))
        return [Job.from_row(row) for row in rows]

    def queue_position(self, job: Job) -> int | None:
        """How many queued jobs run before `job`; None when it is not queued."""
        if job.status != QUEUED:
            return None
        return self._rows("SELECT COUNT(*) FROM jobs WHERE status=? AND seq<?", (QUEUED, job.seq))[0][0]

    def waiting(self) -> int:
        return self._rows("SELECT COUNT(*) FROM jobs WHERE status=?", (QUEUED,))[0][0]

    def output_path(self, job: Job) -> Path | None:
        return None if job.output is None else self.outputs / job.output

    def health(self) -> dict:
        """{"status": "ok" or "degraded", "reason": None or a sentence, "free_bytes": int or None}:
        degraded while the state folder cannot be written or has under `min_free_bytes` free.
        Checked at most once a second, as every POST and /health asks."""
        return self.folder_health.check()

    # ------------------------------------------------------------------------------- writing

    def add(self, input: dict, parameters: dict, max_queue: int) -> Job:
        """Queue a job, or raise QueueFull when `max_queue` jobs are already waiting (StoreFault
        when the database cannot record it)."""
        job_id = uuid.uuid4().hex

        def insert(connection: sqlite3.Connection) -> Job:
            waiting = connection.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (QUEUED,)).fetchone()[0]
            if waiting >= max_queue:
                raise QueueFull(waiting)
            connection.execute(
                "INSERT INTO jobs (id, status, input, parameters, created_at, total) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, QUEUED, json.dumps(input), json.dumps(parameters), time.time(),
                 parameters["num_inference_steps"]))
            # Read back inside the transaction: once it commits the job is queued, and a read that
            # failed after that would tell the client "not queued" (507) and have it submit twice.
            return Job.from_row(connection.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())

        job = self._transaction(insert)
        self.condition_files.unpin(parameters.get("condition") or [])  # the job refers to them now
        self.image_files.unpin(image_paths(parameters))
        return job

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running and return it; None when none waits."""
        def claim(connection: sqlite3.Connection) -> Job | None:  # the lock is held from the look to the update
            row = connection.execute("SELECT * FROM jobs WHERE status=? ORDER BY seq LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                return None
            started = time.time()
            connection.execute("UPDATE jobs SET status=?, started_at=? WHERE id=?", (RUNNING, started, row["id"]))
            # The job as claimed, from the row already read: the update is the last thing that can
            # fail, so a job is never left running without being handed to the worker.
            return Job.from_row({**dict(row), "status": RUNNING, "started_at": started})

        return self._retrying(claim)

    def record_step(self, job_id: str, step: int, sync_weight: float) -> None:
        self._change("UPDATE jobs SET step=?, sync_weight=? WHERE id=?", (step, sync_weight, job_id))

    def request_cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled at once; a running one is marked, and its worker stops it
        after the step it is in. A finished job is left as it is."""
        def cancel(connection: sqlite3.Connection) -> int:
            canceled = connection.execute("UPDATE jobs SET status=?, completed_at=? WHERE id=? AND status=?",
                                          (CANCELED, time.time(), job_id, QUEUED)).rowcount
            connection.execute("UPDATE jobs SET cancel_requested=1 WHERE id=? AND status=?", (job_id, RUNNING))
            return canceled

        if self._retrying(cancel):
            self._release_conditions(job_id)
        return self.get(job_id)

    def finish(self, job_id: str, status: str, output: str | None = None, error: str | None = None,
               pipeline_seconds: float | None = None) -> None:
        self._change("UPDATE jobs SET status=?, output=?, error=?, pipeline_seconds=?, completed_at=? WHERE id=?",
                     (status, output, error, pipeline_seconds, time.time(), job_id))
        if status in (FAILED, CANCELED):
            self._release_conditions(job_id)

    def delete(self, job_id: str) -> Job | None:
        """Delete a finished job: its record, its output and the conditions no other job needs.
        Returns the job as it was; None when there is no such job; JobNotFinished when it is queued
        or running."""
        job = self.get(job_id)
        if job is None:
            return None
        if not job.finished:
            raise JobNotFinished(f"Job {job_id} is {job.status}: cancel it first, then delete it.")
        self._delete_finished(job)
        return job

    def _delete_finished(self, job: Job) -> int:
        """Delete a finished job; the bytes its files took. The files go first: on a full disk the
        database may refuse to delete the record, and freeing the space is what matters then (the
        record is deleted on the next try, and a missing output is answered as gone)."""
        freed = 0 if job.output is None else (remove_file(self.outputs / job.output) or 0)
        freed += sum(self.condition_files.remove_unreferenced(job.conditions, excluding=job.id).values())
        freed += sum(self.image_files.remove_unreferenced(job.images, excluding=job.id).values())
        if freed:
            self.folder_health.forget()  # the folder may have its reserve back: look again at the next ask
        self._change("DELETE FROM jobs WHERE id=?", (job.id,))
        return freed

    # ------------------------------------------------------------------------------- retention

    def apply_retention(self) -> int:
        """Delete the finished jobs `retention` no longer keeps: those finished longer ago than
        its age, then the oldest until what is left to free (_bytes_used: their outputs and the
        conditions only they use) fits in its bytes. Queued and running jobs are never deleted.
        Returns how many jobs were deleted."""
        if self.retention is None:
            return 0
        deleted = 0
        if self.retention.max_age_seconds is not None:
            for job in self._finished_oldest_first(before=time.time() - self.retention.max_age_seconds):
                self._delete_finished(job)
                deleted += 1
        if self.retention.max_bytes is not None:
            used = self._bytes_used()
            if used > self.retention.max_bytes:  # the common case stops here, after two folder listings
                for job in self._finished_oldest_first():
                    used -= self._delete_finished(job)
                    deleted += 1
                    if used <= self.retention.max_bytes:
                        break
        if deleted:
            log.info("retention deleted %d finished jobs", deleted)
        return deleted

    def _finished_oldest_first(self, before: float | None = None) -> list[Job]:
        rows = self._rows(f"SELECT * FROM jobs WHERE status IN (?, ?, ?)"
                          f"{'' if before is None else ' AND COALESCE(completed_at, created_at) < ?'} "
                          f"ORDER BY COALESCE(completed_at, created_at), seq",
                          (*FINISHED, *(() if before is None else (before,))))
        return [Job.from_row(row) for row in rows]

    def _bytes_used(self) -> int:
        """The bytes retention can free: the outputs of finished jobs, and the conditions and image
        inputs they refer to that no queued or running job (nor a request about to queue one) needs.
        Not the files it cannot delete, or the budget could never be met and every finished job
        would go."""
        outputs = {row[0] for row in self._rows(f"SELECT output FROM jobs WHERE output IS NOT NULL AND status IN "
                                                f"({', '.join('?' * len(FINISHED))})", FINISHED)}
        conditions = self._conditions_of(FINISHED) - self._conditions_of((QUEUED, RUNNING))
        conditions -= self.condition_files.pinned()
        images = self._images_of(FINISHED) - self._images_of((QUEUED, RUNNING)) - self.image_files.pinned()
        return (sum(file_size(self.outputs / name) for name in outputs)
                + sum(file_size(self.conditions / name) for name in conditions)
                + sum(file_size(self.images / name) for name in images))

    # ------------------------------------------------------------------------------- conditions

    def save_condition(self, image: PIL.Image.Image) -> Path:
        """`image` kept in the conditions folder and pinned there until a job that refers to it is
        added or `discard_conditions` lets it go (ConditionFiles.save)."""
        return self.condition_files.save(image)

    def discard_conditions(self, paths: Iterable[str | Path]) -> list[Path]:
        """Remove those of `paths` (the conditions of a request that was refused) that no queued,
        running or succeeded job refers to; returns the files removed."""
        return self.condition_files.discard(paths)

    def _release_conditions(self, job_id: str) -> None:
        """Remove the conditions and image inputs of a job that was cancelled or failed, unless
        another job needs them. A cleanup: its failure is logged, and never makes the job's end look
        unrecorded."""
        try:
            job = self.get(job_id)
            if job is not None:
                self.condition_files.remove_unreferenced(job.conditions)
                self.image_files.remove_unreferenced(job.images)
        except Exception:
            log.exception("could not remove the conditions or images of job %s", job_id)

    def _referenced_conditions(self, excluding: str | None = None) -> set[str]:
        """The file names of the conditions that queued, running and succeeded jobs refer to."""
        return self._conditions_of(KEPT, excluding)

    def _conditions_of(self, statuses: tuple[str, ...], excluding: str | None = None) -> set[str]:
        """The file names of the conditions that jobs in `statuses` (but `excluding`) refer to."""
        rows = self._rows(f"SELECT DISTINCT json_each.value FROM jobs, json_each(jobs.parameters, '$.condition') "
                          f"WHERE jobs.status IN ({', '.join('?' * len(statuses))}) AND jobs.id IS NOT ?",
                          (*statuses, excluding))
        return {Path(str(row[0])).name for row in rows}

    # ------------------------------------------------------------------------------- image inputs

    def save_image(self, image: PIL.Image.Image) -> Path:
        """An image input (RGB, or a mask's one channel) kept in the images folder and pinned there
        until a job that refers to it is added or `discard_images` lets it go."""
        return self.image_files.save(image)

    def discard_images(self, paths: Iterable[str | Path]) -> list[Path]:
        """Remove those of `paths` (the image inputs of a request that was refused) that no queued,
        running or succeeded job refers to; returns the files removed."""
        return self.image_files.discard(paths)

    def _referenced_images(self, excluding: str | None = None) -> set[str]:
        """The file names of the image inputs that queued, running and succeeded jobs refer to."""
        return self._images_of(KEPT, excluding)

    def _images_of(self, statuses: tuple[str, ...], excluding: str | None = None) -> set[str]:
        """The file names of the image inputs that jobs in `statuses` (but `excluding`) refer to."""
        paths = ", ".join(f"json_extract(parameters, '$.{name}.path')" for name in IMAGE_INPUTS)
        which = f"jobs.status IN ({', '.join('?' * len(statuses))}) AND jobs.id IS NOT ?"
        rows = self._rows(f"SELECT {paths} FROM jobs WHERE {which}", (*statuses, excluding))
        # and the masks of their regions (a region is an object; one with a box has no mask)
        rows += self._rows(f"SELECT json_extract(json_each.value, '$.mask.path') FROM jobs, "
                           f"json_each(jobs.parameters, '$.regions') WHERE json_each.type = 'object' AND {which}",
                           (*statuses, excluding))
        return {Path(str(path)).name for row in rows for path in row if path is not None}
