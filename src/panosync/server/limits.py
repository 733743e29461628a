"""What a server accepts beyond each field's own range: the largest canvas, the queue, the body,
the waiting clients. Plain Python, so that the command can build its options without the server's
packages (the `serve` extra)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What a server accepts beyond the fields' own ranges.

    max_pixels  width × height of one panorama (default: 512 × 8192, four times SD 2 base's default canvas)
    max_side    the longest width or height, whatever the other (default 16384)
    max_queue   jobs waiting to run, not counting the one running; more are refused with 429
    max_body_bytes  size of a request body; larger ones are refused with 413 (default: see `body_limit`)
    max_waiters  clients waiting at once for their jobs (`Prefer: wait`); a request past them is
                 queued and answered at once, without waiting (see api.py). Each waiter holds a
                 queued or running job, so the bound is reached only when max_queue + 1 (the
                 queue and the running job) is at least max_waiters: never with the defaults
                 (16 and 32); it bounds the waiting clients of a server with a larger --max-queue
    """

    max_pixels: int = 512 * 8192
    max_side: int = 16384
    max_queue: int = 16
    max_body_bytes: int | None = None  # None: `body_limit`'s choice
    max_waiters: int = 32

    def __post_init__(self):
        for name in ("max_pixels", "max_side", "max_queue", "max_body_bytes", "max_waiters"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be 1 or more, got {getattr(self, name)}.")

    def body_limit(self, controlnets: int = 0) -> int:
        """max_body_bytes when set; else 16 KiB of fields and room for the images a request may
        hold, each as large as the largest canvas, base64-encoded, even if it does not compress at
        all (3 bytes a pixel, 4/3 of that in base64): 16 MiB each at the default max_pixels. With
        ControlNets, one condition image per ControlNet; without, an image input and its mask (the
        only images such a server takes). A Canny edge map of 512 × 3072 is a PNG of a few hundred
        kilobytes."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        images = controlnets if controlnets else IMAGE_INPUTS
        return FIELDS_BODY_BYTES + images * 4 * self.max_pixels


FIELDS_BODY_BYTES = 16 * 1024  # the public fields need well under 5 KiB, prompts included
IMAGE_INPUTS = 2  # image and mask_image
