"""What every panosync pipeline shares: loading (bundled models, DDIM for the UNet families),
precision, the geometry of views, the fast modes, decoding, and the steps each family's `__call__`
takes in order (check inputs, lay out views and draw the noise, the denoising loop, decode).

A family's pipeline (pipeline.py, xl.py, sd3.py, flux.py) is a subclass with its components, its
`backbone_class` (backbones/: prompt conditioning, the guided prediction, x̂₀, the step) and its
own `__call__`, written out with its parameters and calling these steps; the loop itself is
loop.py's, the sync step sync.py's.
"""

from __future__ import annotations

import dataclasses
import functools
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import USE_PEFT_BACKEND, BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from . import settings
from .backbones.base import Backbone, PromptConditioning, ViewConditioning, joined_prompts, prompt_rows
from .chunks import ViewChunks, default_view_batch_size
from .decode import decode_tiled, encode_tiled, should_tile, vae_tile
from .fast import FastModes, check_sync_decoder, downscale, load_sync_decoder
from .geometry import Geometry, vae_factor_of
from .image_input import (ImageStart, anchor_holding_most, canvas_of_image, checked_release, feathered_alpha,
                          image_pixels, inward_ramp, latent_map, place)
from .loop import denoise_panorama
from .precision import NonFiniteError, Precision, is_half
from .regions import (BOOTSTRAP_SHARE, DEFAULT_SYNC_MODE, Bootstrap, RegionalPrediction, RegionPlan, main_prompt,
                      plan_regions, region_anchor, sync_pixel_weights)
from .sync import LossScale
from .views import View, views_for_canvas

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# What callback_on_step_end may ask for (callback_on_step_end_tensor_inputs) and replace: the
# panoramas' latents. The step's sync weight is always given too, as "sync_weight".
CALLBACK_TENSOR_INPUTS = ["latents"]


@dataclass
class SyncDiffusionOutput(BaseOutput):
    """images: one per panorama (prompts × num_images_per_prompt): PIL images, an (N, H, W, 3)
    array or an (N, 3, H, W) tensor in [0, 1], or the final latents.
    seed: the seed of the initial noise (None when `latents` or `generator` was given)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    seed: int | None


def check_pooled(prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds) -> None:
    """Embeddings given in place of texts come with their pooled embeddings (SDXL, SD3, FLUX)."""
    for embeds, pooled, name in ((prompt_embeds, pooled_prompt_embeds, "prompt_embeds"),
                                 (negative_prompt_embeds, negative_pooled_prompt_embeds, "negative_prompt_embeds")):
        if embeds is not None and pooled is None:
            raise ValueError(f"Give pooled_{name} with {name}: this model also reads the pooled embedding.")


@contextmanager
def lora_layers_scaled(modules, scale: float | None):
    """Every active LoRA layer of `modules` with its scaling multiplied by `scale` (what diffusers'
    scale_lora_layers does), and given back its exact scaling after: diffusers' unscale_lora_layers
    would reset a scale of 0 to weight 1, undoing set_adapters' weights."""
    if scale is None or scale == 1 or not USE_PEFT_BACKEND:
        yield
        return
    from peft.tuners.tuners_utils import BaseTunerLayer  # peft only where a scale is asked for

    layers = [layer for module in modules if module is not None for layer in module.modules()
              if isinstance(layer, BaseTunerLayer) and hasattr(layer, "scaling")]
    saved = [(layer, dict(layer.scaling)) for layer in layers]
    try:
        for layer in layers:
            layer.scale_layer(scale)
        yield
    finally:
        for layer, scaling in saved:
            layer.scaling.update(scaling)


@dataclass(frozen=True)
class Layout:
    """Where a call's views lie: the window (latent pixels), the views, the anchor's index."""

    window: int
    views: list[View]
    anchor: int


