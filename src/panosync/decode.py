"""Decoding a panorama latent in overlapping tiles, and encoding a large image so, so that the
memory the VAE needs is that of one tile, whatever the panorama's size.

Tiles are laid out like the views of the joint diffusion (`views.views_for_canvas`): a grid of
square latent tiles that overlap, with a last tile flush with each open edge, and on a loop-closed
canvas tiles all the way round, those past the right edge wrapping to the left (and on a canvas
that wraps vertically, those past the bottom wrapping to the top). Each tile is
decoded on its own; where tiles overlap their images are blended with weights that fall linearly
towards the tile's inner borders, where the decoder saw the least context, so no tile border shows.
On a loop-closed canvas every place, the seam included, is blended alike: the seam is no seam.
"""

from __future__ import annotations

from typing import Callable

import torch

from .views import View, add_view, crop, views_for_canvas

# Tiling is used by default when the latent is larger than this many windows (in area): above
# the paper's 512 x 3072 (6 windows) for Stable Diffusion, so its sizes decode in one piece.
AUTO_TILING_WINDOWS = 6
# The smallest side of a VAE tile, in latent pixels: a VAE's mid-block attention sees its whole
# tile, and a tile of a small model's window (pocket's 16) holding only sky decodes as a scene of
# its own (measured: a 1024 x 128 pocket picture through 16-latent tiles, MSE 0.148 against 0.003
# whole; through 32-latent tiles 0.003). Stable Diffusion's windows (64) are diffusers' own tile.
SMALLEST_VAE_TILE = 32


def vae_tile(window: int) -> int:
    """The side of the tiles a VAE encodes and decodes in (latent pixels): the window, or SMALLEST_VAE_TILE."""
    return max(window, SMALLEST_VAE_TILE)


def should_tile(latent_height: int, latent_width: int, window: int) -> bool:
    """Whether a latent is large enough that decoding it in one piece costs too much memory."""
    return latent_height * latent_width > AUTO_TILING_WINDOWS * window * window


def tile_layout(latent_height: int, latent_width: int, tile: int, overlap: int, loop_closure: bool,
                wrap_rows: bool = False) -> list[View]:
    """The tiles of a latent canvas: `tile` latent pixels square (less when the canvas is smaller),
    neighbours overlapping by at least `overlap` latent pixels."""
    tile = min(tile, latent_height, latent_width)
    overlap = max(0, min(overlap, tile - 1))
    return views_for_canvas(latent_height, latent_width, tile, tile - overlap, loop_closure, wrap_rows)


def blend_weight(tile: View, canvas_height: int, canvas_width: int, ramp: int, loop_closure: bool,
                 wrap_rows: bool = False) -> torch.Tensor:
    """(tile.height, tile.width) blending weights of a tile, in whatever unit the sizes are given.

    The weight rises linearly over `ramp` pixels from each border that another tile overlaps, and
    is 1 elsewhere; it stays positive at the border itself, so every pixel has some weight."""

    def ramp_along(length: int, rises_at_start: bool, falls_at_end: bool) -> torch.Tensor:
        position = torch.arange(length, dtype=torch.float32)
        weight = torch.ones(length)
        if ramp > 0 and rises_at_start:
            weight = torch.minimum(weight, (position + 0.5) / ramp)
        if ramp > 0 and falls_at_end:
            weight = torch.minimum(weight, (length - position - 0.5) / ramp)
        return weight

    rows = ramp_along(tile.height, wrap_rows or tile.top > 0, wrap_rows or tile.bottom < canvas_height)
    columns = ramp_along(tile.width, loop_closure or tile.left > 0, loop_closure or tile.right < canvas_width)
    return rows[:, None] * columns[None, :]


def decode_tiled(
    decode: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    factor: int,
    tile: int,
    overlap: int,
    loop_closure: bool = False,
    tiles_per_call: int = 1,
    wrap_rows: bool = False,
) -> torch.Tensor:
    """Decode a (1, C, h, w) latent with `decode` (latents to (N, 3, h·factor, w·factor) images)
    tile by tile, `tiles_per_call` tiles at a time, and blend the tiles into one (1, 3, H, W) image.

    `tile` and `overlap` are in latent pixels. With `loop_closure` the tiles wrap round the right
    edge, so the image's left and right edges are decoded as the neighbours they are; with
    `wrap_rows` round the bottom edge likewise."""
    latent_height, latent_width = latents.shape[-2:]
    tiles = tile_layout(latent_height, latent_width, tile, overlap, loop_closure, wrap_rows)
    height, width = latent_height * factor, latent_width * factor
    ramp = max(0, min(overlap, tiles[0].width - 1)) * factor
    image, total = None, torch.zeros(height, width, device=latents.device)
    for start in range(0, len(tiles), tiles_per_call):
        chunk = tiles[start : start + tiles_per_call]
        decoded = decode(torch.cat([crop(latents, view) for view in chunk]))
        if image is None:
            image = torch.zeros(1, decoded.shape[1], height, width, device=decoded.device, dtype=decoded.dtype)
        for view, tile_image in zip(chunk, decoded):
            in_pixels = View(view.top * factor, view.left * factor, view.height * factor, view.width * factor)
            weight = blend_weight(in_pixels, height, width, ramp, loop_closure, wrap_rows).to(tile_image.device)
            add_view(image, in_pixels, (tile_image * weight)[None].to(image.dtype))
            add_view(total, in_pixels, weight)
    return image / total.to(image.dtype)


def encode_tiled(
    moments: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    images: torch.Tensor,
    factor: int,
    tile: int,
    overlap: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's latent distribution (mean, std) of a (1, 3, H, W) image, from `moments` (images to
    their (mean, std)) of overlapping tiles `tile` latent pixels square, blended like decoded
    tiles (mean and standard deviation alike), so that encoding needs one tile's memory."""
    latent_height, latent_width = images.shape[-2] // factor, images.shape[-1] // factor
    tiles = tile_layout(latent_height, latent_width, tile, overlap, loop_closure=False)
    ramp = max(0, min(overlap, tiles[0].width - 1))
    mean = std = None
    total = torch.zeros(latent_height, latent_width, device=images.device)
    for view in tiles:
        top, bottom, left, right = view.pixel_box(factor)
        tile_mean, tile_std = moments(images[..., top:bottom, left:right])
        if mean is None:
            shape = (1, tile_mean.shape[1], latent_height, latent_width)
            mean = torch.zeros(shape, device=tile_mean.device, dtype=torch.float32)
            std = torch.zeros_like(mean)
        weight = blend_weight(view, latent_height, latent_width, ramp, False).to(mean.device)
        add_view(mean, view, tile_mean.float() * weight)
        add_view(std, view, tile_std.float() * weight)
        add_view(total, view, weight)
    total = total.to(mean.device)
    return (mean / total).to(tile_mean.dtype), (std / total).to(tile_std.dtype)
