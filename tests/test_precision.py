"""Half precision on the CPU: float16 and bfloat16 weights, and float32 weights under autocast (the
reference's precision). A dtype mismatch fails on the CPU exactly as on CUDA, so every path runs
here: faithful sync, each fast mode, DPM-Solver, ControlSync, loop closure, tiled and untiled
decode, the command, evaluate's generation and the server's."""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from panosync.families import FLUX, SD, SD3, SDXL
from panosync.cli import main
from panosync.control import ControlSyncPipeline, random_controlnet_like
from panosync.metadata import read_parameters
from panosync.pipeline import SyncDiffusionPipeline
from panosync.precision import NonFiniteError, Precision, pick_precision
from panosync.sync import half_precision_loss_scale, sync_gradient
from panosync.tiny import tiny_random_components

from in_precision import in_precision
from test_fast_modes import tiny_decoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu.parts import one_step_sync_gradient  # noqa: E402

PRECISIONS = ["float16", "bfloat16", "autocast"]
# 32-pixel windows (16 latents, VAE factor 2), 2 views: big enough for LPIPS-VGG. Narrow networks,
# because the CPU has no fast float16 convolution (10 times float32's time): 1 s a panorama here.
CASE = dict(width=48, height=32, stride=8, num_inference_steps=2, seed=5)
NARROW = dict(window=16, vae_factor=2, unet_channels=(8, 16), vae_channels=8, text_width=16)


def tiny_pipe(precision: str = "float32", seed: int = 0) -> SyncDiffusionPipeline:
    """A narrow sync_pipe in `precision` ("float32", "float16", "bfloat16" or "autocast")."""
    return in_precision(SyncDiffusionPipeline(**tiny_random_components(seed=seed, **NARROW)), precision)


@pytest.fixture(scope="module", params=PRECISIONS)
def half(request):
    return request.param, tiny_pipe(request.param)


@pytest.fixture(scope="module")
def full():
    return tiny_pipe("float32")


def assert_a_picture(image: np.ndarray) -> None:
    """Finite, in [0, 1], and not one flat colour (a NaN panorama saved as PNG is black)."""
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert image.std() > 0.02, f"a flat image (std {image.std():.4f})"


