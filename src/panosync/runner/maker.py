"""One loaded model that makes panoramas: the unit of work every engine runs, here or on a Ray worker."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import PIL.Image

from ..geometry import Geometry
from ..input_images import ImageFile, loaded_regions
from ..ip_adapters import IpAdapterImageSpec, IpAdapterSpec
from ..loras import LoraSpec, TextualInversionSpec

# on_step(steps_done, sync_weight_of_that_step); an exception it raises stops the panorama there
StepCallback = Callable[[int, float], None]
# an engine's on_step(key, steps_done, sync_weight, worker): a task's progress, with where it runs
ProgressCallback = Callable[[object, int, float, dict], None]
# --threads: at most this many (a typo of a thousand times the cores is refused, not obeyed)
MAX_THREADS = 1024


def default_threads() -> int:
    """The threads torch computes on now, in this process: --threads when not given."""
    import torch

    return torch.get_num_threads()


def check_threads(threads, source: str = "--threads") -> int:
    """`threads` when it is a thread count, else a ValueError with one sentence (`source` names where
    it came from: the option, or a PNG's metadata)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        shown = repr(threads) if len(repr(threads)) <= 40 else repr(threads)[:40] + "…"
        raise ValueError(f"{source} must be a whole number from 1 to {MAX_THREADS}, got {shown}.")
    return threads


@contextlib.contextmanager
def computing_threads(threads: int | None, device):
    """Torch computes on `threads` threads inside, on a CPU `device` (put back after). On a CPU the
    picture depends on the thread count: the sums of the sync gradient's convolutions are split
    across the threads and round differently (torch.use_deterministic_algorithms does not change
    that), and the sync gradient amplifies the last bit into visible differences. So the count is
    a parameter of the panorama, recorded in its PNG. On a GPU it changes nothing (None: untouched)."""
    import torch

    if threads is None or torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class ModelSpec:
    """What to load, as `panosync generate` takes it: sent to every worker, which loads it itself."""

    model: str
    model_config: str | None = None
    vae: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    gradient_checkpointing: bool = False  # --gradient-checkpointing: less memory, more time
    loras: tuple[LoraSpec, ...] = ()  # checked (and hashed) by the front end; each worker loads them
    textual_inversions: tuple[TextualInversionSpec, ...] = ()
    ip_adapter: IpAdapterSpec | None = None  # checked by the front end, like the LoRAs; loaded after them
    ip_adapter_image: IpAdapterImageSpec | None = None  # the image prompt of every panorama (a path and its hash)
    # --threads: torch's threads on a CPU, a parameter of the picture there (computing_threads); None:
    # the count of the process that makes the spec (the driver), so that a Ray worker, whose own
    # default is one thread, computes as the local runner would
    threads: int | None = None

    def __post_init__(self):
        threads = default_threads() if self.threads is None else check_threads(self.threads)
        object.__setattr__(self, "threads", threads)


@dataclass
class Made:
    """A panorama and where and how it was made (for the PNG's metadata and the batch summary)."""

    image: PIL.Image.Image
    seconds: float  # the pipeline's own time
    device: str  # "cpu", "cuda"
    dtype: str  # the precision's name
    worker: dict = field(default_factory=dict)  # host, pid (and GPUs on Ray)
    threads: int | None = None  # torch's threads on a CPU, for the PNG's metadata (None on a GPU: no matter)


@dataclass
class Done:
    """What became of a task: `made`, or `error` (a sentence), or `canceled`."""

    key: object
    made: Made | None = None
    error: str | None = None
    canceled: bool = False


class TaskFailed(Exception):
    """A panorama a front end needed could not be made: the message says which and why."""


class Canceled(Exception):
    """Raised by a step callback to stop a panorama (a cancelled job)."""


def where() -> dict:
    """This process: the host and pid a task ran on."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


class PanoramaMaker:
    """`spec`'s pipeline, loaded once on construction, making one panorama per `make` call."""

    def __init__(self, spec: ModelSpec):
        from ..ip_adapters import load_ip_adapter
        from ..loras import load_loras, load_textual_inversions
        from ..models import load_pipeline, pick_device, resolve_model
        from ..precision import pick_precision

        self.spec = spec
        source = resolve_model(spec.model)
        device = pick_device(spec.device)
        self.precision = pick_precision(spec.dtype, device, source.family)
        self.pipe = load_pipeline(source, device, self.precision, config=spec.model_config, vae=spec.vae)
        load_textual_inversions(self.pipe, spec.textual_inversions)
        load_loras(self.pipe, spec.loras)
        self.lora_scales = {lora.adapter_name: lora.scale for lora in spec.loras}
        load_ip_adapter(self.pipe, spec.ip_adapter)
        # read here, on the worker, once: every panorama takes it
        self.image_prompt = spec.ip_adapter_image.load() if spec.ip_adapter_image is not None else None
        if spec.gradient_checkpointing:
            self.pipe.enable_sync_checkpointing()
        self.pipe.set_progress_bar_config(disable=True)
        self.device = device

    def geometry(self) -> Geometry:
        return self.pipe.geometry

    def runs_on(self) -> tuple[str, str]:
        """The device and the precision the pictures are made with: ("cuda", "float16")."""
        return self.device.type, self.precision.name

    def family_defaults(self, explicit=()) -> dict:
        """registry.family_defaults_after_loading: for a model whose family is known only now."""
        from ..registry import family_defaults_after_loading

        return family_defaults_after_loading(self.pipe, explicit)

    def make(self, call: dict, on_step: StepCallback | None = None) -> Made:
        """The panorama of `call` (SyncDiffusionPipeline's parameters, and optionally `lora_scales`,
        {adapter_name: scale}: the LoRAs' weights for this panorama only), with the spec's image prompt.
        An image input's `image` and `mask_image`, and a region's `mask`, may be PIL images, or files
        (input_images.ImageFile, a path and its SHA-256, as a batch's lines name them), read here, on
        the worker, and found unchanged (else a ValueError that says so), as the spec's image prompt
        is. Errors are the pipeline's."""
        from ..loras import apply_lora_scales

        def after_step(pipe, step, timestep, values):
            if on_step is not None:
                on_step(step + 1, float(values["sync_weight"]))

        call = dict(call)
        for name, value in call.items():
            if isinstance(value, ImageFile):
                call[name] = value.load()
        if call.get("regions"):
            call["regions"] = loaded_regions(call["regions"])
        scales = call.pop("lora_scales", None) or {}
        if self.image_prompt is not None:
            call["ip_adapter_image"] = self.image_prompt
        started = time.perf_counter()
        if scales:
            apply_lora_scales(self.pipe, scales, self.lora_scales)
        try:
            with computing_threads(self.spec.threads, self.device):
                image = self.pipe(**call, callback_on_step_end=after_step).images[0]
        finally:
            if scales:  # the next panorama is made at the spec's scales unless it says otherwise
                apply_lora_scales(self.pipe, {}, self.lora_scales)
        return Made(image, time.perf_counter() - started, self.device.type, self.precision.name, where(),
                    self.threads)

    @property
    def threads(self) -> int | None:
        """The thread count the pictures are made with: the spec's on a CPU, None on a GPU."""
        return self.spec.threads if self.device.type == "cpu" else None

    def attempt(self, key, call: dict, on_step: StepCallback | None = None) -> Done:
        """`make`, with whatever a task can cause caught into the Done: one bad task must not stop a
        batch, and on Ray an application error must not look like a dead worker (which is retried)."""
        try:
            return Done(key, made=self.make(call, on_step))
        except Canceled:
            return Done(key, canceled=True)
        except Exception as error:  # noqa: BLE001 — reported with the task, the next one runs
            return Done(key, error=describe_failure(error))

    def close(self) -> None:
        del self.pipe
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def describe_failure(error: BaseException) -> str:
    """A sentence for a task that failed: ours are sentences already; others get their type."""
    from ..precision import NonFiniteError

    text = str(error).strip()
    if isinstance(error, (ValueError, NonFiniteError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
