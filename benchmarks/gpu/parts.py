"""The GPU check's parts: building the pipelines, the timed runs they are measured with (a panorama
timed step by step, the reference order, diffusers' MultiDiffusion, one step's sync gradient), and
`Check`, whose parts (setup, correctness, gradient, speed, memory, backbones, flow transformers)
each measure through the harness's guarded runs."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from panosync.presets import FAST_PRESET_MODES
from speed import (
    PROMPT, diffusers_panorama, modes, peak_memory, reset_peak_memory, sd2_base_components, taesd_shaped_decoder,
)

from .harness import Harness, environment, free_memory
from .plans import Backbone, Plan
from .tables import TARGET_BYTES, per_call


# ------------------------------------------------------------------------------------- pipelines


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


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
        pipe.perceptual_distance(), pipe.perceptual_distance("alex")  # LPIPS loaded now, not in a timed run
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
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def view_count(pipe, height: int, width: int, stride: int) -> int:
    from panosync.views import views_for_canvas

    return len(views_for_canvas(height // pipe.vae_scale_factor, width // pipe.vae_scale_factor, pipe.window, stride))


def default_chunk(pipe, views: int, device: str) -> int:
    from panosync.chunks import default_view_batch_size

    return default_view_batch_size(device, pipe.window * pipe.vae_scale_factor, views)


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
    from panosync.sync import LossScale, sync_gradient
    from panosync.views import crop, views_for_canvas

    window = pipe.window
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, pipe.unet.config.in_channels, window, 2 * window, generator=generator).to(device)
    views = views_for_canvas(window, 2 * window, window, window // 2)
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps[step]
    side = window * pipe.vae_scale_factor
    loss_scale = LossScale(side * side, scaled and pipe.computes_in_half)
    with torch.no_grad(), pipe.autocast_context(device):
        embeddings = pipe.backbone.encode_prompt([PROMPT], [""], device)
        anchor = crop(latents, views[1])
        batch = [views[0], views[2]]

        def predict(x):
            return pipe.backbone.guided_prediction(x, t, embeddings, 7.5, batch)

        def original(x, prediction):
            return scheduler.step(prediction, t, x).pred_original_sample

        perceptual = pipe.perceptual_distance()
        anchor_prediction = pipe.backbone.guided_prediction(anchor, t, embeddings, 7.5, [views[1]])
        target = perceptual.target_features(pipe.foreseen_image(original(anchor, anchor_prediction)) * 2 - 1)
        x = torch.cat([crop(latents, view) for view in batch])
        gradient, _ = sync_gradient(x, lambda z: pipe.foreseen_image(original(z, predict(z))),
                                    lambda images: perceptual(images * 2 - 1, target), loss_scale.scale)
    return gradient.double().cpu()


# ------------------------------------------------------------------------------------- the check


class Check(Harness):
    """The check: its parts in the order `run` runs them, each measuring through `attempt`."""

    def __init__(self, plan: Plan, out: Path, only: list[str] | None):
        super().__init__(plan, out, only)
        self.pipelines: dict = {}
        self.best_chunk: int | None = None

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
        # offload moves the pipeline's models off the device: after every part that times them there
        self.part("offload", self.offload)
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
            f"VAE factor {pipe.vae_scale_factor}")

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
                decoder = decoder or taesd_shaped_decoder(pipe.vae_scale_factor).to(plan.device, pipe.vae.dtype)
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

    def offload(self) -> None:
        """A synced panorama with enable_model_cpu_offload and with enable_sequential_cpu_offload
        against the same panorama with every model on the device: the offload hooks must carry the
        sync step (the gradient pass through the UNet and the VAE, LPIPS on the execution device) and
        change nothing but the peak memory and the time."""
        plan, pipe = self.plan, self.speed_pipeline()
        height, width, steps = plan.height, 2 * plan.height, 3  # two windows wide
        views = view_count(pipe, height, width, plan.stride)
        self.part_data["notes"].append(
            f"{plan.speed_precision}, {height}×{width}, {views} views, {steps} DDIM steps synced in the first 2; "
            f"peak = torch.cuda.max_memory_allocated() after a reset" if plan.device == "cuda" else
            "CPU smoke run: the hooks offload to the CPU itself (device='cpu')")
        images = {}

        def panorama(mode: str | None) -> Callable[[], dict]:
            def work() -> dict:
                if mode is not None:
                    getattr(pipe, mode)(device=plan.device)
                try:
                    held = reset_peak_memory(plan.device)
                    row, image = run_pipeline(pipe, plan, height, width, steps, 2)
                    row.update(peak_bytes=peak_memory(plan.device), held_before_bytes=held)
                finally:
                    if mode is not None:  # back on the device for what follows
                        pipe.remove_all_hooks()
                        pipe.to(plan.device)
                images[mode] = image
                if mode is not None and None in images:
                    row["max_abs_difference_to_on_device"] = float(np.abs(image.astype(np.float64) -
                                                                          images[None]).max())
                return row

            return work

        modes = [None, "enable_model_cpu_offload"]
        if plan.device == "cuda":
            modes.append("enable_sequential_cpu_offload")
        else:  # accelerate's sequential hooks fail to offload a parameter to the CPU they already compute on
            self.part_data["notes"].append("enable_sequential_cpu_offload: GPU only (accelerate cannot offload "
                                           "to the device it computes on)")
        for mode in modes:
            slower = 1.0 if mode is None else (2.0 if mode == "enable_model_cpu_offload" else 20.0)
            self.attempt(mode or "every model on the device", self.costs.seconds(views, 2, steps - 2, slower) + 5,
                         panorama(mode), what="offload", offload=mode or "none", canvas=f"{height}x{width}")

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
            pipe.perceptual_distance(), pipe.perceptual_distance("alex")
            built["pipe"] = pipe
            return dict(seconds=time.perf_counter() - started, finite=True,
                        unet_parameters=sum(p.numel() for p in pipe.unet.parameters()))

        self.attempt(f"{family.name}: build, {family.precision}", 60 if not plan.smoke else 20, build,
                     family=family.name, what="build")
        pipe = built.get("pipe")
        if pipe is None:
            return
        self.part_data["notes"].append(
            f"{family.name}: {family.precision}, window {pipe.window} latents ({pipe.window * pipe.vae_scale_factor} px), "
            f"stride {family.stride}; each panorama {steps} DDIM steps synced in the first {synced}, faithful mode at "
            f"the device's view batch size; peak = the whole panorama's, its weights included")

        def panorama(height: int, width: int, **options) -> Callable[[], dict]:
            def work() -> dict:
                held = reset_peak_memory(plan.device)
                row, _ = run_pipeline(pipe, plan, height, width, steps, synced, autocast, stride=family.stride,
                                      **options)
                return dict(row, peak_bytes=peak_memory(plan.device), held_before_bytes=held)

            return work

        def expected_seconds(views: int) -> float:
            return views * (synced * family.synced_cost * self.costs.synced_view_s
                            + (steps - synced) * family.plain_cost * self.costs.plain_view_s) + 10

        for height, width in family.canvases:
            views = view_count(pipe, height, width, family.stride)
            self.attempt(f"{family.name} {height}×{width}, {views} views", expected_seconds(views),
                         panorama(height, width),
                         family=family.name, what="panorama", canvas=f"{height}x{width}", views=views,
                         precision=family.precision, mode="faithful")
        # the fast preset's synced step (reuse_noise, lpips_alex) on the first canvas, after every faithful one
        height, width = family.canvases[0]
        views = view_count(pipe, height, width, family.stride)
        self.attempt(f"{family.name} {height}×{width}, {views} views, the fast preset's step", expected_seconds(views),
                     panorama(height, width, fast_modes=list(FAST_PRESET_MODES)), family=family.name,
                     what="panorama", canvas=f"{height}x{width}", views=views, precision=family.precision,
                     mode="fast preset")


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
