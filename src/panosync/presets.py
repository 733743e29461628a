"""Named presets: sets of the sync and diffusion settings, the same for the command (`--preset`)
and the web page. Each is what a user would otherwise type as several options.

recommended  the model's own settings (its recommended.json; else its family's and the paper's).
fast         the model's settings, synced only in the first quarter of the steps, where the layout
             and the light are decided, with the sync step's two cheapest approximations
             (reuse_noise, lpips_alex; fast.py): on pocket about twice MultiDiffusion's time with its
             bars kept (docs/speed.md).
faithful     the model's settings with the paper's sync step exactly: every step synced (as the model
             says how often), no fast mode.
paper        the paper's settings: 50 DDIM steps, guidance 7.5, w 20, decay 0.95, a quarter-window
             stride, faithful.
"""

from __future__ import annotations

import math

from . import settings
from .geometry import Geometry

# What a preset sets: the sync and diffusion settings, the fast modes included, so that choosing
# "paper" runs the paper's gradient even on a model that recommends a fast mode.
PRESET_NAMES = ("guidance_scale", "sync_weight", "sync_decay_rate", "sync_freq", "sync_threshold",
                "num_inference_steps", "stride", "fast_modes", "sync_image_scale")
PRESETS = ("recommended", "fast", "faithful", "paper")

# The fast preset's approximations and the share of the steps it syncs in.
FAST_PRESET_MODES = ("reuse_noise", "lpips_alex")
FAST_PRESET_SYNCED_SHARE = 0.25


def fast_threshold(steps: int) -> int:
    """How many first steps the fast preset syncs in, of `steps`: a quarter, at least one."""
    return max(1, math.ceil(steps * FAST_PRESET_SYNCED_SHARE))


def fast_preset_modes(window_pixels: int | None) -> list[str]:
    """The fast preset's modes for views of `window_pixels` (None: not known yet): lpips_alex only
    where LPIPS-AlexNet can see the views (settings.SMALLEST_ALEX_SIDE)."""
    return [mode for mode in FAST_PRESET_MODES if mode != "lpips_alex" or window_pixels is None
            or window_pixels >= settings.SMALLEST_ALEX_SIDE]


def preset_changes(name: str, values: dict, control: bool = False, window_pixels: int | None = None) -> dict:
    """What preset `name` sets over `values` (resolved settings: a model's defaults, or a request's
    with the file of --from): recommended sets nothing, fast and faithful the sync step's settings
    (fast's threshold from `values`' steps, its modes for views of `window_pixels`), paper the paper's values of PRESET_NAMES (ControlSync's
    with `control`; stride None: a quarter window)."""
    if name == "recommended":
        return {}
    if name == "fast":
        return {"fast_modes": fast_preset_modes(window_pixels), "sync_threshold": fast_threshold(values["num_inference_steps"]),
                "sync_image_scale": 1.0}
    if name == "faithful":
        return {"fast_modes": [], "sync_threshold": None, "sync_image_scale": 1.0}
    if name == "paper":
        return {key: _copy(value) for key, value in settings.paper_defaults(control).items() if key in PRESET_NAMES}
    raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}.")


def presets(defaults: dict, geometry: Geometry) -> dict[str, dict]:
    """The presets of a model whose defaults (settings.model_defaults) are `defaults`, each a value for
    every name of PRESET_NAMES: "recommended" (only where it differs from the paper's), "fast",
    "faithful" (only where it differs from the paper's) and "paper"."""
    paper = {name: _copy(value) for name, value in settings.fill_canvas(settings.paper_defaults(), geometry).items()
             if name in PRESET_NAMES}
    recommended = {name: _copy(defaults[name]) for name in PRESET_NAMES}
    if recommended.get("stride") is None:
        recommended["stride"] = paper["stride"]
    fast = {**recommended, **preset_changes("fast", recommended, window_pixels=geometry.window_pixels)}
    faithful = {**recommended, **preset_changes("faithful", recommended)}
    chosen = {"recommended": recommended, "fast": fast, "faithful": faithful, "paper": paper}
    return {name: values for name, values in chosen.items()
            if name in ("fast", "paper") or values != paper}


def _copy(value):
    """A list value as a list of its own (a preset's fast_modes is not the defaults')."""
    return list(value) if isinstance(value, list) else value