PATHS = {
    "faithful sync": {},
    "reuse_noise": dict(fast_modes=["reuse_noise"]),
    "no_unet_backward": dict(fast_modes=["no_unet_backward"]),
    "sync_image_scale": dict(sync_image_scale=0.5),
    "dpm_solver": dict(fast_modes=["dpm_solver"]),
    "loop closure, untiled": dict(loop_closure=True, tiled_decode=False),
    "loop closure, tiled": dict(loop_closure=True, tiled_decode=True),
    "tiled decode": dict(tiled_decode=True),
    "MultiDiffusion": dict(sync_weight=0.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_every_path_makes_a_picture_in_half_precision(half, path):
    name, pipe = half
    image = pipe("a land", **CASE, **PATHS[path], output_type="np").images[0]
    assert_a_picture(image)


def test_a_sync_decoder_runs_in_half_precision(half):
    name, pipe = half
    decoder = tiny_decoder(pipe.vae_scale_factor)  # float32: the pipeline moves it to its own dtype
    image = pipe("a land", **CASE, sync_decoder=decoder, output_type="np").images[0]
    assert_a_picture(image)


def test_controlsync_runs_in_half_precision_with_a_float32_controlnet(half):
    """A ControlNet loaded in float32 beside a half-precision UNet (as a user may load them): each
    network gets its inputs in its own dtype."""
    name, pipe = half
    dtype = pipe.unet.dtype
    controlnet = random_controlnet_like(copy.deepcopy(pipe.unet).float(), pipe.vae_scale_factor)
    control = ControlSyncPipeline(**pipe.components, controlnet=controlnet)
    control.set_progress_bar_config(disable=True)
    if pipe.autocast_dtype is not None:
        control.enable_autocast(pipe.autocast_dtype)
    assert control.unet.dtype == dtype and control.controlnet.dtype == torch.float32
    condition = torch.rand(1, 3, CASE["height"], CASE["width"], generator=torch.Generator().manual_seed(0))
    image = control("a land", image=condition, **CASE, sync_threshold=None, output_type="np").images[0]
    assert_a_picture(image)


# Largest pixel difference (of 1) of a MultiDiffusion panorama from float32's, as measured on this tiny model
# (4 steps): float16 0.0025, autocast 0.0023, bfloat16 0.015 (8 bits of mantissa against float16's 11).
MULTIDIFFUSION_TOLERANCE = {"float16": 0.01, "autocast": 0.01, "bfloat16": 0.05}


def test_multidiffusion_in_half_precision_stays_close_to_float32(half, full):
    name, pipe = half
    request = dict(CASE, sync_weight=0.0, num_inference_steps=4, output_type="np")
    ours = pipe("a land", **request).images[0]
    reference = full("a land", **request).images[0]
    difference = np.abs(ours - reference)
    print(f"{name}: MultiDiffusion differs from float32 by {difference.max():.4f} at most, {difference.mean():.5f} "
          f"on average")
    assert difference.max() <= MULTIDIFFUSION_TOLERANCE[name]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.flatten() @ b.flatten() / (a.norm() * b.norm()))


def test_the_sync_gradient_in_half_precision_points_where_float32_does(half, full):
    name, pipe = half
    # the GPU check's measurement, at step 4 of 30 (high noise, where the layout is decided)
    ours, reference = one_step_sync_gradient(pipe, 3, "cpu"), one_step_sync_gradient(full, 3, "cpu")
    print(f"{name}: cosine to float32's sync gradient {cosine(ours, reference):.4f}, "
          f"norm ratio {float(ours.norm() / reference.norm()):.3f}")
    assert torch.isfinite(ours).all()
    assert cosine(ours, reference) >= 0.9
    assert 0.8 < float(ours.norm() / reference.norm()) < 1.25


def test_a_scaled_loss_keeps_gradients_that_float16_would_flush_to_zero():
    """LPIPS averages over pixels: at 512² each pixel's share of the gradient is below float16's
    smallest normal number. A stand-in for the loss with the same average shows it, cheaply."""
    pixels = 512 * 512
    torch.manual_seed(0)
    weights = torch.rand(1, 3, 512, 512)

    def distance(images):  # a per-pixel average of a float16 computation, as LPIPS's spatial average
        return ((images.half() * weights.half()) ** 2).float().mean(dim=(1, 2, 3))

    x = torch.rand(1, 3, 512, 512)
    exact = 2 * x * weights**2 / pixels
    unscaled, _ = sync_gradient(x, lambda latents: latents, distance)
    scaled, scale = sync_gradient(x, lambda latents: latents, distance, half_precision_loss_scale(pixels))
    assert half_precision_loss_scale(pixels) == scale == 2.0**18
    assert (unscaled == 0).float().mean() > 0.2  # flushed to zero
    assert cosine(scaled.double(), exact.double()) > 0.999 and (scaled == 0).float().mean() < 0.01


def test_an_overflowing_scaled_backward_backs_off():
    calls = []

    def distance(images):
        calls.append(1)
        # the backward overflows float16 (65504) at a loss scale of 2**16, not at 2**8
        return (images.half() * 2.0**4).float().sum(dim=(1, 2, 3))

    x = torch.ones(1, 1, 2, 2)
    gradient, scale = sync_gradient(x, lambda latents: latents, distance, loss_scale=2.0**16)
    assert torch.isfinite(gradient).all() and torch.equal(gradient, torch.full_like(x, 2.0**4)) and scale == 2.0**8
    assert len(calls) == 2  # tried at 2**16, overflowed, then 2**8


@pytest.mark.parametrize("precision, image_scale, loss_scale", [("float16", 1.0, 2.0**10), ("autocast", 0.5, 2.0**8),
                                                                ("bfloat16", 1.0, 2.0**10), ("float32", 1.0, 1.0)])
def test_the_pipeline_scales_the_sync_loss_by_the_pixels_lpips_averages_over(precision, image_scale, loss_scale,
                                                                             monkeypatch):
    import panosync.sync

    used = []

    def recording(*args):
        used.append(args[-1])
        return sync_gradient(*args)

    monkeypatch.setattr(panosync.sync, "sync_gradient", recording)
    tiny_pipe(precision)("a land", **CASE, sync_image_scale=image_scale, output_type="latent")
    assert used and set(used) == {loss_scale}  # 32-pixel views: 32² = 2**10 pixels, 16² at scale 0.5


def overflowing(pipe: SyncDiffusionPipeline) -> SyncDiffusionPipeline:
    """A pipeline whose UNet's noise prediction overflows float16 (weights scaled far up)."""
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(1e6)
    return pipe


def test_a_non_finite_latent_is_an_error_that_says_what_to_try(tmp_path, capsys):
    pipe = overflowing(tiny_pipe("float16"))
    with pytest.raises(NonFiniteError, match=r"step 1 of 2 became NaN or infinite in float16: run it again in bfloat16 .*--dtype autocast"):
        pipe("a land", **CASE, sync_weight=0.0)
    folder = tmp_path / "model"
    pipe.to(dtype=torch.float32).save_pretrained(folder)
    out = tmp_path / "nan.png"
    capsys.readouterr()
    code = main(["generate", "a land", "--model", str(folder), "--width", "48", "--height", "32", "--stride", "8",
                 "--steps", "2", "--dtype", "float16", "--quiet", "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 1 and not out.exists()
    last = error.strip().splitlines()[-1]  # after diffusers' loading bars
    assert last.startswith("panosync: error: The panorama's latent at step 1 of 2 became NaN or infinite in float16")
    assert "Traceback" not in error


def test_a_non_finite_decode_is_an_error_not_a_black_png():
    pipe = tiny_pipe("float16")
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.mul_(1e8)
    with pytest.raises(NonFiniteError, match="The decoded panorama became NaN or infinite in float16"):
        pipe("a land", **CASE, sync_weight=0.0)


def overflowing_vae(pipe: SyncDiffusionPipeline) -> SyncDiffusionPipeline:
    """A VAE decoder that overflows float16 (its first convolution scaled far up) but not float32 (the
    group norm after it takes the scale out again)."""
    with torch.no_grad():
        pipe.vae.decoder.conv_in.weight.mul_(2.0**14)
        pipe.vae.decoder.conv_in.bias.mul_(2.0**14)
    return pipe


@pytest.mark.parametrize("precision", ["float16", "autocast"])
def test_a_vae_that_overflows_float16_decodes_in_float32_when_its_config_allows(precision):
    pipe = overflowing_vae(tiny_pipe(precision))
    pipe.vae.register_to_config(force_upcast=False)
    with pytest.raises(NonFiniteError, match=f"became NaN or infinite in {precision}"):
        pipe("a land", **CASE, sync_weight=0.0)
    pipe.vae.register_to_config(force_upcast=True)
    assert_a_picture(pipe("a land", **CASE, output_type="np").images[0])  # synced: the gradient pass decodes too
    assert pipe.vae.dtype == torch.float32 and pipe.unet.dtype == pipe.precision.weights


def test_a_vae_that_decodes_in_float16_stays_there_whatever_its_config():
    pipe = tiny_pipe("float16")
    assert pipe.vae.config.force_upcast  # diffusers' default, as for every Stable Diffusion 1 or 2 VAE
    pipe("a land", **CASE, output_type="latent")
    assert_a_picture(pipe("a land", **CASE, output_type="np").images[0])
    assert pipe.vae.dtype == torch.float16


def test_autocast_computes_in_float16_with_float32_weights():
    pipe = tiny_pipe("autocast")
    seen = []
    hook = pipe.unet.conv_out.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    pipe("a land", **CASE, sync_weight=0.0, output_type="latent")
    hook.remove()
    assert pipe.unet.dtype == torch.float32 and set(seen) == {torch.float16}
    assert pipe.precision == Precision(torch.float32, torch.float16) and pipe.precision.name == "autocast"
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        pipe.enable_autocast(torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_command_writes_a_panorama_in_each_precision(precision, tmp_path):
    out = tmp_path / f"{precision}.png"
    assert main(["generate", "snowy mountains", "--model", "pocket", "--width", "128", "--steps", "2", "--device", "cpu",
                 "--dtype", precision, "--seed", "3", "--quiet", "--out", str(out)]) == 0
    assert read_parameters(out)["dtype"] == precision
    assert_a_picture(np.asarray(PIL.Image.open(out)) / 255)


def test_the_server_generates_in_half_precision():
    from panosync.server.generation import PanoramaModel
    from panosync.server.limits import Limits

    model = PanoramaModel.load("pocket", "cpu", "bfloat16")
    assert model.dtype == "bfloat16"
    parameters = model.prepare({"prompt": "a land", "width": 128, "num_inference_steps": 2, "seed": 1}, Limits())
    image = model.generate(parameters, lambda step, weight: None)
    assert model.metadata(parameters, image)["dtype"] == "bfloat16"
    assert_a_picture(np.asarray(image) / 255)


def test_pick_precision():
    assert pick_precision("auto", "cpu") == Precision(torch.float32)
    assert pick_precision("auto", "cuda") == Precision(torch.float16)
    assert pick_precision("auto", "cuda", SD) == pick_precision("auto", "cuda", SDXL) == Precision(torch.float16)
    # SD3 and FLUX are released in bfloat16, and FLUX's transformer overflows float16
    assert pick_precision("auto", "cuda", SD3) == pick_precision("auto", "cuda", FLUX) == Precision(torch.bfloat16)
    assert pick_precision("auto", "cpu", FLUX) == Precision(torch.float32)
    assert pick_precision("float16", "cuda", FLUX) == Precision(torch.float16)
    assert pick_precision("autocast", "cpu") == Precision(torch.float32, torch.float16)
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, float16, bfloat16, autocast"):
        pick_precision("float64", "cpu")
    assert json.dumps(pick_precision("bfloat16", "cpu").name) == '"bfloat16"'
