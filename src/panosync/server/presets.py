"""The web page's presets: named sets of the sync and diffusion settings a model's defaults and its
geometry give (the paper's, a quicker one, and the model's own)."""

from __future__ import annotations

from .. import settings
from ..geometry import Geometry

# What a preset sets: the sync and diffusion settings, the fast modes included, so that choosing
# "paper" runs the paper's gradient even on a model that recommends a fast mode.
PRESET_NAMES = ("guidance_scale", "sync_weight", "sync_decay_rate", "sync_freq", "sync_threshold",
                "num_inference_steps", "stride", "fast_modes", "sync_image_scale")


def presets(defaults: dict, geometry: Geometry) -> dict[str, dict]:
    """The presets of a model whose defaults (settings.model_defaults) are `defaults`: "paper" (the
    paper's settings, faithful), "fast" (20 steps, sync only in the first 5, where the layout is
    decided, as the public hosted API does; faithful too), and first "recommended", the model's own,
    when they differ from the paper's."""
    paper = {name: _copy(value) for name, value in settings.fill_canvas(settings.paper_defaults(), geometry).items()
             if name in PRESET_NAMES}
    fast = {**paper, "num_inference_steps": 20, "sync_threshold": 5}
    recommended = {name: _copy(defaults[name]) for name in PRESET_NAMES}
    if recommended.get("stride") is None:
        recommended["stride"] = paper["stride"]
    chosen = {"paper": paper, "fast": fast}
    return {"recommended": recommended, **chosen} if recommended != paper else chosen


def _copy(value):
    """A list value as a list of its own (a preset's fast_modes is not the defaults')."""
    return list(value) if isinstance(value, list) else value
