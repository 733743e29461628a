"""Procedural little landscapes: a seeded image generator, captions and a prompt parser.

Every image is a sky above a terrain, with three global attributes:

* ``time``    -- ``day`` / ``sunset`` / ``night``: sky gradient, sun or moon, stars, clouds, and the
  light that falls on the terrain (and is reflected by the sea),
* ``ground``  -- ``green`` / ``snow`` / ``desert``: the colour of the land (and of the shore),
* ``terrain`` -- ``mountains`` / ``hills`` / ``sea``: the shape of the skyline.

Renders are *horizontally stationary*: nothing in them depends on the absolute x position or on the
image width (all noise is defined in pixels, with random phases), so a 64x64 crop of a 512x64 render
is itself a plausible 64x64 sample with the same attributes.  Only the number of sun/moon discs is
capped on wide renders (at most two).

The random draws are split into independent streams (geometry, sky objects, texture, colours), so
two renders with the same seed and different attributes share what the attributes do not decide
(e.g. the same clouds at day and at night).
"""

from __future__ import annotations

import re

import numpy as np

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "time": ("day", "sunset", "night"),
    "ground": ("green", "snow", "desert"),
    "terrain": ("mountains", "hills", "sea"),
}

# ----------------------------------------------------------------------------------------------
# Colours (0..255 floats).  The sky palettes are chosen so that the three times of day differ in
# brightness (night << sunset < day) and in warmth (sunset: red > blue; day and night: blue > red)
# everywhere in the image, not only around the sun.

_SKY = {
    "day": {"top": (54, 110, 212), "mid": (88, 146, 226), "horizon": (136, 182, 234)},
    "sunset": {"top": (128, 64, 112), "mid": (226, 112, 98), "horizon": (255, 182, 92)},
    "night": {"top": (4, 7, 24), "mid": (13, 20, 50), "horizon": (42, 56, 104)},
}
_CLOUD = {  # (lit side, shaded side)
    "day": ((248, 249, 253), (186, 196, 216)),
    "sunset": ((255, 168, 120), (128, 74, 110)),
    "night": ((50, 56, 82), (20, 24, 44)),
}
_DISC = {"day": (255, 252, 230), "sunset": (255, 226, 132), "night": (238, 238, 220)}
_GLOW = {"day": ((255, 255, 240), 0.45), "sunset": ((255, 196, 110), 0.55), "night": ((120, 130, 170), 0.22)}
# light on the terrain: colour * gain + ambient
_LIGHT = {
    "day": ((1.0, 1.0, 1.0), (0, 0, 0)),
    "sunset": ((0.64, 0.43, 0.42), (12, 4, 22)),
    "night": ((0.33, 0.39, 0.5), (2, 3, 10)),
}
_GROUND = {"green": (70, 136, 52), "snow": (236, 240, 248), "desert": (222, 180, 112)}
_GROUND_SHADE = {"green": (40, 96, 40), "snow": (160, 178, 216), "desert": (190, 140, 84)}
_ROCK = {"green": (88, 100, 112), "snow": (112, 126, 156), "desert": (176, 106, 70)}
_SNOWCAP = (240, 244, 252)
_WATER = {"day": (28, 80, 150), "sunset": (110, 56, 78), "night": (4, 8, 24)}


def sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    """One value per attribute, uniformly and independently."""
    return {name: str(values[rng.integers(len(values))]) for name, values in ATTRIBUTES.items()}


def _check(attributes: dict) -> dict[str, str]:
    out = {}
    for name, values in ATTRIBUTES.items():
        value = attributes.get(name)
        if value not in values:
            raise ValueError(f"attribute {name!r} must be one of {values}, got {value!r}")
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------------
# Stationary value noise (random lattice values, random phase), in pixel units.


