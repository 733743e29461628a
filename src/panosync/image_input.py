"""Images as inputs: a picture to repaint (img2img), to inpaint under a mask, to extend onto a
larger canvas (outpainting) or to upscale, all denoised in the synced loop (docs/images.md).

Every latent pixel has one number, the step at which it is let go (`release`):
- pixels of the given image are let go at the step the strength picks (img2img: all of them; with
  a mask, its white pixels), having started from the image's latent noised to that step;
- kept pixels (a mask's black; the whole image when it is extended onto a larger canvas) are never
  let go: after every step they are set to the image's latent noised to the next timestep, and
  after the last to the image's latent itself (diffusers' inpainting blend for a 4-channel UNet);
  after decoding, the user's own pixels are pasted back with a feathered edge: into the mask's
  white, where the user's pixels lie under it, and at the border of an extended image inwards (the
  few pixels there blend the user's into the painted canvas);
- pixels outside the image start from pure noise (strength 1).
The loop starts at the earliest step any pixel needs; a pixel whose step comes later is held like
a kept pixel until then, so that it begins from the noise level of its own strength (differential
diffusion's way of giving pixels different strengths in one loop). Loop closure uses this: an image
whose left and right edges do not meet gets a higher strength near the wrap, so they can be made to.

Pure tensor code and sentences; the pipeline (pipeline_base.py) encodes and runs the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .conditions import rgb_image
from .errors import SettingError
from .views import View, crop

# diffusers' defaults: StableDiffusionImg2ImgPipeline's strength, and the inpainting pipeline's
IMG2IMG_STRENGTH = 0.8
INPAINT_STRENGTH = 1.0
# With loop closure, the image's columns this close to the wrap (a fraction of the window, each
# side) are repainted at least at WRAP_STRENGTH, falling linearly to the call's strength: a
# photo's left and right edges rarely meet, and a low strength alone would keep the seam.
WRAP_BAND = 0.25
WRAP_STRENGTH = 0.6
NEVER = 10**6  # the release step of a kept pixel: held after every step


@dataclass
class Placement:
    """The image on the canvas, in pixels (no model work): `pixels` (1, 3, H, W) in [0, 1] (grey
    where the image does not reach), `present` (1, 1, H, W) where it does, `painted` where the
    panorama is made (a mask's white, and everything outside the image), `strength` of the given
    image's painted pixels, and whether anything is kept (`holds`: a mask, or a canvas larger
    than the image)."""

    pixels: torch.Tensor
    present: torch.Tensor
    painted: torch.Tensor
    strength: float
    holds: bool
    box: tuple[int, int, int, int]  # left, top, width, height of the image on the canvas
    edges_meet: bool = False  # its left and right edges meet already (loop closure needs no repainting there)


@dataclass
class ImageStart:
    """What the loop needs of an image input, in latent pixels: the image's `clean` latents
    (panoramas, C, h, w), the `noise` they are noised with, each pixel's `release` step (1, 1, h,
    w), the loop's `first_step`, whether it starts from pure noise (`from_noise`: diffusers'
    inpainting at strength 1), and for the paste-back the canvas `pixels` and their `alpha`
    (1 where the user's pixels are kept, falling off over the feather; None: nothing kept); for an
    inpainting UNet (9 channels), the mask and masked image's latent it reads (`inpainting`)."""

    clean: torch.Tensor
    noise: torch.Tensor
    release: torch.Tensor
    first_step: int
    from_noise: bool
    pixels: torch.Tensor
    alpha: torch.Tensor | None
    inpainting: torch.Tensor | None = None  # an inpainting UNet's mask and masked image latent (panoramas, 1 + C, h, w)

    def start_latents(self, sampler) -> torch.Tensor:
        """The latents the loop starts from: pure noise, or the image's latent noised to the first step."""
        if self.from_noise:
            return self.noise * sampler.init_noise_sigma
        return sampler.noised(self.clean, self.noise, sampler.timesteps[0])

    def hold(self, latents: torch.Tensor, i: int, sampler) -> torch.Tensor:
        """`latents` after step `i` of the loop (0: its first step) with every pixel not yet let go
        set to the image's latent noised to the next timestep (its clean latent after the last)."""
        # a pixel let go at step r must enter step r as the image noised to t_r: it is held after every
        # step before r (and a kept pixel, never let go, after every step)
        held = self.release > self.first_step + i
        if not bool(held.any()):
            return latents
        timesteps = sampler.timesteps
        if i + 1 < len(timesteps):
            target = sampler.noised(self.clean, self.noise, timesteps[i + 1])
        else:
            target = self.clean
        return torch.where(held.to(latents.device), target.to(latents.dtype), latents)

    def paste_back(self, images: torch.Tensor) -> torch.Tensor:
        """Decoded images (N, 3, H, W) in [0, 1] with the kept pixels the user's own, blended over the feather."""
        if self.alpha is None:
            return images
        alpha = self.alpha.to(images.device, images.dtype)
        return alpha * self.pixels.to(images.device, images.dtype) + (1 - alpha) * images


# ------------------------------------------------------------------------------ reading images


def image_pixels(image, what: str = "image") -> torch.Tensor:
    """`image` (a PIL image, an (H, W, 3) array or a (3, H, W) / (1, 3, H, W) tensor in [0, 1]) as
    a (1, 3, H, W) float32 tensor in [0, 1]; a ValueError that says what to change otherwise."""
    if isinstance(image, PIL.Image.Image):
        array = np.asarray(rgb_image(image, what), dtype=np.float32) / 255
        return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()
    if isinstance(image, np.ndarray):
        check_numbers(image, what)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"The {what} must be an RGB image: an (H, W, 3) array, got shape {image.shape}.")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        tensor = tensor.float() / 255 if image.dtype == np.uint8 else tensor.float()
    elif isinstance(image, torch.Tensor):
        check_numbers(image, what)
        tensor = image[None] if image.ndim == 3 else image
        if tensor.ndim != 4 or tensor.shape[:2] != (1, 3):
            raise ValueError(f"The {what} must be one RGB image: a (3, H, W) or (1, 3, H, W) tensor, got shape "
                             f"{tuple(image.shape)}.")
        tensor = tensor.detach().float().cpu()
    else:
        raise ValueError(f"The {what} must be a PIL image, an array or a tensor, got {type(image).__name__}.")
    if tensor.numel() == 0:
        raise ValueError(f"The {what} is empty (shape {tuple(tensor.shape)}): give an image of at least one pixel.")
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise ValueError(f"The {what}'s values must lie in [0, 1].")
    return tensor


