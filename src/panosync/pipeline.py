"""SyncDiffusionPipeline: one joint diffusion over the views of a panorama, kept on one scene by
gradient descent on the perceptual distance between each view's foreseen image and an anchor's.

The denoising loop reads like section 3 of docs/algorithm.md. It computes the
reference implementation's result ("faithful mode") while skipping the work whose result the
reference throws away: the anchor's gradient (the anchor is never moved), the anchor's LPIPS
features for every view (they are the same all step long) and the anchor's second UNet pass (its
latent did not move, so the first pass already gave its noise prediction); views go through the
networks in chunks sized to the device (`chunks.py`). Fast modes (`fast.py`) trade exactness for
speed, each by name; a wide panorama is decoded in tiles (`decode.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import PIL.Image
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.loaders import FromSingleFileMixin
from diffusers.utils import BaseOutput

from .backbones import Backbone, PromptConditioning, Sampler, StableDiffusionBackbone, ViewConditioning
from .chunks import ViewChunks, default_view_batch_size
from .decode import decode_tiled, should_tile
from . import settings
from .fast import SyncShortcuts, check_sync_decoder, downscale, load_sync_decoder
from .precision import NonFiniteError, Precision, is_half
from .schedulers import ViewSchedulers, most_steps, multistep_like, predicted_original, steps_fit  # noqa: F401
from .settings import canvas_defaults, vae_factor_of, window_of  # noqa: F401 (their old home)
from .sync import SyncSchedule, half_precision_loss_scale, sync_gradient
from .views import View, add_view, coverage, crop, views_for_canvas

OUTPUT_TYPES = ("pil", "np", "latent")

log = logging.getLogger("panosync")


@dataclass
class SyncDiffusionOutput(BaseOutput):
    """images: a list of one PIL image, a (1, H, W, 3) array in [0, 1], or the final latent.
    seed: the seed of the initial noise (None when `latents` or `generator` was given)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    seed: int | None


