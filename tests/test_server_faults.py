"""The job store and worker under faults: a full disk (a real small tmpfs where this machine lets us
mount one, and a database that refuses writes), an unwritable state folder, jobs and stores that
raise; condition images kept only while a job needs them; retention by age and bytes, on an idle
worker and while the folder is degraded; deleting a job; `serve --min-free`; outputs that follow
the umask."""

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from panosync.cli import main
from panosync.settings import model_defaults
from panosync.metadata import save_png
from panosync.models import resolve_model
from panosync.server import folder_health, jobs, worker as worker_module
from panosync.server.generation import PanoramaModel
from panosync.server.jobs import (CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobNotFinished, JobStore,
                                  StoreFault)
from panosync.server.worker import Worker
from panosync.server import command
from panosync.server.retention import DEFAULT_MIN_FREE_BYTES, Retention, format_size, parse_keep, parse_min_free
from panosync.server.limits import Limits
from panosync.server.uploads import save_condition

# sync_pipe: 32-pixel windows; 3 views at stride 8, two steps: a job takes a fraction of a second.
TINY = dict(prompt="a tiny panorama", width=64, height=32, stride=8, num_inference_steps=2, sync_weight=0)
FULL = "is full: free space there"


@pytest.fixture(scope="module")
def model(sync_pipe):
    return PanoramaModel(sync_pipe, "tiny-test", model_defaults(resolve_model("tiny-random")))


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """The store's and worker's pauses, shortened: the tests wait for the behaviour, not the clock."""
    monkeypatch.setattr(jobs, "STORE_RETRY_DELAYS", (0.01, 0.01))
    monkeypatch.setattr(worker_module, "FAULT_PAUSE_SECONDS", 0.05)
    monkeypatch.setattr(worker_module, "RECORD_RETRY_MAX_SECONDS", 0.1)


@contextlib.contextmanager
def opened(state_dir, **options):
    store = JobStore(state_dir, **options)
    try:
        store.open()
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def running(store, model):
    worker = Worker(store, model)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def queue(store, parameters=None, **extra):
    job = store.add({"prompt": "x"}, {"num_inference_steps": 2, **(parameters or {}), **extra}, max_queue=100)
    return job


def queue_real(store, model, worker=None, **given):
    job = store.add(dict(TINY, **given), model.prepare(dict(TINY, **given), Limits()), max_queue=100)
    if worker is not None:
        worker.notify()
    return job


def until(predicate, timeout=30.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} did not come about in {timeout} s")


def finished_job(store, job_id, timeout=30.0):
    return until(lambda: (job := store.get(job_id)) is not None and job.finished and job, timeout,
                 f"job {job_id} finishing")


def condition_image(seed=0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8))


def age(store, job_id, seconds):
    """Pretend `job_id` finished `seconds` ago."""
    store._change("UPDATE jobs SET completed_at=? WHERE id=?", (time.time() - seconds, job_id))


# ------------------------------------------------------------------------------- a real full disk

def _mount(*arguments) -> bool:
    try:
        return subprocess.run(["mount", *arguments], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (a real filesystem that fills up); skipped where this machine cannot mount one
    (not root): the database-level tests below still cover the same paths."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(folder)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        if not _mount("--options", "remount,rw", str(folder)) or subprocess.run(["umount", str(folder)]).returncode:
            subprocess.run(["umount", "-l", str(folder)])


def fill(folder: Path) -> Path:
    """Write a ballast file until the filesystem refuses another byte."""
    ballast = folder / "ballast"
    with open(ballast, "wb", buffering=0) as file:
        for chunk in (b"\0" * 2**20, b"\0" * 4096, b"\0"):
            try:
                while True:
                    file.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    return ballast


class FillsTheDisk:
    """The model, but the first job fills the state folder's disk once its panorama is made, just
    before the worker writes the PNG."""

    def __init__(self, model, disk: Path):
        self.model, self.disk, self.filled = model, disk, threading.Event()

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, parameters, on_step=None):
        image = self.model.generate(parameters, on_step)
        if not self.filled.is_set():
            self.ballast = fill(self.disk)
            self.filled.set()
        return image