def check_numbers(values, what: str) -> None:
    """A ValueError unless an array's or a tensor's values are real numbers (not objects, text or complex)."""
    if isinstance(values, np.ndarray):
        real = np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating) or \
            values.dtype == np.bool_
    else:
        real = not values.is_complex()
    if not real:
        raise ValueError(f"The {what}'s values must be real numbers, got an array of {values.dtype}.")


ALL_BLACK = ("The mask is all black: it keeps the whole image and paints nothing; paint white where the panorama "
             "should change.")


MASK_MEANING = "white where the panorama is painted and black where the image is kept"


def mask_pixels(mask, all_black: str = ALL_BLACK, meaning: str = MASK_MEANING) -> torch.Tensor:
    """A mask (white: paint, black: keep) as a (1, 1, H, W) tensor of 0 and 1 (binarized at a
    half, as diffusers' mask processor does); a ValueError for one that is not a single channel,
    is transparent or has no white (the sentence `all_black`); `meaning` says in the sentences
    what its white and black are."""
    if isinstance(mask, PIL.Image.Image):
        if mask.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in mask.info:
            raise ValueError(f"The mask has transparency (mode {mask.mode}): give a black-and-white image, "
                             f"{meaning}.")
        if mask.mode in ("L", "1"):
            values = np.asarray(mask.convert("L"), dtype=np.float32)[None] / 255
        elif mask.mode in ("RGB", "P"):
            rgb = np.asarray(mask.convert("RGB"), dtype=np.float32)
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise ValueError(f"The mask has colours: it must be one channel, {meaning}.")
            values = rgb[None, ..., 0] / 255
        else:
            raise ValueError(f"The mask has mode {mask.mode}: give an 8-bit black-and-white image.")
        tensor = torch.from_numpy(values)[None]
    elif isinstance(mask, (np.ndarray, torch.Tensor)):
        check_numbers(mask, "mask")
        if isinstance(mask, np.ndarray):
            array = np.ascontiguousarray(mask)
            tensor = torch.from_numpy(array).float() / (255 if array.dtype == np.uint8 else 1)
        else:
            tensor = mask.detach().cpu().float()
        if tensor.numel() == 0:
            raise ValueError(f"The mask is empty (shape {tuple(mask.shape)}): give a mask of the image's size.")
        while tensor.ndim < 4:
            tensor = tensor[None]
        if tensor.ndim != 4 or tensor.shape[:2] != (1, 1):
            raise ValueError(f"The mask must be one channel: an (H, W) array or (1, 1, H, W) tensor, got shape "
                             f"{tuple(mask.shape)}.")
        if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
            raise ValueError("The mask's values must lie in [0, 1] (1: paint, 0: keep).")
    else:
        raise ValueError(f"The mask must be a PIL image, an array or a tensor, got {type(mask).__name__}.")
    binary = (tensor >= 0.5).float()
    if not binary.any():
        raise ValueError(all_black)
    return binary


