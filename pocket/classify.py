"""A hand-made classifier for pocket landscapes (see `landscapes`), from coarse image statistics.

It knows how the images are made and reads each attribute where the generator puts it:

* time    -- the sky (the top rows, always sky): its brightness separates night from the rest,
  its warmth (red over green) separates sunset from day.  A median over the region ignores the
  sun, the moon, stars and most clouds.
* ground  -- the bottom rows (the nearest land, or the shore below a sea): their chromaticity,
  compared with the ground colours as lit at the time of day found above.
* terrain -- the skyline: per column, the lowest strong colour edge (the top of the nearest land,
  or the shore line of a sea).  A sea's is flat and lies on one row across the image (and the
  horizon above it is another such row); mountains' is steep and jagged; hills' is smooth.

Only medians, coarse thresholds with margins, and edges measured over several pixels are used, so
that the blur and colour shifts of a small diffusion model's samples do not throw it off.  On a crop
of a blended (MultiDiffusion) panorama it answers with whichever value dominates.
"""

from __future__ import annotations

import numpy as np

from .landscapes import _GROUND, _GROUND_SHADE, _LIGHT, ATTRIBUTES

# ----------------------------------------------------------------------------------------------


class _Pixels(np.ndarray):
    """A float64 HxWx3 array already scaled to 0..255 (so it is not converted twice)."""


def _as_array(image) -> np.ndarray:
    if isinstance(image, _Pixels):
        return image
    a = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if a.ndim != 3 or a.shape[2] < 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {a.shape}")
    a = a[..., :3].astype(np.float64)
    if np.asarray(image).dtype.kind == "f" and a.max() <= 1.0 + 1e-6:  # floats in [0, 1]
        a = a * 255.0
    return np.ascontiguousarray(a).view(_Pixels)


