"""Region prompts: "a calm sea on the left, a city skyline on the right", one scene (docs/regions.md;
docs/algorithm.md, section 7).

MultiDiffusion's region-based generation, in the synced loop. Each region is a box or a mask of
the canvas with a prompt of its own (and optionally a negative prompt and a weight); the call's
prompt covers the rest, the background. At latent resolution each region's mask is feathered (a
blur, so a region does not end in a seam), and every latent pixel gets one weight per prompt: a
region's weight times its mask, and for the background what the regions leave (1 − Σ masks, at
least 0). A view's prediction is the weighted mean of its prompts' predictions over each of its
pixels; a view runs only the prompts whose weight reaches into it, all of a batch's (view, prompt)
pairs in one network call. In the first steps (bootstrapping, MultiDiffusion's 20 of 50) a region's
prediction is made with everything outside its mask replaced by a random flat colour at the same
noise level, so that its content is drawn to fit the mask rather than spread over the window.

With `region_base` above 0 (RegionPlan.with_base) the call's prompt also has a share of the
prediction inside the regions, which carries its light and time of day into them: measured on
pocket (docs/regions.md), it is what keeps one time of day over the regions. With sync, every view
is pulled towards the anchor's image over all its pixels, as without regions (`SYNC_MODES`: the
other ways measured keep the regions no better and one time of day less often); the pull does not
erase a region, whose content comes from its own prompt's prediction.

Pure tensor code and sentences; the pipeline (pipeline_base.py) encodes the prompts and runs the loop.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import SettingError, shown
from .image_input import mask_pixels
from .views import View, crop

MAX_REGIONS = 16
MAX_WEIGHT = 10.0
# the least total weight a latent pixel may have: the weighted mean divides by it, in any precision
SMALLEST_TOTAL = 1e-3
REGION_KEYS = ("box", "mask", "prompt", "negative_prompt", "weight")
# MultiDiffusion's region generation bootstraps 20 of its 50 steps
BOOTSTRAP_SHARE = 0.4
# How the sync step meets the regions (measured in docs/regions.md, pocket/regions.py):
#   whole        every view is pulled towards the anchor's image over all its pixels (the plain sync)
#   same_prompt  the LPIPS distance counts each pixel by the share the anchor's main prompt (the
#                background, unless a region covers most of the anchor) has there: the other
#                prompts' pixels are not pulled
#   half         as same_prompt, but the other prompts' pixels count half
#   outside      only views wholly of the anchor's main prompt are synced
SYNC_MODES = ("whole", "same_prompt", "half", "outside")
DEFAULT_SYNC_MODE = "whole"


@dataclass(frozen=True)
class Region:
    """One region prompt: `prompt` where `box` (x0, y0, x1, y1 in pixels, x1 and y1 excluded) or
    `mask` (an image of the canvas's size, white inside) lies; `negative_prompt` (None: the call's),
    `weight` (its prediction's weight where it overlaps other prompts; the background's is 1)."""

    prompt: str
    box: tuple[int, int, int, int] | None = None
    mask: object = None
    negative_prompt: str | None = None
    weight: float = 1.0


def as_region(value, number: int) -> Region:
    """A Region from a Region or a dict with REGION_KEYS; a SettingError naming region `number`
    (from 1) for anything else."""
    if isinstance(value, Region):
        return value
    if not isinstance(value, dict):
        raise SettingError("regions", f"Region {number} must be a dict with box or mask, and prompt, got "
                                      f"{shown(value)}.")
    unknown = sorted(set(value) - set(REGION_KEYS))
    if unknown:
        raise SettingError("regions", f"Region {number} has unknown keys {', '.join(map(str, unknown))}: a region "
                                      f"takes {', '.join(REGION_KEYS)}.")
    if "prompt" not in value:
        raise SettingError("regions", f"Region {number} has no prompt: say what the region shows.")
    weight = value.get("weight", 1.0)
    return Region(prompt=value["prompt"], box=value.get("box"), mask=value.get("mask"),
                  negative_prompt=value.get("negative_prompt"), weight=1.0 if weight is None else weight)


def checked_list(regions) -> list[Region]:
    """The regions as Regions, once the list itself is checked: a list (None: none) of at most
    MAX_REGIONS dicts or Regions with known keys. Cheap, so a server runs it before it decodes any
    mask a request holds."""
    if regions is None:
        return []
    if not isinstance(regions, (list, tuple)):
        raise SettingError("regions", f"regions must be a list of regions, got {shown(regions)}.")
    if len(regions) > MAX_REGIONS:
        raise SettingError("regions", f"{len(regions)} regions are more than {MAX_REGIONS}: merge some, or give one "
                                      f"region a mask of several parts.")
    return [as_region(value, number) for number, value in enumerate(regions, 1)]


def check_text(text, what: str, number: int, required: bool) -> None:
    from .settings import MAX_PROMPT_CHARACTERS  # settings imports this module's constants

    if text is None and not required:
        return
    if not isinstance(text, str) or (required and not text.strip()):
        kind = "a non-empty text" if required else "a text"
        raise SettingError("regions", f"Region {number}'s {what} must be {kind}, got {shown(text)}.")
    if len(text) > MAX_PROMPT_CHARACTERS:
        raise SettingError("regions", f"Region {number}'s {what} is {len(text):,} characters long: keep it to "
                                      f"{MAX_PROMPT_CHARACTERS:,}.")


def check_box(box, width: int, height: int, number: int) -> tuple[int, int, int, int]:
    """The box as four whole pixels inside the canvas, with room in it; a SettingError otherwise."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or \
            any(isinstance(side, bool) or not isinstance(side, numbers.Integral) for side in box):
        raise SettingError("regions", f"Region {number}'s box must be four whole pixels x0, y0, x1, y1, got "
                                      f"{shown(box)}.")
    x0, y0, x1, y1 = (int(side) for side in box)
    if x1 <= x0 or y1 <= y0:
        raise SettingError("regions", f"Region {number}'s box {x0},{y0},{x1},{y1} is empty: x1 must be right of x0 "
                                      f"and y1 below y0.")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise SettingError("regions", f"Region {number}'s box {x0},{y0},{x1},{y1} reaches outside the {width}×{height} "
                                      f"canvas: keep it within 0,0,{width},{height}.")
    return x0, y0, x1, y1


