"""Fast modes: each is off by default, changes a synced panorama, still pulls the views towards the
anchor, saves the work it says it saves, and is plain MultiDiffusion when sync is off."""

import pytest
import torch
from diffusers import AutoencoderTiny

from panosync.chunks import ViewChunks, default_view_batch_size
from panosync.fast import FastModes, decoder_factor
from panosync.sync import SyncModels, sync_step
from panosync.views import crop, views_for_canvas

CASE = dict(width=96, height=32, stride=8, num_inference_steps=3, seed=3, output_type="latent")

FAST_OPTIONS = {
    "reuse_noise": dict(fast_modes=["reuse_noise"]),
    "no_unet_backward": dict(fast_modes=["no_unet_backward"]),
    "both": dict(fast_modes="reuse_noise,no_unet_backward"),
    "image_scale": dict(sync_image_scale=0.5),
    "lpips_alex": dict(fast_modes=["lpips_alex"]),
}


def tiny_decoder(vae_factor: int, seed: int = 0) -> AutoencoderTiny:
    """A random-weight AutoencoderTiny (TAESD's architecture, narrower): no TAESD weights can be
    had offline here, so its pictures mean nothing; it shows the decoder is plumbed in."""
    torch.manual_seed(seed)
    blocks = vae_factor.bit_length()  # one upsampling between blocks
    return AutoencoderTiny(encoder_block_out_channels=(8,) * blocks, decoder_block_out_channels=(8,) * blocks,
                           num_encoder_blocks=(1,) * blocks, num_decoder_blocks=(1,) * blocks).eval()


@pytest.fixture(scope="module")
def faithful(sync_pipe):
    return sync_pipe("a land", **CASE).images


@pytest.fixture(scope="module")
def multidiffusion(sync_pipe):
    return sync_pipe("a land", sync_weight=0, **CASE).images


@pytest.mark.parametrize("name", [*FAST_OPTIONS, "decoder"])
def test_with_sync_off_every_fast_mode_is_multidiffusion(sync_pipe, multidiffusion, name):
    options = FAST_OPTIONS.get(name) or dict(sync_decoder=tiny_decoder(sync_pipe.vae_scale_factor))
    assert torch.equal(sync_pipe("a land", sync_weight=0, **options, **CASE).images, multidiffusion)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*FAST_OPTIONS, "decoder"])
def test_every_fast_mode_changes_a_synced_panorama(sync_pipe, faithful, multidiffusion, name):
    options = FAST_OPTIONS.get(name) or dict(sync_decoder=tiny_decoder(sync_pipe.vae_scale_factor))
    fast = sync_pipe("a land", **options, **CASE).images
    assert (fast - faithful).abs().max() > 1e-3
    assert (fast - multidiffusion).abs().max() > 1e-3  # it still syncs


def test_fast_modes_at_their_neutral_settings_are_faithful(sync_pipe, faithful):
    # the model's own VAE as the loss's decoder and LPIPS at full scale: nothing is approximated
    same = sync_pipe("a land", fast_modes=(), sync_image_scale=1.0, sync_decoder=sync_pipe.vae, **CASE).images
    assert torch.equal(same, faithful)


@pytest.mark.parametrize("name", ["no_unet_backward", "image_scale", "lpips_alex"])
def test_approximate_gradients_still_pull_views_towards_the_anchor(sync_pipe, name):
    # The faithful distance (full-size images, gradient through the UNet) falls along each fast
    # mode's gradient: the approximation keeps the direction that matters.
    pipe = sync_pipe
    options = FAST_OPTIONS[name]
    fast = pipe.fast_modes(options.get("fast_modes", ()), options.get("sync_image_scale", 1.0))
    noise = torch.randn((1, 4, 16, 48), generator=torch.Generator().manual_seed(11))
    views = views_for_canvas(16, 48, pipe.window, 8)
    anchor = len(views) // 2
    embeddings = pipe.backbone.encode_prompt(["a land"], [""], "cpu")
    pipe.scheduler.set_timesteps(20)
    t = pipe.scheduler.timesteps[0]
    perceptual, fast_perceptual = pipe.perceptual_distance(), pipe.perceptual_distance(fast.lpips_net)

    def predict(x):
        return pipe.backbone.guided_prediction(x, t, embeddings, 7.5)

    def original(x, prediction):
        return pipe.scheduler.step(prediction, t, x).pred_original_sample

    def foreseen(x, modes):
        return pipe.foreseen_image(original(x, predict(x)), modes)

    with torch.no_grad():
        anchor_latent = crop(noise, views[anchor])
        faithful_target = perceptual.target_features(foreseen(anchor_latent, FastModes()) * 2 - 1)
        fast_target = fast_perceptual.target_features(foreseen(anchor_latent, fast) * 2 - 1)
    others = torch.cat([crop(noise, v) for j, v in enumerate(views) if j != anchor])
    models = SyncModels(predict, original, lambda x0: pipe.foreseen_image(x0, fast),
                        lambda images: fast_perceptual(images * 2 - 1, fast_target))
    moved = sync_step(others, 20.0, models, prediction_is_constant=fast.no_unet_backward).latents

    def faithful_distance(x):
        with torch.no_grad():
            return perceptual(foreseen(x, FastModes()) * 2 - 1, faithful_target)

    before, after = faithful_distance(others), faithful_distance(moved)
    assert torch.all(after < before), (before, after)