def _noise_1d(rng: np.random.Generator, u: np.ndarray, smooth: bool) -> np.ndarray:
    """Value noise at lattice coordinates u (1-D), in [-1, 1]; linear (jagged) or smoothstep."""
    i0 = np.floor(u).astype(np.int64)
    f = u - i0
    lo = int(i0.min())
    values = rng.uniform(-1.0, 1.0, int(i0.max()) - lo + 2)
    a = values[i0 - lo]
    b = values[i0 - lo + 1]
    if smooth:
        f = f * f * (3.0 - 2.0 * f)
    return a + (b - a) * f


def _fbm_1d(rng, x, spacing, octaves, persistence, smooth=False) -> np.ndarray:
    total = np.zeros_like(x)
    amplitude, norm = 1.0, 0.0
    for _ in range(octaves):
        total += amplitude * _noise_1d(rng, x / spacing + rng.uniform(0, 1000), smooth)
        norm += amplitude
        spacing /= 2.0
        amplitude *= persistence
    return total / norm


def _noise_2d(rng, x, y, sx, sy) -> np.ndarray:
    """Smooth value noise on the grid y (rows) x x (columns), lattice spacing sx, sy pixels."""
    u = x / sx + rng.uniform(0, 1000)
    v = y / sy + rng.uniform(0, 1000)
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    fu, fv = u - iu, v - iv
    fu = fu * fu * (3 - 2 * fu)
    fv = fv * fv * (3 - 2 * fv)
    iu -= iu.min()
    iv -= iv.min()
    grid = rng.uniform(-1.0, 1.0, (int(iv.max()) + 2, int(iu.max()) + 2))
    r0, r1 = iv[:, None], iv[:, None] + 1
    c0, c1 = iu[None, :], iu[None, :] + 1
    top = grid[r0, c0] + (grid[r0, c1] - grid[r0, c0]) * fu[None, :]
    bottom = grid[r1, c0] + (grid[r1, c1] - grid[r1, c0]) * fu[None, :]
    return top + (bottom - top) * fv[:, None]


def _fbm_2d(rng, x, y, sx, sy, octaves, persistence=0.5) -> np.ndarray:
    total = np.zeros((y.size, x.size))
    amplitude, norm = 1.0, 0.0
    for _ in range(octaves):
        total += amplitude * _noise_2d(rng, x, y, sx, sy)
        norm += amplitude
        sx, sy, amplitude = sx / 2.0, sy / 2.0, amplitude * persistence
    return total / norm


def _smoothstep(e0, e1, v):
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _lerp(a, b, t):
    return a + (b - a) * t


# ----------------------------------------------------------------------------------------------
# Palette with per-image jitter.


def _jitter(rng, colour, channel=0.05, brightness=0.06):
    c = np.asarray(colour, dtype=np.float64)
    return c * np.exp(rng.normal(0.0, channel, 3)) * np.exp(rng.normal(0.0, brightness))


def _palette(time: str, ground: str, rng: np.random.Generator) -> dict:
    sky_gain = np.exp(rng.normal(0.0, 0.06))
    sky = {k: _jitter(rng, v, 0.04, 0.0) * sky_gain for k, v in _SKY[time].items()}
    gain, ambient = _LIGHT[time]
    gain = np.asarray(gain) * np.exp(rng.normal(0.0, 0.04))
    return {
        "sky": sky,
        "cloud": tuple(_jitter(rng, c, 0.02, 0.05) for c in _CLOUD[time]),
        "disc": np.asarray(_DISC[time], dtype=np.float64),
        "glow": (np.asarray(_GLOW[time][0], dtype=np.float64), _GLOW[time][1]),
        "gain": gain,
        "ambient": np.asarray(ambient, dtype=np.float64),
        # (near-white snow gets little per-channel jitter: it would show as a pink or green cast)
        "ground": _jitter(rng, _GROUND[ground], 0.015 if ground == "snow" else 0.03, 0.05),
        "ground_shade": _jitter(rng, _GROUND_SHADE[ground], 0.03, 0.04),
        "rock": _jitter(rng, _ROCK[ground], 0.04, 0.06),
        "snowcap": _jitter(rng, _SNOWCAP, 0.01, 0.03),
        "foam": np.array([236.0, 240.0, 244.0]),
        "water": _jitter(rng, _WATER[time], 0.06, 0.06),
    }