# ------------------------------------------------------------------------------ the canvas


def canvas_of_image(image_size: tuple[int, int], width: int | None, height: int | None,
                    resize_image: bool) -> tuple[int | None, int | None]:
    """The canvas (width, height) an image input asks for: the image's size where a side is not
    given (with resize_image, the side is left to the model's default)."""
    image_width, image_height = image_size
    if resize_image:
        return width, height
    return (image_width if width is None else width), (image_height if height is None else height)


def fitted_size(image_size: tuple[int, int], width: int, height: int, vae_factor: int = 8) -> tuple[int, int]:
    """The largest size of the image's aspect ratio that fits the canvas (resize_image); the
    canvas itself where that misses it by at most 1 % or two latent pixels (`vae_factor` pixels
    each) on both sides: a border that thin is not worth painting, and an upscale whose sides were
    rounded to the VAE factor is stretched that little instead."""
    image_width, image_height = image_size
    scale = min(width / image_width, height / image_height)
    fitted = max(1, min(width, round(image_width * scale))), max(1, min(height, round(image_height * scale)))
    if all(side - fit <= max(0.01 * side, 2 * vae_factor) for side, fit in zip((width, height), fitted)):
        return width, height
    return fitted


def edges_meet(pixels: torch.Tensor) -> bool:
    """Whether an image's left and right edges already meet (a loop-closed panorama): the jump
    from its last column to its first is no larger than twice the mean jump between neighbouring
    columns."""
    inner = (pixels[..., 1:] - pixels[..., :-1]).abs().mean()
    wrap = (pixels[..., 0] - pixels[..., -1]).abs().mean()
    return bool(wrap <= 2 * inner)