def count_unet_calls(pipe, **options):
    """Views through the guided UNet (one call of a batch of n views counts n) and whether any
    call kept an autograd graph."""
    seen = {"views": 0, "with_grad": False}

    def hook(module, args, kwargs):
        seen["views"] += args[0].shape[0] // 2  # both guidance branches of each view
        seen["with_grad"] |= torch.is_grad_enabled()

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe("a land", **{**CASE, "num_inference_steps": 1}, **options)
    finally:
        handle.remove()
    return seen


def test_fast_modes_skip_the_unet_work_they_say_they_skip(sync_pipe):
    views = len(views_for_canvas(16, 48, sync_pipe.window, 8))  # 5 views: the anchor and 4 others
    faithful = count_unet_calls(sync_pipe)
    reuse = count_unet_calls(sync_pipe, fast_modes=["reuse_noise"])
    constant = count_unet_calls(sync_pipe, fast_modes=["no_unet_backward"])
    # faithful: the anchor once; every other view a gradient pass and a pass from where it moved to
    assert faithful == {"views": 1 + 2 * (views - 1), "with_grad": True}
    assert reuse == {"views": 1 + (views - 1), "with_grad": True}
    assert constant == {"views": 1 + 2 * (views - 1), "with_grad": False}


def test_image_scale_shrinks_what_lpips_sees(sync_pipe):
    sizes = []
    perceptual = sync_pipe.perceptual_distance()
    handle = perceptual.lpips.net.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[-1]))
    try:
        sync_pipe("a land", sync_image_scale=0.5, **{**CASE, "num_inference_steps": 1})
    finally:
        handle.remove()
    window_pixels = sync_pipe.window * sync_pipe.vae_scale_factor
    assert sizes and set(sizes) == {window_pixels // 2}


def test_lpips_alex_compares_with_alexnet_and_not_vgg(sync_pipe):
    calls = {"vgg": 0, "alex": 0}
    handles = [sync_pipe.perceptual_distance(net).lpips.net.register_forward_pre_hook(
        lambda module, args, net=net: calls.__setitem__(net, calls[net] + 1)) for net in calls]
    try:
        sync_pipe("a land", fast_modes=["lpips_alex"], **{**CASE, "num_inference_steps": 1})
        assert calls["alex"] > 0 and calls["vgg"] == 0
        sync_pipe("a land", **{**CASE, "num_inference_steps": 1})
        assert calls["vgg"] > 0
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.slow
def test_a_sync_decoder_loads_from_its_folder_and_is_checked(sync_pipe, faithful, tmp_path):
    decoder = tiny_decoder(sync_pipe.vae_scale_factor, seed=1)
    decoder.save_pretrained(tmp_path / "taesd-like")
    by_module = sync_pipe("a land", sync_decoder=decoder, **CASE).images
    by_folder = sync_pipe("a land", sync_decoder=str(tmp_path / "taesd-like"), **CASE).images
    torch.testing.assert_close(by_folder, by_module, rtol=0, atol=1e-6)
    assert decoder_factor(decoder) == sync_pipe.vae_scale_factor == 2
    with pytest.raises(ValueError, match="1/4 scale, but this model's latents have 4 channels at 1/2"):
        sync_pipe("a land", sync_decoder=tiny_decoder(4), **CASE)
    with pytest.raises(ValueError, match="not a diffusers AutoencoderTiny folder"):
        sync_pipe("a land", sync_decoder=str(tmp_path), **CASE)


BAD_FAST_OPTIONS = [
    (dict(fast_modes=["reuse_noise", "turbo"]), "fast_modes: unknown fast mode 'turbo': use any of reuse_noise, no_unet_backward"),
    (dict(sync_image_scale=0), "sync_image_scale must be more than 0 and at most 1"),
    (dict(sync_image_scale=1.5), "sync_image_scale must be more than 0 and at most 1"),
    (dict(sync_image_scale=0.25), "shrinks the 32-pixel views below 16 pixels, too small for LPIPS-VGG: use 0.5"),
    (dict(sync_decoder=42), "sync_decoder must be a diffusers autoencoder"),
    (dict(fast_modes=["lpips_alex"], sync_image_scale=0.5),
     "lpips_alex compares images of 31 pixels or more, and this call's sync loss compares 16: leave lpips_alex out "
     "or raise sync_image_scale"),
]


@pytest.mark.parametrize("change,message", BAD_FAST_OPTIONS)
def test_bad_fast_options_are_refused_before_model_work(sync_pipe, change, message, monkeypatch):
    def no_model_work(*args, **kwargs):
        raise AssertionError("the text encoder ran before the input was checked")

    monkeypatch.setattr(sync_pipe.backbone, "encode_prompt", no_model_work)
    with pytest.raises(ValueError, match=message):
        sync_pipe("a land", **CASE, **change)


# --- Chunks of views per device ------------------------------------------------------------------


def test_chunk_size_follows_device_and_window():
    assert default_view_batch_size("cpu", 64, 21) == 21  # small windows (pocket): all views in one call
    assert default_view_batch_size("cpu", 128, 21) == 6
    assert default_view_batch_size("cpu", 512, 21) == 1  # Stable Diffusion's window on the CPU
    assert default_view_batch_size("cuda", 512, 21) == 16
    assert default_view_batch_size("cuda", 1024, 3) == 3


def test_chunks_halve_when_memory_runs_out():
    calls = []

    def work(chunk):
        calls.append(len(chunk))
        if len(chunk) > 3:  # this device holds three views at a time
            raise torch.OutOfMemoryError("out of memory")
        return [item * 10 for item in chunk]

    chunks, results = ViewChunks(8), []
    for chunk in chunks.split(list(range(10))):
        with chunks.fitting():
            results.extend(work(chunk))
    assert results == [item * 10 for item in range(10)]
    assert chunks.size == 2 and calls == [8, 4, 2, 2, 2, 2, 2]
    with pytest.raises(torch.OutOfMemoryError):
        lone = ViewChunks(1)
        for chunk in lone.split([1]):
            with lone.fitting():
                work([1, 2, 3, 4])


# --- The command ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_command_takes_fast_modes_and_records_them(sync_pipe, tmp_path, capsys):
    import numpy as np
    import PIL.Image

    from panosync.cli import main
    from panosync.metadata import read_parameters

    folder = tmp_path / "model"
    sync_pipe.save_pretrained(folder)
    out = tmp_path / "fast.png"
    common = ["--model", str(folder), "--width", "64", "--height", "32", "--stride", "8", "--steps", "2", "--quiet"]
    assert main(["generate", "a land", *common, "--seed", "2", "--fast", "reuse_noise", "--fast", "no_unet_backward",
                 "--sync-image-scale", "0.5", "--no-tiled-decode", "--out", str(out)]) == 0
    parameters = read_parameters(out)
    assert parameters["fast_modes"] == ["no_unet_backward", "reuse_noise"] and parameters["sync_image_scale"] == 0.5
    assert parameters["tiled_decode"] is False and parameters["sync_decoder"] is None
    faithful = tmp_path / "faithful.png"
    assert main(["generate", "a land", *common, "--seed", "2", "--out", str(faithful)]) == 0
    assert not np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(faithful)))
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(again)))
    capsys.readouterr()
    # checked before any weights load
    assert main(["generate", "a land", *common, "--sync-image-scale", "0.25"]) == 2
    assert "too small for LPIPS-VGG: use 0.5 or more" in capsys.readouterr().err
    assert main(["generate", "a land", *common, "--sync-decoder", str(tmp_path)]) == 2
    assert "not a diffusers AutoencoderTiny folder" in capsys.readouterr().err


