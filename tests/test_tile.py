"""Tiling on both axes (`tile`, issue 30): with tile y or xy the views wrap round the top and bottom
edges as loop closure wraps them round the left and right, and the decode wraps there too, so a
canvas that tiles has no place unlike any other: turning the initial noise by whole strides in
either direction turns the picture by as much. tile x is loop_closure."""

import pytest
import torch

from panosync.settings import SettingError, wrapped_axes
from panosync.views import coverage, views_for_canvas
from test_pipeline import noise_for


def test_tile_names_the_edges_that_meet_and_loop_closure_is_tile_x():
    assert wrapped_axes(False, None) == (False, False)
    assert wrapped_axes(True, None) == wrapped_axes(False, "x") == (True, False)
    assert wrapped_axes(False, "y") == (False, True)
    assert wrapped_axes(False, "xy") == wrapped_axes(True, "y") == (True, True)


def test_views_of_a_canvas_that_tiles_cover_every_place_alike():
    views = views_for_canvas(24, 40, 16, 4, loop_closure=True, wrap_rows=True)
    assert len(views) == 6 * 10
    counts = coverage(24, 40, views)
    assert torch.equal(counts, torch.full((24, 40), 16.0))  # (16/4)² views everywhere, the corners included
    assert any(view.bottom > 24 for view in views) and any(view.right > 40 for view in views)
    # the rows wrap only when asked: an open grid of rows otherwise
    assert all(view.bottom <= 24 for view in views_for_canvas(24, 40, 16, 4, loop_closure=True))


def turned_anchor(anchor: int, columns: int, rows: int, shift_rows: int, shift_columns: int) -> int:
    row, column = divmod(anchor, columns)
    return (row + shift_rows) % rows * columns + (column + shift_columns) % columns


@pytest.mark.slow
@pytest.mark.parametrize("tile, sync_weight, shift", [("xy", 0.0, (1, 2)), ("xy", 20.0, (2, 1)), ("y", 0.0, (1, 0))])
def test_turning_the_noise_turns_a_tiling_panorama_on_both_axes(sync_pipe, tile, sync_weight, shift):
    # sync_pipe: 16-latent windows, VAE factor 2. A 64×48 canvas is 32×24 latents: at stride 8, 4
    # columns (3 open, for tile y) and 3 rows of views, the rows round the top and bottom
    kwargs = dict(width=64, height=48, stride=8, num_inference_steps=2, sync_weight=sync_weight,
                  output_type="latent", tile=tile, view_batch_size=1)  # turned, views would batch in other company
    views = views_for_canvas(24, 32, 16, 8, *wrapped_axes(False, tile))
    rows = len({view.top for view in views})
    columns = len(views) // rows
    assert (rows, columns) == (3, 4 if tile == "xy" else 3)
    anchor = len(views) // 2
    turn = (8 * shift[0], 8 * shift[1])  # whole strides: the views of the turned canvas are the views turned
    noise = noise_for(sync_pipe, 64, 48, seed=4)
    result = sync_pipe("a", latents=noise, anchor=anchor, **kwargs).images
    turned = sync_pipe("a", latents=noise.roll(turn, dims=(-2, -1)),
                       anchor=turned_anchor(anchor, columns, rows, *shift), **kwargs).images
    torch.testing.assert_close(turned, result.roll(turn, dims=(-2, -1)), rtol=0, atol=2e-4)


@pytest.mark.parametrize("tiled", [False, True])
def test_a_tiling_decode_matches_a_turned_decode_on_both_axes(sync_pipe, tiled):
    # as the loop-closure test of test_pipeline: a turned latent decodes to the turned image, up to
    # the decoder's global attention, where the edges meet; a plain decode does not
    # 48×72 latents: VAE tiles of 32 overlapping by 8 start every 24 latents, so a turn by 24 on each
    # axis turns the tiles onto tiles, and only the decoder's attention (across a whole tile, or the
    # whole image) tells the turned decode from the turned image
    latent = noise_for(sync_pipe, 144, 96, seed=2)
    shift = (24, 24)  # latent rows, columns
    pixels = tuple(side * sync_pipe.vae_scale_factor for side in shift)
    errors = {}
    with torch.no_grad():
        for wraps in (True, False):
            image = sync_pipe.decode_panorama(latent, loop_closure=wraps, wrap_rows=wraps, tiled=tiled)
            turned = sync_pipe.decode_panorama(latent.roll(shift, dims=(-2, -1)), loop_closure=wraps,
                                               wrap_rows=wraps, tiled=tiled)
            # the rows alone: where the top meets the bottom
            rows_turned = sync_pipe.decode_panorama(latent.roll(shift[0], dims=-2), loop_closure=wraps,
                                                    wrap_rows=wraps, tiled=tiled)
            errors[wraps] = ((turned - image.roll(pixels, dims=(-2, -1))).abs().max(),
                             (rows_turned - image.roll(pixels[0], dims=-2)).abs().max())
    assert errors[True][0] < 0.1 * errors[False][0], errors
    assert errors[True][1] < 0.1 * errors[False][1], errors


