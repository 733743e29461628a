"""The engine of a Ray cluster: one actor per GPU (per `--workers` on a CPU), each loading the model
once, each running one task at a time; the driver (this process) hands out tasks and gets the
pictures back, and writes them itself, so only the model, not an output folder, must be reachable
from every node.

A worker whose process dies is started again by Ray (`max_restarts`), which loads the model again,
and the task it was running is sent to it again (`max_task_retries`): the batch completes. An
error of the task itself (a bad value, an overflow) is not retried: `PanoramaMaker.attempt` turns
it into the task's Done, so Ray sees a method that returned.
"""

from __future__ import annotations

import logging
import os
import re
import time

from .maker import Canceled, Done, ModelSpec, PanoramaMaker, ProgressCallback, TaskFailed, where

# A worker whose process dies is restarted, and its task retried, this many times; past that the
# task fails with a sentence (something kills it each time: out of memory, a broken GPU).
MAX_RESTARTS = 3
ADDRESS = re.compile(r"^(local|auto|ray://[\w.-]+(:\d+)?|[\w.-]+:\d+)$")
ADDRESS_WORDS = "local (start Ray here), auto (join the cluster this machine belongs to), or ray://HOST:PORT"
# How long a new engine waits for the resources of workers just stopped to be free again.
RELEASE_SECONDS = 15.0
# A local instance's shared-memory object store: pictures are a few MB, and the default (30% of
# the memory) would take from the workers' models what the pictures never need.
LOCAL_OBJECT_STORE_BYTES = 512 * 2**20


def add_cluster_options(parser) -> None:
    """--ray and --workers, for every command that can run on a Ray cluster."""
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help=f"make the panoramas on a Ray cluster: {ADDRESS_WORDS}; needs the cluster extra")
    parser.add_argument("--workers", type=int, default=None,
                        help="Ray workers, each loading the model once (default: one per GPU of the cluster, else 1)")


def check_cluster_options(address: str | None, workers: int | None, dtype: str | None = None,
                          device: str | None = None) -> None:
    """A ValueError with one sentence for a bad --ray or --workers, before anything starts; with
    --ray also for a --dtype or --device that is no such name (the workers pick the device itself,
    on their own machines: here only the names can be checked)."""
    if address is not None and dtype is not None:
        from ..precision import PRECISIONS

        if dtype not in PRECISIONS:
            raise ValueError(f"--dtype {dtype} is not a precision: use {', '.join(PRECISIONS)}.")
    if address is not None and device not in (None, "auto"):
        import torch

        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"--device {device} is not a device: use auto, cpu or cuda.") from None
        if parsed.index is not None:  # Ray gives each worker its own GPU, which it sees as cuda:0
            raise ValueError(f"--device {device} names one GPU, but on Ray each worker has its own: use --device cuda.")
    if workers is not None and address is None:
        raise ValueError("--workers counts Ray workers: give --ray too (--ray local starts Ray here).")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be 1 or more, got {workers}.")
    if address is not None and not ADDRESS.match(address):
        raise ValueError(f"--ray must be {ADDRESS_WORDS}, got {address!r}.")
    if address is not None:
        try:
            import ray  # noqa: F401
        except ModuleNotFoundError:
            raise ValueError("--ray needs Ray, which comes with the cluster extra: pip install "
                             "'panosync[cluster]'.") from None


