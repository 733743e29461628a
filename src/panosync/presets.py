"""Named presets: sets of the sync and diffusion settings, the same for the command (`--preset`)
and the web page. Each is what a user would otherwise type as several options.

recommended  the model's own settings (its recommended.json; else its family's and the paper's).
fast         the model's settings, synced only in the first quarter of the steps (or in fewer, where
             the model already syncs fewer), where the layout and the light are decided, with the
             sync step's two cheapest approximations (reuse_noise, lpips_alex; fast.py): on pocket
             about twice MultiDiffusion's time with its bars kept (docs/speed.md).
faithful     the model's settings with the paper's sync step exactly: no fast mode, no other
             decoder, every step synced (ControlSync: its paper's first 10).
paper        the paper's settings: 50 DDIM steps, guidance 7.5, w 20, decay 0.95, a quarter-window
             stride, faithful (ControlSync's paper: synced in the first 10 steps).
"""

from __future__ import annotations

import math

from . import settings
from .geometry import Geometry

# What a preset sets on the page: the sync and diffusion settings, the fast modes included, so that
# choosing "paper" runs the paper's gradient even on a model that recommends a fast mode.
PRESET_NAMES = ("guidance_scale", "sync_weight", "sync_decay_rate", "sync_freq", "sync_threshold",
                "num_inference_steps", "stride", "fast_modes", "sync_image_scale")
PRESETS = ("recommended", "fast", "faithful", "paper")

# The fast preset's approximations (sorted, as settings.fast_modes keeps them) and the share of the
# steps it syncs in.
FAST_PRESET_MODES = ("lpips_alex", "reuse_noise")
FAST_PRESET_SYNCED_SHARE = 0.25


def fast_threshold(steps: int, threshold: int | None = None) -> int:
    """How many first steps the fast preset syncs in, of `steps`: a quarter (rounded up, at least
    one), or `threshold` where the settings already sync in fewer (ControlSync's first 10)."""
    quarter = max(1, math.ceil(steps * FAST_PRESET_SYNCED_SHARE))
    return quarter if threshold is None else min(quarter, threshold)


def fast_preset_modes(compared_pixels: int | None) -> list[str]:
    """The fast preset's modes where the sync loss compares images of `compared_pixels` (None: not
    known yet): lpips_alex only where LPIPS-AlexNet can see them (settings.SMALLEST_ALEX_SIDE)."""
    return [mode for mode in FAST_PRESET_MODES if mode != "lpips_alex" or compared_pixels is None
            or compared_pixels >= settings.SMALLEST_ALEX_SIDE]


def preset_changes(name: str, values: dict, control: bool = False, compared_pixels: int | None = None,
                   model_values: dict | None = None) -> dict:
    """What preset `name` sets over `values` (resolved settings: a model's defaults, or a request's
    with the file of --from): recommended the model's own values of PRESET_NAMES (`model_values`;
    none where not given), fast and faithful the sync step's settings (fast's threshold from
    `values`' steps and threshold, its modes for a loss comparing `compared_pixels`), paper the
    paper's values of PRESET_NAMES (ControlSync's with `control`; stride None: a quarter window).
    Faithful and paper also drop a sync decoder."""
    paper = settings.paper_defaults(control)
    if name == "recommended":
        return {key: _copy(model_values[key]) for key in PRESET_NAMES} if model_values else {}
    if name == "fast":
        return {"fast_modes": fast_preset_modes(compared_pixels), "sync_image_scale": 1.0,
                "sync_threshold": fast_threshold(values["num_inference_steps"], values.get("sync_threshold"))}
    if name == "faithful":
        return {"fast_modes": [], "sync_threshold": paper["sync_threshold"], "sync_image_scale": 1.0,
                "sync_decoder": None}
    if name == "paper":
        return {**{key: _copy(value) for key, value in paper.items() if key in PRESET_NAMES}, "sync_decoder": None}
    raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}.")


def presets(defaults: dict, geometry: Geometry, control: bool = False) -> dict[str, dict]:
    """The presets of a model whose defaults (settings.model_defaults) are `defaults`, each a value for
    every name of PRESET_NAMES: "recommended", "fast", "faithful" and "paper", in that order, less
    recommended and faithful where they repeat a preset before them (fast and paper always show)."""
    paper = {name: _copy(value) for name, value in
             settings.fill_canvas(settings.paper_defaults(control), geometry).items() if name in PRESET_NAMES}
    recommended = {name: _copy(defaults[name]) for name in PRESET_NAMES}
    if recommended.get("stride") is None:
        recommended["stride"] = paper["stride"]

    def over_recommended(name: str, **options) -> dict:
        changes = preset_changes(name, recommended, control, **options)
        return {**recommended, **{key: value for key, value in changes.items() if key in PRESET_NAMES}}

    chosen = {"recommended": recommended,
              "fast": over_recommended("fast", compared_pixels=geometry.window_pixels),
              "faithful": over_recommended("faithful"), "paper": paper}
    kept: dict[str, dict] = {}
    for name, values in chosen.items():
        if name in ("fast", "paper") or values not in [*kept.values(), paper]:
            kept[name] = values
    return kept


def _copy(value):
    """A list value as a list of its own (a preset's fast_modes is not the defaults')."""
    return list(value) if isinstance(value, list) else value
