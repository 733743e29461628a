"""The model a server loads once, and the three things the API and the web page do with it: check a
request against the model's geometry and the server's limits, make one panorama, and describe it
in the PNG's metadata exactly as `panosync generate` does (so `--from-png` reproduces it)."""

from __future__ import annotations

import random
from typing import Callable

import PIL.Image
import torch

from ..cli import parameter_defaults
from ..models import load_pipeline, pick_device, pick_dtype, resolve_model
from ..pipeline import SyncDiffusionPipeline, canvas_defaults, check_panorama_inputs
from ..sync import SyncSchedule
from .schema import MAX_STEPS, UINT32_MAX, FieldError, Limits, field_of

# on_step(steps_done, sync_weight_of_that_step)
StepCallback = Callable[[int, float], None]


def most_steps(scheduler) -> int:
    """The most denoising steps whose timesteps all lie inside the scheduler's training schedule:
    999 for Stable Diffusion's DDIM, whose steps_offset of 1 pushes 1000 steps past its end."""
    trained = scheduler.config.num_train_timesteps
    probe = type(scheduler).from_config(scheduler.config)
    for steps in range(min(trained, MAX_STEPS), 0, -1):
        try:
            probe.set_timesteps(steps)
        except ValueError:
            continue
        if int(probe.timesteps.max()) < trained:
            return steps
    return 1


class PanoramaModel:
    """A loaded pipeline with its name, device, dtype and default parameters."""

    def __init__(self, pipe: SyncDiffusionPipeline, name: str, defaults: dict, model_config: str | None = None,
                 view_batch_size: int | None = None):
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.name = name
        self.model_config = model_config
        self.window, self.vae_factor = pipe.window, pipe.vae_factor
        self.max_steps = most_steps(pipe.scheduler)
        canvas = canvas_defaults(self.window, self.vae_factor)
        self.defaults = {name: canvas[name] if value is None and name in canvas else value
                         for name, value in defaults.items()}
        if view_batch_size is not None:
            self.defaults["view_batch_size"] = view_batch_size

    @classmethod
    def load(cls, model: str, device: str = "auto", dtype: str = "auto", model_config: str | None = None,
             view_batch_size: int | None = None) -> "PanoramaModel":
        """Load `model` (anything `panosync generate --model` takes) once, for every request after."""
        source = resolve_model(model)
        device = pick_device(device)
        pipe = load_pipeline(source, device, pick_dtype(dtype, device), config=model_config)
        return cls(pipe, model, parameter_defaults(source), model_config, view_batch_size)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    def prepare(self, given: dict, limits: Limits) -> dict:
        """Every parameter of the panorama `given` asks for, defaults and seed filled in; a
        FieldError naming the field and what it may be when the model or the server cannot make it.
        Costs no model work."""
        parameters = {**self.defaults, **given}
        if parameters.get("seed") is None:
            parameters["seed"] = random.randint(0, UINT32_MAX)
        for side in ("width", "height"):
            if isinstance(parameters[side], int) and parameters[side] > limits.max_side:
                raise FieldError(side, f"{side} must be at most {limits.max_side} pixels on this server, got "
                                       f"{parameters[side]}.")
        steps = parameters["num_inference_steps"]
        if isinstance(steps, int) and steps > self.max_steps:
            raise FieldError("num_inference_steps", f"num_inference_steps must be at most {self.max_steps} with this "
                                                    f"model's scheduler, got {steps}.")
        try:
            check_panorama_inputs(self.window, self.vae_factor, parameters["prompt"], parameters["negative_prompt"],
                                  parameters["width"], parameters["height"], parameters["stride"],
                                  parameters["num_inference_steps"], parameters["guidance_scale"])
            SyncSchedule(parameters["sync_weight"], parameters["sync_decay_rate"], parameters["sync_freq"],
                         parameters["sync_threshold"])
        except ValueError as error:
            raise FieldError(field_of(str(error)), str(error)) from None
        width, height = parameters["width"], parameters["height"]
        if width * height > limits.max_pixels:
            raise FieldError("width" if width >= height else "height",
                             f"width × height must be at most {limits.max_pixels:,} pixels on this server, got "
                             f"{width} × {height} = {width * height:,}: ask for a smaller panorama.")
        return parameters

    def generate(self, parameters: dict, on_step: StepCallback | None = None) -> PIL.Image.Image:
        """One panorama. `on_step` runs after every denoising step; an exception it raises stops the
        run there (how a job is cancelled)."""

        def after_step(pipe, step, timestep, values):
            if on_step is not None:
                on_step(step + 1, float(values["sync_weight"]))

        return self.pipe(**parameters, callback_on_step_end=after_step).images[0]

    def metadata(self, parameters: dict, image: PIL.Image.Image) -> dict:
        """What the PNG carries: the command's keys, so `panosync generate --from-png` makes it again."""
        model = {"model": self.name, **({"model_config": self.model_config} if self.model_config else {})}
        return {**parameters, **model, "width": image.width, "height": image.height, "device": self.device.type,
                "dtype": str(self.dtype).removeprefix("torch.")}
