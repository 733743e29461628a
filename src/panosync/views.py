"""Window geometry: where the views of a joint diffusion sit on the panorama latent.

Pure code, no models. Every size here is in latent pixels (image pixels divided by the VAE
factor). A view is a `window x window` crop; on a loop-closed canvas a view may run past the
right edge and continue at the left, so its columns are taken modulo the canvas width; on a canvas
that wraps vertically too (tile "y" or "xy", a texture that tiles), its rows likewise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class View:
    """One window of the panorama latent: rows [top, top + height), columns [left, left + width).

    `left + width` may exceed the canvas width only on a loop-closed canvas, where the columns
    past the right edge wrap around to the left; `top + height` the canvas height only on one that
    wraps vertically.
    """

    top: int
    left: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        return self.top + self.height

    @property
    def right(self) -> int:
        return self.left + self.width

    def wraps(self, canvas_width: int) -> bool:
        return self.right > canvas_width

    def column_indices(self, canvas_width: int) -> list[int]:
        return [(self.left + c) % canvas_width for c in range(self.width)]

    def pixel_box(self, factor: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) in image pixels; `right` may exceed the image width when wrapping."""
        return self.top * factor, self.bottom * factor, self.left * factor, self.right * factor


def grid_positions(length: int, window: int, stride: int) -> list[int]:
    """Start positions along one open axis: every `stride`, plus one view flush with the far edge."""
    positions = list(range(0, length - window + 1, stride))
    if positions[-1] + window < length:
        positions.append(length - window)
    return positions


def loop_positions(length: int, stride: int) -> list[int]:
    """Start positions along a circular axis: evenly spaced all the way round, so that no place
    (the seam included) is covered by fewer views than any other.

    When `stride` divides the length every column is covered exactly `window / stride` times; when
    it does not, the steps alternate between `stride` and `stride - 1` around the whole circle
    rather than bunching up at the seam.
    """
    count = math.ceil(length / stride)
    return [round(k * length / count) for k in range(count)]


def check_canvas(latent_height: int, latent_width: int, window: int, stride: int) -> None:
    """Raise a ValueError that says what to change when the canvas cannot be tiled."""
    if window < 1:
        raise ValueError(f"The window size must be at least 1 latent pixel, got {window}.")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window size ({window} latent pixels), got {stride}.")
    if latent_height < window or latent_width < window:
        raise ValueError(
            f"The canvas ({latent_height}x{latent_width} latent pixels) must be at least one window "
            f"({window}x{window}) in each direction."
        )


def views_for_canvas(
    latent_height: int, latent_width: int, window: int, stride: int, loop_closure: bool = False,
    wrap_rows: bool = False,
) -> list[View]:
    """All views of a canvas, in row-major order (top to bottom, then left to right).

    Columns form an open grid, or, with `loop_closure`, a circle: views start all the way round and
    those near the right edge wrap to the left. Rows likewise, a circle with `wrap_rows`.
    """
    check_canvas(latent_height, latent_width, window, stride)
    rows = loop_positions(latent_height, stride) if wrap_rows else grid_positions(latent_height, window, stride)
    if loop_closure:
        columns = loop_positions(latent_width, stride)
    else:
        columns = grid_positions(latent_width, window, stride)
    return [View(top, left, window, window) for top in rows for left in columns]


def coverage(latent_height: int, latent_width: int, views: list[View]) -> torch.Tensor:
    """How many views cover each latent pixel, shape (latent_height, latent_width)."""
    counts = torch.zeros(latent_height, latent_width)
    for view in views:
        add_view(counts, view, torch.ones(view.height, view.width))
    return counts


def crop(latent: torch.Tensor, view: View) -> torch.Tensor:
    """The view's crop of a (..., H, W) tensor, wrapping rows past the bottom and columns past the
    right edge."""
    if view.bottom <= latent.shape[-2]:
        rows = latent[..., view.top : view.bottom, :]
    else:  # rolling brings the view's first row to position 0, so the wrapped view is one slice
        rows = torch.roll(latent, shifts=-view.top, dims=-2)[..., : view.height, :]
    if not view.wraps(latent.shape[-1]):
        return rows[..., view.left : view.right]
    return torch.roll(rows, shifts=-view.left, dims=-1)[..., : view.width]


def _pieces(start: int, length: int, size: int) -> list[tuple[slice, slice]]:
    """(canvas, view) slices of a span `length` long from `start` on an axis of `size`, cut where it
    wraps."""
    if start + length <= size:
        return [(slice(start, start + length), slice(0, length))]
    inside = size - start
    return [(slice(start, size), slice(0, inside)), (slice(0, length - inside), slice(inside, length))]


def add_view(buffer: torch.Tensor, view: View, values: torch.Tensor) -> None:
    """Add `values` (..., h, w) into `buffer` (..., H, W) at the view's place, in place, wrapping."""
    for canvas_rows, view_rows in _pieces(view.top, view.height, buffer.shape[-2]):
        for canvas_columns, view_columns in _pieces(view.left, view.width, buffer.shape[-1]):
            buffer[..., canvas_rows, canvas_columns] += values[..., view_rows, view_columns]