@pytest.mark.slow
def test_a_full_disk_fails_the_job_holds_the_queue_and_recovers_when_space_is_freed(model, small_disk):
    # The reproduction: the PNG and then the database's record hit the full disk.
    # Broke: _record without its retry loop (the first job stayed "running", the second queued).
    filling = FillsTheDisk(model, small_disk)
    with opened(small_disk / "state", min_free_bytes=256 * 2**10) as store, running(store, filling) as worker:
        first, second = queue_real(store, model), queue_real(store, model, worker, seed=1)
        assert filling.filled.wait(30)
        health = until(lambda: (h := store.health())["status"] == "degraded" and h, 5, "health degraded")
        assert FULL in health["reason"] and health["free_bytes"] < 256 * 2**10
        time.sleep(0.5)  # the first job fails meanwhile (or waits to record it); the second must wait
        assert store.get(second.id).status == QUEUED and worker._thread.is_alive()

        filling.ballast.unlink()  # space is back: no restart
        failed = finished_job(store, first.id)
        assert failed.status == FAILED and failed.error == folder_health.full_sentence(store.state_dir), failed.error
        assert not (store.outputs / f"{first.id}.png").exists()
        assert finished_job(store, second.id).status == SUCCEEDED
        assert (store.outputs / f"{second.id}.png").is_file() and store.health()["status"] == "ok"


def test_health_is_degraded_while_the_state_folder_is_read_only(small_disk):
    # Broke: FolderHealth._check_now without the write probe (it said ok on a read-only mount).
    with opened(small_disk / "state", min_free_bytes=0) as store:  # closed: a mount with files open to
        assert store.health()["status"] == "ok"                    # write cannot be made read-only
    store = JobStore(small_disk / "state", min_free_bytes=0)
    assert _mount("--options", "remount,ro", str(small_disk))
    try:
        health = store.health()
        assert health["status"] == "degraded" and health["free_bytes"] > 0
        assert "cannot be written (Read-only file system): make it writable, or start the server with another " \
               "--state-dir." in health["reason"]
    finally:
        assert _mount("--options", "remount,rw", str(small_disk))
    store.folder_health.forget()  # as if a second had passed
    assert store.health()["status"] == "ok"


# ------------------------------------------------------------------------------- a database that refuses writes

class RefusingConnection:
    """The store's connection, but statements matching `refuse(sql)` raise SQLite's full-disk error
    while `full` is set (and count how often)."""

    def __init__(self, connection, refuse, message="database or disk is full"):
        self.connection, self.refuse, self.message = connection, refuse, message
        self.full, self.refused, self.times = threading.Event(), 0, None

    def __getattr__(self, name):
        return getattr(self.connection, name)

    def execute(self, sql, parameters=()):
        if self.full.is_set() and self.refuse(sql) and (self.times is None or self.refused < self.times):
            self.refused += 1
            raise sqlite3.OperationalError(self.message)
        return self.connection.execute(sql, parameters)


def refuse_writes(store, refuse=lambda sql: not sql.lstrip().upper().startswith("SELECT"), **options):
    store._connection = RefusingConnection(store._connection, refuse, **options)
    store._connection.full.set()
    return store._connection


def test_store_writes_are_retried_then_raised_as_a_store_fault_with_a_sentence(tmp_path):
    # Broke: _retrying re-raising the OperationalError (the test saw sqlite3.OperationalError).
    with opened(tmp_path / "state") as store:
        refusing = refuse_writes(store)
        with pytest.raises(StoreFault, match=f"The state folder .* {FULL}, or start the server with a --state-dir"):
            queue(store)
        assert refusing.refused == 3 and store.list() == []  # the first try and two more
        refusing.message = "database is locked"
        with pytest.raises(StoreFault, match="stayed locked .* close that program"):
            queue(store)

        # A fault that passes within the retries is never seen.
        refusing.refused, refusing.times = 0, 2
        assert queue(store).status == QUEUED and refusing.refused == 2


