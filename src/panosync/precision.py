"""Precision: the dtype the networks' weights are held in, and whether they compute under autocast.

Three ways to run a diffusion model in less than float32, all offered (docs/algorithm.md, section 5):

float16, bfloat16  weights in half precision, what most GPU users load: half the memory, the
                   fastest kernels. Between the networks the pipeline keeps latents and noise
                   predictions in float32 (pipeline.compute_dtype); each network gets its inputs in
                   its own dtype. bfloat16 has float32's range (no overflow) and fewer digits.
autocast           the reference implementation's precision: float32 weights, with convolutions and
                   matrix products computed in float16 by torch.autocast, the rest in float32. Twice
                   the weight memory of float16, a little slower, the reference's rounding.

The numerically fragile places of the sync step are guarded where they are: LPIPS normalises its
features in float32 (lpips.py), the sync loss is scaled before its backward (sync.py), a VAE that
overflows float16 moves to float32 where its config allows it (force_upcast; pipeline.py), and a
non-finite latent or image stops the call with a sentence naming these choices (NonFiniteError).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .families import HALF_PRECISION

if TYPE_CHECKING:
    import torch

# torch is imported where it is used, so that the command's --help stays quick.
AUTOCAST = "autocast"
PRECISIONS = ("auto", "float32", "float16", "bfloat16", AUTOCAST)
DTYPE_HELP = ("auto (on CUDA bfloat16 for SD3 and FLUX, float16 for the others; float32 elsewhere), float32, "
              "float16, bfloat16, or autocast (float32 weights, float16 arithmetic: the reference's precision)")


def is_half(dtype: torch.dtype | None) -> bool:
    """Whether `dtype` is float16 or bfloat16."""
    import torch

    return dtype in (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Precision:
    """The weights' dtype and, when not None, the dtype torch.autocast computes in."""

    weights: torch.dtype
    autocast: torch.dtype | None = None

    @property
    def name(self) -> str:
        """As the command's --dtype spells it, and as a PNG's metadata records it."""
        return AUTOCAST if self.autocast is not None else str(self.weights).removeprefix("torch.")


def pick_precision(requested: str, device: torch.device | str, family: str | None = None) -> Precision:
    """The precision `--dtype` asks for. auto on CUDA: the half precision of the model's `family`
    (families.HALF_PRECISION: bfloat16 for SD3 and FLUX, whose transformers are trained and released in it
    and overflow float16; float16 for the UNets, and for a family not known yet: half the memory and
    the fastest kernels; every path is tested in it); float32 elsewhere (half precision is slow on
    most CPUs)."""
    import torch

    if requested == "auto":
        if torch.device(device).type != "cuda":
            return Precision(torch.float32)
        return Precision(getattr(torch, HALF_PRECISION.get(family, "float16")))
    if requested == AUTOCAST:
        # The reference's torch.autocast("cuda") computes in float16; so does the CPU's autocast here.
        return Precision(torch.float32, torch.float16)
    if requested not in PRECISIONS:
        raise ValueError(f"dtype must be one of {', '.join(PRECISIONS)}, got {requested!r}.")
    return Precision(getattr(torch, requested))


class NonFiniteError(RuntimeError):
    """A latent or image became NaN or infinite: the arithmetic overflowed in this precision."""

    def __init__(self, what: str, precision: str):
        advice = {
            "float16": "run it again in bfloat16 (--dtype bfloat16, float32's range) or with the reference's "
                       "precision (--dtype autocast: float32 weights, float16 arithmetic), or in float32",
            "autocast": "run it again in bfloat16 (--dtype bfloat16) or float32 (--dtype float32)",
            "bfloat16": "run it again in float32 (--dtype float32), or lower sync_weight",
        }.get(precision, "lower sync_weight or guidance_scale, or check the model's weights")
        super().__init__(f"{what} became NaN or infinite in {precision}: {advice}.")