@dataclass(frozen=True)
class PanoramaRequest:
    """A checked request: everything the joint diffusion needs besides the models."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    guidance_scale: float
    schedule: SyncSchedule
    num_inference_steps: int
    loop_closure: bool
    views: list[View]
    anchor: int
    noise: torch.Tensor
    seed: int | None
    view_batch_size: int | None  # None: chosen for the device (chunks.py)
    output_type: str
    shortcuts: SyncShortcuts = SyncShortcuts()
    tiled_decode: bool | None = None  # None: tiled when the panorama is large (decode.py)
    conditioning: ViewConditioning | None = None  # each view's extra network inputs (ControlSync)
    prompt_options: dict = dataclasses.field(default_factory=dict)  # a family's own (SDXL: size conditioning)
    window: int | None = None  # the side of a view in latent pixels; None: the family's default (backbone.window)


class SyncDiffusionPipeline(DiffusionPipeline, FromSingleFileMixin):
    """SyncDiffusion panoramas with Stable Diffusion 1.x and 2.x models (ε- or v-prediction).

    Components as in diffusers' StableDiffusionPipeline: vae, text_encoder, tokenizer, unet,
    scheduler. Loading with `from_pretrained` / `from_single_file` switches the scheduler to DDIM
    (η = 0, as in the paper) unless a `scheduler` is passed. The models are frozen: the sync step
    needs gradients with respect to latents only.

    The joint diffusion is written here once for every family; what a family changes (prompt
    conditioning, the guided prediction, x̂₀, the step, decoding) is its `backbone`
    (backbones/): another family is a subclass with its components and `backbone_class`
    (SyncDiffusionXLPipeline, xl.py).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    backbone_class: type[Backbone] = StableDiffusionBackbone

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.set_up(vae, text_encoder, unet)

    def set_up(self, *models) -> None:
        """Freeze the models (the sync step needs gradients with respect to latents only) and set up
        the state every family's pipeline keeps: its backbone adapter, and what a call learns."""
        for model in models:
            model.requires_grad_(False)
        self.backbone = self.backbone_class(self)
        self._perceptual = None
        self._sync_decoders: dict[str, torch.nn.Module] = {}  # loaded from folders, by folder
        self.autocast_dtype: torch.dtype | None = None  # set by enable_autocast
        self._loss_scale_cap: float | None = None  # the largest sync loss scale that has not overflowed, this call
        self._call_window: int | None = None  # the window a call chose (the transformers'); None: the default

    # ----------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A hub id, a diffusers folder, or the name of a model bundled with panosync ("pocket")."""
        from .bundled import bundled_model_folder

        bundled = isinstance(pretrained_model_name_or_path, str) and bundled_model_folder(pretrained_model_name_or_path)
        if bundled and "dtype" not in kwargs and "torch_dtype" not in kwargs:
            kwargs["dtype"] = torch.float32  # shipped in float16 to be small; most CPUs want float32
        pipe = super().from_pretrained(bundled or pretrained_model_name_or_path, *args, **kwargs)
        return pipe._with_default_scheduler(kwargs)

    @classmethod
    def from_single_file(cls, *args, **kwargs):
        pipe = super().from_single_file(*args, **kwargs)
        return pipe._with_default_scheduler(kwargs)

    def _with_default_scheduler(self, loading_kwargs: dict):
        """DDIM (the paper's sampler) in place of a UNet model's own scheduler, unless one was given;
        a flow-matching family keeps its own (backbone.switches_to_ddim)."""
        if "scheduler" not in loading_kwargs and not isinstance(self.scheduler, DDIMScheduler) and \
                self.backbone.switches_to_ddim:
            self.scheduler = DDIMScheduler.from_config(self.scheduler.config)
        return self

    # -------------------------------------------------------------------------------- geometry

    @property
    def vae_scale_factor(self) -> int:
        """How many image pixels one latent pixel stands for (8 for Stable Diffusion): diffusers' name."""
        return vae_factor_of(self.vae.config)

    @property
    def vae_factor(self) -> int:
        """The same as vae_scale_factor (this project's older name)."""
        return self.vae_scale_factor

    @property
    def window(self) -> int:
        """The side of a view in latent pixels: the network's native size (the family's default for
        the transformers), or during a call the window that call chose."""
        return self._call_window or self.backbone.window

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of latents and noise predictions between the networks: float32 for float32 and
        half-precision models (as the reference's autocast), float64 for float64 ones (for tests
        that tell arithmetic from rounding)."""
        return torch.float64 if self.backbone.network.dtype == torch.float64 else torch.float32

    # ------------------------------------------------------------------------------- precision

    def enable_autocast(self, dtype: torch.dtype = torch.float16):
        """Compute every later call under torch.autocast in `dtype`, as the reference implementation
        does (float32 weights, convolutions and matrix products in float16). Returns the pipeline."""
        if not is_half(dtype):
            raise ValueError(f"autocast computes in float16 or bfloat16, got {dtype}.")
        self.autocast_dtype = dtype
        return self

    def disable_autocast(self):
        self.autocast_dtype = None
        return self

    @property
    def precision(self) -> Precision:
        """The weights' dtype and the autocast dtype in force (precision.py)."""
        return Precision(self.backbone.network.dtype, self.autocast_dtype)

    @property
    def computes_in_half(self) -> bool:
        """Whether the networks compute in float16 or bfloat16 (half weights, or autocast)."""
        return is_half(self.backbone.network.dtype) or self.autocast_dtype is not None

    @property
    def vae_may_upcast(self) -> bool:
        """Whether the VAE may be moved to float32 when it overflows in float16 (backbones/base.py)."""
        return self.backbone.vae_may_upcast

    def autocast_context(self, device: torch.device):
        """torch.autocast in the dtype enable_autocast chose; nothing when it was not called."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.autocast_dtype)

    def upcast_vae(self) -> None:
        """Decode in float32 from now on (backbones/base.py)."""
        self.backbone.upcast_vae()

    def enable_sync_checkpointing(self, enabled: bool = True):
        """Gradient checkpointing of the network in the sync gradient's pass: its activations are
        recomputed in the backward instead of kept, for memory (a transformer's, at a large window,
        are most of a synced step's). The result is the same but for rounding; the passes without
        autograd (the anchor's, the denoising step's, no_unet_backward's) are not affected.
        Returns the pipeline."""
        network = self.backbone.network
        if enabled:
            network.enable_gradient_checkpointing()
        else:
            network.disable_gradient_checkpointing()
        return self

    # --------------------------------------------------------------------------- model pieces

    def perceptual_distance(self):
        """LPIPS-VGG, loaded on first use, on the VAE's device, in the UNet's dtype (the pipeline's
        weights' dtype: half precision where the pipeline is; the VAE may be upcast)."""
        from .lpips import PerceptualDistance, load_lpips  # LPIPS weights load only when syncing

        if self._perceptual is None:
            self._perceptual = PerceptualDistance(load_lpips("vgg"))
        return self._perceptual.to(device=self.vae.device, dtype=self.backbone.network.dtype)

    def encode_prompt(self, prompt: str, negative_prompt: str, device, **options) -> PromptConditioning:
        """The prompts' conditioning for classifier-free guidance, negative first (the backbone's)."""
        return self.backbone.encode_prompt(prompt, negative_prompt, device, **options)

    def guided_noise(self, latents, t, embeddings, guidance_scale, views: list[View] | None = None,
                     conditioning: ViewConditioning | None = None) -> torch.Tensor:
        """The guided prediction (ε̂ = ε_u + g (ε_c − ε_u) for ε-prediction) for a batch of views, in
        the compute dtype: the backbone's. `embeddings` are encode_prompt's; `views` the views the
        batch holds, in its order; `conditioning` adds what each view's network call needs besides
        the prompt (ControlSync: its ControlNets' residuals)."""
        return self.backbone.guided_prediction(latents, t, embeddings, guidance_scale, views, conditioning)

    def decode_to_unit(self, latents: torch.Tensor, decoder=None, check_finite: bool = False) -> torch.Tensor:
        """Decode to images in [0, 1] (clamped, as the reference: saturated pixels pass no gradient),
        with the VAE or another `decoder` of the same latents (a fast mode's tiny decoder), in the
        backbone's way and precision. `check_finite`: a NonFiniteError where the decoder's output is
        NaN or infinite (before the clamp hides an infinity)."""
        images = self.backbone.decode(latents, decoder)
        if check_finite and not torch.isfinite(images).all():
            raise NonFiniteError("The decoded panorama", self.precision.name)
        return (images / 2 + 0.5).clamp(0, 1)

    def foreseen_image(self, predicted_original: torch.Tensor, shortcuts: SyncShortcuts) -> torch.Tensor:
        """The image the sync loss compares, from a predicted clean latent x̂₀: the VAE's decode in
        faithful mode; a fast mode's decoder and scale where the request asks for them."""
        return downscale(self.decode_to_unit(predicted_original, shortcuts.decoder), shortcuts.image_scale)

    def decode_panorama(self, latents: torch.Tensor, loop_closure: bool, tiled: bool | None = None,
                        tiles_per_call: int = 1) -> torch.Tensor:
        """Decode the whole panorama, in one piece or, when `tiled` (None: when it is large), in
        overlapping window-sized tiles blended together (decode.py), which bounds the memory.

        A loop-closed panorama decoded in one piece is padded circularly first, so the decoder sees
        the left edge continue into the right and leaves no seam, and the padding is cropped; tiles
        wrap round the seam instead."""
        if tiled is None:
            tiled = should_tile(*latents.shape[-2:], self.window)

        def decode(part):
            return self.decode_to_unit(part, check_finite=True)

        if tiled:
            return decode_tiled(decode, latents, self.vae_factor, tile=self.window,
                                overlap=max(1, self.window // 4), loop_closure=loop_closure,
                                tiles_per_call=tiles_per_call)
        if not loop_closure:
            return decode(latents)
        pad = min(latents.shape[-1], max(8, self.window // 4))
        padded = torch.cat([latents[..., -pad:], latents, latents[..., :pad]], dim=-1)
        images = decode(padded)
        margin = pad * self.vae_factor
        return images[..., margin:-margin]

    # ------------------------------------------------------------------------------- the call

    def check_inputs(self, values: dict, output_type: str = "pil") -> None:
        """Raise a ValueError (settings.SettingError) that names the parameter and says what to
        change, before any model work: the same checks, with the same sentences, as every front end's."""
        settings.check(values, settings.geometry_of_pipeline(self))
        if output_type not in OUTPUT_TYPES:
            raise settings.SettingError("output_type", f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got "
                                                       f"{output_type!r}.")
        self.backbone.check_scheduler(self.scheduler)

    def initial_noise(self, shape, seed, generator, latents) -> tuple[torch.Tensor, int | None]:
        """The initial latent and its seed. The draw is the reference's: torch.randn on the CPU in
        float32 from a generator seeded with `seed`, so a seed means the same panorama there."""
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape} for this canvas, got {tuple(latents.shape)}.")
            return latents.float(), None
        if generator is None:
            seed = settings.draw_seed() if seed is None else seed
            generator = torch.Generator("cpu").manual_seed(seed)
        else:
            seed = None
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return noise, seed

    def anchor_index(self, anchor: int | None, views: list[View]) -> int:
        if anchor is None:
            return len(views) // 2  # the centre view, as the reference
        return anchor  # checked against the canvas's views by settings.check

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        width: int | None = None,
        height: int | None = None,
        guidance_scale: float = 7.5,
        sync_weight: float = 20.0,
        sync_decay_rate: float = 0.95,
        sync_freq: int = 1,
        sync_threshold: int | None = None,
        num_inference_steps: int = 50,
        stride: int | None = None,
        seed: int | None = None,
        loop_closure: bool = False,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        anchor: int | None = None,
        view_batch_size: int | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Any, int, Any, dict], dict | None] | None = None,
        return_dict: bool = True,
        fast_modes: Iterable[str] = (),
        sync_image_scale: float = 1.0,
        sync_decoder=None,
        tiled_decode: bool | None = None,
        window: int | None = None,
    ):
        """Generate one panorama.

        Sizes are in pixels; the default canvas is one window high and four wide (512 x 2048 for
        Stable Diffusion 2 base). `stride` is in latent pixels; by default a quarter of the window
        (16 for Stable Diffusion 2 base, the paper's). `sync_threshold=None` syncs
        in every step, as the paper; a smaller number syncs only in the first steps, where the
        layout is decided, and costs less (a synced step is several times an unsynced one).
        `anchor` is the index of the view the others are pulled towards (default: the centre
        view). `view_batch_size` views go through the networks together (output unchanged but for
        rounding; default: a chunk chosen for the device, halved where memory runs out).
        `callback_on_step_end(pipe, step, timestep, {"latents", "sync_weight"})` runs after every
        step; a returned dict may replace "latents".

        Fast modes (all off by default, which is faithful mode; fast.py says what each approximates):
        `fast_modes`, any of "reuse_noise" (no second UNet pass after the sync move) and
        "no_unet_backward" (the sync gradient treats the noise prediction as constant);
        `sync_image_scale` < 1 compares downscaled images in the sync loss; `sync_decoder`, an
        AutoencoderTiny (or its folder) for this model's latents, decodes the loss's images.
        `tiled_decode`: decode the panorama in overlapping tiles (memory of one tile); default: when
        it is larger than 6 windows. `window`: the side of a view in pixels, the UNet's native size
        (the only one it takes; the transformers, SD3 and FLUX, take others).
        """
        request = self.make_request(
            prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, guidance_scale=guidance_scale,
            sync_weight=sync_weight, sync_decay_rate=sync_decay_rate, sync_freq=sync_freq,
            sync_threshold=sync_threshold, num_inference_steps=num_inference_steps, stride=stride, seed=seed,
            loop_closure=loop_closure, generator=generator, latents=latents, anchor=anchor,
            view_batch_size=view_batch_size, output_type=output_type, fast_modes=fast_modes,
            sync_image_scale=sync_image_scale, sync_decoder=sync_decoder, tiled_decode=tiled_decode, window=window,
        )
        return self.generate(request, callback_on_step_end, return_dict)

    def make_request(self, *, prompt, negative_prompt="", width=None, height=None, guidance_scale=7.5,
                     sync_weight=20.0, sync_decay_rate=0.95, sync_freq=1, sync_threshold=None,
                     num_inference_steps=50, stride=None, seed=None, loop_closure=False, generator=None,
                     latents=None, anchor=None, view_batch_size=None, output_type="pil", fast_modes=(),
                     sync_image_scale=1.0, sync_decoder=None, tiled_decode=None, window=None,
                     conditioning: ViewConditioning | None = None) -> PanoramaRequest:
        """Step 1 of the call: check the inputs (a ValueError that says what to change, before any
        model work), fill in the canvas defaults, lay out the views and draw the initial noise.
        Keyword-only: many of these are numbers of the same type, which a wrong order would swap
        silently. `conditioning` is carried on the request to every UNet call (ControlSync)."""
        geometry = settings.geometry_of_pipeline(self)
        if not isinstance(sync_decoder, (str, Path, type(None))):  # a loaded decoder: checked below, by its config
            decoder, sync_decoder = sync_decoder, None
        else:
            decoder = sync_decoder
        values = settings.fill_canvas(dict(
            prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, guidance_scale=guidance_scale,
            sync_weight=sync_weight, sync_decay_rate=sync_decay_rate, sync_freq=sync_freq,
            sync_threshold=sync_threshold, num_inference_steps=num_inference_steps, stride=stride, seed=seed,
            loop_closure=loop_closure, anchor=anchor, view_batch_size=view_batch_size,
            fast_modes=settings.fast_modes(list(fast_modes) if isinstance(fast_modes, (tuple, set)) else fast_modes),
            sync_image_scale=sync_image_scale, sync_decoder=None if sync_decoder is None else str(sync_decoder),
            tiled_decode=tiled_decode, window=window), geometry)
        self.check_inputs(values, output_type)
        shortcuts = self.sync_shortcuts(values["fast_modes"], values["sync_image_scale"], decoder)
        width, height, stride = values["width"], values["height"], values["stride"]
        window = geometry.with_window(values["window"]).window
        latent_height, latent_width = height // self.vae_factor, width // self.vae_factor
        views = views_for_canvas(latent_height, latent_width, window, stride, loop_closure)
        shape = (1, self.backbone.latent_channels, latent_height, latent_width)
        noise, seed = self.initial_noise(shape, seed, generator, latents)
        return PanoramaRequest(prompt, negative_prompt, width, height, guidance_scale, settings.sync_schedule(values),
                               num_inference_steps, loop_closure, views, self.anchor_index(anchor, views), noise, seed,
                               view_batch_size, output_type, shortcuts, tiled_decode, conditioning,
                               window=window)

    def prepare_request(self, prompt, negative_prompt, width, height, guidance_scale, sync_weight, sync_decay_rate,
                        sync_freq, sync_threshold, num_inference_steps, stride, seed, loop_closure, generator,
                        latents, anchor, view_batch_size, output_type, fast_modes=(), sync_image_scale=1.0,
                        sync_decoder=None, tiled_decode=None) -> PanoramaRequest:
        """`make_request` with positional arguments, as before it was keyword-only; kept for the
        scripts that call it so (pocket/trace.py). New code: make_request."""
        return self.make_request(
            prompt=prompt, negative_prompt=negative_prompt, width=width, height=height, guidance_scale=guidance_scale,
            sync_weight=sync_weight, sync_decay_rate=sync_decay_rate, sync_freq=sync_freq,
            sync_threshold=sync_threshold, num_inference_steps=num_inference_steps, stride=stride, seed=seed,
            loop_closure=loop_closure, generator=generator, latents=latents, anchor=anchor,
            view_batch_size=view_batch_size, output_type=output_type, fast_modes=fast_modes,
            sync_image_scale=sync_image_scale, sync_decoder=sync_decoder, tiled_decode=tiled_decode)

    def sync_shortcuts(self, fast_modes, sync_image_scale, sync_decoder) -> SyncShortcuts:
        """The fast modes a request asks for, checked (a ValueError that says what to change)."""
        modes = set(settings.fast_modes(fast_modes))
        scale = float(sync_image_scale)
        if isinstance(sync_decoder, (str, Path)):
            key = str(sync_decoder)
            if key not in self._sync_decoders:
                self._sync_decoders[key] = load_sync_decoder(sync_decoder)
            sync_decoder = self._sync_decoders[key]
        if sync_decoder is not None:
            check_sync_decoder(sync_decoder, self.backbone.latent_channels, self.vae_factor)
            # in the pipeline's weights' dtype, not the VAE's: a tiny decoder is half-precision-safe
            # where the VAE may be upcast
            weights = self.backbone.network.dtype
            if (sync_decoder.device, sync_decoder.dtype) != (self.vae.device, weights):
                sync_decoder = sync_decoder.to(device=self.vae.device, dtype=weights)
        return SyncShortcuts("reuse_noise" in modes, "no_unet_backward" in modes, scale, sync_decoder,
                             "dpm_solver" in modes)

    def generate(self, request: PanoramaRequest, callback_on_step_end=None, return_dict: bool = True):
        """Steps 2 to 5 of the call: the joint diffusion of a checked request, in the pipeline's
        precision (under autocast where enable_autocast asked for it). The request's
        `conditioning` goes to every `guided_noise` call (ControlSync's conditions)."""
        self._loss_scale_cap = None
        self._call_window = request.window  # every part of the call (x̂₀'s decode, tiles, the shift) sees it
        try:
            with self.autocast_context(self._execution_device):
                return self._joint_diffusion(request, callback_on_step_end, return_dict)
        finally:
            self._call_window = None

    def _joint_diffusion(self, request: PanoramaRequest, callback_on_step_end=None, return_dict: bool = True):
        """The body of `generate`, in whatever precision context the caller set up."""
        views, anchor = request.views, request.anchor
        latent_height, latent_width = request.noise.shape[-2:]
        device = self._execution_device

        # 2. Encode the prompt
        embeddings = self.encode_prompt(request.prompt, request.negative_prompt, device, **request.prompt_options)

        # 3. Timesteps and the initial latent
        sampler = self.backbone.sampler(request.num_inference_steps, len(views), device, request.shortcuts.multistep)
        latents = request.noise.to(device, self.compute_dtype) * sampler.init_noise_sigma
        view_counts = coverage(latent_height, latent_width, views).to(device)
        chunk_size = request.view_batch_size or default_view_batch_size(device, self.window * self.vae_factor,
                                                                              len(views))
        chunks = ViewChunks(chunk_size)  # shrinks, for the rest of the call, where a chunk does not fit
        denoise = dict(embeddings=embeddings, guidance_scale=request.guidance_scale, shortcuts=request.shortcuts,
                       sampler=sampler, conditioning=request.conditioning)

        # 4. The joint denoising loop
        with self.progress_bar(total=request.num_inference_steps) as progress:
            shown_status = None
            for i, t in enumerate(sampler.timesteps):
                # a lone view has no one to agree with: its anchor pass would change nothing
                weight = request.schedule.weight_at(i) if len(views) > 1 else 0.0
                status = f"sync w={weight:.3g}" if weight else "no sync"
                # drawn at once when it changes: tqdm skips redraws closer together than its
                # mininterval, and fast steps would hide when syncing starts and stops
                progress.set_postfix_str(status, refresh=status != shown_status)
                shown_status = status
                denoised = self.denoise_views(latents, views, t, weight, anchor, chunks, **denoise)
                latents = self.merge(denoised, views, view_counts)
                if not torch.isfinite(latents).all():  # stop now, not after the rest of the steps
                    raise NonFiniteError(f"The panorama's latent at step {i + 1} of {request.num_inference_steps}",
                                         self.precision.name)
                if callback_on_step_end is not None:
                    changes = callback_on_step_end(self, i, t, {"latents": latents, "sync_weight": weight})
                    latents = (changes or {}).get("latents", latents)
                progress.update()

        # 5. Decode
        if request.output_type == "latent":
            images = latents
        else:
            images = self.decode_panorama(latents, request.loop_closure, request.tiled_decode, chunks.size)
            images = images.permute(0, 2, 3, 1).cpu().numpy()
            if request.output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, request.seed
        return SyncDiffusionOutput(images=images, seed=request.seed)

    def denoise_views(self, latents, views, t, weight, anchor, chunks: ViewChunks | int, embeddings, guidance_scale,
                      shortcuts: SyncShortcuts = SyncShortcuts(), sampler: Sampler | None = None,
                      conditioning: ViewConditioning | None = None):
        """One step for every view (docs/algorithm.md, section 3, steps 1 to 3): each view's x_{t-1}.

        With weight λ > 0 each view but the anchor first moves by −λ ∂LPIPS/∂x towards the
        anchor's foreseen image, then takes its denoising step from the moved latent. `chunks`
        (or a number of views) says how many views go through the networks together; `shortcuts`
        are the fast modes in force (fast.py); `sampler` the views' scheduler state (the backbone's;
        default: this pipeline's scheduler, its timesteps set); `conditioning` each view's extra
        network inputs (ControlSync).
        """
        chunks = ViewChunks(chunks) if isinstance(chunks, int) else chunks
        sampler = sampler or ViewSchedulers(self.scheduler, len(views))
        denoised: dict[int, torch.Tensor] = {}

        def noise_of(x, batch_views):
            return self.guided_noise(x, t, embeddings, guidance_scale, batch_views, conditioning)

        if weight > 0:
            # 1. The anchor: its foreseen image is the fixed target of this step, its LPIPS features
            #    computed once for all views. The anchor is not moved, so this same noise prediction
            #    also gives its denoising step.
            anchor_latent = crop(latents, views[anchor])
            anchor_noise = noise_of(anchor_latent, [views[anchor]])
            anchor_original = sampler.predicted_original(anchor_latent, anchor_noise, t)
            perceptual = self.perceptual_distance()
            target = perceptual.target_features(self.foreseen_image(anchor_original, shortcuts) * 2 - 1)
            denoised[anchor] = sampler.step([anchor], anchor_latent, anchor_noise, t)

            def distance_to_anchor(images):
                return perceptual(images * 2 - 1, target)

        def step_views(batch: list[int]) -> list[torch.Tensor]:
            batch_views = [views[j] for j in batch]
            x = torch.cat([crop(latents, view) for view in batch_views])
            noise = None
            # 2. Move each view towards the anchor, then denoise from where it moved to.
            if weight > 0:
                gradient, noise_before_move = self.sync_gradient_and_noise(x, t, batch_views, noise_of,
                                                                           distance_to_anchor, shortcuts, sampler)
                x = x - weight * gradient
                if shortcuts.reuse_noise:
                    noise = noise_before_move
            if noise is None:
                noise = noise_of(x, batch_views)
            return list(sampler.step(batch, x, noise, t))

        pending = [j for j in range(len(views)) if j not in denoised]
        for j, view_latent in zip(pending, chunks.map(pending, step_views)):
            denoised[j] = view_latent[None]
        return denoised

    def sync_gradient_and_noise(self, x, t, batch_views, noise_of, distance_to_anchor, shortcuts: SyncShortcuts,
                                sampler: Sampler | None = None):
        """∂LPIPS/∂x for a batch of views, and the noise prediction the gradient pass made at x.
        `sampler` gives x̂₀ (default: this pipeline's scheduler, its timesteps set).

        Faithful: the gradient flows through the VAE decoder, x̂₀ and the UNet. With the fast mode
        no_unet_backward the UNet runs without autograd, so ε̂ is a constant and ∂x̂₀/∂x = 1/√ᾱ_t
        (for the flow families, whose v̂ is then the constant: x̂₀ = x − σ·v̂, so ∂x̂₀/∂x = 1).
        """
        made = {}
        if not hasattr(sampler, "predicted_original"):  # a bare scheduler (older callers), or None: this pipeline's
            sampler = ViewSchedulers(sampler or self.scheduler, len(x))

        def foresee(latent):
            if shortcuts.no_unet_backward:
                with torch.no_grad():
                    noise = noise_of(latent.detach(), batch_views)
            else:
                noise = noise_of(latent, batch_views)
            made["noise"] = noise.detach()
            return self.foreseen_image(sampler.predicted_original(latent, noise, t), shortcuts)

        loss_scale = 1.0
        if self.computes_in_half:
            side = round(self.window * self.vae_factor * shortcuts.image_scale)
            loss_scale = min(half_precision_loss_scale(side * side), self._loss_scale_cap or math.inf)
        gradient, used = sync_gradient(x, foresee, distance_to_anchor, loss_scale)
        if used < loss_scale:  # remembered for the rest of the call, as a mixed-precision grad scaler does
            log.warning("The sync loss's backward overflowed float16 at scale %g; scaling by %g from now on.",
                        loss_scale, used)
            self._loss_scale_cap = used
        return gradient, made["noise"]

    @staticmethod
    def merge(denoised: dict[int, torch.Tensor], views: list[View], view_counts: torch.Tensor) -> torch.Tensor:
        """MultiDiffusion (docs/algorithm.md, section 3, step 4): every latent pixel becomes the mean
        of the views over it."""
        value = torch.zeros(denoised[0].shape[:2] + view_counts.shape, device=view_counts.device,
                            dtype=denoised[0].dtype)
        for j, view in enumerate(views):
            add_view(value, view, denoised[j])
        return value / view_counts