def test_a_job_whose_end_cannot_be_recorded_is_failed_once_the_store_recovers(model, tmp_path):
    # Broke: _record without its retry loop (the job stayed "running" for ever, the next one queued).
    def is_finish(sql):
        return sql.startswith("UPDATE jobs SET status=?, output=?")

    with opened(tmp_path / "state", min_free_bytes=0) as store:
        refusing = refuse_writes(store, is_finish)
        with running(store, model) as worker:
            first, second = queue_real(store, model, worker), queue_real(store, model, worker, seed=1)
            until(lambda: refusing.refused >= 6, 30, "finish refused a few times")
            assert store.get(first.id).status == RUNNING and worker._thread.is_alive()
            refusing.full.clear()
            failed = finished_job(store, first.id)
            assert failed.status == FAILED and FULL in failed.error and failed.output is None
            assert not (store.outputs / f"{first.id}.png").exists()  # no PNG without its record
            assert finished_job(store, second.id).status == SUCCEEDED


def test_the_worker_survives_any_exception_from_a_job_or_the_store(model, tmp_path, monkeypatch):
    # Broke: _run_forever without its try (the thread died on the claim's RuntimeError).
    class Broken:
        def __getattr__(self, name):
            return getattr(model, name)

        def generate(self, parameters, on_step=None):
            if parameters["seed"] == 13:
                raise RuntimeError("the model broke")
            return model.generate(parameters, on_step)

    with opened(tmp_path / "state", min_free_bytes=0) as store:
        claim, calls = store.claim_next, []

        def claim_that_fails_once():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("the store broke")
            return claim()

        monkeypatch.setattr(store, "claim_next", claim_that_fails_once)
        with running(store, Broken()) as worker:
            bad, good = queue_real(store, model, worker, seed=13), queue_real(store, model, worker, seed=14)
            failed = finished_job(store, bad.id)
            assert failed.status == FAILED and failed.error == "RuntimeError: the model broke"
            assert finished_job(store, good.id).status == SUCCEEDED and worker._thread.is_alive()


def test_a_claimed_job_is_returned_from_the_claim_itself(tmp_path, monkeypatch):
    # A read after the claim that fails would leave the job "running" with no worker on it.
    # Broke: claim_next back on committing, then self.get() (the StoreFault came out of the claim).
    with opened(tmp_path / "state") as store:
        queued = queue(store, seed=5)

        def get_fails(job_id):
            raise StoreFault("the database cannot be read")

        monkeypatch.setattr(store, "get", get_fails)
        job = store.claim_next()
        assert (job.id, job.status, job.parameters, job.seq) == (queued.id, RUNNING, queued.parameters, queued.seq)
        assert job.started_at is not None and store.claim_next() is None
        monkeypatch.undo()
        assert store.get(queued.id) == job


@pytest.mark.parametrize("code", sorted(folder_health.FULL_ERRNOS))
def test_a_png_that_does_not_fit_fails_the_job_with_the_full_disk_sentence(model, tmp_path, monkeypatch, code):
    # Broke: failure_reason without the ENOSPC/EDQUOT case (the reason was "OSError: [Errno 28] ...").
    def save_nothing(image, path, parameters):
        raise OSError(code, os.strerror(code))

    with opened(tmp_path / "state", min_free_bytes=0) as store, running(store, model) as worker:
        monkeypatch.setattr(worker_module, "save_png", save_nothing)
        failed = finished_job(store, queue_real(store, model, worker).id)
        assert failed.status == FAILED and failed.error == folder_health.full_sentence(store.state_dir)
        monkeypatch.undo()
        assert finished_job(store, queue_real(store, model, worker).id).status == SUCCEEDED


@pytest.mark.slow
def test_queued_jobs_wait_while_the_folder_is_short_of_space(model, tmp_path):
    # Broke: _run_next without the health check (the job ran and wrote into a folder below its reserve).
    with opened(tmp_path / "state", min_free_bytes=2**62) as store:
        health = store.health()
        assert health["status"] == "degraded" and "this server keeps in reserve" in health["reason"]
        assert health["free_bytes"] > 0
        with running(store, model) as worker:
            job = queue_real(store, model, worker)
            time.sleep(0.3)
            assert store.get(job.id).status == QUEUED
            store.folder_health.min_free_bytes = 0
            store.folder_health.forget()  # as if a second had passed
            assert finished_job(store, job.id).status == SUCCEEDED


