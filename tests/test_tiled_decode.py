"""Tiled decoding: close to the one-piece decode, no seam at tile borders, and on a loop-closed
canvas the same at every place (rolling the latent rolls the image)."""

import numpy as np
import pytest
import torch

from panosync.decode import blend_weight, decode_tiled, should_tile, tile_layout
from panosync.views import View


def latent(pipe, height, width, seed=0):
    return torch.randn((1, 4, height, width), generator=torch.Generator().manual_seed(seed))


def column_errors(image, reference):
    return (image - reference).abs().mean(dim=(0, 1, 2))


@pytest.fixture(scope="module")
def decoded(sync_pipe):
    """A 16 x 64 latent (window 16, VAE factor 2) decoded in one piece, in blended tiles, and in
    tiles that just abut (no overlap, no blending)."""
    z = latent(sync_pipe, 16, 64)
    with torch.no_grad():
        full = sync_pipe.decode_to_unit(z)
        blended = decode_tiled(sync_pipe.decode_to_unit, z, 2, tile=16, overlap=4)
        abutting = decode_tiled(sync_pipe.decode_to_unit, z, 2, tile=16, overlap=0)
    return z, full, blended, abutting


def test_one_tile_over_the_whole_canvas_is_the_plain_decode(sync_pipe):
    z = latent(sync_pipe, 24, 24, seed=1)
    with torch.no_grad():
        full = sync_pipe.decode_to_unit(z)
        whole = decode_tiled(sync_pipe.decode_to_unit, z, 2, tile=32, overlap=4)
    assert whole.shape == full.shape == (1, 3, 48, 48)
    torch.testing.assert_close(whole, full, rtol=0, atol=1e-6)


def test_blended_tiles_are_close_to_the_plain_decode_and_show_no_seam(decoded):
    _, full, blended, abutting = decoded
    # The decoder's attention is global and its convolutions see past a tile's border, so tiles
    # cannot be exact; blended, they stay close everywhere ...
    assert (blended - full).abs().mean() < 0.1 * full.std()
    # ... and, unlike tiles that just abut, leave no line where two tiles meet.
    assert column_errors(blended, full).max() < 0.35 * column_errors(abutting, full).max()
    assert (blended - full).abs().max() < 0.35 * (abutting - full).abs().max()


def test_tiles_cover_every_pixel_with_positive_weight():
    for loop_closure in (False, True):
        tiles = tile_layout(24, 70, tile=16, overlap=4, loop_closure=loop_closure)
        total = torch.zeros(24, 70)
        for tile in tiles:
            weight = blend_weight(tile, 24, 70, 4, loop_closure)
            assert weight.min() > 0 and weight.max() == 1
            rows = total[tile.top : tile.bottom]
            columns = [c % 70 for c in range(tile.left, tile.right)]
            rows[:, columns] += weight
        assert total.min() > 0.2, loop_closure


def test_open_canvas_edges_keep_full_weight():
    # Nothing overlaps the canvas's own edges: a ramp there would only add the border's error.
    first = blend_weight(View(0, 0, 8, 8), 8, 20, 3, loop_closure=False)
    assert torch.all(first[:, 0] == 1) and torch.all(first[0] == first[-1]) and first[0, -1] < 1
    wrapped = blend_weight(View(0, 0, 8, 8), 8, 20, 3, loop_closure=True)
    assert wrapped[0, 0] < 1  # on a loop the left edge has a neighbour: the tile past the right edge


def test_loop_closed_tiled_decode_turns_with_the_latent(sync_pipe):
    z = latent(sync_pipe, 16, 48, seed=2)
    stride = 12  # tile 16, overlap 4: the tiles sit every 12 columns all the way round

    def decode(latents):
        with torch.no_grad():
            return decode_tiled(sync_pipe.decode_to_unit, latents, 2, tile=16, overlap=4, loop_closure=True)

    image = decode(z)
    # turned by a whole tile stride, every tile decodes the same latent: the same image, turned
    torch.testing.assert_close(decode(z.roll(stride, dims=-1)), image.roll(2 * stride, dims=-1), rtol=0, atol=1e-5)
    # turned by any amount, the seam moves to the middle and nothing shows where it was; a plain
    # decode's first and last columns never saw each other
    shift = 17
    seam = slice(2 * shift - 6, 2 * shift + 6)  # image columns either side of where the seam went
    with torch.no_grad():
        plain, plain_turned = sync_pipe.decode_to_unit(z), sync_pipe.decode_to_unit(z.roll(shift, dims=-1))
    tiled_error = (decode(z.roll(shift, dims=-1)) - image.roll(2 * shift, dims=-1))[..., seam].abs().max()
    plain_error = (plain_turned - plain.roll(2 * shift, dims=-1))[..., seam].abs().max()
    assert tiled_error < 0.2 * plain_error, (tiled_error, plain_error)


def test_pipeline_tiles_large_panoramas_and_on_request(sync_pipe):
    assert not should_tile(64, 384, 64) and should_tile(64, 512, 64)  # SD: 512x3072 whole, 512x4096 tiled
    assert should_tile(256, 256, 64)  # 2048 x 2048
    kwargs = dict(width=100, height=34, stride=4, num_inference_steps=1, sync_weight=0, seed=1, output_type="np")
    whole = sync_pipe("a", tiled_decode=False, **kwargs).images
    tiled = sync_pipe("a", tiled_decode=True, **kwargs).images
    assert tiled.shape == whole.shape == (1, 34, 100, 3)
    assert 0 < np.abs(tiled - whole).mean() < 0.1 * whole.std()
    with pytest.raises(ValueError, match="tiled_decode must be"):
        sync_pipe("a", tiled_decode="yes", **kwargs)


def test_loop_closed_pipeline_decode_is_seamless_when_tiled(sync_pipe):
    z = latent(sync_pipe, 16, 96, seed=4)
    shift = 24
    with torch.no_grad():
        image = sync_pipe.decode_panorama(z, loop_closure=True, tiled=True)
        turned = sync_pipe.decode_panorama(z.roll(shift, dims=-1), loop_closure=True, tiled=True)
        plain = sync_pipe.decode_panorama(z, loop_closure=False, tiled=True)
        plain_turned = sync_pipe.decode_panorama(z.roll(shift, dims=-1), loop_closure=False, tiled=True)
    seamless_error = (turned - image.roll(2 * shift, dims=-1)).abs().max()
    plain_error = (plain_turned - plain.roll(2 * shift, dims=-1)).abs().max()
    assert seamless_error < 0.1 * plain_error, (seamless_error, plain_error)
