"""How many views go through the networks together: chosen per device, shrunk when memory runs out.

Batching views is where a GPU gains most (one call keeps it busy instead of many small ones). On
the CPU it helps too, but less: measured on 2-core x86 machines with one thread, a chunk of 16 to
21 views of 16x16 latents runs the sync pass 1.5 to 1.8 times faster per view than one view at a
time, and the gain flattens out beyond a few thousand latent pixels per call
(benchmarks/RESULTS.md). A chunk is sized in latent pixels (views x window²), so that models with
larger windows get proportionally fewer views per call.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch

# Latent pixels (views x window x window) per chunk, by device type. CPU: measured (see above); a
# 64-latent window (Stable Diffusion) gets 2 views. CUDA: 16 Stable Diffusion views per call,
# halved automatically where that does not fit in the GPU's memory.
LATENT_PIXELS_PER_CHUNK = {"cpu": 8192, "cuda": 16 * 64 * 64}
OTHER_DEVICES = 4096

Item = TypeVar("Item")
Result = TypeVar("Result")


def default_view_batch_size(device: torch.device | str, window: int, view_count: int) -> int:
    """The number of views per network call for this device and window size."""
    budget = LATENT_PIXELS_PER_CHUNK.get(torch.device(device).type, OTHER_DEVICES)
    return max(1, min(view_count, budget // (window * window)))


class ViewChunks:
    """Runs work over chunks of views; where a chunk does not fit in the device's memory, halves the
    chunk size (for this and every later chunk of the call) and runs that chunk again. The work of
    a chunk must depend on its inputs only, so running it again changes nothing but rounding."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"view_batch_size must be 1 or more, got {size}.")
        self.size = size

    def map(self, items: Sequence[Item], work: Callable[[list[Item]], list[Result]]) -> list[Result]:
        results: list[Result] = []
        start = 0
        while start < len(items):
            chunk = list(items[start : start + self.size])
            try:
                results.extend(work(chunk))
            except torch.OutOfMemoryError:
                if self.size == 1:
                    raise
                self.size = max(1, self.size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            start += len(chunk)
        return results