def test_health_is_checked_at_most_once_a_second(tmp_path, monkeypatch):
    # Broke: health() without its cache (probed on every call).
    probes = []
    monkeypatch.setattr(folder_health, "_write_probe", lambda folder: probes.append(folder))
    with opened(tmp_path / "state", min_free_bytes=0) as store:
        for _ in range(50):
            assert store.health()["status"] == "ok"
        assert len(probes) == 2  # the state folder and outputs/ (no conditions/ yet), once


# ------------------------------------------------------------------------------- conditions

def test_conditions_are_kept_only_while_a_queued_running_or_succeeded_job_refers_to_them(tmp_path):
    # Broke: finish() without _release_conditions (the failed job's condition stayed), and
    # _referenced_conditions counting failed jobs (the same).
    with opened(tmp_path / "state") as store:
        shared, alone, refused = (str(save_condition(condition_image(seed), store.conditions)) for seed in range(3))
        kept = queue(store, condition=[shared])
        canceled = queue(store, condition=[shared, alone])
        assert {path.name for path in store.discard_conditions([refused])} == {Path(refused).name}

        store.request_cancel(canceled.id)  # queued: cancelled at once; `shared` is still needed
        assert Path(shared).is_file() and not Path(alone).exists()

        store.finish(store.claim_next().id, SUCCEEDED, output="x.png")
        assert store.discard_conditions([shared]) == [] and Path(shared).is_file()  # a succeeded job's

        failing = queue(store, condition=[save_condition(condition_image(3), store.conditions).as_posix()])
        store.finish(store.claim_next().id, FAILED, error="it broke")
        assert not Path(failing.parameters["condition"][0]).exists()
        assert store.get(kept.id).status == SUCCEEDED


def test_a_running_job_cancelled_loses_its_condition_and_a_pinned_one_stays(tmp_path):
    # Broke: discard_conditions ignoring pins (a request's condition, saved but not yet queued, was removed).
    with opened(tmp_path / "state") as store:
        path = str(store.save_condition(condition_image()))  # pinned until queued
        job = queue(store, condition=[path])
        assert store.condition_files.pinned() == set()
        store.claim_next()
        store.request_cancel(job.id)
        pinned = store.save_condition(condition_image())  # a second request sends the same image
        store.finish(job.id, CANCELED)
        assert pinned.is_file()  # held for the request that is about to queue it
        assert [path.name for path in store.discard_conditions([pinned])] == [pinned.name]
        assert not pinned.exists()
        assert store.discard_conditions(["/etc/passwd", "../jobs.sqlite3"]) == []
        assert (store.state_dir / "jobs.sqlite3").is_file()


def test_a_condition_is_encoded_without_the_lock(tmp_path):
    # Broke: ConditionFiles.save encoding the PNG inside its lock (no temporary file appeared
    # while another thread held the lock).
    with opened(tmp_path / "state") as store:
        store.conditions.mkdir()
        saved = []
        with store.condition_files._lock:
            thread = threading.Thread(target=lambda: saved.append(store.save_condition(condition_image())))
            thread.start()
            until(lambda: any(path.name.endswith(".tmp") for path in store.conditions.iterdir()), 5,
                  "the PNG encoded while the lock is held elsewhere")
            assert saved == []  # but not moved into place or pinned without the lock
        thread.join(5)
        [path] = saved
        assert path.is_file() and store.condition_files._pinned == {path.name: 1}
        assert [entry.name for entry in store.conditions.iterdir()] == [path.name]  # no temporary left


def test_a_condition_removed_before_its_pin_is_written_again(tmp_path):
    # The file was there when save_condition looked, and a cleanup removed it before the lock.
    # Broke: save_condition pinning without looking again under the lock (the pinned file was gone).
    with opened(tmp_path / "state") as store:
        path = save_condition(condition_image(), store.conditions)
        saved = []
        with store.condition_files._lock:
            thread = threading.Thread(target=lambda: saved.append(store.save_condition(condition_image())))
            thread.start()
            time.sleep(0.2)  # it has seen the file and waits for the lock
            path.unlink()
        thread.join(5)
        assert saved == [path] and path.is_file() and store.condition_files._pinned == {path.name: 1}
        assert [entry.name for entry in store.conditions.iterdir()] == [path.name]