def _lit(pal, colour):
    """Day colour(s) -> as lit at this time of day."""
    return colour * pal["gain"] + pal["ambient"]


# ----------------------------------------------------------------------------------------------
# Geometry: skyline layers (far to near), each a per-column row where the layer begins.


def _terrain_layers(terrain: str, rng: np.random.Generator, x: np.ndarray, H: int):
    s = H / 64.0
    layers = []  # dicts: ridge (rows, (W,)), haze 0..1, rock 0..1 (rock instead of ground), snowline row
    if terrain == "mountains":
        # midpoint-displacement-like ridges: coarse random peaks (linear interpolation), plus finer
        # and finer octaves of signed detail; steep (slopes ~1) and jagged at every scale.
        n = int(rng.integers(1, 4))
        near = rng.uniform(0.64, 0.76) * H
        top = rng.uniform(0.15, 0.24) * H  # the highest peaks (the top rows stay sky)
        rough = rng.uniform(0.48, 0.6)
        for i in range(n):
            depth = (n - 1 - i) / (n - 1) if n > 1 else 0.0  # 1 = farthest
            base = near - depth * rng.uniform(0.10, 0.18) * H
            spacing = rng.uniform(16, 28) * s * (1 + 0.5 * depth)
            h = 0.5 + 0.5 * _noise_1d(rng, x / spacing + rng.uniform(0, 1000), smooth=False)
            amplitude = 1.0
            for _octave in range(3):
                spacing, amplitude = spacing / 2, amplitude * rough
                h += amplitude * _noise_1d(rng, x / spacing + rng.uniform(0, 1000), smooth=False)
            peak = top + depth * rng.uniform(0.0, 0.08) * H
            relief = (base - peak) / 1.3
            ridge = np.clip(base - relief * (h + 0.15), 0.13 * H, H - 4 * s)
            layers.append({
                "ridge": ridge,
                "haze": 0.42 * depth,
                "rock": 0.0 if i == n - 1 else rng.uniform(0.7, 1.0),
                "snowline": peak + relief * rng.uniform(0.35, 0.7),
            })
        horizon = near - 0.1 * H
    elif terrain == "hills":
        # one smooth, low, rolling ridge: a random-phase swell (so every 64 px shows some relief)
        # plus smooth noise
        base = rng.uniform(0.56, 0.70) * H
        amp = rng.uniform(5.5, 8.5) * s
        swell = np.sin(2 * np.pi * x / (rng.uniform(44, 72) * s) + rng.uniform(0, 2 * np.pi))
        f = _fbm_1d(rng, x, rng.uniform(22, 40) * s, 2, 0.3, smooth=True)
        ridge = base - amp * (rng.uniform(0.6, 0.85) * swell + 0.8 * f + 0.3)
        layers.append({"ridge": ridge, "haze": 0.0, "rock": 0.0, "snowline": None})
        horizon = base - 0.08 * H
    else:  # sea: a flat horizon; the water and the shore are painted separately
        horizon = rng.uniform(0.40, 0.56) * H
        layers = []
    return layers, horizon


# ----------------------------------------------------------------------------------------------


def _sky(pal, y, horizon, W):
    """Vertical gradient top -> mid -> horizon colour, constant in x."""
    t = np.clip(y / max(horizon, 1.0), 0.0, 1.2)
    sky = pal["sky"]
    lower = _lerp(sky["mid"], sky["horizon"], np.clip((t[:, None] - 0.55) / 0.45, 0, 1))
    upper = _lerp(sky["top"], sky["mid"], np.clip(t[:, None] / 0.55, 0, 1))
    column = np.where(t[:, None] < 0.55, upper, lower)
    return np.repeat(column[:, None, :], W, axis=1)