class PanoramaPipelineBase(DiffusionPipeline):
    """The shared part of every panosync pipeline (no `__call__`: each family writes its own)."""

    family: str
    backbone_class: type[Backbone]
    _callback_tensor_inputs = CALLBACK_TENSOR_INPUTS

    def set_up(self, *models) -> None:
        """Freeze the models (the sync step needs gradients with respect to latents only) and make
        what every pipeline keeps besides its components: the backbone adapter, the image
        processor, and the settings the enable_* methods change."""
        for model in models:
            model.requires_grad_(False)
        self.backbone = self.backbone_class(self)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._perceptual: dict = {}  # LPIPS by its network, loaded on first use
        self._sync_decoders: dict[str, torch.nn.Module] = {}  # loaded from folders, by folder
        self.autocast_dtype: torch.dtype | None = None  # set by enable_autocast
        self.vae_tiling: bool | None = None  # set by enable_vae_tiling; None: tiled when large
        # how the sync step meets region prompts (regions.SYNC_MODES) and the share of the steps that bootstrap
        # them: the alternatives are measured in docs/regions.md
        self.region_sync = DEFAULT_SYNC_MODE
        self.region_bootstrap = BOOTSTRAP_SHARE

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
        """How many image pixels one latent pixel stands for (8 for Stable Diffusion)."""
        return vae_factor_of(self.vae.config)

    @property
    def window(self) -> int:
        """The side of a view in latent pixels by default: the UNet's native size, the family's
        default for the transformers (a call may choose another where the family allows it)."""
        return self.backbone.window

    @property
    def geometry(self) -> Geometry:
        """What the request checks need of this model: the default window, the steps its scheduler
        allows, and whether another window may be chosen (settings.check)."""
        return self.backbone.geometry(self.vae_scale_factor)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of latents and predictions between the networks: float32 for float32 and
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

    def autocast_context(self, device: torch.device):
        """torch.autocast in the dtype enable_autocast chose; nothing when it was not called."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(torch.device(device).type, dtype=self.autocast_dtype)

    @contextmanager
    def text_encoder_lora_scale(self, attention_kwargs: dict | None):
        """While the prompt is encoded, the LoRA layers of the text encoders scaled by the call's
        attention kwargs' "scale" (cross_attention_kwargs / joint_attention_kwargs), as diffusers'
        encode_prompt does; `denoise` scales the denoiser's for the whole loop."""
        encoders = [getattr(self, name, None) for name in getattr(self, "_lora_loadable_modules", ())
                    if name.startswith("text_encoder")]
        with lora_layers_scaled(encoders, (attention_kwargs or {}).get("scale")):
            yield

    @contextmanager
    def loop_models_resident(self):
        """Under enable_model_cpu_offload, the models of a denoising step (the denoiser, a ControlNet,
        the VAE) stay on the execution device for the whole loop; the text and image encoders are
        offloaded as usual. A synced step runs the denoiser, then the VAE, then the backward through
        both: the hooks would move the denoiser to the CPU when the VAE runs, under its own saved
        activations, and move each model back and forth every view chunk."""
        loop_models = [model for model in (self.backbone.network, self.vae, getattr(self, "controlnet", None))
                       if model is not None]
        unlinked = []
        for user_hook in getattr(self, "_all_hooks", None) or ():
            hook = getattr(user_hook, "hook", None)
            previous = getattr(hook, "prev_module_hook", None)
            if previous is not None and any(previous.model is m for m in loop_models) and \
                    any(user_hook.model is m for m in loop_models):
                unlinked.append((hook, previous))
                hook.prev_module_hook = None
        try:
            yield
        finally:
            for hook, previous in unlinked:
                hook.prev_module_hook = previous

    def upcast_vae(self) -> None:
        """Decode in float32 from now on (backbones/base.py)."""
        self.backbone.upcast_vae()

    def enable_sync_checkpointing(self, enabled: bool = True):
        """Gradient checkpointing of the network in the sync gradient's pass: its activations are
        recomputed in the backward instead of kept, for memory (a transformer's, at a large window,
        are most of a synced step's). The result is the same but for rounding. Returns the pipeline."""
        network = self.backbone.network
        if enabled:
            network.enable_gradient_checkpointing()
        else:
            network.disable_gradient_checkpointing()
        return self

    def enable_vae_tiling(self):
        """Decode every panorama in overlapping tiles of the window, at least 32 latent pixels
        (decode.py): the memory of one tile, whatever the panorama's size. A call's `tiled_decode` overrides it."""
        self.vae_tiling = True

    def disable_vae_tiling(self):
        """Decode every panorama in one piece. A call's `tiled_decode` overrides it."""
        self.vae_tiling = False

    # --------------------------------------------------------------------------- model pieces

    def perceptual_distance(self, net: str = "vgg"):
        """LPIPS on `net`'s features ("vgg", the paper's, or "alex"), loaded on first use, on the
        execution device, in the network's dtype (the pipeline's weights' dtype: half precision
        where the pipeline is; the VAE may be upcast).
        The execution device, not the VAE's: offload hooks (enable_model_cpu_offload) keep the VAE
        on the CPU between its calls while the images it decodes are on the accelerator."""
        from .lpips import PerceptualDistance, load_lpips  # LPIPS weights load only when syncing

        if net not in self._perceptual:
            self._perceptual[net] = PerceptualDistance(load_lpips(net))
        return self._perceptual[net].to(device=self._execution_device, dtype=self.backbone.network.dtype)

    def fast_modes(self, names, sync_image_scale: float = 1.0, sync_decoder=None) -> FastModes:
        """The fast modes `names` ask for, with the sync loss's image scale and decoder (an
        AutoencoderTiny, or its folder, loaded once), checked: a ValueError that says what to change."""
        modes = set(settings.fast_modes(names))
        if isinstance(sync_decoder, (str, Path)):
            key = str(sync_decoder)
            if key not in self._sync_decoders:
                self._sync_decoders[key] = load_sync_decoder(sync_decoder)
            sync_decoder = self._sync_decoders[key]
        if sync_decoder is not None:
            check_sync_decoder(sync_decoder, self.backbone.latent_channels, self.vae_scale_factor)
            # in the pipeline's weights' dtype, not the VAE's: a tiny decoder is half-precision-safe
            # where the VAE may be upcast
            weights = self.backbone.network.dtype
            device = self._execution_device  # where the latents are, not the offloaded VAE's place
            if (sync_decoder.device, sync_decoder.dtype) != (device, weights):
                sync_decoder = sync_decoder.to(device=device, dtype=weights)
        return FastModes("reuse_noise" in modes, "no_unet_backward" in modes, float(sync_image_scale), sync_decoder,
                         "dpm_solver" in modes, "alex" if "lpips_alex" in modes else "vgg")

    def decode_to_unit(self, latents: torch.Tensor, decoder=None, check_finite: bool = False) -> torch.Tensor:
        """Decode to images in [0, 1] (clamped, as the reference: saturated pixels pass no gradient),
        with the VAE or another `decoder` of the same latents (a fast mode's tiny decoder), in the
        backbone's way and precision. `check_finite`: a NonFiniteError where the decoder's output is
        NaN or infinite (before the clamp hides an infinity)."""
        images = self.backbone.decode(latents, decoder)
        if check_finite and not torch.isfinite(images).all():
            raise NonFiniteError("The decoded panorama", self.precision.name)
        return (images / 2 + 0.5).clamp(0, 1)

    def foreseen_image(self, predicted_original: torch.Tensor, fast: FastModes = FastModes()) -> torch.Tensor:
        """The image the sync loss compares, from a predicted clean latent x̂₀: the VAE's decode in
        faithful mode; a fast mode's decoder and scale where `fast` asks for them."""
        return downscale(self.decode_to_unit(predicted_original, fast.decoder), fast.image_scale)

    def decode_panorama(self, latents: torch.Tensor, loop_closure: bool, tiled: bool | None = None,
                        tiles_per_call: int = 1, window: int | None = None, wrap_rows: bool = False) -> torch.Tensor:
        """Decode the whole panorama to [0, 1], in one piece or, when `tiled` (None: as
        enable_vae_tiling chose, else when it is large), in overlapping tiles of the `window` (at least 32)
        (latent pixels; None: the default) blended together (decode.py), which bounds the memory.

        A loop-closed panorama decoded in one piece is padded circularly first, so the decoder sees
        the left edge continue into the right and leaves no seam, and the padding is cropped; tiles
        wrap round the seam instead. With `wrap_rows` the top and bottom edges likewise."""
        window = window or self.backbone.window
        if tiled is None:
            tiled = self.vae_tiling if self.vae_tiling is not None else should_tile(*latents.shape[-2:], window)
        decode = functools.partial(self.decode_to_unit, check_finite=True)
        factor = self.vae_scale_factor
        if tiled:
            tile = vae_tile(window)
            return decode_tiled(decode, latents, factor, tile=tile, overlap=max(1, tile // 4),
                                loop_closure=loop_closure, tiles_per_call=tiles_per_call, wrap_rows=wrap_rows)
        pads = [min(side, max(8, window // 4)) if wraps else 0
                for side, wraps in zip(latents.shape[-2:], (wrap_rows, loop_closure))]
        if not any(pads):
            return decode(latents)
        # F.pad pads the last axes first: columns (left, right), then rows (top, bottom)
        padded = F.pad(latents, (pads[1], pads[1], pads[0], pads[0]), mode="circular")
        image = decode(padded)
        rows, columns = (pad * factor for pad in pads)
        return image[..., rows:image.shape[-2] - rows, columns:image.shape[-1] - columns]

    # ------------------------------------------------------------------- the steps of a call

    def check_inputs(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, output_type: str,
                     callback_on_step_end_tensor_inputs, values: dict) -> dict:
        """Step 1: a ValueError (settings.SettingError) that names the parameter and says what to
        change, before any model work, with the same sentences as every front end's; returns the
        sync and canvas `values` checked, with the canvas this model makes where they leave it unset."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if prompts is None and prompt_embeds is None:
            raise settings.SettingError("prompt", "Give prompt (a text or a list of texts) or prompt_embeds.")
        if prompts is not None and prompt_embeds is not None:
            raise settings.SettingError("prompt", "Give prompt or prompt_embeds, not both.")
        if prompts is not None:
            if not isinstance(prompts, list) or not prompts:
                raise settings.SettingError("prompt", f"prompt must be a text or a non-empty list of texts, got "
                                                      f"{prompt!r}.")
            for text in prompts:
                settings.check({"prompt": text})
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt]
        if negative_prompt_embeds is not None and negative_prompt is not None:
            raise settings.SettingError("negative_prompt", "Give negative_prompt or negative_prompt_embeds, not both.")
        for text in negatives:
            if text is not None:
                settings.check({"negative_prompt": text})
        if isinstance(negative_prompt, list) and len(negative_prompt) != self.prompt_count(prompt, prompt_embeds):
            raise settings.SettingError("negative_prompt", f"negative_prompt must be one text, or a list of one per "
                                                           f"prompt ({self.prompt_count(prompt, prompt_embeds)}), got "
                                                           f"{len(negative_prompt)}.")
        if output_type not in OUTPUT_TYPES:
            raise settings.SettingError("output_type", f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got "
                                                       f"{output_type!r}.")
        unknown = [name for name in callback_on_step_end_tensor_inputs or () if name not in CALLBACK_TENSOR_INPUTS]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may name {', '.join(CALLBACK_TENSOR_INPUTS)}, got "
                             f"{', '.join(map(str, unknown))}.")
        fast_modes = values.get("fast_modes")
        if isinstance(fast_modes, (tuple, set)):
            fast_modes = list(fast_modes)
        decoder = values.get("sync_decoder")
        loaded_decoder = decoder is not None and not isinstance(decoder, (str, Path))  # checked by its config
        values = {**values, "fast_modes": settings.fast_modes(fast_modes),
                  "sync_decoder": None if decoder is None or loaded_decoder else str(decoder)}
        geometry = self.geometry
        settings.check({name: values[name] for name in ("image", "strength", "image_at", "resize_image")
                        if name in values})  # ControlSync's calls have none of them
        image = values.pop("image", None)
        image_options = {name: values.pop(name, None) for name in ("mask_image", "mask_feather", "paste_back")}
        image_options.update({name: values.get(name) for name in ("strength", "image_at", "resize_image")})
        if image is None and self.backbone.reads_inpainting_channels:
            raise settings.SettingError("image", "This is an inpainting model (its UNet reads a mask and a masked "
                                                 "image beside the latents): give image and mask_image.")
        if image is None and image_options["mask_image"] is not None:
            raise settings.SettingError("mask_image", "Give image with mask_image: the mask says which of the image's "
                                                      "pixels are repainted.")
        if image is not None:  # the canvas is the image's unless given
            size = image.size if isinstance(image, PIL.Image.Image) else tuple(image_pixels(image).shape[:-3:-1])
            values["width"], values["height"] = canvas_of_image(size, values.get("width"), values.get("height"),
                                                                bool(image_options["resize_image"]))
        values = settings.fill_canvas(values, geometry)
        settings.check(values, geometry)
        self.backbone.check_scheduler(self.scheduler)
        # tile x is loop closure; from here on the loop reads which edges meet from these two
        values["loop_closure"], values["wrap_rows"] = settings.wrapped_axes(values["loop_closure"], values.get("tile"))
        if image is not None and values["wrap_rows"]:
            raise settings.image_with_rows_wrapped(values["tile"])
        if image is not None:
            placement = place(image, image_options["mask_image"], values["width"], values["height"],
                              image_options["strength"], image_options["image_at"], bool(image_options["resize_image"]),
                              self.vae_scale_factor)
            release = checked_release(placement, values["width"], values["height"], self.vae_scale_factor,
                                      values["num_inference_steps"], self.backbone.first_step, values["loop_closure"],
                                      values["window"])
            values.update(placement=placement, release=release)
            feather = image_options["mask_feather"]
            if feather is not None and (isinstance(feather, bool) or not isinstance(feather, int) or feather < 0):
                raise settings.SettingError("mask_feather", f"mask_feather must be a whole number of pixels, 0 or "
                                                            f"more, got {feather!r}.")
            values["mask_feather"] = self.vae_scale_factor if feather is None else feather
            values["paste_back"] = image_options["paste_back"] is not False
        values["region_plan"] = plan = plan_regions(values.get("regions"), values["width"], values["height"],
                                                    self.vae_scale_factor, values["window"] // self.vae_scale_factor,
                                                    values["loop_closure"], values["wrap_rows"])
        several_negatives = negative_prompt_embeds is not None or \
            (isinstance(negative_prompt, list) and len({text or "" for text in negative_prompt}) > 1)
        if plan is not None and None in plan.negative_prompts and several_negatives:
            raise settings.SettingError("regions", "A region without a negative_prompt takes the call's, which must "
                                                   "then be one text: give every region its negative_prompt, or "
                                                   "one negative_prompt for all prompts.")
        return values

    @staticmethod
    def prompt_count(prompt, prompt_embeds) -> int:
        """How many prompts a call has: texts, or rows of prompt_embeds."""
        if prompt_embeds is not None:
            return prompt_embeds.shape[0]
        return 1 if isinstance(prompt, str) else len(prompt)

    @staticmethod
    def prompt_lists(prompt, negative_prompt, count: int) -> tuple[list[str] | None, list[str]]:
        """The prompts as a list (None where prompt_embeds stand in) and one negative prompt per prompt."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if isinstance(negative_prompt, list):
            return prompts, [text or "" for text in negative_prompt]
        return prompts, [negative_prompt or ""] * count

    @staticmethod
    def with_region_prompts(conditioning: PromptConditioning, values: dict, panoramas: int,
                            negative_prompts: list[str], encode: Callable) -> PromptConditioning:
        """Step 3, with region prompts: the regions' prompts encoded by `encode(texts, negative_texts)`
        (the family's encode_prompt, one row each) after the `panoramas` rows of the call's own. A
        region without a negative prompt takes the call's (one text for all prompts: check_inputs)."""
        plan: RegionPlan | None = values.get("region_plan")
        if plan is None:
            return conditioning
        negatives = [negative_prompts[0] if text is None else text for text in plan.negative_prompts]
        return joined_prompts(conditioning, panoramas, encode(list(plan.prompts), negatives), len(plan.prompts))

    def prepare_layout(self, values: dict) -> Layout:
        """Step 3a: the views of the canvas `values` describe (checked) and the anchor (default: the
        centre view, as the reference)."""
        factor = self.vae_scale_factor
        window = values["window"] // factor  # in pixels, filled in and checked by check_inputs
        views = views_for_canvas(values["height"] // factor, values["width"] // factor, window, values["stride"],
                                 values["loop_closure"], values["wrap_rows"])
        anchor = values["anchor"]
        if anchor is None and values.get("release") is not None:  # the view holding most of the user's kept pixels
            anchor = anchor_holding_most(views, values["release"])
        if anchor is None and values.get("region_plan") is not None:  # the view with the most background
            anchor = region_anchor(views, values["region_plan"])
        return Layout(window, views, len(views) // 2 if anchor is None else anchor)

    def prepare_start(self, panoramas: int, values: dict, generator, latents,
                      layout: Layout) -> tuple[torch.Tensor, int | None, ImageStart | None]:
        """Step 3b: the initial noise and its seed (prepare_latents) and, for an image input, where
        the loop starts from (image_input.py). The draws follow diffusers' img2img and inpainting
        pipelines: the VAE's sample of the image's latent first (one per generator), then the noise,
        from the same generator; `latents` given stand for the noise (the image's latent is then the
        distribution's mean, having no generator to draw from)."""
        placement = values.get("placement")
        if placement is None:
            return (*self.prepare_latents(panoramas, values, generator, latents), None)
        generator, seed = self.seeded_generator(values, generator, latents)
        release = values["release"]
        first = int(release.min())
        images = placement.pixels * 2 - 1
        inpainting_unet = self.backbone.reads_inpainting_channels
        from_noise = first == 0 and placement.holds
        # an inpainting UNet starting from pure noise needs no latent of the image (diffusers draws none)
        clean = None if inpainting_unet and from_noise else self.encode_canvas(images, panoramas, generator,
                                                                               layout.window)
        noise, _ = self.prepare_latents(panoramas, values, generator, latents)
        inpainting = None
        if inpainting_unet:
            # it reads the mask and the masked image's latent (drawn after the noise, as diffusers does),
            # and repaints the mask's white itself: nothing is held
            mask = latent_map(placement.painted, *noise.shape[-2:]).to(self._execution_device, self.compute_dtype)
            masked = self.encode_canvas(images * (placement.painted < 0.5), panoramas, generator, layout.window)
            inpainting = torch.cat([mask.repeat(panoramas, 1, 1, 1), masked], dim=1)
            release = torch.full_like(release, first)
            clean = masked if clean is None else clean
        kept = 1 - placement.painted
        # the feather reaches into painted pixels of the image only (outside it there is nothing of the
        # user's to blend with), and into the image from its border on a larger canvas
        feather, loop_closure = values["mask_feather"], values["loop_closure"]
        alpha = feathered_alpha(kept, feather, loop_closure) * placement.present * \
            inward_ramp(placement.present, feather, loop_closure) if kept.any() else None
        start = ImageStart(clean=clean, noise=noise.to(self._execution_device, self.compute_dtype), release=release,
                           first_step=first, from_noise=from_noise, pixels=placement.pixels, alpha=alpha,
                           inpainting=inpainting)
        return noise, seed, start

    def encode_canvas(self, images: torch.Tensor, panoramas: int, generator, window: int) -> torch.Tensor:
        """The latents (panoramas, C, h, w) of a canvas image in [-1, 1]: the VAE's distribution, in
        overlapping tiles of the window where the image is large (encode_tiled), sampled with each
        generator (one generator: one sample, repeated; none: the mean), in the compute dtype."""
        device = self._execution_device
        images = images.to(device)
        latent_height, latent_width = (side // self.vae_scale_factor for side in images.shape[-2:])
        if should_tile(latent_height, latent_width, window):
            tile = vae_tile(window)
            mean, std = encode_tiled(self.backbone.latent_moments, images, self.vae_scale_factor, tile,
                                     max(1, tile // 4))
        else:
            mean, std = self.backbone.latent_moments(images)
        if generator is None:
            samples = [mean]
        else:
            generators = generator if isinstance(generator, list) else [generator]
            samples = [mean + std * randn_tensor(mean.shape, generator=one, device=mean.device, dtype=mean.dtype)
                       for one in generators]
        latents = torch.cat([self.backbone.encoder_output(sample) for sample in samples])
        return latents.repeat(panoramas // latents.shape[0], 1, 1, 1).to(device, self.compute_dtype)

    @staticmethod
    def seeded_generator(values: dict, generator, latents) -> tuple:
        """The call's generator and its seed: a CPU generator seeded with `seed` (drawn at random
        when unset) where neither `generator` nor `latents` is given, else `generator` and no seed."""
        if generator is not None or latents is not None:
            return generator, None
        seed = settings.draw_seed() if values["seed"] is None else values["seed"]
        return torch.Generator("cpu").manual_seed(seed), seed

    def prepare_latents(self, panoramas: int, values: dict, generator, latents) -> tuple[torch.Tensor, int | None]:
        """Step 3b: the initial noise of `panoramas` panoramas and its seed. The draw is the
        reference's: torch.randn on the CPU in float32 from a generator seeded with `seed`, so a
        seed means the same panorama everywhere; `generator` (one, or a list of one per panorama)
        or `latents` given instead have no seed."""
        factor = self.vae_scale_factor
        shape = (panoramas, self.backbone.latent_channels, values["height"] // factor, values["width"] // factor)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape} for this canvas, got {tuple(latents.shape)}.")
            return latents.float(), None
        generator, seed = self.seeded_generator(values, generator, latents)
        if isinstance(generator, list) and len(generator) != panoramas:
            raise ValueError(f"generator must be one generator or a list of one per panorama ({panoramas}), got "
                             f"{len(generator)}.")
        device = (generator[0] if isinstance(generator, list) else generator).device
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32), seed

    def denoise(self, noise: torch.Tensor, conditioning: PromptConditioning, layout: Layout, values: dict,
                fast: FastModes, view_conditioning: ViewConditioning | None = None, attention_kwargs: dict | None = None,
                callback_on_step_end: Callable | None = None, callback_on_step_end_tensor_inputs=("latents",),
                image_start: ImageStart | None = None):
        """Step 4: the joint denoising loop (loop.py) over the backbone's networks, bound to this
        call's prompts, guidance and view conditioning; returns the clean latents and the view
        chunk size it ended with. With an image input (`image_start`) the loop starts at the step
        its strength picks, from the image's noised latent, and holds the kept pixels after every step."""
        device = self._execution_device
        panoramas = noise.shape[0]
        sampler = self.backbone.sampler(values["num_inference_steps"], len(layout.views) * panoramas, device,
                                        fast.multistep, layout.window)
        if image_start is None:
            latents = noise.to(device, self.compute_dtype) * sampler.init_noise_sigma
        else:
            if image_start.inpainting is not None:
                conditioning = dataclasses.replace(conditioning, inpainting=image_start.inpainting)
            sampler.skip(image_start.first_step)
            latents = image_start.start_latents(sampler).to(self.compute_dtype)
        window_pixels = layout.window * self.vae_scale_factor
        chunks = ViewChunks(values["view_batch_size"] or default_view_batch_size(device, window_pixels,
                                                                                 len(layout.views)))

        # A LoRA scale is applied to the denoiser's LoRA layers for the whole loop, not by the network
        # around each forward (diffusers' way): a gradient-checkpointed backward recomputes the
        # forward after that forward has returned, and must see the same scale.
        lora_scale = (attention_kwargs or {}).get("scale")
        network_kwargs = {name: value for name, value in (attention_kwargs or {}).items() if name != "scale"} or None

        def predict(x, t, views):
            return self.backbone.guided_prediction(x, t, conditioning, values["guidance_scale"], views,
                                                   view_conditioning, network_kwargs)

        sync_pixels = round(window_pixels * fast.image_scale) ** 2
        first_step = 0 if image_start is None else image_start.first_step  # of the whole schedule
        plan: RegionPlan | None = values.get("region_plan")
        pixel_weights = None
        if plan is not None:
            plan = plan.with_base(values["region_base"]).to(device)
            predict = self.regional_prediction(plan, conditioning, noise, sampler, values, first_step,
                                               view_conditioning, network_kwargs)
            mode, anchor_prompt = self.region_sync, main_prompt(plan, layout.views[layout.anchor])
            pixel_weights = lambda views, side: sync_pixel_weights(plan, views, side, mode, anchor_prompt)  # noqa: E731

        def after_step(i, t, latents, weight):
            if image_start is not None:
                latents = image_start.hold(latents, i, sampler)
            if callback_on_step_end is None:
                return latents
            given = {name: latents for name in callback_on_step_end_tensor_inputs or () if name == "latents"}
            changes = callback_on_step_end(self, i, t, {**given, "sync_weight": weight, "first_step": first_step})
            return (changes or {}).get("latents", latents)

        with self.progress_bar(total=len(sampler.timesteps)) as progress, self.loop_models_resident(), \
                lora_layers_scaled([self.backbone.network], lora_scale):
            latents = denoise_panorama(
                latents, views=layout.views, anchor=layout.anchor, sampler=sampler,
                predict=predict,
                foresee=functools.partial(self.foreseen_image, fast=fast),
                perceptual=functools.partial(self.perceptual_distance, fast.lpips_net),
                schedule=settings.sync_schedule(values), chunks=chunks,
                loss_scale=LossScale(sync_pixels, self.computes_in_half), fast=fast,
                precision_name=self.precision.name, after_step=after_step, progress=progress,
                first_step=first_step, sync_pixel_weights=pixel_weights)
        return latents, chunks.size

    def regional_prediction(self, plan: RegionPlan, conditioning: PromptConditioning, noise: torch.Tensor, sampler,
                            values: dict, first_step: int, view_conditioning, network_kwargs) -> RegionalPrediction:
        """The loop's prediction on a canvas with region prompts (regions.py): every (view, prompt)
        pair a batch needs in one network call, reading its row of `conditioning` (the panoramas'
        prompts, then the regions', with_region_prompts), and the regions bootstrapped against flat
        colours in the first `region_bootstrap` share of the schedule's steps (BOOTSTRAP_SHARE)."""
        device = self._execution_device
        panoramas = noise.shape[0]
        prompt_count = panoramas + len(plan.prompts)

        def predict_rows(x, t, views, rows):
            return self.backbone.guided_prediction(x, t, prompt_rows(conditioning, rows, prompt_count),
                                                   values["guidance_scale"], views, view_conditioning, network_kwargs)

        bootstrapped = round(self.region_bootstrap * values["num_inference_steps"]) - first_step
        bootstrap = None
        if bootstrapped > 0:
            bootstrap = Bootstrap(plan.masks, self.flat_colour_latents(bootstrapped, len(plan.prompts)),
                                  noise.to(device, self.compute_dtype), sampler.timesteps[:bootstrapped],
                                  sampler.noised)
        return RegionalPrediction(plan, predict_rows, panoramas, bootstrap)

    def flat_colour_latents(self, steps: int, regions: int) -> torch.Tensor:
        """(steps, regions, C): the latent of a flat random colour for each region at each
        bootstrapped step (MultiDiffusion's bootstrapping backgrounds), the same for every call."""
        colours = torch.rand(steps * regions, 3, 1, 1, generator=torch.Generator().manual_seed(0))
        side = 8 * self.vae_scale_factor
        images = (colours * 2 - 1).expand(-1, 3, side, side).to(self._execution_device)
        mean, _ = self.backbone.latent_moments(images)
        latents = self.backbone.encoder_output(mean.float()).mean(dim=(-2, -1))
        return latents.reshape(steps, regions, -1).to(self._execution_device, self.compute_dtype)

    def decode_latents(self, latents: torch.Tensor, values: dict, layout: Layout, output_type: str,
                       tiles_per_call: int = 1, image_start: ImageStart | None = None):
        """Step 5: the panoramas decoded (unless `output_type` is "latent"), an image input's kept
        pixels pasted back, and post-processed by diffusers' VaeImageProcessor into `output_type`."""
        if output_type == "latent":
            return latents
        images = self.decode_panorama(latents, values["loop_closure"], values["tiled_decode"], tiles_per_call,
                                      layout.window, values["wrap_rows"])
        if image_start is not None and values.get("paste_back", True):
            images = image_start.paste_back(images)
        # decode_panorama's images are in [0, 1] already
        return self.image_processor.postprocess(images, output_type=output_type,
                                                do_denormalize=[False] * images.shape[0])

    def finish(self, images, seed: int | None, return_dict: bool) -> Any:
        """The call's result, once the offload hooks are released."""
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, seed
        return SyncDiffusionOutput(images=images, seed=seed)