def test_open_removes_what_a_crash_left(tmp_path):
    # Broke: open() without _sweep_leftovers.
    with opened(tmp_path / "state") as store:
        interrupted, needed, orphan = (save_condition(condition_image(seed), store.conditions) for seed in range(3))
        queue(store, condition=[str(interrupted)])
        store.claim_next()  # and the server stops while it runs
        done = queue(store)
        store.finish(store.claim_next().id, SUCCEEDED, output="done.png")
        queue(store, condition=[str(needed)])
        for name in ("done.png", "lost.png", ".lost.png.0123.tmp"):
            (store.outputs / name).write_bytes(b"png")
        (store.conditions / f".{needed.name}.0123.tmp").write_bytes(b"png")
    with opened(tmp_path / "state") as store:
        assert store.get(done.id).status == SUCCEEDED
        assert sorted(path.name for path in store.conditions.iterdir()) == [needed.name]
        assert sorted(path.name for path in store.outputs.iterdir()) == ["done.png"]


# ------------------------------------------------------------------------------- retention and delete

def finished_with_output(store, size: int, status=SUCCEEDED):
    job = queue(store)
    assert store.claim_next().id == job.id
    output = f"{job.id}.png" if status == SUCCEEDED else None
    if output is not None:
        (store.outputs / output).write_bytes(b"\0" * size)
    store.finish(job.id, status, output=output)
    return job


def test_retention_by_age_deletes_old_finished_jobs_only(model, tmp_path):
    # Broke: _finished_oldest_first without the status filter (the old queued job was deleted).
    with opened(tmp_path / "state", retention=parse_keep("1h")) as store:
        old, recent = finished_with_output(store, 10), finished_with_output(store, 10)
        old_failed = finished_with_output(store, 0, FAILED)
        old_queued = queue(store)
        for job in (old, old_failed, old_queued):
            age(store, job.id, 7200)
        store._change("UPDATE jobs SET created_at=? WHERE id=?", (time.time() - 7200, old_queued.id))
        assert store.apply_retention() == 2
        assert store.get(old.id) is None and store.get(old_failed.id) is None
        assert not (store.outputs / f"{old.id}.png").exists()
        assert store.get(recent.id).status == SUCCEEDED and store.get(old_queued.id).status == QUEUED
        age(store, recent.id, 7200)
    # the worker applies it when it starts
    with opened(tmp_path / "state", retention=parse_keep("1h"), min_free_bytes=0) as store:
        with running(store, model):
            until(lambda: store.get(recent.id) is None, 10, "retention at start")


def test_retention_by_bytes_deletes_the_oldest_finished_jobs_first(tmp_path):
    # Broke: apply_retention stopping before the first deletion (used compared before, not after).
    with opened(tmp_path / "state", retention=Retention(max_bytes=2500)) as store:
        jobs_made = [finished_with_output(store, 1000) for _ in range(4)]
        for index, job in enumerate(jobs_made):
            age(store, job.id, 100 - index)  # the first is the oldest
        condition = save_condition(PIL.Image.new("RGB", (64, 32), (1, 2, 3)), store.conditions)
        queued = queue(store, condition=[str(condition)])
        assert condition.stat().st_size < 500  # so 4000 + it bytes are within 2500 after two deletions
        assert store.apply_retention() == 2
        left = [job for job in jobs_made if store.get(job.id) is not None]
        assert left == jobs_made[len(jobs_made) - len(left):]  # the newest stay
        assert store._bytes_used() <= 2500 and store.get(queued.id).status == QUEUED and condition.is_file()