@pytest.mark.slow
def test_a_models_recommended_fast_modes_are_the_default_and_none_turns_them_off(sync_pipe, tmp_path):
    import json

    import numpy as np
    import PIL.Image

    from panosync.cli import main
    from panosync.metadata import read_parameters

    folder = tmp_path / "model"
    sync_pipe.save_pretrained(folder)
    (folder / "recommended.json").write_text(json.dumps({"sync_weight": 10.0, "fast_modes": ["no_unet_backward"]}))
    common = ["a land", "--model", str(folder), "--width", "64", "--height", "32", "--stride", "8", "--steps", "2",
              "--seed", "2", "--quiet"]
    recommended, faithful, other = tmp_path / "recommended.png", tmp_path / "faithful.png", tmp_path / "other.png"
    assert main(["generate", *common, "--out", str(recommended)]) == 0
    assert main(["generate", *common, "--fast", "none", "--out", str(faithful)]) == 0
    assert main(["generate", *common, "--fast", "reuse_noise", "--out", str(other)]) == 0
    assert read_parameters(recommended)["fast_modes"] == ["no_unet_backward"]
    assert read_parameters(recommended)["sync_weight"] == 10.0
    assert read_parameters(faithful)["fast_modes"] == []
    assert read_parameters(other)["fast_modes"] == ["reuse_noise"]  # options given replace the recommended ones
    pixels = {path: np.asarray(PIL.Image.open(path)) for path in (recommended, faithful)}
    assert not np.array_equal(*pixels.values())
    direct = sync_pipe("a land", width=64, height=32, stride=8, num_inference_steps=2, seed=2, sync_weight=10.0,
                       fast_modes=["no_unet_backward"], output_type="np").images[0]
    assert np.abs((direct * 255).round() - pixels[recommended].astype(float)).max() <= 1