def place(image, mask, width: int, height: int, strength: float | None, image_at: tuple[int, int] | None,
          resize_image: bool, vae_factor: int = 8) -> Placement:
    """The image (and mask, of the image's size) on a width × height canvas, at `image_at` (its
    top-left corner in pixels; None: centred), resized to fit the canvas where `resize_image`
    (keeping its aspect ratio; fitted_size, with the model's `vae_factor`); checked, with a
    SettingError that names what to change."""
    pixels = image_pixels(image)
    image_height, image_width = pixels.shape[-2:]
    painted_in_image = None
    if mask is not None:
        painted_in_image = mask_pixels(mask)
        if tuple(painted_in_image.shape[-2:]) != (image_height, image_width):
            raise SettingError("mask_image", f"The mask is {painted_in_image.shape[-1]}x{painted_in_image.shape[-2]} "
                                             f"pixels but the image is {image_width}x{image_height}: give a mask of the "
                                             f"image's size.")
    if resize_image and (image_width, image_height) != (width, height):
        new_width, new_height = fitted_size((image_width, image_height), width, height, vae_factor)
        pixels = resize(pixels, new_width, new_height)
        if painted_in_image is not None:
            painted_in_image = (resize(painted_in_image, new_width, new_height) >= 0.5).float()
        image_width, image_height = new_width, new_height
    if image_width > width or image_height > height:
        raise SettingError("image", f"The image is {image_width}x{image_height} pixels, larger than the "
                                    f"{width}x{height} canvas: give a canvas at least its size, or resize_image "
                                    f"(--resize-image) to fit it in.")
    if image_at is None:
        left, top = (width - image_width) // 2, (height - image_height) // 2
    else:
        left, top = check_image_at(image_at)
        if left + image_width > width or top + image_height > height:
            raise SettingError("image_at", f"An image of {image_width}x{image_height} pixels at {left},{top} runs past "
                                           f"the {width}x{height} canvas: place it at most at "
                                           f"{width - image_width},{height - image_height}.")
    extends = (image_width, image_height) != (width, height)
    if strength is None:
        strength = INPAINT_STRENGTH if painted_in_image is not None else IMG2IMG_STRENGTH
    check_strength(strength)
    # channels last in memory, as diffusers' image processor leaves an image (a transposed array):
    # the VAE's convolutions then round as they do in diffusers' pipelines
    canvas = torch.full((1, height, width, 3), 0.5).permute(0, 3, 1, 2)
    present = torch.zeros(1, 1, height, width)
    painted = torch.ones(1, 1, height, width)
    rows, columns = slice(top, top + image_height), slice(left, left + image_width)
    canvas[..., rows, columns] = pixels
    present[..., rows, columns] = 1
    # without a mask, an image the size of the canvas is repainted whole (img2img) and an image on a
    # larger canvas is kept whole (extended)
    inside = painted_in_image if painted_in_image is not None else torch.full((1, 1, image_height, image_width),
                                                                              0.0 if extends else 1.0)
    painted[..., rows, columns] = inside
    return Placement(canvas, present, painted, float(strength), painted_in_image is not None or extends,
                     (left, top, image_width, image_height), edges_meet(pixels))


