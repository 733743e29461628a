"""The GPU check (issue 12): half precision, speed and peak memory of SyncDiffusion panoramas with
Stable Diffusion 2 base's architecture and random weights (they cost exactly what the real ones
cost), measured in one run of a few minutes on a bare GPU machine.

    bash benchmarks/gpu_check.sh                           # the GPU machine (installs .gpu-bundle first)
    python benchmarks/gpu_check.py --smoke --out /tmp/gc   # the same code at a tiny size, on the CPU

Parts, in the order they run (most wanted first):

correctness  a synced panorama in float16, under autocast (float32 weights, float16 arithmetic:
             the reference's precision) and in bfloat16 is finite and not flat; MultiDiffusion
             (sync weight 0) in each against float32: the largest and mean pixel difference.
speed        at 512×2048, then (last, with whatever time is left) 512×3072, float16: seconds per
             synced and per plain step of the reference order (tests/reference_loop.py), faithful
             mode at each view batch size tried (the best marked), MultiDiffusion, diffusers'
             StableDiffusionPanoramaPipeline and each fast mode of speed.py's `modes()`.
memory       the peak memory of one synced step (faithful mode, float16) and of the final decode
             (tiled and in one piece) at 512×8192 and 2048×2048.
backbones    other families' architectures with random weights, in the precision their users run
             (SDXL base: float16, 1024×4096 and 2048×2048 at a quarter-window stride): seconds per
             synced and per plain step of faithful mode, and the peak memory of the whole panorama.
flow transformers  (flow_check.py; last, with the time left, or alone: --only flow) SD3.5 medium's
             and FLUX.1-dev's architectures in bfloat16 at 1024×4096: seconds per synced and plain
             step, faithful and no_unet_backward, and each run's peak memory.

Per-step times: every panorama of the speed parts takes a few steps, synced in the first half; each
step is timed (the device synchronised in callback_on_step_end) and the median of the synced and of
the plain steps is kept, the first step left out (it includes the prompt and first-call warm-up).
The totals for 50 steps in the tables are derived from those per-step times, not measured.

Every run is guarded: a failure is recorded and the check goes on; a run expected to outlast its
part's budget or the global deadline is skipped, and so is a part that finds no time left, each
saying so. GPU.md and GPU.json are rewritten after every run, so a run cut short keeps its results.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import math
import platform
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# panosync from this checkout; speed.py beside this file; tests/reference_loop.py, the reference order
sys.path[:0] = [str(HERE), str(HERE.parent / "src"), str(HERE.parent / "tests")]

from speed import (  # noqa: E402
    PROMPT, diffusers_panorama, modes, peak_memory, reset_peak_memory, sd2_base_components, sdxl_base_components,
    taesd_shaped_decoder, write_atomically,
)

GIB = 2**30
TARGET_BYTES = 24 * 10**9  # "within 24 GB": a 24 GB card, less room for the CUDA context and the allocator's cache
TARGET_SPEEDUP = 3.0  # faithful mode (best chunk) against the reference order, per synced step, float16


@dataclass(frozen=True)
class Backbone:
    """Another family's architecture, measured in the backbones part."""

    name: str
    build: Callable[[bool], object]  # smoke -> the family's SyncDiffusion pipeline, random weights, on the CPU
    precision: str
    canvases: tuple[tuple[int, int], ...]  # (height, width) in pixels
    stride: int  # latent pixels between views
    # FLOPs of a synced and of a plain view-step against SD 2 base's (benchmarks/COST.md), to judge what fits
    synced_cost: float
    plain_cost: float


def sdxl_pipeline(smoke: bool):
    from panosync.xl import SyncDiffusionXLPipeline

    return SyncDiffusionXLPipeline(**sdxl_base_components(smoke))


@dataclass(frozen=True)
class Plan:
    """Sizes and step counts of one run of the check: the GPU's, or the smoke test's (tiny, CPU)."""

    smoke: bool
    device: str
    height: int  # one window, in pixels
    speed_widths: tuple[int, ...]
    stride: int  # latent pixels between views
    steps: int  # of every timed panorama of the speed parts
    synced_steps: int  # ... synced in the first this many (at least 2: the first step's time is left out)
    chunks: tuple[int, ...]  # faithful mode's view batch sizes tried
    correctness_width: int
    correctness_steps: int
    correctness_synced: int
    precisions: tuple[str, ...]  # checked against float32 in the correctness part
    speed_precision: str  # of the speed and memory parts
    memory_canvases: tuple[tuple[int, int], ...]  # (height, width) in pixels
    deadline_s: float  # from the start of the script
    budgets: dict = field(default_factory=dict)  # seconds per part; a part not named gets what is left
    # Seconds per view of a synced and of a plain step before any is measured, to judge whether a run
    # fits in the time left (GPU: FLOPs of faithful mode's passes, ~14.4 and ~1.6 TFLOP a view, at
    # ~120 TFLOP/s; smoke: measured on a 2-core CPU).
    synced_view_s: float = 0.12
    plain_view_s: float = 0.015
    backbones: tuple[Backbone, ...] = ()
    backbone_steps: int = 3  # each synced in the first 2: one synced step timed (the first is left out), one plain


def gpu_plan(deadline_s: float) -> Plan:
    return Plan(smoke=False, device="cuda", height=512, speed_widths=(2048, 3072), stride=16, steps=6, synced_steps=3,
                chunks=(16, 8, 4, 1), correctness_width=2048, correctness_steps=20, correctness_synced=4,
                precisions=("float16", "autocast", "bfloat16"), speed_precision="float16",
                memory_canvases=((512, 8192), (2048, 2048)), deadline_s=deadline_s,
                budgets={"correctness": 90, "gradient": 40, "speed 512x2048": 110, "memory": 80, "backbones": 100},
                backbones=(Backbone("SDXL base", sdxl_pipeline, "float16", ((1024, 4096), (2048, 2048)), stride=32,
                                    synced_cost=6.2, plain_cost=8.4),))


def smoke_plan(deadline_s: float) -> Plan:
    """The same code in seconds on a CPU: speed.py's smoke model (128-pixel windows), 2 to 4 views a half
    window apart, few steps. float16 and autocast are left out and the speed parts run in float32: a
    CPU's float16 kernels are 20-40 times slower than its float32 ones (LPIPS-VGG's forward and
    backward at 128 pixels: 14 s against 0.3 s on this project's 2-core machines); bfloat16's are not."""
    return Plan(smoke=True, device="cpu", height=128, speed_widths=(192, 256), stride=8, steps=3, synced_steps=2,
                chunks=(4, 1), correctness_width=192, correctness_steps=3, correctness_synced=2,
                precisions=("bfloat16",), speed_precision="float32",
                memory_canvases=((128, 256), (192, 192)), deadline_s=deadline_s, synced_view_s=1.0, plain_view_s=0.05,
                backbones=(Backbone("SDXL (tiny)", sdxl_pipeline, "float32", ((128, 256), (192, 192)), stride=8,
                                    synced_cost=1.0, plain_cost=1.0),))