def _box(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Moving average of width k (odd) along an axis, edges padded by repetition."""
    if k <= 1:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (k // 2, k // 2)
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis)
    zero = np.zeros_like(np.take(c, [0], axis=axis))
    c = np.concatenate([zero, c], axis=axis)
    n = a.shape[axis]
    return (np.take(c, np.arange(k, k + n), axis=axis) - np.take(c, np.arange(n), axis=axis)) / k


# ----------------------------------------------------------------------------------------------
# Time of day.


def time_features(image) -> dict[str, float]:
    """Median colour of the sky region (top 14 % of rows): brightness (mean of R, G, B, 0..255)
    and warmth (log of red over green: about -0.6 for a blue sky, 0 for a white cloud, +0.5 or
    more for a sunset sky)."""
    a = _as_array(image)
    rows = max(2, int(round(0.14 * a.shape[0])))
    r, g, b = np.median(a[:rows].reshape(-1, 3), axis=0)
    return {"brightness": float(r + g + b) / 3.0, "warmth": float(np.log((r + 10.0) / (g + 10.0)))}


def classify_time(image) -> str:
    """'day', 'sunset' or 'night', from the sky's brightness and warmth."""
    f = time_features(image)
    if f["brightness"] < 75.0:
        return "night"
    return "sunset" if f["warmth"] > 0.2 else "day"


# ----------------------------------------------------------------------------------------------
# Ground.


def _chroma(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64) + 16.0
    return np.log(rgb[..., 1:] / rgb[..., :1])  # log G/R, log B/R


def _expected_ground(time: str) -> dict[str, np.ndarray]:
    gain, ambient = (np.asarray(v, dtype=np.float64) for v in _LIGHT[time])
    out = {}
    for ground in ATTRIBUTES["ground"]:
        day = 0.8 * np.asarray(_GROUND[ground], float) + 0.2 * np.asarray(_GROUND_SHADE[ground], float)
        out[ground] = 0.95 * day * gain + ambient
    return out


_GROUND_REFERENCE = {time: _expected_ground(time) for time in ATTRIBUTES["time"]}


def ground_features(image) -> np.ndarray:
    """Median colour of the bottom rows (8 % of the image)."""
    a = _as_array(image)
    rows = max(2, int(round(0.08 * a.shape[0])))
    return np.asarray(np.median(a[-rows:].reshape(-1, 3), axis=0), dtype=np.float64).view(np.ndarray)


def classify_ground(image, time: str | None = None) -> str:
    """'green', 'snow' or 'desert': the bottom rows' chromaticity (and brightness), nearest to
    the ground colours as lit at the given (else the classified) time of day (log-chromaticity
    and log-brightness distance)."""
    if time is None:
        time = classify_time(image)
    colour = ground_features(image)
    c = _chroma(colour)
    level = np.log(colour.mean() + 16.0)
    best, best_d = None, np.inf
    for ground, ref in _GROUND_REFERENCE[time].items():
        d = np.sum((c - _chroma(ref)) ** 2) + (level - np.log(ref.mean() + 16.0)) ** 2
        if d < best_d:
            best, best_d = ground, d
    return best


# ----------------------------------------------------------------------------------------------
# Terrain.


def _edges(a: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Step strength between the k rows above and the k rows below each row boundary.

    Returns (rows, E) where E[i, x] is the colour distance across the boundary just above rows[i]
    (horizontally smoothed over 3 columns, so single-pixel stars and noise count little).
    """
    s = _box(a, 3, axis=1)
    H, W, _ = s.shape
    c = np.concatenate([np.zeros((1, W, 3)), np.cumsum(s, axis=0)], axis=0)
    rows = np.arange(max(k, int(0.1 * H)), H - k + 1)
    above = (c[rows] - c[rows - k]) / k
    below = (c[rows + k] - c[rows]) / k
    return rows, np.linalg.norm(below - above, axis=-1)


def _median3(a: np.ndarray) -> np.ndarray:
    """3x3 median filter per channel (removes stars and other single-pixel specks)."""
    p = np.pad(a, ((1, 1), (1, 1), (0, 0)), mode="edge")
    H, W = a.shape[:2]
    stack = np.stack([p[i:i + H, j:j + W] for i in range(3) for j in range(3)])
    return np.median(stack, axis=0)


def skyline(image) -> np.ndarray:
    """Per column, the row of the lowest strong colour edge: the top of the nearest land, or a
    sea's shore line (float array of length W).

    An edge is strong if it reaches half of its column's strongest edge or half of the typical
    (median over columns) strongest edge, so a bright moon above a column does not hide it.  Stars
    are removed first by a 3x3 median filter; clouds, sun and moon lie above the land.
    """
    return _skyline(_median3(_as_array(image)))


def _skyline(a: np.ndarray) -> np.ndarray:
    H = a.shape[0]
    rows, E = _edges(a)
    column_max = E.max(axis=0)
    top = np.median(a[: max(2, int(round(0.14 * H)))].reshape(-1, 3), axis=0)
    bottom = np.median(a[-max(2, int(round(0.08 * H))):].reshape(-1, 3), axis=0)
    contrast = max(0.3 * float(np.linalg.norm(top - bottom)), 12.0)  # sky vs land
    typical = np.median(column_max)
    threshold = np.minimum(np.minimum(0.5 * column_max, 0.5 * typical), max(contrast, 0.25 * typical))
    strong = E >= np.maximum(threshold, 6.0)[None, :]
    lowest = len(rows) - 1 - np.argmax(strong[::-1], axis=0)
    return rows[lowest].astype(np.float64)


def _median_filter(h: np.ndarray, k: int) -> np.ndarray:
    padded = np.pad(h, k // 2, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, k), axis=-1)


def terrain_features(image) -> dict[str, float]:
    """Skyline statistics (in rows of a 64-high image).

    jag:      median deviation of the skyline from its 7-column moving average (jaggedness);
    flat:     fraction of columns whose skyline lies within +-1 row of one row;
    coherent: the largest fraction of columns whose strongest edges (>= half the column's
              strongest) lie within +-1 row of one row: a horizon, or a shore line;
    tv:       mean absolute change of the skyline from column to column.
    """
    a = _median3(_as_array(image))
    H = a.shape[0]
    h = _median_filter(_skyline(a), 3) * (64.0 / H)
    jag = np.median(np.abs(h - _box(h, 7, axis=0))[3:-3])
    counts = np.bincount(np.rint(h).astype(np.int64).clip(0, 70), minlength=72).astype(float)
    flat = (counts[:-2] + counts[1:-1] + counts[2:]).max() / h.size
    rows, E = _edges(a, k=2)
    strong = E >= 0.5 * E.max(axis=0, keepdims=True)
    strong[1:] |= strong[:-1].copy()  # within +-1 row
    strong[:-1] |= strong[1:].copy()
    coherent = strong.mean(axis=1).max()
    return {"jag": float(jag), "flat": float(flat), "coherent": float(coherent),
            "tv": float(np.abs(np.diff(h)).mean())}


def classify_terrain(image) -> str:
    """'sea' (a flat line across the image), else 'mountains' (jagged skyline) or 'hills'."""
    f = terrain_features(image)
    if f["coherent"] + 0.5 * f["flat"] >= 1.2:
        return "sea"
    return "mountains" if f["jag"] >= 0.36 else "hills"


# ----------------------------------------------------------------------------------------------


def classify(image) -> dict[str, str]:
    """{'time': ..., 'ground': ..., 'terrain': ...} for a 64x64 RGB image (uint8 HxWx3 or PIL)."""
    a = _as_array(image)
    time = classify_time(a)
    return {"time": time, "ground": classify_ground(a, time), "terrain": classify_terrain(a)}


def accuracy(images, attributes) -> dict[str, float]:
    """Per-attribute fraction of images whose classified value matches the given attributes.

    images: a sequence (or N x H x W x 3 array) of images; attributes: a sequence of dicts (only
    the attributes a dict names are scored for that image).
    """
    hits = {name: 0 for name in ATTRIBUTES}
    totals = {name: 0 for name in ATTRIBUTES}
    for image, attrs in zip(images, attributes):
        got = classify(image)
        for name in ATTRIBUTES:
            if name in attrs:
                totals[name] += 1
                hits[name] += got[name] == attrs[name]
    return {name: hits[name] / totals[name] for name in ATTRIBUTES if totals[name]}