# --- DPM-Solver++: each view keeps its own solver history -----------------------------------------


@pytest.mark.slow
def test_dpm_solver_multidiffusion_equals_diffusers_with_per_view_solver_state(sd_shaped_pipe):
    from diffusers import StableDiffusionPanoramaPipeline

    from panosync.schedulers import multistep_like

    pipe = sd_shaped_pipe
    # diffusers' panorama pipeline saves and restores the solver's state around each batch of views:
    # with one view per batch, every view keeps its own history, as ours does
    theirs_pipe = StableDiffusionPanoramaPipeline(**{**pipe.components, "scheduler": multistep_like(pipe.scheduler)},
                                                  safety_checker=None,
                                                  requires_safety_checker=False)
    theirs_pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((1, 4, 64, 80), generator=torch.Generator().manual_seed(5))
    ours = pipe("a land", width=640, height=512, stride=8, sync_weight=0, num_inference_steps=3, latents=noise,
                fast_modes=["dpm_solver"], view_batch_size=1, output_type="latent").images
    theirs = theirs_pipe("a land", width=640, height=512, num_inference_steps=3, latents=noise, view_batch_size=1,
                         output_type="latent").images
    ddim = pipe("a land", width=640, height=512, stride=8, sync_weight=0, num_inference_steps=3, latents=noise,
                view_batch_size=1, output_type="latent").images
    assert (ours - ddim).abs().max() > 1e-2  # another sampler ...
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)  # ... and exactly diffusers' MultiDiffusion with it


@pytest.mark.slow
def test_dpm_solver_syncs_and_a_multistep_scheduler_may_be_set_directly(sync_pipe, multidiffusion):
    from panosync.pipeline import SyncDiffusionPipeline
    from panosync.schedulers import multistep_like

    by_mode = sync_pipe("a land", fast_modes=["dpm_solver"], **CASE).images
    direct = SyncDiffusionPipeline(**{**sync_pipe.components, "scheduler": multistep_like(sync_pipe.scheduler)})
    direct.set_progress_bar_config(disable=True)
    torch.testing.assert_close(direct("a land", **CASE).images, by_mode, rtol=0, atol=1e-6)
    unsynced = sync_pipe("a land", fast_modes=["dpm_solver"], sync_weight=0, **CASE).images
    assert (by_mode - unsynced).abs().max() > 1e-2 and (by_mode - multidiffusion).abs().max() > 1e-2


# --- Batching views: the same arithmetic ----------------------------------------------------------


@pytest.mark.slow
def test_batched_views_are_the_same_arithmetic_as_one_at_a_time():
    # In float32, a batched call rounds differently from one view at a time, and the sync gradient
    # amplifies rounding where it meets a threshold (the clamp of saturated pixels, ReLUs near 0),
    # so after many synced steps the panoramas drift apart. In float64, where rounding is a million
    # times smaller, they agree to 1e-9: batching changes rounding, not what is computed.
    from conftest import make_pipe

    pipe = make_pipe(window=16, vae_factor=2).to(torch.float64)
    noise = torch.randn((1, 4, 16, 40), generator=torch.Generator().manual_seed(3))
    case = dict(width=80, height=32, stride=8, num_inference_steps=4, sync_decay_rate=0.9, sync_threshold=3,
                latents=noise, output_type="latent")
    one = pipe("a land", view_batch_size=1, **case).images
    many = pipe("a land", view_batch_size=3, **case).images
    unsynced = pipe("a land", sync_weight=0, **case).images
    assert one.dtype == torch.float64 and (one - unsynced).abs().max() > 0.1
    torch.testing.assert_close(many, one, rtol=0, atol=1e-9)