def _disc_positions(rng, time, W, H, horizon):
    s = H / 64.0
    if W <= 128:
        count = 1 if rng.random() < 0.65 else 0
    else:
        count = 1 + int(rng.random() < 0.4)
    xs = []
    for _ in range(count):
        for _try in range(20):
            cx = rng.uniform(0, W)
            if all(abs(cx - o) > W / 3 for o in xs):
                break
        xs.append(cx)
    discs = []
    for cx in xs:
        if time == "day":
            r, cy = rng.uniform(2.8, 4.2) * s, rng.uniform(0.10, 0.30) * H
        elif time == "sunset":
            r = rng.uniform(4.5, 7.0) * s
            cy = horizon - rng.uniform(-0.3, 1.6) * r
        else:
            r, cy = rng.uniform(2.8, 4.2) * s, rng.uniform(0.10, 0.32) * H
        crescent = time == "night" and rng.random() < 0.5
        discs.append((cx, cy, r, crescent, rng.uniform(-1, 1)))
    return discs


def render_landscape(attributes: dict, seed: int, width: int = 64, height: int = 64) -> np.ndarray:
    """Render one landscape as a uint8 array of shape (height, width, 3); deterministic in seed."""
    attrs = _check(attributes)
    time, ground, terrain = attrs["time"], attrs["ground"], attrs["terrain"]
    H, W = int(height), int(width)
    s = H / 64.0
    geo, sky_rng, tex, col = (np.random.default_rng(c) for c in np.random.SeedSequence(int(seed)).spawn(4))
    pal = _palette(time, ground, col)
    x = np.arange(W) + 0.5
    y = np.arange(H) + 0.5
    Y = y[:, None]

    layers, horizon = _terrain_layers(terrain, geo, x, H)
    img = _sky(pal, y, horizon, W)

    # --- sky objects: glow, stars, sun/moon, clouds (discs are drawn in a window of columns)
    discs = _disc_positions(sky_rng, time, W, H, horizon)
    glow_colour, glow_strength = pal["glow"]
    for cx, cy, r, crescent, side in discs:
        c0, c1 = max(int(cx - 12 * r), 0), min(int(cx + 12 * r) + 1, W)
        d = np.hypot(x[None, c0:c1] - cx, Y - cy)
        glow = glow_strength * np.exp(-((d / (4.0 * r)) ** 2))
        img[:, c0:c1] = _lerp(img[:, c0:c1], glow_colour, glow[..., None])
    if time == "night":
        stars = sky_rng.random((H, W)) < 0.018
        bright = sky_rng.uniform(0.35, 1.0, (H, W)) * stars * (Y < horizon)  # only in the sky
        img += bright[..., None] * (np.array([210.0, 210.0, 225.0]) - img)
    for cx, cy, r, crescent, side in discs:
        c0, c1 = max(int(cx - 2 * r), 0), min(int(cx + 2 * r) + 1, W)
        d = np.hypot(x[None, c0:c1] - cx, Y - cy)
        alpha = np.clip(r - d + 0.5, 0.0, 1.0)
        if crescent:
            d2 = np.hypot(x[None, c0:c1] - (cx + side * 0.7 * r), Y - (cy - 0.35 * r))
            alpha *= 1.0 - np.clip(0.9 * r - d2 + 0.5, 0.0, 1.0)
        img[:, c0:c1] = _lerp(img[:, c0:c1], pal["disc"], alpha[..., None])

    coverage = 0.0 if sky_rng.random() < 0.2 else sky_rng.uniform(0.05, 0.6)
    sx, sy = sky_rng.uniform(14, 30) * s, sky_rng.uniform(4, 8) * s
    density = _fbm_2d(sky_rng, x, y, sx, sy, 3)
    threshold = np.interp(coverage, [0.0, 0.1, 0.3, 0.5, 0.7], [0.9, 0.36, 0.14, 0.0, -0.14])
    cloud = 0.92 * _smoothstep(threshold, threshold + 0.22, density)
    cloud *= 1.0 - _smoothstep(0.55 * horizon, 0.95 * horizon, Y)  # a clear band above the horizon
    lit, shade = pal["cloud"]
    shading = np.clip((density - threshold) / 0.45, 0.0, 1.0)[..., None]
    img = _lerp(img, _lerp(shade, lit, shading), cloud[..., None])
    sky_img = img  # kept for the sea's reflection

    # --- terrain layers, far to near (each painted on the rows below its highest point)
    light_side = 1.0 if geo.random() < 0.5 else -1.0
    for layer in layers:
        ridge, haze, rock = layer["ridge"], layer["haze"], layer["rock"]
        r0 = max(int(np.floor(ridge.min() - 0.5)), 0)
        Yr = Y[r0:]
        depth = Yr - ridge[None, :]
        alpha = np.clip(depth + 0.5, 0.0, 1.0)
        colour = np.broadcast_to(_lerp(pal["ground"], pal["rock"], rock), (H - r0, W, 3))
        shadow_colour = _lerp(pal["ground_shade"], pal["rock"] * 0.7, rock)
        if terrain == "mountains" and ground == "snow" and rock == 0:  # rocky shadow faces
            shadow_colour = _lerp(shadow_colour, pal["rock"], 0.45)
        shade_t = 0.5 + 0.5 * _fbm_2d(tex, x, y[r0:], 9 * s, 4 * s, 2)
        mottle = (0.2 if ground == "snow" else 0.32) * (1 - rock)
        colour = _lerp(colour, shadow_colour, mottle * shade_t[..., None])
        if terrain == "mountains":
            if ground == "snow" and rock > 0:  # snow caps above a (noisy) snow line
                line = layer["snowline"] + 2.5 * s * _fbm_1d(tex, x, 6 * s, 2, 0.5)
                cap = np.clip(line[None, :] - Yr + 0.5, 0.0, 1.0)
                colour = _lerp(colour, pal["snowcap"], cap[..., None])
                shadow_colour = _lerp(shadow_colour, pal["ground_shade"], cap[..., None])
            face = light_side * _faces(ridge, depth, s)
            colour = colour * (1.0 + 0.08 * np.clip(face, 0, 1))[..., None]
            colour = _lerp(colour, shadow_colour, 0.6 * np.clip(-face, 0, 1)[..., None])
        darken = 0.06 if ground == "snow" else 0.12  # towards the viewer
        colour = colour * (1.0 - darken * np.clip(depth / (0.35 * H), 0.0, 1.0))[..., None]
        colour = _lerp(_lit(pal, colour), pal["sky"]["horizon"], haze)
        img[r0:] = _lerp(img[r0:], colour, alpha[..., None])

    if terrain in ("mountains", "hills"):
        _ground_texture(img, ground, pal, tex, x, y, layers[-1]["ridge"], H, W)
    else:
        img = _sea(img, sky_img, pal, discs, time, ground, geo, tex, x, y, horizon, H, W)

    img = img + tex.normal(0.0, 1.6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _faces(ridge: np.ndarray, depth: np.ndarray, s: float) -> np.ndarray:
    """Which mountain face each pixel lies on, in [-1, 1] (sign of the ridge's slope).

    The slope is smoothed over a width growing with the depth below the ridge, so that the faces
    widen downwards into triangles, as on a real mountain, instead of making vertical streaks.
    """
    slope = np.gradient(ridge) if ridge.size > 1 else np.zeros_like(ridge)
    widths = [1, 3, 5, 9, 15, 25, 41, 67]
    padded = np.pad(slope, widths[-1], mode="edge")
    csum = np.concatenate([[0.0], np.cumsum(padded)])
    n, p = slope.size, widths[-1]
    levels = []
    for w in widths:
        lo = np.arange(n) + p - w // 2
        levels.append((csum[lo + w] - csum[lo]) / w)
    levels = np.stack(levels)  # (L, W)
    index = np.searchsorted(widths, np.clip(1.6 * depth / s + 1, 1, widths[-1])).clip(0, len(widths) - 1)
    smoothed = levels[index, np.arange(n)[None, :]]
    return np.tanh(2.0 * smoothed)


def _ground_texture(img, ground, pal, rng, x, y, ridge, H, W):
    """Ground-specific texture on the nearest layer: grass tufts, snow shadows, dune ripples."""
    s = H / 64.0
    Y = y[:, None]
    inside = np.clip(Y - ridge[None, :] - 1.0, 0.0, 1.0)
    if ground == "desert":
        warp = 3.0 * s * _fbm_1d(rng, x, 20 * s, 2, 0.5, smooth=True)
        ripples = np.sin(2 * np.pi * (Y - 0.25 * ridge[None, :] + warp[None, :]) / (3.5 * s))
        factor = 1.0 + 0.035 * ripples
    elif ground == "green":
        factor = 1.0 + 0.10 * _noise_2d(rng, x, y, 2.0 * s, 1.5 * s)
    else:
        factor = 1.0 + 0.04 * _noise_2d(rng, x, y, 5.0 * s, 2.0 * s)
    img *= (1.0 + (factor - 1.0) * inside)[..., None]


def _sea(img, sky_img, pal, discs, time, ground, geo, tex, x, y, horizon, H, W):
    """Water below a flat horizon (reflecting the sky), a shore strip in the ground colour below."""
    s = H / 64.0
    shore = H - geo.uniform(7.5, 12.5) * s - 1.2 * s * _fbm_1d(geo, x, 30 * s, 2, 0.4, smooth=True)
    r0 = max(int(np.floor(horizon - 1.0)), 0)
    y = y[r0:]
    Y = y[:, None]
    # water reflects the sky (mirrored about the horizon, compressed), tinted and darkened
    depth = np.clip(y - horizon, 0.0, None)
    src = np.clip(horizon - 0.7 * depth - 1.0, 0, H - 1).astype(np.int64)
    reflect = 0.5 * sky_img[src] + 0.5 * _sky(pal, src + 0.5, horizon, W)
    water = _lerp(reflect, pal["water"], 0.35 + 0.3 * np.clip(depth / (0.4 * H), 0, 1)[:, None, None])
    ripples = _fbm_2d(tex, x, y, 10 * s, 1.3 * s, 2)
    water *= (1.0 + 0.14 * ripples * np.clip(0.3 + depth / (0.3 * H), 0, 1)[:, None])[..., None]
    # the sun's / moon's glitter path
    for cx, cy, r, _c, _side in discs:
        c0, c1 = max(int(cx - 10 * r), 0), min(int(cx + 10 * r) + 1, W)
        width = r * (0.8 + 0.06 * depth[:, None])
        path = np.exp(-(((x[None, c0:c1] - cx) / width) ** 2))
        path *= np.clip(0.4 + 1.5 * ripples[:, c0:c1], 0, 1) * (depth[:, None] > 0.5)
        water[:, c0:c1] = _lerp(water[:, c0:c1], pal["disc"], 0.7 * path[..., None])
    # a crisp, slightly dark horizon line
    water *= (1.0 - 0.2 * np.exp(-(((y - horizon - 0.5) / 0.7) ** 2)))[:, None, None]
    out = img.copy()
    out[r0:] = _lerp(img[r0:], water, np.clip(Y - horizon + 0.5, 0.0, 1.0)[..., None])
    # the shore strip, in the ground's colour
    r1 = max(int(np.floor(shore.min() - 0.5)), 0)
    y = y[r1 - r0:]
    Y = y[:, None]
    grain = 0.5 + 0.5 * _fbm_2d(tex, x, y, 6 * s, 2 * s, 2)
    colour = _lerp(np.broadcast_to(pal["ground"], (H - r1, W, 3)), pal["ground_shade"], 0.4 * grain[..., None])
    below = np.clip(Y - shore[None, :], 0, None)
    colour = colour * (1.0 - 0.18 * np.exp(-below / (2.0 * s)))[..., None]  # darker wet sand
    foam = np.exp(-(((Y - shore[None, :] - 0.6 * s) / (0.8 * s)) ** 2))  # a line of surf
    colour = _lit(pal, _lerp(colour, pal["foam"], 0.8 * foam[..., None]))
    out[r1:] = _lerp(out[r1:], colour, np.clip(Y - shore[None, :] + 0.5, 0.0, 1.0)[..., None])
    return out


# ----------------------------------------------------------------------------------------------
# Captions.

_TIME_PHRASE = {"day": "by day", "sunset": "at sunset", "night": "at night"}
_GROUND_WORD = {"green": "green", "snow": "snowy", "desert": "desert"}
_TERRAIN_WORD = {"mountains": "mountains", "hills": "hills", "sea": "sea"}

VOCABULARY: list[str] = sorted(
    {"a", "landscape", "with", "shore", "at", "by"}
    | set(_GROUND_WORD.values())
    | set(_TERRAIN_WORD.values())
    | {w for phrase in _TIME_PHRASE.values() for w in phrase.split()}
)


def caption(attributes: dict, rng: np.random.Generator, drop: float = 0.35) -> str:
    """An English caption naming each attribute, each left out independently with probability drop.

    Examples: "snowy mountains at night", "green hills", "a sea at sunset", "a sea with a desert
    shore by day", "a landscape".  Every word is in VOCABULARY.
    """
    keep = {name: (name in attributes and rng.random() >= drop) for name in ATTRIBUTES}
    time = attributes.get("time") if keep["time"] else None
    ground = attributes.get("ground") if keep["ground"] else None
    terrain = attributes.get("terrain") if keep["terrain"] else None
    if terrain == "sea":
        words = ["a", "sea"]
        if ground is not None:
            words += ["with", "a", _GROUND_WORD[ground], "shore"]
    elif terrain is not None:
        words = ([_GROUND_WORD[ground]] if ground is not None else []) + [_TERRAIN_WORD[terrain]]
    else:
        words = ["a"] + ([_GROUND_WORD[ground]] if ground is not None else []) + ["landscape"]
    if time is not None:
        words += _TIME_PHRASE[time].split()
    return " ".join(words)


_WORD_TO_ATTRIBUTE = {
    "day": ("time", "day"),
    "daytime": ("time", "day"),
    "sunset": ("time", "sunset"),
    "dusk": ("time", "sunset"),
    "night": ("time", "night"),
    "green": ("ground", "green"),
    "grassy": ("ground", "green"),
    "snowy": ("ground", "snow"),
    "snow": ("ground", "snow"),
    "desert": ("ground", "desert"),
    "sandy": ("ground", "desert"),
    "mountains": ("terrain", "mountains"),
    "mountain": ("terrain", "mountains"),
    "hills": ("terrain", "hills"),
    "hill": ("terrain", "hills"),
    "sea": ("terrain", "sea"),
    "ocean": ("terrain", "sea"),
}


def parse_prompt(prompt: str) -> dict[str, str]:
    """The attributes a prompt names (the inverse of `caption`); unknown words are ignored.

    If an attribute is named twice the last mention wins.
    """
    found: dict[str, str] = {}
    for word in re.findall(r"[a-z]+", prompt.lower()):
        if word in _WORD_TO_ATTRIBUTE:
            name, value = _WORD_TO_ATTRIBUTE[word]
            found[name] = value
    return found


# ----------------------------------------------------------------------------------------------


def make_dataset(count: int, seed: int, size: int = 64) -> tuple[np.ndarray, list[str], list[dict]]:
    """count random (image, caption, attributes) triples, deterministic in seed.

    Images: uint8 array (count, size, size, 3).
    """
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    attributes: list[dict] = []
    for i in range(count):
        attrs = sample_attributes(rng)
        image_seed = int(rng.integers(0, 2**63 - 1))
        images[i] = render_landscape(attrs, image_seed, size, size)
        captions.append(caption(attrs, rng))
        attributes.append(attrs)
    return images, captions, attributes