def latent_mask(region: Region, width: int, height: int, vae_factor: int, number: int) -> torch.Tensor:
    """The region's (h, w) mask at latent resolution: the share of each latent pixel's
    `vae_factor`² image pixels that lie in the region (a mask binarized at a half first)."""
    if (region.box is None) == (region.mask is None):
        raise SettingError("regions", f"Region {number} needs a box or a mask (one of them) to say where it lies.")
    if region.box is not None:
        x0, y0, x1, y1 = check_box(region.box, width, height, number)
        return torch.outer(covered(y0, y1, height // vae_factor, vae_factor),
                           covered(x0, x1, width // vae_factor, vae_factor))
    mask = region_mask_pixels(region.mask, number)
    if tuple(mask.shape[-2:]) != (height, width):
        raise SettingError("regions", f"Region {number}'s mask is {mask.shape[-1]}×{mask.shape[-2]} pixels: it must be "
                                      f"the canvas's size, {width}×{height}.")
    return F.avg_pool2d(mask, vae_factor)[0, 0]


def region_mask_pixels(mask, number: int) -> torch.Tensor:
    """Region `number`'s mask as image_input.mask_pixels reads a mask (one channel, no
    transparency, binarized), with its sentences about a region's white and black."""
    try:
        return mask_pixels(mask, all_black="The mask is all black: paint the region white.",
                           meaning="white inside the region and black outside")
    except ValueError as error:
        raise SettingError("regions", f"Region {number}: {error}") from None


def covered(start: int, end: int, length: int, vae_factor: int) -> torch.Tensor:
    """(length,): the share of each latent pixel's `vae_factor` image pixels within [start, end)."""
    edges = torch.arange(length + 1, dtype=torch.float64) * vae_factor
    overlap = (torch.minimum(edges[1:], torch.tensor(float(end))) - torch.maximum(edges[:-1], torch.tensor(float(start))))
    return (overlap.clamp(min=0) / vae_factor).float()


def feather(masks: torch.Tensor, radius: int, loop_closure: bool, wrap_rows: bool = False) -> torch.Tensor:
    """(K, h, w) masks blurred by two box filters of `radius` latent pixels (a tent): a region's
    edge becomes a ramp reaching 2·radius on either side of it, while the canvas's own edges are
    continued (wrapped round the seam with loop closure, and round the top and bottom with
    `wrap_rows`) so a region that reaches an edge stays whole there."""
    blurred = masks[:, None]
    size = 2 * radius + 1
    for _ in range(2):
        blurred = F.pad(blurred, (radius, radius, 0, 0), mode="circular" if loop_closure else "replicate")
        blurred = F.pad(blurred, (0, 0, radius, radius), mode="circular" if wrap_rows else "replicate")
        blurred = F.avg_pool2d(blurred, size, stride=1)
    return blurred[:, 0].clamp(0, 1)


@dataclass(frozen=True)
class RegionPlan:
    """The checked regions of one canvas, at latent resolution.

    masks    (K, h, w) each region's feathered mask
    weights  (K + 1, h, w) each prompt's weight: the background's first, then each region's
    negative_prompts  each region's, None where it takes the call's"""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str | None, ...]
    masks: torch.Tensor
    weights: torch.Tensor

    def share(self, prompt: int) -> torch.Tensor:
        """(h, w): prompt's share of each latent pixel's weight (0: the background's)."""
        return self.weights[prompt] / self.weights.sum(0)

    def prompts_of(self, view: View) -> tuple[int, ...]:
        """The prompts (0: the background, k: region k) whose weight reaches into the view."""
        reach = crop(self.weights, view).flatten(1).amax(1)
        return tuple(int(k) for k in torch.nonzero(reach > 0).flatten())

    def with_base(self, base: float) -> RegionPlan:
        """The plan with the background's prompt given a `base` share of every region's weight
        (Regional Prompter's base prompt): where a region's prompt had weight W, it keeps (1 − base)·W
        and the background gains base·W, so the call's prompt reaches every view."""
        if not base:
            return self
        regions = self.weights[1:] * (1 - base)
        background = self.weights[0] + base * self.weights[1:].sum(0)
        return RegionPlan(self.prompts, self.negative_prompts, self.masks, torch.cat([background[None], regions]))

    def to(self, device) -> RegionPlan:
        return RegionPlan(self.prompts, self.negative_prompts, self.masks.to(device), self.weights.to(device))


def plan_regions(regions, width: int, height: int, vae_factor: int, window: int,
                 loop_closure: bool, wrap_rows: bool = False) -> RegionPlan | None:
    """The regions of a call checked against its canvas (`width` × `height` pixels; `window` in
    latent pixels) and laid out at latent resolution; None for no regions. A SettingError that
    names the region and says what to change for any that cannot be used."""
    if not regions:
        checked_list(regions)
        return None
    checked = checked_list(regions)
    latent_masks = []
    for number, region in enumerate(checked, 1):
        check_text(region.prompt, "prompt", number, required=True)
        check_text(region.negative_prompt, "negative prompt", number, required=False)
        weight = region.weight
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or \
                not 0 <= weight <= MAX_WEIGHT:
            raise SettingError("regions", f"Region {number}'s weight must be a number from 0 to {MAX_WEIGHT:g}, got "
                                          f"{shown(weight)}.")
        latent_masks.append(latent_mask(region, width, height, vae_factor, number))
    # a ramp across each region's edge, reaching a window/4 on either side
    masks = feather(torch.stack(latent_masks), max(1, window // 8), loop_closure, wrap_rows)
    background = (1 - masks.sum(0)).clamp(min=0)
    region_weights = torch.tensor([float(region.weight) for region in checked])[:, None, None] * masks
    weights = torch.cat([background[None], region_weights])
    total = weights.sum(0)
    if not (total >= SMALLEST_TOTAL).all():
        row, column = (int(i) for i in torch.nonzero(total < SMALLEST_TOTAL)[0])
        raise SettingError("regions", f"The regions' weights add up to 0 around pixel ({column * vae_factor}, "
                                      f"{row * vae_factor}), where no other prompt reaches: give a region there a "
                                      f"weight of {SMALLEST_TOTAL:g} or more.")
    return RegionPlan(tuple(region.prompt for region in checked),
                      tuple(region.negative_prompt for region in checked), masks, weights)


def region_anchor(views: list[View], plan: RegionPlan) -> int:
    """The view with the most background, the nearest the centre among equals: the scene the
    regions are drawn into."""
    shares = [float(crop(plan.share(0), view).sum()) for view in views]
    most = max(shares)
    centre = len(views) // 2
    return min((j for j, share in enumerate(shares) if share >= most - 1e-6), key=lambda j: (abs(j - centre), j))


def main_prompt(plan: RegionPlan, view: View) -> int:
    """The prompt with the largest share of the view (0: the background)."""
    return int(crop(plan.weights / plan.weights.sum(0), view).flatten(1).sum(1).argmax())


def sync_pixel_weights(plan: RegionPlan, views: list[View], side: int, mode: str, prompt: int) -> torch.Tensor | None:
    """(N, 1, side, side) weights of each view's pixels in the sync loss (`mode`, SYNC_MODES), where
    `prompt` is the anchor's main prompt (main_prompt); None where every pixel counts (whole)."""
    if mode == "whole":
        return None
    shares = torch.stack([crop(plan.share(prompt), view) for view in views])[:, None]
    if mode == "half":
        shares = 0.5 + 0.5 * shares
    if mode == "outside":
        shares = (shares >= 1).all(dim=(1, 2, 3), keepdim=True).to(shares.dtype).expand_as(shares)
    return F.interpolate(shares, size=(side, side), mode="bilinear", align_corners=False)


class Bootstrap:
    """MultiDiffusion's bootstrapping of region prompts in the first steps: a region's view latent
    is its own inside its mask and, outside it, a flat colour's latent noised to the step with the
    call's initial noise (a different random colour per step and region)."""

    def __init__(self, masks: torch.Tensor, colours: torch.Tensor, noise: torch.Tensor, timesteps,
                 noised: Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]):
        """`colours` (steps, K, C): each bootstrapped step's flat latent of each region; `noise`
        (panoramas, C, h, w): the initial noise; `timesteps`: the bootstrapped steps' timesteps."""
        self.masks, self.colours, self.noise, self.noised = masks, colours, noise, noised
        self.step_of = {float(t): i for i, t in enumerate(timesteps)}

    def covers(self, t) -> bool:
        return float(t) in self.step_of

    def region_input(self, k: int, x: torch.Tensor, views: list[View], panoramas: list[int], t) -> torch.Tensor:
        """x (n, C, w, w): views of region k's items (their views and panoramas), bootstrapped at t."""
        mask = torch.stack([crop(self.masks[k - 1], view) for view in views])[:, None].to(x.dtype)
        noise = torch.cat([crop(self.noise[b : b + 1], view) for b, view in zip(panoramas, views)]).to(x.dtype)
        flat = self.colours[self.step_of[float(t)], k - 1][None, :, None, None].to(x.dtype).expand_as(x)
        return x * mask + self.noised(flat, noise, t) * (1 - mask)


class RegionalPrediction:
    """predict(x, t, views) of loop.py for a canvas with regions: each item's prediction is the
    weighted mean of its view's prompts' predictions, pixel by pixel.

    `predict_rows(x, t, views, rows)` is the guided prediction of a batch whose item n reads row
    rows[n] of the call's prompt conditioning: the panoramas' own prompts are its first
    `panoramas` rows, region k's the row panoramas + k − 1. Items come as the loop gives them, the
    same views of every panorama, view by view; each prompt's items keep that order, so a view's
    panoramas stay together, as the backbones' per-panorama inputs expect."""

    def __init__(self, plan: RegionPlan, predict_rows: Callable, panoramas: int, bootstrap: Bootstrap | None = None):
        self.plan, self.predict_rows, self.panoramas, self.bootstrap = plan, predict_rows, panoramas, bootstrap
        self._prompts_of: dict[View, tuple[int, ...]] = {}

    def prompts_of(self, view: View) -> tuple[int, ...]:
        if view not in self._prompts_of:
            self._prompts_of[view] = self.plan.prompts_of(view)
        return self._prompts_of[view]

    def __call__(self, x: torch.Tensor, t, views: list[View]) -> torch.Tensor:
        panoramas = self.panoramas
        groups = [(k, [n for n, view in enumerate(views) if k in self.prompts_of(view)])
                  for k in range(len(self.plan.prompts) + 1)]
        groups = [(k, items) for k, items in groups if items]
        inputs, rows, item_views = [], [], []
        for k, items in groups:
            group_views = [views[n] for n in items]
            latents = x[items]
            if k > 0 and self.bootstrap is not None and self.bootstrap.covers(t):
                latents = self.bootstrap.region_input(k, latents, group_views, [n % panoramas for n in items], t)
            inputs.append(latents)
            rows += [n % panoramas if k == 0 else panoramas + k - 1 for n in items]
            item_views += group_views
        predictions = self.predict_rows(torch.cat(inputs), t, item_views, rows)
        combined = torch.zeros_like(x)
        total = torch.zeros_like(x[:, :1])
        for (k, items), prediction in zip(groups, predictions.split([len(items) for _, items in groups])):
            weight = torch.stack([crop(self.plan.weights[k], views[n]) for n in items])[:, None].to(x.dtype)
            index = torch.tensor(items, device=x.device)
            combined = combined.index_add(0, index, weight * prediction)
            total = total.index_add(0, index, weight)
        return combined / total


WEIGHT_TEXT = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")  # a plain decimal: no sign, exponent, inf or nan


def parse_region_option(text: str) -> dict:
    """The command's --region "X0,Y0,X1,Y1=PROMPT[:WEIGHT]" as a region dict (box, prompt, weight)."""
    box_text, prompt, weight = split_region_option(text, "X0,Y0,X1,Y1")
    try:
        box = [int(side) for side in box_text.split(",")]
    except ValueError:
        box = None
    if box is None or len(box) != 4:
        raise SettingError("regions", f"--region {text!r}: the box before '=' must be four whole pixels "
                                      f"X0,Y0,X1,Y1, e.g. --region \"0,0,512,512=a calm sea\".")
    return dict(box=box, prompt=prompt, weight=weight)


def split_region_option(text: str, place: str) -> tuple[str, str, float]:
    """(where, prompt, weight) of "WHERE=PROMPT[:WEIGHT]": the weight is the text after the last
    ':' when it is a number (a prompt may hold colons of its own)."""
    where, equals, prompt = text.partition("=")
    if not equals or not where.strip() or not prompt.strip():
        raise SettingError("regions", f"{text!r} is not {place}=PROMPT: give where the region lies, '=', and what "
                                      f"it shows, optionally ':WEIGHT' after.")
    weight = 1.0
    head, colon, tail = prompt.rpartition(":")
    if colon and WEIGHT_TEXT.fullmatch(tail.strip()):
        weight, prompt = float(tail), head
        if weight > MAX_WEIGHT:
            raise SettingError("regions", f"{text!r}: the number after the last ':' ({tail.strip()}) is read as the "
                                          f"region's weight, from 0 to {MAX_WEIGHT:g}: to keep a prompt that ends in "
                                          f"':NUMBER', add ':1' after it.")
    return where.strip(), prompt.strip(), weight


def region_of_mask_option(text: str) -> tuple[str, str, float]:
    """The command's --region-mask "MASK.png=PROMPT[:WEIGHT]" as (path, prompt, weight)."""
    return split_region_option(text, "MASK.png")