def test_retention_by_bytes_counts_only_what_it_can_delete(tmp_path):
    # A queued and a running job's conditions, a pinned one, leftovers and a stray file cannot be
    # deleted by retention: counting them deleted every finished job and the budget was still not met.
    # Broke: _bytes_used back on every file of outputs/ and conditions/ (all three jobs were deleted).
    with opened(tmp_path / "state", retention=Retention(max_bytes=2500)) as store:
        made = [finished_with_output(store, 1000) for _ in range(3)]
        for index, job in enumerate(made):
            age(store, job.id, 100 - index)
        big = [save_condition(condition_image(seed), store.conditions) for seed in range(2)]
        queue(store, condition=[str(big[0])])
        store.claim_next()  # running
        queue(store, condition=[str(big[1])])
        pinned = store.save_condition(condition_image(2))
        (store.outputs / ".probe-0123").write_bytes(b"\0" * 5000)
        (store.conditions / ".x.png.0123.tmp").write_bytes(b"\0" * 5000)
        assert sum(path.stat().st_size for path in (*big, pinned)) > 2500  # more than the budget alone
        assert store._bytes_used() == 3000
        assert store.apply_retention() == 1
        assert [store.get(job.id) is not None for job in made] == [False, True, True]
        assert all(path.is_file() for path in (*big, pinned)) and store._bytes_used() == 2000


def test_retention_by_bytes_counts_a_finished_jobs_condition_until_the_last_job_using_it_goes(tmp_path):
    # Broke: _bytes_used without the finished jobs' conditions (it stopped one job short of the budget).
    with opened(tmp_path / "state", retention=Retention(max_bytes=1500)) as store:
        condition = save_condition(condition_image(), store.conditions)
        size = condition.stat().st_size
        assert size > 1500  # the condition alone is over the budget: only deleting both jobs meets it
        made = []
        for index in range(2):
            job = queue(store, condition=[str(condition)])
            store.claim_next()
            store.finish(job.id, SUCCEEDED)
            age(store, job.id, 100 - index)
            made.append(job)
        assert store._bytes_used() == size
        assert store.apply_retention() == 2 and not condition.exists() and store._bytes_used() == 0


@pytest.fixture
def quick_retention(monkeypatch):
    monkeypatch.setattr(folder_health, "HEALTH_CACHE_SECONDS", 0.02)
    monkeypatch.setattr(worker_module, "DEGRADED_PAUSE_SECONDS", 0.02)
    monkeypatch.setattr(worker_module, "RETENTION_DEGRADED_SECONDS", 0.05)
    monkeypatch.setattr(worker_module, "RETENTION_IDLE_SECONDS", 0.05)


def test_retention_runs_while_the_folder_is_degraded_and_gives_it_its_reserve_back(model, tmp_path, monkeypatch,
                                                                                   quick_retention):
    # The lock-up of a small disk: below the reserve no job runs, and retention only ran after a job.
    # Broke: _run_next without the retention while degraded (the queued job waited for ever).
    with opened(tmp_path / "state", retention=Retention(max_bytes=50_000), min_free_bytes=0) as store:
        old = finished_with_output(store, 100_000)  # over the budget; the new job's PNG is within it
        old_output = store.outputs / f"{old.id}.png"
        check = store.folder_health._check_now
        monkeypatch.setattr(store.folder_health, "_check_now", lambda: folder_health._degraded("short of space", 0)
                            if old_output.exists() else check())
        retention = store.apply_retention
        monkeypatch.setattr(store, "apply_retention", lambda: 0)  # not at the worker's start: while degraded
        with running(store, model) as worker:
            job = queue_real(store, model, worker)
            time.sleep(0.3)
            assert store.get(job.id).status == QUEUED and store.health()["status"] == "degraded"
            monkeypatch.setattr(store, "apply_retention", retention)
            assert finished_job(store, job.id, 10).status == SUCCEEDED
            assert store.get(old.id) is None and not old_output.exists()


@pytest.mark.slow
def test_retention_while_degraded_runs_at_most_every_few_seconds(model, tmp_path, monkeypatch, quick_retention):
    # Broke: _apply_retention without its `every` (it ran on every look at the folder's health).
    monkeypatch.setattr(worker_module, "RETENTION_DEGRADED_SECONDS", 0.4)
    with opened(tmp_path / "state", retention=Retention(max_bytes=1000), min_free_bytes=2**62) as store:
        runs = []
        monkeypatch.setattr(store, "apply_retention", lambda: runs.append(time.monotonic()) or 0)
        with running(store, model):
            time.sleep(1.0)
        assert 2 <= len(runs) <= 4, runs  # at the start, then every 0.4 s (the health looked at every 0.02 s)


