"""How many views go through the networks together: chosen per device, shrunk when memory runs out.

Batching views is where a GPU gains most (one call keeps it busy instead of many small ones). On
the CPU it depends on the window. Measured here (AMD EPYC, one thread), the sync pass per view:
16-latent windows (the pocket model, 64-pixel images): 315 ms one at a time, 245 ms four at a time,
177 ms twenty at a time; 64-latent windows (Stable Diffusion's shape, 512-pixel images): 8.7 s
one at a time, 8.8 s two, 15.2 s four (the decoder's and LPIPS's full-size activations no longer
fit the caches). So a chunk is sized in image pixels (views x the window's side in pixels, squared),
which is what the decoder and LPIPS work on: many small views per call, one large one.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence, TypeVar

import torch

# Image pixels (views x window pixels²) per chunk, by device type. CPU: measured (see above): 24
# views of 64 pixels, one of 512. CUDA: 16 Stable Diffusion views (512 pixels) per call, halved
# automatically where that does not fit in the GPU's memory (not measured here: no GPU was lent).
IMAGE_PIXELS_PER_CHUNK = {"cpu": 24 * 64 * 64, "cuda": 16 * 512 * 512}
OTHER_DEVICES = 4 * 64 * 64

Item = TypeVar("Item")


def default_view_batch_size(device: torch.device | str, window_pixels: int, view_count: int) -> int:
    """The number of views per network call for this device and a window of `window_pixels` pixels
    (the UNet's window times the VAE factor)."""
    budget = IMAGE_PIXELS_PER_CHUNK.get(torch.device(device).type, OTHER_DEVICES)
    return max(1, min(view_count, budget // (window_pixels * window_pixels)))


class ViewChunks:
    """Chunks of views for the networks, as `for chunk in chunks.split(items): with chunks.fitting(): ...`:
    where a chunk's work does not fit in the device's memory, `fitting` halves the chunk size (for
    this and every later chunk of the call) and `split` hands the same views out again, in smaller
    chunks. The work of a chunk must depend on its inputs only, so running it again changes nothing
    but rounding."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"view_batch_size must be 1 or more, got {size}.")
        self.size = size
        self._ran_out = False

    def split(self, items: Sequence[Item]) -> Iterator[list[Item]]:
        start = 0
        while start < len(items):
            chunk = list(items[start : start + self.size])
            self._ran_out = False
            yield chunk
            if not self._ran_out:
                start += len(chunk)

    @contextmanager
    def fitting(self):
        """Run a chunk's work; where it runs out of memory, halve the chunk size so that `split` gives
        the chunk's views again (out of memory at one view is raised)."""
        try:
            yield
        except torch.OutOfMemoryError:
            if self.size == 1:
                raise
            self.size = max(1, self.size // 2)
            self._ran_out = True
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
