"""How well an image follows a Canny edge condition: the boundary F-score of the image's own Canny
edges against the condition's, with a small distance tolerance (as in the BSDS boundary benchmark,
here with a plain distance transform instead of a one-to-one matching).

precision: the share of the image's edge pixels that lie within `tolerance` pixels of a condition edge;
recall:    the share of the condition's edge pixels that lie within `tolerance` pixels of an image edge;
F-score:   their harmonic mean (0 when the image has no edges, or none near the condition's).
"""

from __future__ import annotations

import numpy as np
import PIL.Image

from panosync.conditions import canny_edges

TOLERANCE = 2  # pixels: a 64-px pocket window's edges may shift a little and still follow the condition


def edge_mask(image) -> np.ndarray:
    """The Canny edges of a uint8 (H, W, 3) RGB image, as `panosync control --preprocess canny` takes
    them, as a boolean (H, W) mask."""
    return np.asarray(canny_edges(PIL.Image.fromarray(np.asarray(image))))[:, :, 0] > 0


def _near(mask: np.ndarray, tolerance: int) -> np.ndarray:
    """Pixels within `tolerance` (Euclidean) pixels of a pixel of `mask`."""
    import cv2

    if not mask.any():
        return np.zeros_like(mask)
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    return distance <= tolerance


def edge_fscore(image, condition, tolerance: int = TOLERANCE) -> dict[str, float]:
    """{"precision", "recall", "f"} of the Canny edges of `image` (uint8 RGB) against the edge map
    `condition` (white edges on black, uint8 (H, W) or (H, W, 3), as `canny_edges` makes them)."""
    found = edge_mask(image)
    wanted = np.asarray(condition)
    wanted = (wanted[:, :, 0] if wanted.ndim == 3 else wanted) > 127
    if found.shape != wanted.shape:
        raise ValueError(f"The image is {found.shape[1]}x{found.shape[0]} but the condition is "
                         f"{wanted.shape[1]}x{wanted.shape[0]}: compare images of the same size.")
    precision = float(_near(wanted, tolerance)[found].mean()) if found.any() else 0.0
    recall = float(_near(found, tolerance)[wanted].mean()) if wanted.any() else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f": f}
