"""The square crops every panorama metric is computed on.

The paper measures a panorama through non-overlapping crops of the model's native image size (512
pixels for Stable Diffusion 2 base): each crop is an image the model could have made on its own, so
crops can be compared with each other (coherence) and with single images (fidelity).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["crop_corners", "crops", "crop_batch", "check_crop_count"]


def crop_corners(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of every whole `size` x `size` crop of a height x width canvas, row by row.

    The grid starts at the top-left corner; a remainder narrower than a crop at the right or bottom
    edge is left out, so no crop overlaps another or runs off the canvas.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"The crop size must be a whole number of pixels, at least 1, got {size}.")
    if height < size or width < size:
        raise ValueError(f"A {width}x{height} panorama holds no {size}x{size} crop: make it at least one crop in "
                         f"each direction.")
    return [(top, left) for top in range(0, height - size + 1, size) for left in range(0, width - size + 1, size)]


def check_crop_count(height: int, width: int, size: int) -> int:
    """How many crops a canvas gives; a ValueError if fewer than the two that a comparison needs."""
    count = len(crop_corners(height, width, size))
    if count < 2:
        raise ValueError(f"A {width}x{height} panorama holds only one {size}x{size} crop, and Intra-LPIPS and "
                         f"Intra-Style-L compare crops with each other: make it at least {2 * size} pixels wide.")
    return count


def crops(panorama: np.ndarray, size: int) -> list[np.ndarray]:
    """The non-overlapping `size` x `size` crops of an (H, W, C) panorama, row by row, left to right."""
    return [panorama[top : top + size, left : left + size] for top, left in crop_corners(*panorama.shape[:2], size)]


def crop_batch(panorama: np.ndarray, size: int) -> torch.Tensor:
    """The crops of a uint8 (H, W, 3) panorama as one float (N, 3, size, size) batch in [0, 1]."""
    if panorama.dtype != np.uint8 or panorama.ndim != 3 or panorama.shape[2] != 3:
        raise ValueError(f"A panorama must be a uint8 RGB array (H, W, 3), got {panorama.dtype} {panorama.shape}.")
    tiles = np.stack(crops(panorama, size))
    return torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