def test_an_idle_worker_applies_retention_by_age(model, tmp_path, quick_retention):
    # Broke: an idle worker waiting for a job without a timeout (the old job stayed).
    with opened(tmp_path / "state", retention=parse_keep("1h"), min_free_bytes=0) as store:
        # finished before the worker starts, so that the worker cannot claim it before the test does
        job = finished_with_output(store, 10)
        with running(store, model):
            time.sleep(0.1)  # idle, after the retention at the start (the job was young then)
            age(store, job.id, 7200)
            until(lambda: store.get(job.id) is None, 5, "retention on an idle worker")


def test_an_idle_worker_without_retention_sleeps_until_a_job_comes(model, tmp_path, monkeypatch, quick_retention):
    # Broke: _idle_timeout returning 0 without a retention (the worker looked for jobs in a busy loop).
    with opened(tmp_path / "state", min_free_bytes=0) as store:
        claim, claims = store.claim_next, []
        monkeypatch.setattr(store, "claim_next", lambda: claims.append(1) or claim())
        with running(store, model) as worker:
            time.sleep(0.3)
            assert len(claims) == 1
            assert finished_job(store, queue_real(store, model, worker).id, 10).status == SUCCEEDED


def test_delete_removes_a_finished_job_and_refuses_a_queued_one(tmp_path):
    # Broke: delete() without the finished check (a queued job vanished from under its worker).
    with opened(tmp_path / "state") as store:
        condition = str(save_condition(condition_image(), store.conditions))
        done = queue(store, condition=[condition])
        store.claim_next()
        (store.outputs / f"{done.id}.png").write_bytes(b"png")
        store.finish(done.id, SUCCEEDED, output=f"{done.id}.png")
        waiting = queue(store)
        with pytest.raises(JobNotFinished, match=f"Job {waiting.id} is queued: cancel it first"):
            store.delete(waiting.id)
        deleted = store.delete(done.id)
        assert deleted.id == done.id and deleted.status == SUCCEEDED and store.get(done.id) is None
        assert not (store.outputs / f"{done.id}.png").exists() and not Path(condition).exists()
        assert store.delete(done.id) is None and store.delete("no-such-job") is None


@pytest.mark.parametrize("text, expected", [
    ("7d", Retention(7 * 86400, None)), ("12h", Retention(43200, None)), ("30m", Retention(1800, None)),
    ("2GB", Retention(None, 2 * 10**9)), ("500MB", Retention(None, 5 * 10**8)), ("1.5GiB", Retention(None, 3 * 2**29)),
    ("7d,2GB", Retention(7 * 86400, 2 * 10**9)), (" 2gb , 12H ", Retention(43200, 2 * 10**9)),
])
def test_parse_keep_reads_ages_and_sizes(text, expected):
    assert parse_keep(text) == expected


@pytest.mark.parametrize("text", ["", "7", "0d", "-1h", "nan", "inf", "1e999d", "7x", "7d,1h", "1GB,2MB",
                                  "7d,2GB,1h", "d", "7 days"])
def test_parse_keep_refuses_anything_else_with_the_accepted_forms(text):
    # Broke: parse_keep without the positive-and-finite check ("1e999d" gave an infinite age).
    with pytest.raises(ValueError, match=r"--keep takes an age \(30m, 12h, 7d, 2w\), a size .* got") as error:
        parse_keep(text)
    assert str(error.value).count(". ") == 0  # one sentence


@pytest.mark.parametrize("text, expected", [
    ("64MB", 64 * 10**6), ("64MiB", DEFAULT_MIN_FREE_BYTES), ("1.5GiB", 3 * 2**29), (" 1gb ", 10**9),
    ("0", 0), ("0MB", 0), ("512B", 512),
])
def test_parse_min_free_reads_sizes_as_keep_does(text, expected):
    assert parse_min_free(text) == expected


@pytest.mark.parametrize("text", ["", "64", "-1MB", "7d", "nan", "1e999MB", "64MB,1GB", "64 megabytes", "0d"])
def test_parse_min_free_refuses_anything_else_in_one_sentence(text):
    with pytest.raises(ValueError, match=r"--min-free takes a size \(64MB, 1GB, 512MiB\), .* got") as error:
        parse_min_free(text)
    assert str(error.value).count(". ") == 0