def test_tile_is_checked_and_refused_with_an_image_when_the_rows_wrap(sync_pipe):
    import PIL.Image

    for bad, words in (("z", "tile must be one of x, y, xy"), ("xyz", "tile must be one of x, y, xy"),
                       (1, "tile must be text, got 1")):
        with pytest.raises(SettingError, match=words):
            sync_pipe("a", width=64, height=32, num_inference_steps=1, tile=bad)
    with pytest.raises(SettingError, match="tile y makes the top and bottom edges meet, which an image input does "
                                           "not continue"):
        sync_pipe("a", image=PIL.Image.new("RGB", (64, 32)), num_inference_steps=1, tile="y")


def test_the_tile_measurement_finds_a_seam_where_top_meets_bottom_and_none_on_a_seamless_texture():
    import numpy as np

    from pocket.tile import boundaries, figures

    lines = boundaries(128, 128, 16, 12, 4)  # pocket: 16-latent windows, stride 12, VAE factor 4
    assert 0 in lines and len(lines) > 3
    # stripes that change alike at every line round both axes; a ramp down the rows adds a jump back
    # where the bottom meets the top, and nowhere else
    index = np.arange(128)
    stripes = 100 + 2 * (-1.0) ** index
    seamless = np.repeat((stripes[:, None] + stripes[None, :])[..., None], 3, axis=2)
    seam = seamless + (60 * index / 128)[:, None, None]
    clean, seamed = figures(seamless, lines), figures(seam, lines)
    assert clean["rows"]["ratio"] == clean["columns"]["ratio"] == 1.0
    assert seamed["rows"]["ratio"] > 10 and seamed["rows"]["percentile"] == 1.0
    assert seamed["columns"]["ratio"] == 1.0  # the columns never see the rows' ramp


@pytest.mark.parametrize("name", ["sdxl", "sd3", "flux"])
def test_every_family_tiles_on_both_axes(name):
    # the views wrap the same way whatever the network: on SDXL's UNet and on SD3's and FLUX's
    # transformers (FLUX packs each view's latents after the crop), turning the noise turns the texture
    from test_call import KINDS, canvas

    ours, _, components = KINDS[name]
    pipe = ours(**components())
    pipe.set_progress_bar_config(disable=True)
    size = canvas(pipe)
    window = size["height"]  # 32 pixels, 16 latents: the canvas is 2 × 2 windows, 32 latents a side
    kwargs = {**size, "width": 2 * window, "height": 2 * window, "stride": 8, "num_inference_steps": 2,
              "sync_weight": 0.0, "output_type": "latent", "tile": "xy"}
    latent_side = 2 * window // pipe.vae_scale_factor
    noise = torch.randn(1, pipe.backbone.latent_channels, latent_side, latent_side,
                        generator=torch.Generator().manual_seed(1))
    result = pipe("a", latents=noise, **kwargs).images
    turned = pipe("a", latents=noise.roll((8, 8), dims=(-2, -1)), **kwargs).images
    torch.testing.assert_close(turned, result.roll((8, 8), dims=(-2, -1)), rtol=0, atol=2e-4)


def test_the_api_takes_tile_and_the_png_records_it_without_gpano(sync_pipe, tmp_path):
    import io

    import PIL.Image

    from panosync.metadata import read_parameters
    from panosync.models import resolve_model
    from panosync.server.generation import PanoramaModel
    from panosync.settings import model_defaults
    from test_server_api import TINY, client_for, finished, wait_for

    served = PanoramaModel(sync_pipe, "tiny-test", model_defaults(resolve_model("tiny-random")))
    with client_for(served, tmp_path / "state") as client:
        job = client.post("/predictions", json={"prompt": "a", **TINY, "seed": 2, "tile": "xy"}).json()
        job = wait_for(client, job["id"], finished)
        assert job["status"] == "succeeded" and job["parameters"]["tile"] == "xy"
        png = client.get(job["urls"]["output"]).content
        assert read_parameters(io.BytesIO(png))["tile"] == "xy"
        with PIL.Image.open(io.BytesIO(png)) as image:
            assert "XML:com.adobe.xmp" not in image.info  # a texture is no band of a sphere
        for bad in ("z", 1):
            answer = client.post("/predictions", json={"prompt": "a", **TINY, "tile": bad})
            assert answer.status_code == 422 and "tile" in answer.json()["message"]
