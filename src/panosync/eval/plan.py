"""An evaluation's plan: every image it consists of (per prompt and seed, one reference single
image and each method's panorama), each with the parameters settled for its pipeline call, and
which of them an earlier run has already made."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import settings
from ..geometry import Geometry

# Parameters written into each PNG that do not change the picture, so a rerun does not compare them.
NOT_COMPARED = ("seconds", "device", "dtype", "view_batch_size", "threads")
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
    from .. import metadata

    # the metadata with the digest of the pixels (metadata.DIGEST) when this panosync stores one
    read = getattr(metadata, "read_metadata", metadata.read_parameters)
    missing = []
    for image in plan.images:
        if image.path.exists() and not image.path.is_file():
            what = "a reference image" if image.method is None else f"a {image.method} panorama"
            raise ValueError(f"{image.path} is not a file, where {what} goes: remove it, or use another --out folder.")
        if not image.path.is_file():
            missing.append(image)
            continue
        stored = read(image.path)
        digest = stored.pop(getattr(metadata, "DIGEST", "pixels_sha256"), None)
        # the weights too when only the PNG has them: an image made with a LoRA or an image prompt is another picture
        wanted_of = {**{name: None for name in WEIGHTS}, **image.parameters}
        for name, wanted in wanted_of.items():
            if name == "window" and name not in stored:  # made before the window was a parameter: the native one
                continue
            if name not in NOT_COMPARED and stored.get(name) != wanted:
                raise ValueError(
                    f"{image.path} was made with {name} {stored.get(name)!r}, this evaluation asks for {wanted!r}: "
                    f"use another --out folder, or delete {plan.out} to start over.")
        wrong = pixels_differ(image, digest)
        if wrong is not None:  # its parameters are this run's, its pixels are not what they made: made again
            print(f"panosync: warning: {image.path} {wrong}: it is made again.", file=sys.stderr)
            missing.append(image)
    return missing


def pixels_differ(image: PlannedImage, digest: str | None) -> str | None:
    """Why a kept image's pixels are not what its parameters made, in words (re-saved at another size;
    edited after panosync wrote it, when its metadata holds the `digest` of its pixels), or None."""
    import PIL.Image

    from .. import metadata

    wanted = (image.parameters["width"], image.parameters["height"])
    try:
        with PIL.Image.open(image.path) as picture:
            size = picture.size
            if size == wanted and isinstance(digest, str) and hasattr(metadata, "pixels_digest"):
                picture.load()
                if metadata.pixels_digest(picture) != digest:
                    return "holds other pixels than panosync wrote (their digest is not the one in its metadata)"
    except (OSError, PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError, ValueError) as error:
        return f"cannot be read ({error})"
    if size != wanted:
        return f"is {size[0]}x{size[1]} pixels, not the {wanted[0]}x{wanted[1]} its parameters make"
    return None
