"""An evaluation's plan: every image it consists of (per prompt and seed, one reference single
image and each method's panorama), each with the parameters settled for its pipeline call, and
which of them an earlier run has already made."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from .. import settings
from ..geometry import Geometry

# Parameters written into each PNG that do not change the picture, so a rerun does not compare them.
NOT_COMPARED = ("seconds", "device", "dtype", "view_batch_size")
# recorded in the PNG and compared, but the model's (and the engine's image prompt), not the call's
WEIGHTS = ("loras", "textual_inversions", "ip_adapter", "ip_adapter_image")


@dataclass
class PlannedImage:
    """One picture to make: a method's panorama, or a reference single image (method None)."""

    path: Path
    method: str | None
    prompt: str
    seed: int
    parameters: dict  # everything the pipeline call takes, plus the model

    def call(self) -> dict:
        return {k: v for k, v in self.parameters.items() if k not in ("model", "method", *WEIGHTS)}


@dataclass
class Plan:
    model: str
    source: object  # models.ModelSource
    prompts: list[str]
    seeds: list[int]
    methods: dict[str, dict]  # name -> its sync settings
    shared: dict  # generation settings of every method
    out: Path
    args: argparse.Namespace
    images: list[PlannedImage] = field(default_factory=list)
    loras: tuple = ()  # loras.LoraSpec of --lora: every image is made with them, and records them
    textual_inversions: tuple = ()
    ip_adapter: object = None  # ip_adapters.IpAdapterSpec of --ip-adapter: every image is made with it
    ip_adapter_image: object = None  # ip_adapters.IpAdapterImageSpec: the image prompt of every image

    @property
    def panoramas(self) -> list[PlannedImage]:
        return [image for image in self.images if image.method is not None]

    @property
    def references(self) -> list[PlannedImage]:
        return [image for image in self.images if image.method is None]


def settle_canvas(plan: Plan, geometry: Geometry) -> None:
    """Fill in the canvas defaults of a model of this shape, check the canvas, and list the images."""
    from .crops import check_crop_count

    plan.shared = settings.fill_canvas(plan.shared, geometry)
    s = plan.shared
    for prompt in plan.prompts:
        settings.check({**s, **plan.methods.get("syncdiffusion", {}), "prompt": prompt}, geometry)
    window = s.get("window") or geometry.window_pixels  # the chosen window (SD3, FLUX), in pixels
    check_crop_count(s["height"], s["width"], window)
    plan.images = list_images(plan, window)


def list_images(plan: Plan, size: int) -> list[PlannedImage]:
    """Every image of the evaluation, by prompt and seed: the reference, then each method's
    panorama, so that an interrupted run leaves complete groups to compare."""
    from ..ip_adapters import ip_adapter_metadata
    from ..loras import weights_metadata

    s = plan.shared
    common = {"negative_prompt": s["negative_prompt"], "guidance_scale": s["guidance_scale"],
              "num_inference_steps": s["num_inference_steps"], "stride": s["stride"], "model": plan.model,
              "window": s.get("window"), **weights_metadata(plan.loras, plan.textual_inversions),
              **ip_adapter_metadata(plan.ip_adapter, plan.ip_adapter_image)}
    images = []
    for index, prompt in enumerate(plan.prompts):
        for seed in plan.seeds:
            name = f"{index:03d}-seed{seed}.png"
            reference = {**common, "prompt": prompt, "seed": seed, "width": size, "height": size,
                         "sync_weight": 0.0, "loop_closure": False}
            images.append(PlannedImage(plan.out / "references" / name, None, prompt, seed, reference))
            for method, sync in plan.methods.items():
                parameters = {**common, "prompt": prompt, "seed": seed, **s, **sync, "method": method}
                images.append(PlannedImage(plan.out / "panoramas" / method / name, method, prompt, seed, parameters))
    return images


def images_to_make(plan: Plan) -> list[PlannedImage]:
    """The images not made yet. An image already there must have been made with the same
    parameters, or mixing it in would make the results wrong: that is a ValueError."""
    from ..metadata import read_parameters

    missing = []
    for image in plan.images:
        if not image.path.is_file():
            missing.append(image)
            continue
        stored = read_parameters(image.path)
        # the weights too when only the PNG has them: an image made with a LoRA or an image prompt is another picture
        wanted_of = {**{name: None for name in WEIGHTS}, **image.parameters}
        for name, wanted in wanted_of.items():
            if name == "window" and name not in stored:  # made before the window was a parameter: the native one
                continue
            if name not in NOT_COMPARED and stored.get(name) != wanted:
                raise ValueError(
                    f"{image.path} was made with {name} {stored.get(name)!r}, this evaluation asks for {wanted!r}: "
                    f"use another --out folder, or delete {plan.out} to start over.")
    return missing