# ------------------------------------------------------------------------------------- the clock


class Interrupted(Exception):
    """SIGTERM (the wrapper's hard timeout): stop, keeping what was measured."""


class Clock:
    """The global deadline, and the end of the part running now (its budget, or the deadline)."""

    def __init__(self, seconds: float):
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.part_ends = self.deadline

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def start_part(self, budget: float | None) -> None:
        self.part_ends = self.deadline if budget is None else min(self.deadline, time.monotonic() + budget)

    def part_left(self) -> float:
        return self.part_ends - time.monotonic()


class CostModel:
    """The seconds a run is expected to take, from the per-view step times measured so far: only used
    to skip a run that would not finish in time."""

    def __init__(self, plan: Plan):
        self.synced_view_s, self.plain_view_s = plan.synced_view_s, plan.plain_view_s

    def learn(self, views: int, row: dict) -> None:
        """From a faithful float16 run (the speed parts' yardstick)."""
        if row.get("synced_step_s"):
            self.synced_view_s = row["synced_step_s"] / views
        if row.get("plain_step_s"):
            self.plain_view_s = row["plain_step_s"] / views

    def seconds(self, views: int, synced: int, plain: int, slower: float = 1.0) -> float:
        """`slower`: how many times slower than faithful float16 at its best chunk this run is thought to be."""
        return slower * views * (synced * self.synced_view_s + plain * self.plain_view_s)


# ------------------------------------------------------------------------------------- the report


class Report:
    """GPU.json and GPU.md, rewritten after every run so that a check cut short keeps its results."""

    def __init__(self, out: Path, plan: Plan, clock: Clock):
        self.out, self.plan, self.clock = out, plan, clock
        self.data = dict(environment={}, plan=asdict(plan), parts={}, finished=False)

    def part(self, name: str) -> dict:
        part = dict(status="running", runs=[], skipped=[], seconds=None, notes=[])
        self.data["parts"][name] = part
        self.save()
        return part

    def save(self) -> None:
        self.data["environment"]["seconds_so_far"] = round(self.clock.elapsed(), 1)
        for name, part in self.data["parts"].items():
            if name.startswith("speed"):
                derive_speed_figures(part["runs"])
        self.out.mkdir(parents=True, exist_ok=True)
        write_atomically(self.out / "GPU.json", json.dumps(self.data, indent=2, default=str) + "\n")
        try:
            text = markdown(self.data)
        except Exception:  # the figures are safe in GPU.json; a bug in the tables must not stop the check
            text = f"# GPU check\n\nGPU.md could not be written (the figures are in GPU.json):\n\n```\n" \
                   f"{traceback.format_exc()}```"
        write_atomically(self.out / "GPU.md", text + "\n")


def environment(plan: Plan) -> dict:
    try:
        return describe_machine(plan)
    except Exception as error:
        return dict(error=f"{type(error).__name__}: {error}", smoke=plan.smoke)


def describe_machine(plan: Plan) -> dict:
    import diffusers

    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
                smoke=plan.smoke)
    if plan.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    device_memory_gib=round(properties.total_memory / GIB, 1),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads")
    return info


# ------------------------------------------------------------------------------------- pipelines


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def built_on(device: str, build: Callable):
    """What `build()` makes, its weights initialised on `device` itself (initialising a model of a
    billion parameters or more on a CPU takes tens of seconds); on the CPU where some constructor does
    not honour the default device, for the caller to move."""
    try:
        with torch.device(device):
            return build()
    except Exception:
        return build()


def build_pipelines(plan: Plan, dtypes: tuple[torch.dtype, ...]) -> dict:
    """One SyncDiffusionPipeline per weights dtype, all with the same random weights. The float32
    weights are made on the device itself: initialising the 865 M-parameter UNet on a CPU takes tens
    of seconds; the others are copies of them, cast."""
    from diffusers import DDIMScheduler

    from panosync.pipeline import SyncDiffusionPipeline

    components = built_on(plan.device, lambda: sd2_base_components(plan.smoke))
    # the scheduler's tables stay on the CPU, where diffusers keeps them
    components["scheduler"] = DDIMScheduler.from_config(components["scheduler"].config)
    pipelines = {}
    for dtype in dtypes:
        own = components if dtype == torch.float32 else {name: copy.deepcopy(part) for name, part in components.items()}
        pipe = SyncDiffusionPipeline(**own).to(plan.device, dtype)
        pipe.set_progress_bar_config(disable=True)
        pipe.perceptual_distance()  # LPIPS loaded now, not in the first timed run
        pipelines[dtype] = pipe
    return pipelines


def precision_of(name: str, device: str):
    """(weights dtype, autocast dtype or None) of a precision name: float32, float16, bfloat16, autocast."""
    from panosync.precision import pick_precision

    precision = pick_precision(name, device)
    return precision.weights, precision.autocast


@contextlib.contextmanager
def exact_float32():
    """TF32 off for matrix products and convolutions (CUDA turns it on for convolutions by default), so that
    float32 is float32 where the half precisions are compared with it."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@contextlib.contextmanager
def computing_in(pipe, autocast: torch.dtype | None):
    """The pipeline's calls under torch.autocast when `autocast` is a dtype (its weights stay float32)."""
    if autocast is None:
        yield
        return
    pipe.enable_autocast(autocast)
    try:
        yield
    finally:
        pipe.disable_autocast()


