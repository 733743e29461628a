"""`serve --ray`: the worker that hands the store's jobs to Ray workers (runner.cluster.RayEngine),
as many at once as there are (one per GPU), instead of running them in this process.

The SQLite store stays the truth, as with one worker: a job is claimed (running) when it is handed
out, recorded when its picture comes back, and written here by the server (the outputs folder
need not be shared with the Ray workers: a job's image input and its regions' masks are read here,
from the state folder, and handed to the worker as pictures). A stop cancels the running jobs after their current step
and fails them as interrupted; queued jobs stay queued for the next start, which fails any job a
crash left running (JobStore.open), as today.
"""

from __future__ import annotations

import logging

import torch

from .. import settings
from ..metadata import save_png
from ..runner import Done, TaskFailed
from .generation import PanoramaModel, image_inputs, region_inputs
from .jobs import CANCELED, FAILED, INTERRUPTED, SUCCEEDED, Job, JobStore, failure_reason
from .worker import DEGRADED_PAUSE_SECONDS, RETENTION_DEGRADED_SECONDS, RETENTION_IDLE_SECONDS, Worker

log = logging.getLogger("panosync.server")

# How long the worker waits for a Ray job to end before it looks for new jobs (and progress) again.
POLL_SECONDS = 0.2


class WorkersModel(PanoramaModel):
    """The model as the Ray workers loaded it, for the server that hands them its jobs: what the
    request checks and the PNGs' metadata need (the geometry, the defaults, the device), asked of a
    worker. No pipeline is loaded here: the server's machine need not hold a copy of the weights
    (FLUX's are tens of GB), nor have a GPU."""

    def __init__(self, name: str, engine, model_config: str | None = None, view_batch_size: int | None = None,
                 source=None, loras: tuple = (), textual_inversions: tuple = ()):
        from ..models import resolve_model

        source = source or resolve_model(name)  # models.ModelSource, when the caller has it already
        defaults = settings.model_defaults(source)
        if source.family is None:  # a hub model whose configs could not be had here: the workers say its family
            defaults.update(engine.family_defaults())
        self.pipe = None
        self.threads = None  # each picture says its workers' (Made.threads)
        self.loras, self.textual_inversions = tuple(loras), tuple(textual_inversions)  # the workers loaded them
        self._device, self._dtype = engine.runs_on()
        self._family = source.family  # None: a hub model's, known only to the workers
        self._describe(engine.geometry(), name, defaults, model_config, view_batch_size, None)

    @property
    def device(self) -> torch.device:
        return torch.device(self._device)

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def inpainting_model(self) -> bool:
        return False  # an inpainting model's requests without an image fail on the worker, with its sentence

    def first_step(self):
        """The family's first_step (None where only the workers know the family: they check it)."""
        from ..schedulers import first_step_of_family

        return None if self._family is None else first_step_of_family(self._family)

    def generate(self, parameters: dict, on_step=None):
        raise TypeError("The Ray workers make this model's panoramas: hand the job to the engine (RayWorker).")


class RayWorker(Worker):
    """Runs the queued jobs of a store on an engine's workers, oldest first, several at once.
    `model` checks requests and describes the PNGs here; `engine` makes the pictures."""

    def __init__(self, store: JobStore, model: PanoramaModel, engine):
        super().__init__(store, model)
        self.engine = engine
        engine.on_step = self._on_step
        self._jobs: dict[str, Job] = {}  # handed out, not yet back
        self._workers_lost = False  # every Ray worker is gone: said once in the log

    def _on_step(self, job_id, step: int, sync_weight: float, worker: dict) -> None:
        try:
            self.store.record_step(job_id, step, sync_weight)
        except Exception:  # progress is a courtesy: a busy store must not lose the job
            log.warning("could not record the progress of job %s", job_id)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._jobs:
                self.engine.cancel(job_id)

    def _run_next(self) -> None:
        self._wake.clear()
        healthy = self._folder_healthy()
        if healthy:
            self._hand_out()
        if self._jobs:
            for done in self.engine.wait(POLL_SECONDS):
                self._finish(done)
            return
        if not healthy:
            self._apply_retention(every=RETENTION_DEGRADED_SECONDS)
            self._stopping.wait(DEGRADED_PAUSE_SECONDS)
            return
        self._apply_retention(every=RETENTION_IDLE_SECONDS)
        self._wake.wait(self._idle_timeout())

    def _hand_out(self) -> None:
        """Claim a queued job for every free Ray worker, oldest first. When no Ray worker is left
        (each died past its restarts), every queued job fails with that sentence, once each, rather
        than waiting for workers that will not come back: the server must be restarted."""
        while not self._stopping.is_set():
            try:
                if self.engine.free() == 0:
                    return
            except TaskFailed as error:
                self._fail_queued(str(error))
                return
            job = self.store.claim_next()
            if job is None:
                return
            call = {name: job.parameters[name] for name in settings.PIPELINE_NAMES}
            if job.parameters.get("lora_scales"):  # the maker sets them for this panorama only
                call["lora_scales"] = job.parameters["lora_scales"]
            try:  # the image input's and regions' pictures, from the state folder (which the workers need not see)
                call.update(image_inputs(job.parameters), regions=region_inputs(job.parameters.get("regions")))
            except Exception as error:  # gone or changed since it was checked: this job fails, the next runs
                log.error("job %s failed: %s", job.id, error)
                self._record(job, FAILED, dict(error=failure_reason(error, self.store.state_dir)))
                continue
            with self._lock:
                self._jobs[job.id] = job
                self.engine.submit(job.id, call)
            if self.store.get(job.id).cancel_requested:  # asked between the claim and now
                self.engine.cancel(job.id)

    def _fail_queued(self, reason: str) -> None:
        if not self._workers_lost:
            log.error("%s Queued and new jobs fail until the server is restarted.", reason)
            self._workers_lost = True
        while (job := self.store.claim_next()) is not None:
            self._record(job, FAILED, dict(error=f"{reason} Restart the server."))

    def _finish(self, done: Done) -> None:
        with self._lock:
            job = self._jobs.pop(done.key)
        self._record(job, *self._outcome_of(job, done))
        self._apply_retention()

    def _outcome_of(self, job: Job, done: Done) -> tuple[str, dict]:
        if done.canceled:
            return (FAILED, dict(error=INTERRUPTED)) if self._stopping.is_set() else (CANCELED, {})
        if done.made is None:
            log.error("job %s failed: %s", job.id, done.error)
            return FAILED, dict(error=done.error)
        made = done.made
        try:
            output = f"{job.id}.png"
            metadata = {**self.model.metadata(job.parameters, made.image), "device": made.device, "dtype": made.dtype,
                        **({"threads": made.threads} if made.threads is not None else {})}  # the workers' count
            save_png(made.image, self.store.outputs / output, metadata)
            return SUCCEEDED, dict(output=output, pipeline_seconds=made.seconds)
        except Exception as error:
            log.exception("job %s failed", job.id)
            return FAILED, dict(error=failure_reason(error, self.store.state_dir))

    def stop(self) -> None:
        """Stop handing out jobs; the running ones stop after their current step and are failed as
        interrupted (as with one worker; one that ended first is kept), so the engine is idle for
        a next start."""
        super().stop()
        with self._lock:
            for job_id in self._jobs:
                self.engine.cancel(job_id)
        while self._jobs:  # each ends within a step: canceled (interrupted), or made just before
            for done in self.engine.wait(POLL_SECONDS):
                self._finish(done)