@pytest.fixture
def serve_without_a_model(model, monkeypatch):
    """`serve` up to the app: no model loaded, no server run; returns what create_app was given."""
    import uvicorn

    from panosync.server import api

    made = {}
    monkeypatch.setattr(command, "_load", lambda args: made.setdefault("loaded", True) and model)
    monkeypatch.setattr(api, "create_app", lambda *args, **options: made.update(args=args, options=options))
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    return made


def test_serve_refuses_a_bad_min_free_in_one_sentence_before_loading(serve_without_a_model, tmp_path, capsys):
    # Broke: serve parsing --min-free after _load (the model was loaded first).
    assert main(["serve", "--port", "0", "--state-dir", str(tmp_path / "state"), "--min-free", "lots"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("panosync: error: --min-free takes a size") and error.count("\n") == 1, error
    assert serve_without_a_model == {}


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_a_host_or_port_that_cannot_be_listened_on_is_one_sentence_before_loading(command, tmp_path, capsys,
                                                                                  monkeypatch):
    """Once found by the web server after the model had loaded (uvicorn's OverflowError traceback for
    --port 99999, its exit 3 for a port in use)."""
    import socket

    from panosync.server import command as server_command

    loaded = []
    monkeypatch.setattr(server_command, "_load", lambda args: loaded.append(args))
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    where = ["--state-dir", str(tmp_path / "state")] if command == "serve" else ["--out-dir", str(tmp_path / "out")]
    cases = [(["--port", "99999"], "--port must be from 0 to 65535, got 99999."),
             (["--port", "-1"], "--port must be from 0 to 65535, got -1."),
             (["--host", "999.1.1.1"], "--host 999.1.1.1 is not an address this machine can listen on"),
             (["--port", str(taken)], f"Cannot listen on 127.0.0.1 port {taken}")]
    try:
        for options, sentence in cases:
            assert main([command, *where, *options]) == 2, options
            error = capsys.readouterr().err
            assert sentence in error and error.count("\n") == 1 and "Traceback" not in error, error
    finally:
        holder.close()
    assert loaded == []


def test_serve_passes_min_free_to_the_app_and_warns_when_the_disk_is_already_short(serve_without_a_model, tmp_path,
                                                                                   capsys):
    # Broke: serve without warn_if_short_of_space (no warning), and without min_free_bytes (the default went).
    state_dir = tmp_path / "state"
    assert main(["serve", "--port", "0", "--state-dir", str(state_dir), "--min-free", "0"]) == 0
    assert serve_without_a_model["options"]["min_free_bytes"] == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["serve", "--port", "0", "--state-dir", str(state_dir)]) == 0
    assert serve_without_a_model["options"]["min_free_bytes"] == DEFAULT_MIN_FREE_BYTES == jobs.JobStore(
        state_dir).folder_health.min_free_bytes

    more = shutil.disk_usage(state_dir).free + 10**12
    assert main(["serve", "--port", "0", "--state-dir", str(state_dir), "--min-free", f"{more}B"]) == 0
    error = capsys.readouterr().err
    warnings = [line for line in error.splitlines() if line.startswith("panosync: warning:")]
    assert len(warnings) == 1 and f"the state folder {state_dir} has " in warnings[0]
    assert f"under the --min-free reserve of {format_size(more)}:" in warnings[0] and "smaller --min-free" in warnings[0]
    assert serve_without_a_model["options"]["min_free_bytes"] == more and serve_without_a_model["loaded"]


# ------------------------------------------------------------------------------- file modes

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_and_conditions_follow_the_umask(tmp_path, umask):
    # Broke: save_png back on mkstemp (0600 whatever the umask).
    previous = os.umask(umask)
    try:
        png = save_png(PIL.Image.new("RGB", (8, 8)), tmp_path / "out.png", {"prompt": "x"})
        condition = save_condition(condition_image(), tmp_path / "conditions")
    finally:
        os.umask(previous)
    assert png.stat().st_mode & 0o777 == 0o666 & ~umask
    assert condition.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary left