def canvas_noise(pipe, height: int, width: int) -> torch.Tensor:
    """Seed 0's initial latent, drawn on the CPU as the reference draws it."""
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_factor, width // pipe.vae_factor)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def view_count(pipe, height: int, width: int, stride: int) -> int:
    from panosync.views import views_for_canvas

    return len(views_for_canvas(height // pipe.vae_factor, width // pipe.vae_factor, pipe.window, stride))


def default_chunk(pipe, views: int, device: str) -> int:
    from panosync.chunks import default_view_batch_size

    return default_view_batch_size(device, pipe.window * pipe.vae_factor, views)


# ------------------------------------------------------------------------------------- timed runs


class StepTimes:
    """The wall-clock time at the end of every denoising step, the device synchronised first."""

    def __init__(self, device: str):
        self.device = device
        synchronize(device)
        self.started = time.perf_counter()
        self.ends: list[float] = []

    def mark(self, *_) -> dict:
        synchronize(self.device)
        self.ends.append(time.perf_counter())
        return {}  # callback_on_step_end: nothing to change

    def summary(self, synced: int) -> dict:
        """Medians of the synced steps and of the plain ones, the first step left out; the time after
        the last step (the final decode); the whole call."""
        synchronize(self.device)
        finished = time.perf_counter()
        durations = np.diff([self.started, *self.ends])
        synced_times, plain_times = durations[1:synced], durations[max(1, synced):]
        return dict(synced_step_s=float(np.median(synced_times)) if len(synced_times) else None,
                    plain_step_s=float(np.median(plain_times)) if len(plain_times) else None,
                    first_step_s=float(durations[0]) if len(durations) else None,
                    decode_s=finished - self.ends[-1] if self.ends else None, seconds=finished - self.started)


def image_figures(image) -> dict:
    image = np.asarray(image, dtype=np.float32)
    finite = bool(np.isfinite(image).all())
    return dict(finite=finite, image_std=float(np.nanstd(image)) if finite else None)


def run_pipeline(pipe, plan: Plan, height: int, width: int, steps: int, synced: int | None, autocast=None,
                 stride: int | None = None, **options) -> tuple[dict, np.ndarray]:
    """One panorama of our pipeline, timed step by step. `synced`: sync in the first this many steps
    (None: every step); `stride` defaults to the plan's; options go to the call (sync_weight,
    view_batch_size, fast modes...)."""
    times = StepTimes(plan.device)
    with computing_in(pipe, autocast):
        image = pipe(PROMPT, width=width, height=height, stride=stride or plan.stride, num_inference_steps=steps,
                     sync_threshold=synced, latents=canvas_noise(pipe, height, width).to(plan.device),
                     output_type="np", callback_on_step_end=times.mark, **options).images[0]
    synced_count = 0 if options.get("sync_weight") == 0 else (steps if synced is None else min(synced, steps))
    return dict(times.summary(synced_count), **image_figures(image)), image


def run_reference(pipe, plan: Plan, height: int, width: int, lpips) -> dict:
    """The reference implementation's order (tests/reference_loop.py), timed step by step."""
    from reference_loop import reference_panorama

    times = StepTimes(plan.device)
    latent = reference_panorama(pipe, PROMPT, "", width, height, canvas_noise(pipe, height, width),
                                sync_threshold=plan.synced_steps, num_inference_steps=plan.steps, stride=plan.stride,
                                lpips=lpips, on_step_end=times.mark)
    with torch.no_grad():
        image = pipe.decode_panorama(latent, loop_closure=False)[0].permute(1, 2, 0).float().cpu().numpy()
    return dict(times.summary(plan.synced_steps), **image_figures(image))


def run_diffusers(pipe, plan: Plan, height: int, width: int, chunk: int) -> dict:
    """diffusers' MultiDiffusion pipeline on the same components and views, timed step by step."""
    other = diffusers_panorama(pipe)
    other.view_stride = plan.stride
    times = StepTimes(plan.device)
    image = other(prompt=PROMPT, width=width, height=height, num_inference_steps=plan.steps,
                  latents=canvas_noise(pipe, height, width).to(plan.device, pipe.unet.dtype), view_batch_size=chunk,
                  output_type="np", callback_on_step_end=times.mark).images[0]
    return dict(times.summary(0), **image_figures(image))


def one_step_sync_gradient(pipe, step: int, device: str, scaled: bool = True, steps: int = 30) -> torch.Tensor:
    """The sync gradient (float64, on the CPU) of the outer views of a 3-view canvas at DDIM step `step`
    of `steps`, as the pipeline's loop computes it; `scaled=False` leaves the sync loss unscaled."""
    import panosync.pipeline as pipeline_module
    from panosync.fast import SyncShortcuts
    from panosync.views import crop, views_for_canvas

    window = pipe.window
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, pipe.unet.config.in_channels, window, 2 * window, generator=generator).to(device)
    views = views_for_canvas(window, 2 * window, window, window // 2)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps[step]
    shortcuts = SyncShortcuts()
    original_scale = pipeline_module.half_precision_loss_scale
    if not scaled:
        pipeline_module.half_precision_loss_scale = lambda pixels: 1.0
    try:
        with torch.no_grad(), pipe.autocast_context(device):
            embeddings = pipe.encode_prompt(PROMPT, "", device)

            def noise_of(x, batch_views):
                return pipe.guided_noise(x, t, embeddings, 7.5, batch_views)

            anchor = crop(latents, views[1])
            original = scheduler.step(noise_of(anchor, [views[1]]), t, anchor).pred_original_sample
            perceptual = pipe.perceptual_distance()
            target = perceptual.target_features(pipe.foreseen_image(original, shortcuts) * 2 - 1)
            batch = [views[0], views[2]]
            x = torch.cat([crop(latents, view) for view in batch])
            gradient, _ = pipe.sync_gradient_and_noise(x, t, batch, noise_of,
                                                       lambda images: perceptual(images * 2 - 1, target), shortcuts,
                                                       scheduler)
    finally:
        pipeline_module.half_precision_loss_scale = original_scale
    return gradient.double().cpu()


def derived_totals(row: dict, syncs: bool, step_fraction: float, sync_first: int = 10, steps: int = 50) -> dict:
    """Seconds of a whole panorama of `steps` steps (× step_fraction), synced in every step and in the
    first `sync_first`, derived from the measured per-step and decode times (prompt encoding left out)."""
    steps, sync_first = round(steps * step_fraction), round(sync_first * step_fraction)
    synced_s, plain_s, decode_s = row.get("synced_step_s"), row.get("plain_step_s"), row.get("decode_s") or 0.0
    if not syncs:
        total = None if plain_s is None else steps * plain_s + decode_s
        return dict(total_every_step_s=total, total_first_10_s=total, derived_steps=steps)
    every = None if synced_s is None else steps * synced_s + decode_s
    first = None
    if synced_s is not None and plain_s is not None:
        first = sync_first * synced_s + (steps - sync_first) * plain_s + decode_s
    return dict(total_every_step_s=every, total_first_10_s=first, derived_steps=steps)


def derive_speed_figures(runs: list[dict]) -> None:
    """Each speed row's derived 50-step totals and its synced step's speed-up over the reference order
    (recomputed whenever the report is written: the reference may be measured after a row)."""
    rows = [row for row in runs if not row.get("error")]
    reference = next((row for row in rows if row["mode"] == "reference"), None)
    for row in rows:
        row.update(derived_totals(row, row["syncs"], row.get("step_fraction", 1.0)))
        if reference and row.get("synced_step_s") and reference.get("synced_step_s"):
            row["synced_step_speedup_over_reference"] = reference["synced_step_s"] / row["synced_step_s"]


# ------------------------------------------------------------------------------------- the check


class Check:
    def __init__(self, plan: Plan, out: Path, only: list[str] | None):
        self.plan, self.only = plan, only
        self.clock = Clock(plan.deadline_s)
        self.report = Report(out, plan, self.clock)
        self.costs = CostModel(plan)
        self.pipelines: dict = {}
        self.best_chunk: int | None = None
        self.part_data: dict = {}

    # ---- guarding

    def attempt(self, label: str, expected_s: float, work: Callable[[], dict], **about) -> dict | None:
        """Run `work` unless it is expected to outlast the time left; record its row or its failure."""
        left = self.clock.part_left()
        if expected_s > left:
            reason = f"expected {expected_s:.0f} s, {max(0.0, left):.0f} s left (part budget or global deadline)"
            self.part_data["skipped"].append(dict(run=label, reason=reason))
            print(f"  skipped {label}: {reason}", flush=True)
            self.report.save()
            return None
        row = dict(run=label, **about)
        started = time.perf_counter()
        try:
            row.update(work())
            row["error"] = None
        except Interrupted:
            raise
        except Exception as error:  # a failure is a result: record it and go on
            from panosync.precision import NonFiniteError

            row["error"] = f"{type(error).__name__}: {error}"
            if isinstance(error, NonFiniteError):
                row["finite"] = False
            else:
                row["traceback"] = traceback.format_exc(limit=-4)
        row["wall_s"] = time.perf_counter() - started
        free_memory(self.plan.device)
        self.part_data["runs"].append(row)
        self.report.save()
        try:
            print("  " + one_line(row), flush=True)
        except Exception:
            print(f"  {label}: {row}", flush=True)
        return row

    def part(self, name: str, work: Callable[[], None]) -> None:
        if self.only and name != "setup" and not any(name.startswith(prefix) for prefix in self.only):
            return
        self.part_data = self.report.part(name)
        if self.clock.left() < 5:
            self.part_data["status"] = "skipped: the global deadline has passed"
            print(f"{name}: skipped, the global deadline has passed", flush=True)
            self.report.save()
            return
        self.clock.start_part(self.plan.budgets.get(name))
        print(f"{name} (budget {self.clock.part_left():.0f} s) ...", flush=True)
        started = time.perf_counter()
        try:
            work()
            skipped = len(self.part_data["skipped"])
            self.part_data["status"] = "done" + (f", {skipped} run(s) skipped for time" if skipped else "")
        except Interrupted:
            self.part_data["status"] = "interrupted (SIGTERM): the runs above are complete"
            raise
        except Exception as error:
            self.part_data["status"] = f"failed: {type(error).__name__}: {error}"
            self.part_data["traceback"] = traceback.format_exc(limit=-6)
            print(self.part_data["traceback"], flush=True)
        finally:
            self.part_data["seconds"] = time.perf_counter() - started
            self.report.save()

    # ---- the parts

    def run(self) -> None:
        plan = self.plan
        self.report.data["environment"] = environment(plan)
        print(json.dumps(self.report.data["environment"]), flush=True)
        self.part("setup", self.setup)
        with exact_float32():  # the float32 references of these two parts: true float32, not TF32
            self.part("correctness", self.correctness)
            self.part("gradient", self.gradient)
        # the rest measures one precision's pipeline alone: its memory is what a user's GPU holds
        self.drop_pipelines(keep=precision_of(plan.speed_precision, plan.device)[0])
        first, *others = plan.speed_widths
        self.part(f"speed {plan.height}x{first}", lambda: self.speed(first))
        self.part("memory", self.memory)
        self.part("backbones", self.backbones)
        for width in others:
            self.part(f"speed {plan.height}x{width}", lambda width=width: self.speed(width))
        # SD3.5 medium and FLUX.1 (flow_check.py): last, with the SD pipelines dropped; alone with --only flow
        self.drop_pipelines(keep=None)
        self.part("flow transformers", self.flow)
        self.report.data["finished"] = True
        self.report.save()

    def setup(self) -> None:
        from panosync.lpips import load_lpips

        plan = self.plan
        started = time.perf_counter()
        weights = [precision_of(name, plan.device)[0] for name in ("float32", *plan.precisions, plan.speed_precision)]
        dtypes = tuple(dict.fromkeys(weights))  # float32 first: the others are copies of its weights
        self.pipelines = build_pipelines(plan, dtypes)
        self.lpips = load_lpips("vgg")  # the reference order's own LPIPS
        pipe = self.speed_pipeline()
        self.part_data["notes"].append(
            f"{', '.join(str(dtype).removeprefix('torch.') for dtype in dtypes)} pipelines built in "
            f"{time.perf_counter() - started:.1f} s; UNet "
            f"{sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.0f} M parameters, window {pipe.window} latents, "
            f"VAE factor {pipe.vae_factor}")

    def flow(self) -> None:
        import flow_check

        flow_check.flow_part(self)

    def speed_pipeline(self):
        return self.pipelines[precision_of(self.plan.speed_precision, self.plan.device)[0]]

    def drop_pipelines(self, keep: torch.dtype) -> None:
        self.pipelines = {dtype: pipe for dtype, pipe in self.pipelines.items() if dtype == keep}
        free_memory(self.plan.device)

    def correctness(self) -> None:
        plan = self.plan
        height, width = plan.height, plan.correctness_width
        steps, synced = plan.correctness_steps, plan.correctness_synced
        views = view_count(self.speed_pipeline(), height, width, plan.stride)
        self.part_data["notes"].append(
            f"{height}×{width}, {views} views, {steps} DDIM steps; synced runs sync in the first {synced} (the "
            f"steps of largest x̂₀ amplification), weight 20; MultiDiffusion runs have sync weight 0")
        images = {}

        def panorama(precision: str, sync: bool) -> Callable[[], dict]:
            def work() -> dict:
                weights, autocast = precision_of(precision, plan.device)
                options = {} if sync else dict(sync_weight=0.0)
                row, image = run_pipeline(self.pipelines[weights], plan, height, width, steps, synced, autocast,
                                          **options)
                if not sync:
                    images[precision] = image
                    if precision != "float32" and "float32" in images:
                        difference = np.abs(image.astype(np.float64) - images["float32"])
                        row.update(max_abs_difference_to_float32=float(difference.max()),
                                   mean_abs_difference_to_float32=float(difference.mean()))
                if sync and row.get("image_std") is not None and "float32" in images:
                    # flat: next to no spread, where float32's MultiDiffusion image of the same model has some
                    row["not_flat"] = row["image_std"] > 0.1 * float(np.std(images["float32"]))
                return row

            return work

        slower = {"float32": 1.0 if plan.smoke else 4.0, "autocast": 1.5}
        jobs = [("float32", False), *[(precision, sync) for precision in plan.precisions for sync in (True, False)]]
        for precision, sync in jobs:
            synced_count = synced if sync else 0
            expected = self.costs.seconds(views, synced_count, steps - synced_count, slower.get(precision, 1.0)) + 5
            name = f"{'SyncDiffusion' if sync else 'MultiDiffusion'}, {precision}"
            self.attempt(name, expected, panorama(precision, sync), precision=precision, synced=sync)

    def gradient(self) -> None:
        """One step's sync gradient of the two outer views of a three-view canvas, in each precision
        against float32's: cosine and norm ratio, at a step of high noise and one of low; float16 also
        with the loss unscaled, to show what the pipeline's loss scale keeps (at 512² float16 would
        flush most of each pixel's share of an averaged loss to zero)."""
        plan = self.plan
        self.part_data["notes"].append(
            "one window high, two wide (3 views at a half-window stride, the centre one the anchor); DDIM, 30 steps; "
            "the gradient of steps 4 and 21 (index 3 and 20); faithful mode (through the UNet)")
        references = {}
        cases = [("float32", True), *[(name, True) for name in plan.precisions], ("float16", False)]
        for step in (3, 20):
            for precision, scaled in cases:
                if precision == "float16" and plan.smoke:
                    continue  # the CPU's float16 convolutions take minutes at this size

                def work(precision=precision, scaled=scaled, step=step) -> dict:
                    weights, autocast = precision_of(precision, plan.device)
                    with computing_in(self.pipelines[weights], autocast):
                        gradient = one_step_sync_gradient(self.pipelines[weights], step, plan.device, scaled)
                    if precision == "float32":
                        references[step] = gradient
                        return dict(norm=float(gradient.norm()), finite=bool(torch.isfinite(gradient).all()))
                    reference = references[step]
                    return dict(cosine_to_float32=float(gradient.flatten() @ reference.flatten()
                                                        / (gradient.norm() * reference.norm())),
                                norm_ratio_to_float32=float(gradient.norm() / reference.norm()),
                                zero_share=float((gradient == 0).double().mean()),
                                finite=bool(torch.isfinite(gradient).all()))

                label = f"step {step + 1}, {precision}" + ("" if scaled else ", loss unscaled")
                self.attempt(label, 20 if plan.smoke else 5, work, precision=precision, scaled=scaled, step=step + 1)

    def speed(self, width: int) -> None:
        plan, pipe = self.plan, self.speed_pipeline()
        height, steps, synced = plan.height, plan.steps, plan.synced_steps
        views = view_count(pipe, height, width, plan.stride)
        self.part_data.update(views=views, default_chunk=default_chunk(pipe, views, plan.device))
        self.part_data["notes"].append(
            f"{height}×{width}, {views} views at stride {plan.stride}, {plan.speed_precision}; each run {steps} DDIM "
            f"steps synced in the first {synced}; per-step times are medians without the first step")
        about = dict(precision=plan.speed_precision, width=width, height=height)

        def timed(**options) -> Callable[[], dict]:
            return lambda: run_pipeline(pipe, plan, height, width, steps, synced, **options)[0]

        # faithful mode at each view batch size, largest first (the default chunk is the largest)
        faithful = []
        for chunk in sorted({min(chunk, views) for chunk in plan.chunks}, reverse=True):
            slower = 1.0 if chunk > 1 else 2.0
            row = self.attempt(f"faithful, {per_call(chunk)}",
                               self.costs.seconds(views, synced, steps - synced, slower), timed(view_batch_size=chunk),
                               mode="faithful", chunk=chunk, syncs=True, **about)
            if row and not row["error"]:
                faithful.append(row)
        chunk = default_chunk(pipe, views, plan.device)
        if faithful:
            best = min(faithful, key=lambda row: row["synced_step_s"] or math.inf)
            best["best_chunk"] = True
            chunk = best["chunk"]
            self.best_chunk = self.best_chunk or chunk  # the first canvas's: the memory part measures it
            self.costs.learn(views, best)
        self.part_data["chunk_for_other_modes"] = chunk

        self.attempt("reference order (tests/reference_loop.py)",
                     self.costs.seconds(views, synced, steps - synced, 2.5),
                     lambda: run_reference(pipe, plan, height, width, self.lpips), mode="reference", chunk=1,
                     syncs=True, **about)
        self.attempt("MultiDiffusion (sync_weight 0)", self.costs.seconds(views, 0, steps),
                     timed(sync_weight=0.0, view_batch_size=chunk), mode="multidiffusion", chunk=chunk, syncs=False,
                     **about)
        for batch in sorted({1, chunk}):
            self.attempt(f"diffusers StableDiffusionPanoramaPipeline, view_batch_size {batch}",
                         self.costs.seconds(views, 0, steps, 2.0 if batch == 1 else 1.0),
                         lambda batch=batch: run_diffusers(pipe, plan, height, width, batch), mode="diffusers",
                         chunk=batch, syncs=False, **about)
        decoder = None
        for mode in modes():
            if not mode.name.startswith("fast:"):
                continue
            options = dict(mode.options)
            if options.get("sync_decoder") == "random-taesd":
                decoder = decoder or taesd_shaped_decoder(pipe.vae_factor).to(plan.device, pipe.vae.dtype)
                options["sync_decoder"] = decoder
            self.attempt(mode.name, self.costs.seconds(views, synced, steps - synced), timed(view_batch_size=chunk,
                         **options), mode=mode.name, chunk=chunk, syncs=True, step_fraction=mode.step_fraction, **about)


    def memory(self) -> None:
        plan, pipe = self.plan, self.speed_pipeline()
        canvases = plan.memory_canvases
        chunks = {}
        for height, width in canvases:
            views = view_count(pipe, height, width, plan.stride)
            default = default_chunk(pipe, views, plan.device)
            chunks[(height, width)] = list(dict.fromkeys(c for c in (default, self.best_chunk, 1) if c))
        self.part_data["notes"].append(
            f"{plan.speed_precision}, faithful mode, stride {plan.stride}; peak = torch.cuda.max_memory_allocated() "
            f"after a reset, every weight held ({plan.speed_precision} pipeline only: UNet, VAE, text encoder, "
            f"LPIPS); not counted: the CUDA context and the allocator's cache" if plan.device == "cuda" else
            "CPU smoke run: peak = the process's peak resident memory (VmHWM, reset first)")

        def synced_step(height, width, chunk) -> Callable[[], dict]:
            def work() -> dict:
                held = reset_peak_memory(plan.device)
                times = StepTimes(plan.device)
                latent = pipe(PROMPT, width=width, height=height, stride=plan.stride, num_inference_steps=1,
                              sync_threshold=None, latents=canvas_noise(pipe, height, width).to(plan.device),
                              view_batch_size=chunk, output_type="latent", callback_on_step_end=times.mark).images
                figures = times.summary(0)
                return dict(peak_bytes=peak_memory(plan.device), held_before_bytes=held, seconds=figures["seconds"],
                            finite=bool(torch.isfinite(latent).all()))

            return work

        def decode(height, width, tiled, tiles_per_call) -> Callable[[], dict]:
            def work() -> dict:
                latent = canvas_noise(pipe, height, width).to(plan.device)
                held = reset_peak_memory(plan.device)
                started = time.perf_counter()
                with torch.no_grad():
                    image = pipe.decode_panorama(latent, loop_closure=False, tiled=tiled,
                                                 tiles_per_call=tiles_per_call)
                synchronize(plan.device)
                return dict(peak_bytes=peak_memory(plan.device), held_before_bytes=held,
                            seconds=time.perf_counter() - started, finite=bool(torch.isfinite(image).all()))

            return work

        def step_runs(chunk_choice: Callable[[list[int]], list[int]]) -> None:
            for height, width in canvases:
                views = view_count(pipe, height, width, plan.stride)
                for chunk in chunk_choice(chunks[(height, width)]):
                    slower = 2.0 if chunk == 1 else 1.0
                    self.attempt(f"one synced step, {height}×{width}, {per_call(chunk)}",
                                 self.costs.seconds(views, 1, 0, slower) + 2, synced_step(height, width, chunk),
                                 what="synced step", short=f"synced step at {per_call(chunk)}",
                                 canvas=f"{height}x{width}", chunk=chunk, views=views)

        # most wanted first: a synced step at the chunk a user gets, and the decodes; other chunks after
        step_runs(lambda options: options[:1])
        for height, width in canvases:
            as_pipeline = chunks[(height, width)][0]  # the pipeline decodes a chunk's worth of tiles per call
            for tiled, tiles, label in ((True, 1, "tiled, 1 tile per call"),
                                        (True, as_pipeline, f"tiled as the pipeline does ({as_pipeline} per call)"),
                                        (False, 1, "in one piece")):
                self.attempt(f"final decode {height}×{width}, {label}", 10, decode(height, width, tiled, tiles),
                             what="decode", short=f"final decode {label}", canvas=f"{height}x{width}", tiled=tiled,
                             tiles_per_call=tiles)
        step_runs(lambda options: options[1:])
        self.part_data["largest_chunk_within_24GB"] = largest_chunk_within(self.part_data["runs"], TARGET_BYTES)
        self.report.save()

    def backbones(self) -> None:
        """Each other family's architecture alone on the device (the SD 2 pipelines wait on the CPU, so
        that the peak is the family's own): a panorama per canvas, timed step by step, its peak memory."""
        plan = self.plan
        parked = list(self.pipelines.values())
        for pipe in parked:
            pipe.to("cpu")
        free_memory(plan.device)
        try:
            for family in plan.backbones:
                self.backbone(family)
                free_memory(plan.device)  # the family's pipeline went with backbone()'s frame
        finally:
            for pipe in parked:
                pipe.to(plan.device)

    def backbone(self, family: Backbone) -> None:
        plan = self.plan
        weights, autocast = precision_of(family.precision, plan.device)
        steps, synced = plan.backbone_steps, plan.backbone_steps - 1
        built = {}

        def build() -> dict:
            started = time.perf_counter()
            pipe = built_on(plan.device, lambda: family.build(plan.smoke)).to(plan.device, weights)
            pipe.set_progress_bar_config(disable=True)
            pipe.perceptual_distance()
            built["pipe"] = pipe
            return dict(seconds=time.perf_counter() - started, finite=True,
                        unet_parameters=sum(p.numel() for p in pipe.unet.parameters()))

        self.attempt(f"{family.name}: build, {family.precision}", 60 if not plan.smoke else 20, build,
                     family=family.name, what="build")
        pipe = built.get("pipe")
        if pipe is None:
            return
        self.part_data["notes"].append(
            f"{family.name}: {family.precision}, window {pipe.window} latents ({pipe.window * pipe.vae_factor} px), "
            f"stride {family.stride}; each panorama {steps} DDIM steps synced in the first {synced}, faithful mode at "
            f"the device's view batch size; peak = the whole panorama's, its weights included")

        def panorama(height: int, width: int) -> Callable[[], dict]:
            def work() -> dict:
                held = reset_peak_memory(plan.device)
                row, _ = run_pipeline(pipe, plan, height, width, steps, synced, autocast, stride=family.stride)
                return dict(row, peak_bytes=peak_memory(plan.device), held_before_bytes=held)

            return work

        for height, width in family.canvases:
            views = view_count(pipe, height, width, family.stride)
            expected = views * (synced * family.synced_cost * self.costs.synced_view_s
                                + (steps - synced) * family.plain_cost * self.costs.plain_view_s) + 10
            self.attempt(f"{family.name} {height}×{width}, {views} views", expected, panorama(height, width),
                         family=family.name, what="panorama", canvas=f"{height}x{width}", views=views,
                         precision=family.precision)


def largest_chunk_within(runs: list[dict], limit: int) -> dict | None:
    """Memory grows linearly with the views per call: from two synced-step peaks of one canvas, the
    largest chunk whose synced step stays within `limit` bytes (derived, not measured)."""
    by_canvas: dict[str, dict[int, int]] = {}
    for row in runs:
        if row.get("what") == "synced step" and not row.get("error"):
            by_canvas.setdefault(row["canvas"], {})[row["chunk"]] = row["peak_bytes"]
    derived = {}
    for canvas, peaks in by_canvas.items():
        if len(peaks) < 2:
            continue
        (small, small_peak), (large, large_peak) = sorted(peaks.items())[0], sorted(peaks.items())[-1]
        per_view = (large_peak - small_peak) / (large - small)
        fixed = small_peak - per_view * small
        derived[canvas] = dict(bytes_per_view=per_view, fixed_bytes=fixed,
                               largest_chunk=max(0, int((limit - fixed) // per_view)) if per_view > 0 else None)
    return derived or None


# ------------------------------------------------------------------------------------- writing


def per_call(views: int) -> str:
    return f"{views} view{'' if views == 1 else 's'} per call"


def seconds_text(value) -> str:
    return "–" if value is None else (f"{value:.3f}" if value < 10 else f"{value:.1f}")


def one_line(row: dict) -> str:
    if row.get("error"):
        return f"{row['run']}: FAILED {row['error'][:300]}"
    parts = [f"{key}={seconds_text(row[key])}" for key in ("synced_step_s", "plain_step_s", "decode_s", "seconds")
             if row.get(key) is not None]
    if row.get("peak_bytes") is not None:
        parts.append(f"peak={row['peak_bytes'] / GIB:.2f} GiB")
    for key in ("finite", "image_std", "max_abs_difference_to_float32", "mean_abs_difference_to_float32"):
        if row.get(key) is not None:
            parts.append(f"{key}={row[key]:.3g}" if isinstance(row[key], float) else f"{key}={row[key]}")
    return f"{row['run']}: " + ", ".join(parts)


def markdown(data: dict) -> str:
    env, parts = data["environment"], data["parts"]
    title = "# GPU check: half precision, speed and memory" + (" (SMOKE RUN: tiny model on the CPU)" if env.get("smoke")
                                                               else "")
    lines = [title, "",
             f"{env.get('device', '?')}; torch {env.get('torch', '?')}"
             + (f" (CUDA {env['cuda']})" if env.get("cuda") else "")
             + f", diffusers {env.get('diffusers', '?')}, Python {env.get('python', '?')}; {env.get('date', '?')}; "
               f"{env.get('seconds_so_far', 0):.0f} s so far"
             + ("" if data.get("finished") else " (not finished: a run still going, or cut short)") + ".",
             "",
             ("A tiny model of Stable Diffusion 2 base's shape (speed.py's smoke size), float32 where the GPU's "
              "check runs float16: this run only shows that the check works." if env.get("smoke") else
              "Stable Diffusion 2 base's architecture (UNet 865 M parameters, VAE, OpenCLIP-H-sized text encoder) "
              "with random weights, built by benchmarks/speed.py's `sd2_base_components`: the same cost as the real "
              "model.") + " Prompt “snowy mountains”, guidance 7.5, sync weight 20, decay 0.95, seed 0. Written by "
             "benchmarks/gpu_check.py.", "",
             *headline(parts), ""]
    for name, part in parts.items():
        lines += [f"## {name}", "", f"Status: {part['status']}"
                  + (f"; {part['seconds']:.0f} s" if part.get("seconds") is not None else "") + ".", ""]
        lines += [f"- {note}" for note in part.get("notes", [])]
        if part.get("notes"):
            lines.append("")
        runs = part.get("runs", [])
        if name == "correctness":
            lines += correctness_table(runs)
        elif name == "gradient":
            lines += gradient_table(runs)
        elif name.startswith("speed"):
            lines += speed_table(runs, part)
        elif name == "memory":
            lines += memory_table(runs, part)
        elif name == "backbones":
            lines += backbones_table(runs)
        elif name.startswith("flow"):
            import flow_check

            lines += flow_check.flow_table(runs)
        failed = [row for row in runs if row.get("error")]
        lines += [f"- failed: {row['run']}: {row['error'][:500]}" for row in failed]
        lines += [f"- skipped: {row['run']}: {row['reason']}" for row in part.get("skipped", [])]
        if failed or part.get("skipped"):
            lines.append("")
    lines += notes(data["plan"]["speed_precision"])
    return "\n".join(lines)


def headline(parts: dict) -> list[str]:
    lines = ["## Headline", ""]
    correctness = parts.get("correctness", {}).get("runs", [])
    for row in correctness:
        if row.get("synced"):
            verdict = "FAILED" if row.get("error") or not row.get("finite") or row.get("not_flat") is False else "ok"
            detail = row.get("error") or f"finite {row.get('finite')}, image std {row.get('image_std') or 0:.3g}, " \
                                         f"not flat {row.get('not_flat')}"
            lines.append(f"- Synced panorama in {row['precision']}: {verdict} ({detail[:200]}).")
        elif row.get("max_abs_difference_to_float32") is not None:
            largest, mean = row["max_abs_difference_to_float32"], row["mean_abs_difference_to_float32"]
            lines.append(f"- MultiDiffusion {row['precision']} against float32: largest pixel difference "
                         f"{largest:.3g}, mean {mean:.3g} (pixels in [0, 1]).")
    for row in parts.get("gradient", {}).get("runs", []):
        if row.get("cosine_to_float32") is not None:
            lines.append(f"- Sync gradient, {row['run']}: cosine to float32's {row['cosine_to_float32']:.3f}, norm "
                         f"ratio {row['norm_ratio_to_float32']:.3f}.")
    for name, part in parts.items():
        if not name.startswith("speed"):
            continue
        runs = [row for row in part.get("runs", []) if not row.get("error")]
        best = next((row for row in runs if row.get("best_chunk")), None)
        reference = next((row for row in runs if row.get("mode") == "reference"), None)
        if best and reference and best.get("synced_step_s") and reference.get("synced_step_s"):
            ratio = reference["synced_step_s"] / best["synced_step_s"]
            lines.append(f"- {name}: faithful mode ({per_call(best['chunk'])}) {best['synced_step_s']:.3f} s per "
                         f"synced step, the reference order {reference['synced_step_s']:.3f} s: {ratio:.2f}× — the "
                         f"{TARGET_SPEEDUP:g}× target is {'met' if ratio >= TARGET_SPEEDUP else 'NOT met'}.")
    memory = parts.get("memory", {})
    measured = [row for row in memory.get("runs", []) if row.get("peak_bytes") is not None and not row.get("error")]
    for canvas in dict.fromkeys(row["canvas"] for row in measured):
        rows = sorted((row for row in measured if row["canvas"] == canvas), key=lambda row: row["what"] == "decode")
        figures = [f"{row['short']} {row['peak_bytes'] / GIB:.2f} GiB"
                   + ("" if row["peak_bytes"] <= TARGET_BYTES else " (OVER 24 GB)") for row in rows]
        lines.append(f"- Peak memory at {canvas.replace('x', '×')}: " + "; ".join(figures) + ".")
    for canvas, derived in (memory.get("largest_chunk_within_24GB") or {}).items():
        if derived["largest_chunk"] is not None:
            lines.append(f"- {canvas.replace('x', '×')}: each view more per call adds about "
                         f"{derived['bytes_per_view'] / GIB:.2f} GiB to a synced step; the largest chunk within 24 GB "
                         f"is about {derived['largest_chunk']} views (derived from two chunks' peaks).")
    not_done = [f"{name} ({part['status']})" for name, part in parts.items() if part["status"] != "done"]
    failed = [f"{row['run']}" for part in parts.values() for row in part.get("runs", []) if row.get("error")]
    if failed:
        lines.append(f"- Failed runs (errors under their parts): {'; '.join(failed)}.")
    if not_done:
        lines.append(f"- Not done: {'; '.join(not_done)}.")
    return lines


def correctness_table(runs: list[dict]) -> list[str]:
    lines = ["| run | finite | image std | not flat | max abs Δ to float32 | mean abs Δ to float32 | s / synced step | "
             "s / plain step |", "|---|---|---|---|---|---|---|---|"]
    for row in runs:
        if row.get("error") and not row.get("finite") is False:
            continue

        def figure(key, digits=".3g"):
            return "–" if row.get(key) is None else format(row[key], digits)

        lines.append(f"| {row['run']} | {row.get('finite', '–')} | {figure('image_std')} | "
                     f"{row.get('not_flat', '–')} | "
                     f"{figure('max_abs_difference_to_float32')} | {figure('mean_abs_difference_to_float32')} | "
                     f"{seconds_text(row.get('synced_step_s'))} | {seconds_text(row.get('plain_step_s'))} |")
    return lines + [""]


def gradient_table(runs: list[dict]) -> list[str]:
    lines = ["| run | cosine to float32 | norm ratio to float32 | share of exact zeros | finite |", "|---|---|---|---|---|"]
    for row in runs:
        if row.get("error"):
            continue

        def figure(key):
            return "–" if row.get(key) is None else f"{row[key]:.4f}"

        lines.append(f"| {row['run']} | {figure('cosine_to_float32')} | {figure('norm_ratio_to_float32')} | "
                     f"{figure('zero_share')} | {row.get('finite')} |")
    return lines + [""]


def speed_table(runs: list[dict], part: dict) -> list[str]:
    lines = ["| mode | views per call | s / synced step | s / plain step | final decode s | 50 steps, sync in every "
             "step (derived) s | 50 steps, sync in the first 10 (derived) s | synced step × faster than the reference "
             "order | finite |", "|---|---|---|---|---|---|---|---|---|"]
    for row in runs:
        if row.get("error"):
            continue
        speedup = row.get("synced_step_speedup_over_reference")
        steps = "" if row.get("derived_steps", 50) == 50 else f" ({row['derived_steps']} steps)"
        lines.append(f"| {row['run']}{' **(best)**' if row.get('best_chunk') else ''} | {row['chunk']} | "
                     f"{seconds_text(row.get('synced_step_s'))} | {seconds_text(row.get('plain_step_s'))} | "
                     f"{seconds_text(row.get('decode_s'))} | {seconds_text(row.get('total_every_step_s'))}{steps} | "
                     f"{seconds_text(row.get('total_first_10_s'))}{steps} | "
                     f"{'–' if speedup is None else f'{speedup:.2f}'} | {row.get('finite')} |")
    return lines + [""]


def memory_table(runs: list[dict], part: dict) -> list[str]:
    lines = ["| work | peak GiB | held before GiB | peak above that GiB | s | finite |", "|---|---|---|---|---|---|"]
    for row in runs:
        if row.get("error"):
            continue
        lines.append(f"| {row['run']} | {row['peak_bytes'] / GIB:.2f} | {row['held_before_bytes'] / GIB:.2f} | "
                     f"{(row['peak_bytes'] - row['held_before_bytes']) / GIB:.2f} | {seconds_text(row['seconds'])} | "
                     f"{row['finite']} |")
    return lines + [""]


def backbones_table(runs: list[dict]) -> list[str]:
    lines = ["| family | canvas | views | synced step (s) | plain step (s) | final decode (s) | peak memory |",
             "|---|---|---|---|---|---|---|"]
    for row in runs:
        if row.get("what") != "panorama" or row.get("error"):
            continue
        peak = f"{row['peak_bytes'] / GIB:.1f} GiB" if row.get("peak_bytes") is not None else "?"
        lines.append(f"| {row['family']}, {row['precision']} | {row['canvas']} | {row['views']} | "
                     f"{seconds_text(row.get('synced_step_s'))} | {seconds_text(row.get('plain_step_s'))} | "
                     f"{seconds_text(row.get('decode_s'))} | {peak} |")
    return lines + [""]


def notes(precision: str) -> list[str]:
    return [line.replace("{precision}", precision) for line in NOTES]


NOTES = [
    "## Notes", "",
    "- Per-step times are medians of steps timed one by one (the device synchronised at the end of each step), the "
    "first step of every run left out (prompt encoding, first-call warm-up). The 50-step totals are DERIVED from them: "
    "50 × synced step + decode, and 10 × synced + 40 × plain + decode (dpm_solver rows: 25 steps, 5 synced); the "
    "prompt encoding is left out.",
    "- The reference order is tests/reference_loop.py, run on the {precision} pipeline (networks in {precision}, "
    "arithmetic between them in float32): one view at a time, the anchor's gradient computed and discarded, LPIPS's "
    "own forward for every pair, a second UNet pass for every view.",
    "- The fast modes run at the view batch size faithful mode did best with; what each approximates is in "
    "src/panosync/fast.py. The sync decoder is a TAESD-shaped AutoencoderTiny with random weights: it times the "
    "decoder, its panoramas mean nothing.",
    "- Not flat: the synced image's standard deviation is more than a tenth of float32 MultiDiffusion's on the same "
    "model (random weights make no picture, but they do make one that varies).",
]


# ------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny SD-2-shaped model on the CPU, in seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for GPU.md and GPU.json (default: benchmarks/; --smoke: a new temporary folder)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which the parts left are skipped (default: GPU 480, smoke 600)")
    parser.add_argument("--only", nargs="*", default=None, help="only the parts whose names start with these")
    args = parser.parse_args(argv)

    if args.smoke:
        out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-smoke-"))
        if out.resolve() == HERE:
            parser.error("--smoke never writes benchmarks/GPU.md: give another --out folder")
        plan = smoke_plan(args.deadline or 600)
        # One thread: two-thread OpenMP on a machine busy with other work spins and stalls, making
        # steps of the same run differ a hundredfold (seen here); one thread keeps the smoke run steady.
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on the GPU machine, or use --smoke")
        out = args.out or HERE
        plan = gpu_plan(args.deadline or 480)

    def stop(signum, frame):
        raise Interrupted()

    signal.signal(signal.SIGTERM, stop)
    check = Check(plan, out, args.only)
    print(f"writing {out / 'GPU.md'} and {out / 'GPU.json'} as results come", flush=True)
    try:
        check.run()
    except Interrupted:
        print("interrupted: the results so far are written", flush=True)
        check.report.save()
        return 1
    print((out / "GPU.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
