"""Canvas and window arithmetic: what the request checks need of a model (`Geometry`: its window,
VAE factor and step limit), read from a UNet's and a VAE's configs, and the default canvas a
window gives. Reading a whole model folder's geometry is models.py's; a loaded pipeline gives its
own (`pipe.geometry`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import SettingError, shown

MAX_STEPS = 1000  # the DDPM training schedule has 1000 timesteps: DDIM cannot take more


@dataclass(frozen=True)
class Geometry:
    """What the checks need of a model: its window (latent pixels of a view's side: the family's
    default), its VAE factor (image pixels per latent pixel) and the most denoising steps its
    scheduler allows. Where the window may be chosen (the transformers, which have no single native
    size), `window_multiple` is what a chosen window's latent side must be a multiple of (FLUX's
    2x2 packing, SD3's patches) and `max_window` the largest (SD3's position embedding); 0: the
    window is the UNet's native size, fixed. `refused_fast_modes` are the fast modes the family
    has no use for, with the sentence that says why."""

    window: int
    vae_factor: int
    max_steps: int = MAX_STEPS
    window_multiple: int = 0
    max_window: int | None = None
    refused_fast_modes: tuple[tuple[str, str], ...] = ()

    @property
    def window_pixels(self) -> int:
        return self.window * self.vae_factor

    def with_window(self, pixels: int | None) -> "Geometry":
        """This geometry with the window `pixels` wide (checked: a SettingError that says what to
        give); itself for None."""
        if pixels is None:
            return self
        if isinstance(pixels, bool) or not isinstance(pixels, int):  # "32", 32.0 or True is no window
            raise SettingError("window", f"window must be a whole number, got {shown(pixels)}.")
        if pixels == self.window_pixels:
            return self
        if not self.window_multiple:
            raise SettingError("window", f"window must be {self.window_pixels} pixels for this model (its UNet's "
                                         f"native size; only the transformers, SD3 and FLUX, take others), got "
                                         f"{pixels}.")
        step = self.window_multiple * self.vae_factor
        if pixels % step or pixels < step:
            raise SettingError("window", f"window must be a multiple of {step} pixels for this model, got {pixels}.")
        if self.max_window is not None and pixels > self.max_window * self.vae_factor:
            raise SettingError("window", f"window must be at most {self.max_window * self.vae_factor} pixels for this "
                                         f"model (its position embedding's size), got {pixels}.")
        return dataclasses.replace(self, window=pixels // self.vae_factor)


def window_of(unet_config) -> int:
    """The UNet's native latent size: the side of every view (64 for Stable Diffusion 2 base)."""
    size = unet_config["sample_size"]
    return size if isinstance(size, int) else size[0]


def vae_factor_of(vae_config) -> int:
    """How many image pixels one latent pixel stands for (8 for Stable Diffusion)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def canvas_defaults(window: int, vae_factor: int) -> dict:
    """The default canvas of a model: one window high, four wide, views a quarter window apart."""
    return dict(width=4 * window * vae_factor, height=window * vae_factor, stride=max(1, window // 4))