def resize(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(1, C, h, w) pixels in [0, 1] resized to width × height: Lanczos through PIL (the filter
    upscalers use), one channel at a time, in float so nothing is rounded to 8 bits."""
    channels = [PIL.Image.fromarray(channel.numpy(), mode="F").resize((width, height), PIL.Image.LANCZOS)
                for channel in pixels[0]]
    return torch.from_numpy(np.stack([np.asarray(channel) for channel in channels]))[None].clamp(0, 1)


def check_strength(strength) -> None:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise SettingError("strength", f"strength must be more than 0 and at most 1 (how far the image is noised "
                                       f"before it is denoised), got {strength!r}.")


def check_image_at(image_at) -> tuple[int, int]:
    try:
        left, top = image_at
    except (TypeError, ValueError):
        raise SettingError("image_at", f"image_at must be two whole numbers X,Y (the image's top-left corner in "
                                       f"pixels), got {image_at!r}.") from None
    for value in (left, top):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SettingError("image_at", f"image_at must be two whole numbers X,Y of 0 or more (the image's "
                                           f"top-left corner in pixels), got {image_at!r}.")
    return left, top


# ------------------------------------------------------------------------------ latent pixels


def latent_map(pixels: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """A pixel map at latent size the way diffusers shrinks a mask: nearest, each latent pixel
    taking its block's top-left pixel."""
    return F.interpolate(pixels, size=(latent_height, latent_width))


def release_steps(placement: Placement, latent_height: int, latent_width: int, steps: int, first_step,
                  loop_closure: bool, window: int) -> torch.Tensor:
    """Each latent pixel's release step (module docstring), (1, 1, h, w) long."""
    painted = latent_map(placement.painted, latent_height, latent_width) >= 0.5
    present = latent_map(placement.present, latent_height, latent_width) >= 0.5
    # float64, so a strength of 0.7 picks the step diffusers' Python float does
    strength = torch.full((1, 1, latent_height, latent_width), placement.strength, dtype=torch.float64)
    strength[~present] = 1.0
    if loop_closure and placement.strength < WRAP_STRENGTH and not placement.edges_meet and \
            bool(present[..., 0].any() and present[..., -1].any()):
        band = max(1, round(window * WRAP_BAND))
        distance = torch.arange(latent_width, dtype=torch.float64)
        distance = torch.minimum(distance + 0.5, latent_width - distance - 0.5)  # to the wrap, in latent pixels
        ramp = (1 - distance / band).clamp(min=0)
        near = placement.strength + (WRAP_STRENGTH - placement.strength) * ramp
        strength = torch.where(present, torch.maximum(strength, near.view(1, 1, 1, -1)), strength)
    release = torch.zeros(strength.shape, dtype=torch.long)
    for value in strength.unique().tolist():
        release[strength == value] = first_step(steps, value)
    return torch.where(painted, release, torch.full_like(release, NEVER))


def checked_release(placement: Placement, width: int, height: int, vae_factor: int, steps: int, first_step,
                    loop_closure: bool, window_pixels: int) -> torch.Tensor:
    """release_steps at the model's latent size (`first_step`: the family's count), and a
    SettingError when the loop would run no step: nothing painted at the latent size (a mask's
    white, or the canvas around the image, thinner than a latent pixel), or a strength too low."""
    release = release_steps(placement, height // vae_factor, width // vae_factor, steps, first_step, loop_closure,
                            window_pixels // vae_factor)
    if bool((release >= NEVER).all()):
        raise SettingError("mask_image", f"Nothing is painted at the model's resolution: the mask's white areas (and "
                                         f"the canvas around the image) are thinner than one latent pixel, "
                                         f"{vae_factor} × {vae_factor} pixels; paint larger areas, or give a canvas at "
                                         f"least {vae_factor} pixels larger than the image.")
    if int(release.min()) >= steps:
        raise SettingError("strength", f"strength {placement.strength:g} runs no step of {steps} (it runs the last "
                                       f"steps · strength, rounded down): raise strength or num_inference_steps.")
    return release


def feathered_alpha(kept: torch.Tensor, feather: int, loop_closure: bool) -> torch.Tensor:
    """(1, 1, H, W) weights of the user's pixels in the paste-back: 1 where `kept`, falling
    linearly to 0 over `feather` pixels into the painted region (wrapping round the seam with
    loop closure), so the painted pixels next to the kept ones blend into them without an edge."""
    total, grown = kept.clone(), kept
    for _ in range(feather):
        padded = F.pad(grown, (1, 1, 0, 0), mode="circular") if loop_closure else F.pad(grown, (1, 1, 0, 0))
        padded = F.pad(padded, (0, 0, 1, 1))
        grown = F.max_pool2d(padded, 3, stride=1)
        total += grown
    return total / (feather + 1)


def inward_ramp(present: torch.Tensor, feather: int, loop_closure: bool) -> torch.Tensor:
    """(1, 1, H, W) weights that rise linearly from 0 at the edge of the image on a larger canvas
    to 1 `feather` pixels inside it (1 everywhere for an image the canvas's size): an extended
    image's border is blended into the painted canvas, where nothing of the user's lies beyond it."""
    total, shrunk = torch.zeros_like(present), present
    for _ in range(feather):
        # the canvas's own edges are not the image's: padded as inside (round the seam with loop closure)
        padded = F.pad(shrunk, (1, 1, 0, 0), mode="circular") if loop_closure else F.pad(shrunk, (1, 1, 0, 0), value=1)
        padded = F.pad(padded, (0, 0, 1, 1), value=1)
        shrunk = -F.max_pool2d(-padded, 3, stride=1)
        total += shrunk
    return total / feather if feather else present


def anchor_holding_most(views: list[View], release: torch.Tensor) -> int | None:
    """The view that holds the most kept latent pixels, the nearest the centre among equals (the
    others are pulled towards the scene the user gave); None when nothing is kept."""
    kept = (release >= NEVER).float()[0, 0]
    if not kept.any():
        return None
    counts = [float(crop(kept, view).sum()) for view in views]
    centre = len(views) // 2
    return max(range(len(views)), key=lambda j: (counts[j], -abs(j - centre)))
