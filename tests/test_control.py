"""ControlSync: per-view ControlNet conditions on tiny random-weight models (no downloads)."""

import copy

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import ControlNetModel, PNDMScheduler, StableDiffusionPipeline

from panosync import models
from panosync.cli import main
from panosync.conditions import canny_edges, fit_to_canvas, load_condition_image, prepare_condition
from panosync.control import ControlSyncPipeline, pixel_view, random_controlnet_like
from panosync.metadata import read_parameters
from panosync.views import View, crop, views_for_canvas


def control_pipe(base, *controlnets):
    """A ControlSyncPipeline on the components of a tiny test pipeline."""
    nets = controlnets or (random_controlnet_like(base.unet, base.vae_scale_factor),)
    pipe = ControlSyncPipeline(**base.components, controlnet=nets[0] if len(nets) == 1 else list(nets))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sync_control(sync_pipe):
    """Window 16 latents, VAE factor 2 (32-pixel windows, big enough for LPIPS), one ControlNet."""
    return control_pipe(sync_pipe)


def noise_for(pipe, width, height, seed=0):
    shape = (1, 4, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def coordinate_condition(width, height):
    """A condition whose pixels say where they are: red = column, green = row (of width-1, height-1)."""
    columns = torch.arange(width).float().div(width - 1).expand(height, width)
    rows = torch.arange(height).float().div(height - 1)[:, None].expand(height, width)
    return torch.stack([columns, rows, torch.full((height, width), 0.5)])[None]


def decode_place(crop_pixels, width, height):
    """The (top, left) of a crop of `coordinate_condition`, and its column and row indices."""
    columns = (crop_pixels[0] * (width - 1)).round().long()
    rows = (crop_pixels[1] * (height - 1)).round().long()
    return (rows[0, 0].item(), columns[0, 0].item()), columns, rows


# --- Each view's UNet calls carry its own crop of the condition ------------------------------------


def test_every_pass_of_every_view_gets_its_crop_wrapped_for_loop_closure(sync_control):
    pipe, net = sync_control, sync_control.controlnet
    width, height, factor = 96, 32, sync_control.vae_scale_factor
    views = views_for_canvas(height // factor, width // factor, pipe.window, 8, loop_closure=True)
    condition = coordinate_condition(width, height)
    noise = noise_for(pipe, width, height, seed=5)
    calls, into_latents = [], []

    def record(module, args, kwargs):
        calls.append((kwargs["controlnet_cond"].clone(), kwargs["sample"].detach().clone()))

    def record_gradient(module, grad_input, grad_output):
        into_latents.append(grad_input[0].abs().sum().item())

    hooks = [net.register_forward_pre_hook(record, with_kwargs=True),
             net.conv_in.register_full_backward_hook(record_gradient)]
    try:
        pipe("a", condition, latents=noise, stride=8, loop_closure=True, num_inference_steps=1, view_batch_size=4,
             output_type="latent")
    finally:
        for hook in hooks:
            hook.remove()

    # one synced step, 6 views, batches of 4: the anchor, then gradient and denoising passes of 4 and of 1
    assert [c.shape[0] // 2 for c, _ in calls] == [1, 4, 4, 1, 1]
    seen, wrapped = [], 0
    for number, (conditions, samples) in enumerate(calls):
        half = conditions.shape[0] // 2
        assert torch.equal(conditions[:half], conditions[half:]) and torch.equal(samples[:half], samples[half:])
        for k in range(half):
            (top, left), columns, rows = decode_place(conditions[k], width, height)
            view = View(top // factor, left // factor, pipe.window, pipe.window)
            assert view in views
            # exactly the view's pixel window, columns wrapping past the right edge
            assert torch.equal(columns[0], torch.arange(left, left + 32) % width)
            assert torch.equal(rows[:, 0], torch.arange(top, top + 32))
            wrapped += view.wraps(width // factor)
            seen.append(view)
            if number in (0, 1, 3):  # the anchor's and the gradient passes see the view's latent as it is
                assert torch.equal(samples[k], crop(noise, view)[0])
    # the denoising pass of a batch sees the same views in the same order as its gradient pass
    assert torch.equal(calls[2][0], calls[1][0]) and torch.equal(calls[4][0], calls[3][0])
    anchor = views[len(views) // 2]
    assert seen.count(anchor) == 1 and all(seen.count(v) == 2 for v in views if v != anchor)
    assert wrapped == 2 * sum(v.wraps(width // factor) for v in views) > 0
    # the sync gradient went back through the ControlNet into the latents, for both gradient passes
    assert len(into_latents) == 2 and min(into_latents) > 0


def test_pixel_view_crops_the_condition_where_the_latent_view_is():
    condition = coordinate_condition(40, 16)
    piece = crop(condition, pixel_view(View(2, 16, 4, 8), 2))  # latent columns 16..23 of 20: wraps
    (top, left), columns, rows = decode_place(piece[0], 40, 16)
    assert piece.shape == (1, 3, 8, 16) and (top, left) == (4, 32)
    assert columns[0].tolist() == [*range(32, 40), *range(0, 8)]


# --- What the residuals change ----------------------------------------------------------------------

SYNCED = dict(width=64, height=32, stride=8, num_inference_steps=2, sync_threshold=1, seed=3, output_type="latent")


def test_scale_zero_is_plain_syncdiffusion_and_sync_still_matters(sync_pipe, sync_control):
    condition = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    plain = sync_pipe("a land", **SYNCED).images
    off = sync_control("a land", condition, controlnet_conditioning_scale=0.0, **SYNCED).images
    on = sync_control("a land", condition, **SYNCED).images
    unsynced = sync_control("a land", condition, **{**SYNCED, "sync_weight": 0}).images
    assert torch.equal(off, plain)
    assert (on - plain).abs().max() > 0.1  # the condition changes the panorama ...
    assert (on - unsynced).abs().max() > 0.1  # ... and ControlSync still synchronizes


def test_fast_modes_keep_the_condition_in_every_unet_call(sync_control):
    condition = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    net, seen = sync_control.controlnet, []
    hook = net.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["controlnet_cond"].shape),
                                         with_kwargs=True)
    try:
        fast = sync_control("a land", condition, fast_modes=["reuse_noise", "no_unet_backward"], **SYNCED).images
    finally:
        hook.remove()
    faithful = sync_control("a land", condition, **SYNCED).images
    off = sync_control("a land", condition, controlnet_conditioning_scale=0.0, fast_modes=["reuse_noise"],
                       **SYNCED).images
    assert (fast - faithful).abs().max() > 1e-4  # the fast modes were applied ...
    assert (fast - off).abs().max() > 0.1  # ... with the condition still followed
    # synced step: anchor + one pass per view batch (reuse_noise: no second pass); then one unsynced step
    views = len(views_for_canvas(16, 32, sync_control.window, SYNCED["stride"]))
    assert len(seen) == 2 + 1 and all(shape[-2:] == (32, 32) for shape in seen) and views == 3


def test_several_controlnets_add_their_scaled_residuals(small_pipe):
    net = random_controlnet_like(small_pipe.unet, small_pipe.vae_scale_factor, seed=1)
    single, double = control_pipe(small_pipe, net), control_pipe(small_pipe, net, copy.deepcopy(net))
    condition = torch.rand(1, 3, 16, 48, generator=torch.Generator().manual_seed(1))
    kwargs = dict(stride=4, num_inference_steps=1, sync_weight=0, seed=2, output_type="latent")
    whole = single("a", condition, controlnet_conditioning_scale=1.0, **kwargs).images
    halves = double("a", [condition, condition], controlnet_conditioning_scale=[0.5, 0.5], **kwargs).images
    assert torch.equal(whole, halves)  # halving is exact in floating point, so the sums agree bit for bit
    with pytest.raises(ValueError, match="image must be a list of 2 conditions"):
        double("a", condition, **kwargs)
    with pytest.raises(ValueError, match="one entry per ControlNet"):
        double("a", [condition], **kwargs)


def test_controlnet_for_another_model_is_refused(small_pipe, sync_pipe):
    wrong_scale = random_controlnet_like(small_pipe.unet, vae_factor=4)
    with pytest.raises(ValueError, match="reads conditions at 1/4 scale but this model's latents are 1/2"):
        control_pipe(small_pipe, wrong_scale)


# --- Conditions -------------------------------------------------------------------------------------


def rectangle(brightness, size=(64, 32), box=(16, 8, 48, 24)):
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[box[1]:box[3], box[0]:box[2]] = brightness
    return PIL.Image.fromarray(pixels)


def test_canny_edges_follow_the_outline_and_the_thresholds():
    edges = np.asarray(canny_edges(rectangle(255)))[:, :, 0]
    rows, columns = np.nonzero(edges)
    assert len(rows) > 40 and set(np.unique(edges)) == {0, 255}
    # the rectangle covers rows 8..23 and columns 16..47: every edge lies within a pixel of its outline
    within_outer = (rows >= 7) & (rows <= 24) & (columns >= 15) & (columns <= 48)
    within_inner = (rows >= 10) & (rows <= 21) & (columns >= 18) & (columns <= 45)
    assert (within_outer & ~within_inner).all()
    faint = rectangle(30)  # its Sobel gradient (4 x 30) lies between the two thresholds below
    assert not np.asarray(canny_edges(faint, 100, 200)).any()
    assert np.asarray(canny_edges(faint, 50, 100)).any()


def test_preprocess_resizes_the_source_before_its_edges_are_taken():
    condition = prepare_condition(rectangle(255, size=(32, 16), box=(8, 4, 24, 12)), 64, 32, resize=True,
                                  preprocess="canny")
    assert condition.shape == (1, 3, 32, 64) and set(condition.unique().tolist()) == {0.0, 1.0}  # thin, crisp edges


def test_condition_of_another_size_is_resized_or_refused():
    image = rectangle(200, size=(40, 20))
    with pytest.raises(ValueError, match="The condition is 40x20 pixels but the canvas is 64x32.*resize"):
        fit_to_canvas(image, 64, 32)
    resized = fit_to_canvas(image, 64, 32, resize=True)
    assert resized.shape == (1, 3, 32, 64) and 0 <= resized.min() and resized.max() <= 1
    assert torch.equal(fit_to_canvas(image, 40, 20), torch.from_numpy(np.array(image)).permute(2, 0, 1)[None] / 255)


BAD_CONDITIONS = [
    (PIL.Image.new("RGBA", (64, 32)), "has transparency"),
    (PIL.Image.new("F", (64, 32)), "has mode F: give an 8-bit RGB or grayscale image"),
    (PIL.Image.new("CMYK", (64, 32)), "has mode CMYK"),
    (torch.full((1, 3, 32, 64), 2.0), r"values must lie in \[0, 1\]"),
    (torch.zeros(1, 4, 32, 64), r"must have shape \(3, height, width\)"),
    ("edges.png", "must be a PIL image, a numpy array or a torch tensor"),
    (None, "Give image"),
]


@pytest.mark.parametrize("condition,message", BAD_CONDITIONS)
def test_bad_conditions_are_refused_before_model_work(sync_control, condition, message, monkeypatch):
    def no_model_work(*args, **kwargs):
        raise AssertionError("the text encoder ran before the condition was checked")

    monkeypatch.setattr(sync_control.backbone, "encode_prompt", no_model_work)
    with pytest.raises(ValueError, match=message):
        sync_control("a", condition, num_inference_steps=1)


def test_canvas_defaults_to_the_condition_and_must_fit_the_vae(sync_control, monkeypatch):
    monkeypatch.setattr(sync_control.backbone, "encode_prompt", lambda *a, **k: pytest.fail("model work before the check"))
    with pytest.raises(ValueError, match="not a multiple of 2 .* give the width and height to resize it to"):
        sync_control("a", torch.rand(1, 3, 32, 65))
    with pytest.raises(ValueError, match="The condition is 64x32 pixels but the canvas is 96x32"):
        sync_control("a", torch.rand(1, 3, 32, 64), width=96)
    with pytest.raises(ValueError, match="controlnet_conditioning_scale must be a finite number, 0 or more"):
        sync_control("a", torch.rand(1, 3, 32, 64), controlnet_conditioning_scale=-1.0)


def test_condition_files_missing_or_unreadable(tmp_path):
    with pytest.raises(ValueError, match="No such condition image"):
        load_condition_image(tmp_path / "missing.png")
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match="Cannot read condition image"):
        load_condition_image(broken)


# --- The command --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sync_pipe, sync_control):
    """The tiny model as a Stable Diffusion folder and its ControlNet as a ControlNet folder."""
    root = tmp_path_factory.mktemp("control")
    components = {**sync_pipe.components, "scheduler": PNDMScheduler.from_config(sync_pipe.scheduler.config)}
    StableDiffusionPipeline(**components, safety_checker=None,
                            requires_safety_checker=False).save_pretrained(root / "model")
    sync_control.controlnet.save_pretrained(root / "controlnet")
    rectangle(255, size=(32, 16), box=(8, 4, 24, 12)).save(root / "photo.png")
    return root


def test_control_command_writes_the_panorama_and_every_parameter(folders, tmp_path, capsys):
    out = tmp_path / "out.png"
    code = main(["control", "a city", "--model", str(folders / "model"), "--controlnet", str(folders / "controlnet"),
                 "--condition", str(folders / "photo.png"), "--preprocess", "canny", "--canny-low", "50",
                 "--width", "64", "--height", "32", "--resize-condition", "--steps", "1", "--sync-weight", "0",
                 "--seed", "4", "--out", str(out), "--quiet"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    assert PIL.Image.open(out).size == (64, 32)
    parameters = read_parameters(out)
    expected = dict(condition=[str(folders / "photo.png")], controlnet=[str(folders / "controlnet")],
                    controlnet_conditioning_scale=[1.0], preprocess="canny", canny_low=50, canny_high=200,
                    resize_condition=True, sync_threshold=10, seed=4)
    assert {name: parameters[name] for name in expected} == expected
    again = tmp_path / "again.png"
    assert main(["control", "--from-png", str(out), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(again)))


def test_control_command_takes_the_fast_modes_and_records_them(folders, tmp_path):
    out = tmp_path / "fast.png"
    common = ["--model", str(folders / "model"), "--controlnet", str(folders / "controlnet"), "--condition",
              str(folders / "photo.png"), "--width", "64", "--height", "32", "--resize-condition", "--steps", "2",
              "--sync-threshold", "1", "--seed", "4", "--quiet"]
    assert main(["control", "a city", *common, "--fast", "no_unet_backward", "--sync-image-scale", "0.5",
                 "--out", str(out)]) == 0
    assert main(["control", "a city", *common, "--out", str(tmp_path / "faithful.png")]) == 0
    parameters = read_parameters(out)
    assert parameters["fast_modes"] == ["no_unet_backward"] and parameters["sync_image_scale"] == 0.5
    assert not np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(tmp_path / "faithful.png")))


def test_from_pretrained_with_a_controlnet_is_the_composed_pipeline(folders, sync_control):
    from diffusers import DDIMScheduler

    pipe = ControlSyncPipeline.from_pretrained(folders / "model",
                                               controlnet=ControlNetModel.from_pretrained(folders / "controlnet"))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, DDIMScheduler)  # the folder's PNDM replaced, as SyncDiffusionPipeline does
    condition = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(2))
    kwargs = dict(stride=8, num_inference_steps=1, sync_weight=0, seed=1, output_type="latent")
    assert torch.equal(pipe("a", condition, **kwargs).images, sync_control("a", condition, **kwargs).images)


def no_loading(*args, **kwargs):
    raise AssertionError("a model was loaded before the input was checked")


BAD_COMMANDS = [
    (["--condition", "MISSING"], "No such condition image"),
    (["--condition", "PHOTO"], "The condition is 32x16 pixels but the canvas is 64x32"),
    (["--condition", "PHOTO", "--resize-condition", "--preprocess", "sobel"], "preprocess must be one of none, canny"),
    (["--condition", "PHOTO", "--resize-condition", "--preprocess", "canny", "--canny-low", "300", "--canny-high",
      "200"], "canny_low (300) must not exceed canny_high (200)"),
    (["--condition", "PHOTO", "--condition", "PHOTO"], "Give one --condition per --controlnet"),
    (["--condition", "PHOTO", "--conditioning-scale", "-1"],
     "controlnet_conditioning_scale: every value must be 0 or more, got -1.0"),
    (["--condition", "PHOTO", "--conditioning-scale", "1", "--conditioning-scale", "1"],
     "Give --conditioning-scale once for all ControlNets or once for each (1), got 2"),
    (["--condition", "PHOTO", "--conditioning-scale", "nan"], "controlnet_conditioning_scale: every value must be a finite"),
    (["--condition", "PHOTO", "--controlnet", "no-such-owner-xyz/no-such-controlnet"],
     "ControlNet 'no-such-owner-xyz/no-such-controlnet' is not in the local Hugging Face cache and HF_HUB_OFFLINE"),
    (["--condition", "PHOTO", "--controlnet", "MODEL"], "not a diffusers ControlNet folder"),
    ([], "Give --condition"),
]


@pytest.mark.parametrize("options,message", BAD_COMMANDS)
def test_control_command_errors_are_one_sentence_before_loading(folders, options, message, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "load_pipeline", no_loading)
    monkeypatch.setattr(ControlNetModel, "from_pretrained", no_loading)
    places = {"MISSING": str(folders / "missing.png"), "PHOTO": str(folders / "photo.png"), "MODEL": str(folders / "model")}
    options = [places.get(option, option) for option in options]
    if "--controlnet" not in options:
        options += ["--controlnet", str(folders / "controlnet")]
    code = main(["control", "a", "--model", str(folders / "model"), "--width", "64", "--height", "32", "--quiet",
                 *options])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_control_defaults_to_the_papers_models_and_says_they_are_not_here(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rectangle(255).save(tmp_path / "edges.png")
    assert main(["control", "a", "--condition", str(tmp_path / "edges.png")]) == 2
    assert "'stable-diffusion-v1-5/stable-diffusion-v1-5' is not in the local Hugging Face cache" in capsys.readouterr().err
    assert main(["control", "a", "--model", "tiny-random", "--condition", str(tmp_path / "edges.png")]) == 2
    assert "ControlNet 'lllyasviel/sd-controlnet-canny' is not in the local Hugging Face cache" in capsys.readouterr().err