def start_ray(address: str, workers: int | None) -> bool:
    """Connect to (or, for "local", start) Ray; False when this process already had (a test, or a
    program that embeds panosync), which then stops it itself."""
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address == "local":
        ray.init(num_cpus=max(workers or 1, os.cpu_count() or 1), include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
        return True
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as error:
        raise ValueError(f"Cannot join the Ray cluster at {address} ({error}): start one (ray start --head) or give "
                         f"its address.") from None
    return True


class PanoramaWorker:
    """A Ray actor: the model loaded once, one task at a time. It takes two calls at once
    (max_concurrency 2) so that `progress` and `cancel` are answered while `make` runs."""

    def __init__(self, spec: ModelSpec):
        import ray

        self.maker = PanoramaMaker(spec)
        self.place = {**where(), "gpus": [str(gpu) for gpu in ray.get_gpu_ids()]}
        self._steps: dict = {}
        self._canceled: set = set()

    def where(self) -> dict:
        return self.place

    def geometry(self):
        return self.maker.geometry()

    def family_defaults(self, explicit=()) -> dict:
        return self.maker.family_defaults(explicit)

    def runs_on(self) -> tuple[str, str]:
        return self.maker.runs_on()

    def make(self, key, call: dict) -> Done:
        def on_step(step: int, sync_weight: float) -> None:
            self._steps[key] = (step, sync_weight)
            if key in self._canceled:
                raise Canceled()

        try:
            done = self.maker.attempt(key, call, on_step)
        finally:
            self._steps.pop(key, None)
            self._canceled.discard(key)
        if done.made is not None:
            done.made.worker = self.place
        return done

    def progress(self) -> tuple[dict, dict]:
        """Where this worker runs (a restarted one has a new pid) and the steps of its task."""
        return self.place, dict(self._steps)

    def cancel(self, key) -> None:
        self._canceled.add(key)


class RayEngine:
    """Tasks on Ray workers, one at a time each; the same calls as runner.LocalEngine."""

    def __init__(self, spec: ModelSpec, address: str, workers: int | None = None,
                 on_step: ProgressCallback | None = None):
        check_cluster_options(address, workers)
        self.on_step = on_step
        self._started = start_ray(address, workers)
        try:
            self._start_workers(spec, workers)
        except BaseException:
            self.close()
            raise

    def _start_workers(self, spec: ModelSpec, workers: int | None) -> None:
        import ray

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        on_gpu = gpus > 0 and spec.device != "cpu"
        count = workers or (gpus if on_gpu else 1)
        # A worker Ray cannot place would wait for ever: say so instead (an autoscaling cluster
        # should have its nodes up before a batch starts).
        kind = "GPU" if on_gpu else "CPU"
        total, free = int(resources.get(kind, 0)), self._free(kind, count)
        if count > free:
            raise ValueError(f"--workers {count} needs {count} free {kind}s (one a worker), and the Ray cluster has "
                             f"{free} free of {total}: ask for fewer, or add nodes.")
        actor = ray.remote(PanoramaWorker).options(
            num_gpus=1 if on_gpu else 0, num_cpus=1, max_concurrency=2, max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS)
        self.actors = [actor.remote(spec) for _ in range(count)]
        try:  # every worker has loaded the model (a model a node cannot load fails here, before any task)
            self.places = ray.get([worker.where.remote() for worker in self.actors])
        except ray.exceptions.RayActorError as error:
            raise TaskFailed(f"A Ray worker could not load {spec.model}: {error}") from None
        self.slots = count
        self._idle = list(range(count))
        self._running: dict = {}  # ObjectRef of make -> (key, worker index)
        self._polls: dict = {}  # worker index -> ObjectRef of its progress call

    @staticmethod
    def _free(kind: str, wanted: int) -> int:
        """The free GPUs or CPUs, waiting a little for `wanted`: workers killed a moment ago (an
        engine just closed) give theirs back only when Ray has seen them go."""
        import ray

        deadline = time.monotonic() + RELEASE_SECONDS
        while True:
            free = int(ray.available_resources().get(kind, 0))
            if free >= wanted or time.monotonic() > deadline:
                return free
            time.sleep(0.2)

    @property
    def workers(self) -> list[dict]:
        return list(self.places)

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def free(self) -> int:
        if not self._idle and not self._running:
            raise TaskFailed(f"Every Ray worker died more than {MAX_RESTARTS} times: no task can run.")
        return len(self._idle)

    def geometry(self):
        import ray

        return ray.get(self.actors[0].geometry.remote())

    def family_defaults(self, explicit=()) -> dict:
        import ray

        return ray.get(self.actors[0].family_defaults.remote(set(explicit)))

    def runs_on(self) -> tuple[str, str]:
        """The device and precision of the workers (the first one's: all load the same spec)."""
        import ray

        return ray.get(self.actors[0].runs_on.remote())

    def submit(self, key, call: dict) -> None:
        index = self._idle.pop(0)
        self._running[self.actors[index].make.remote(key, call)] = (key, index)

    def cancel(self, key) -> None:
        for running, index in list(self._running.values()):  # called from other threads (a server's)
            if running == key:
                self.actors[index].cancel.remote(key)

    def wait(self, timeout: float | None = None) -> list[Done]:
        """What became of the tasks that ended within `timeout` seconds (none, maybe); on the way,
        each running task's progress goes to on_step."""
        import ray

        if not self._running:
            return []
        refs = list(self._running)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        dones = []
        for ref in ready:
            key, index = self._running.pop(ref)
            try:
                dones.append(ray.get(ref))
                self._idle.append(index)
            except ray.exceptions.ActorDiedError as error:  # past its restarts: never idle again
                dones.append(Done(key, error=f"its Ray worker died while making it, and again after each of its "
                                             f"{MAX_RESTARTS} restarts ({error})"))
            except ray.exceptions.RayActorError as error:  # died, its retries spent; restarted, it takes more
                self._idle.append(index)
                dones.append(Done(key, error=f"its Ray worker died while making it, and the retries were spent "
                                             f"({error})"))
        self._report_progress()
        return dones

    def _report_progress(self) -> None:
        """Ask each busy worker for its steps (one call outstanding at a time) and pass on the answers."""
        import ray

        busy = {index for _, index in self._running.values()}
        for index in busy:
            if index not in self._polls:
                self._polls[index] = self.actors[index].progress.remote()
        answered, _ = ray.wait(list(self._polls.values()), num_returns=len(self._polls), timeout=0)
        for index, ref in list(self._polls.items()):
            if ref not in answered:
                continue
            del self._polls[index]
            try:
                place, steps = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            self.places[index] = place
            if self.on_step is not None and index in busy:
                for key, (step, sync_weight) in steps.items():
                    self.on_step(key, step, sync_weight, place)

    def close(self) -> None:
        """Stop the workers (and Ray, when this engine started it): they hold the model's memory."""
        import ray

        for actor in getattr(self, "actors", []):
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self._started:
            ray.shutdown()
