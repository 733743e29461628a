"""SyncDiffusion on the flow-matching transformers, SD3 / 3.5 and FLUX.1: one window with sync off is
each family's own diffusers image; synced panoramas (3 views, loop-closed, 2-D) in float32 and
bfloat16; the sync step pulls the views towards the anchor; the fast modes; the window parameter.
Tiny random-weight models built from configs, offline (tiny.py)."""

import re

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny, FluxPipeline, StableDiffusion3Pipeline

from panosync import settings
from panosync.backbones.flux import pack, position_ids, unpack
from panosync.fast import FastModes
from panosync.flux import SyncDiffusionFluxPipeline
from panosync.sd3 import SyncDiffusion3Pipeline
from panosync.tiny import tiny_random_flux_components, tiny_random_sd3_components
from panosync.sync import SyncModels, sync_step
from panosync.views import crop, views_for_canvas

from in_precision import in_precision

WINDOW = 32  # pixels: 16 latents at VAE factor 2, big enough for LPIPS-VGG
STEPS = 3
ROUNDING = 1e-5
FAMILIES = ("sd3", "flux")


def components(family, **options):
    return tiny_random_sd3_components(**options) if family == "sd3" else tiny_random_flux_components(**options)


def ours(family, precision="float32", **options):
    kind = SyncDiffusion3Pipeline if family == "sd3" else SyncDiffusionFluxPipeline
    return in_precision(kind(**components(family, **options)), precision)


@pytest.fixture(scope="module", params=FAMILIES)
def pipe(request):
    return request.param, ours(request.param)


# --- one window, sync off: the family's own diffusers pipeline ----------------------------------------


def one_window_noise(seed):
    """The seed's noise as every family draws it: the unpacked latent (1, C, H/f, W/f)."""
    side = WINDOW // 2
    return torch.randn((1, 4, side, side), generator=torch.Generator().manual_seed(seed))


def max_difference(mine, theirs, family):
    mine, theirs = torch.as_tensor(np.asarray(mine)).float(), torch.as_tensor(np.asarray(theirs)).float()
    if family == "flux" and theirs.ndim == 3:  # FluxPipeline's latent output is packed
        mine = pack(mine)
    assert mine.shape == theirs.shape
    return (mine - theirs).abs().max().item()


CASES = {
    "sd3": [dict(negative_prompt="blurry"), dict(guidance_scale=1.0), dict(text_encoder_3=None)],
    "flux": [dict(guidance_scale=4.0), dict(guidance_embeds=False), dict(true_cfg_scale=3.0, negative_prompt="dull")],
}


@pytest.mark.parametrize("family, case", [(f, i) for f in FAMILIES for i in range(3)],
                         ids=["sd3-cfg", "sd3-no-cfg", "sd3-no-t5", "flux-dev", "flux-schnell", "flux-true-cfg"])
def test_one_window_is_the_familys_diffusers_image(family, case):
    """SD3: CFG with a negative prompt, no CFG at guidance 1, no T5; FLUX: distilled guidance fed to
    the transformer (dev), none (schnell), true CFG with a negative prompt."""
    options = dict(CASES[family][case])
    built = components(family, **({"guidance_embeds": options.pop("guidance_embeds")}
                                  if "guidance_embeds" in options else {}))
    if options.pop("text_encoder_3", "keep") is None:
        built.update(text_encoder_3=None, tokenizer_3=None)
    mine = in_precision((SyncDiffusion3Pipeline if family == "sd3" else SyncDiffusionFluxPipeline)(**built), "float32")
    theirs = (StableDiffusion3Pipeline if family == "sd3" else FluxPipeline)(**built)
    theirs.set_progress_bar_config(disable=True)
    noise = one_window_noise(seed=case + 1)
    canvas = dict(width=WINDOW, height=WINDOW, num_inference_steps=STEPS)
    for output_type in ("latent", "np"):
        image = mine("a land", window=WINDOW, latents=noise, sync_weight=20, output_type=output_type, **canvas,
                     **options).images
        their = theirs("a land", latents=pack(noise) if family == "flux" else noise, output_type=output_type,
                       **canvas, **options).images
        difference = max_difference(image, their, family)
        print(f"{family} {options}: {output_type} max abs difference {difference:.3g}")
        assert difference <= ROUNDING, (output_type, difference)


def test_flux_packing_is_its_own_inverse_and_ids_run_over_the_view():
    latents = torch.randn((3, 4, 6, 8))
    assert torch.equal(unpack(pack(latents), 6, 8), latents)
    ids = position_ids(6, 8, "cpu", torch.float32)
    assert ids.shape == (12, 3) and ids[:, 0].eq(0).all()
    assert ids[-1].tolist() == [0, 2, 3] and ids[4].tolist() == [0, 1, 0]  # row by row, from 0 in every view


# --- synced panoramas ---------------------------------------------------------------------------------

CANVASES = {
    "3 views": dict(width=64, height=32, stride=8),
    "loop-closed": dict(width=64, height=32, stride=8, loop_closure=True),  # 4 views round the circle
    "2-D": dict(width=48, height=48, stride=8),  # 2 x 2 views
}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16", "autocast"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_synced_panorama_of_each_shape_in_each_precision(family, precision):
    pipe = ours(family, precision)
    # float16's CPU kernels are slow: one shape there, every shape in float32 and bfloat16
    shapes = CANVASES if precision in ("float32", "bfloat16") else {"3 views": CANVASES["3 views"]}
    for name, canvas in shapes.items():
        kwargs = dict(**canvas, window=WINDOW, num_inference_steps=2, seed=5)
        synced = pipe("a land", output_type="np", **kwargs).images[0]
        unsynced = pipe("a land", output_type="np", sync_weight=0, **kwargs).images[0]
        assert synced.shape == (canvas["height"], canvas["width"], 3), name
        assert np.isfinite(synced).all() and synced.std() > 0.02, (name, precision)
        assert np.abs(synced - unsynced).max() > 1e-3, f"{name}: sync changed nothing"


def test_a_loop_closed_panorama_wraps_round(pipe):
    family, pipe = pipe
    kwargs = dict(width=64, height=32, window=WINDOW, stride=8, num_inference_steps=2, seed=3, sync_weight=0,
                  output_type="latent")
    closed = pipe("a land", loop_closure=True, **kwargs).images
    open_canvas = pipe("a land", **kwargs).images
    assert (closed - open_canvas).abs().max() > 1e-3  # the views that wrap round change the panorama


# --- the sync step --------------------------------------------------------------------------------------


def foresight(pipe, t, conditioning, sampler, fast=FastModes()):
    """The bound networks of a sync step at t: the guided prediction, x̂₀, the foreseen image."""
    def predict(x):
        return pipe.backbone.guided_prediction(x, t, conditioning, 4.0)

    def original(x, prediction):
        return sampler.predicted_original(x, prediction, t)

    def foreseen(x):
        return pipe.foreseen_image(original(x, predict(x)), fast)

    return predict, original, foreseen


@pytest.mark.parametrize("mode", ["faithful", "no_unet_backward"])
def test_the_sync_step_lowers_the_lpips_distance_to_the_anchor(pipe, mode):
    """For each family: a step along −∇ (faithful: through the transformer; no_unet_backward: v̂
    constant, ∂x̂₀/∂x = 1) brings every view's foreseen image closer to the anchor's than no step."""
    family, pipe = pipe
    noise = torch.randn((1, 4, 16, 48), generator=torch.Generator().manual_seed(11))
    views = views_for_canvas(16, 48, 16, 8)
    anchor = len(views) // 2
    conditioning = pipe.backbone.encode_prompt(["a land"], [""], "cpu", max_sequence_length=32)
    sampler = pipe.backbone.sampler(20, len(views), "cpu")  # shifted for the default window: any schedule will do
    t = sampler.timesteps[0]
    predict, original, foreseen = foresight(pipe, t, conditioning, sampler)
    perceptual = pipe.perceptual_distance()
    with torch.no_grad():
        target = perceptual.target_features(foreseen(crop(noise, views[anchor])) * 2 - 1)
    others = torch.cat([crop(noise, v) for j, v in enumerate(views) if j != anchor])
    models = SyncModels(predict, original, pipe.foreseen_image, lambda images: perceptual(images * 2 - 1, target))
    moved = sync_step(others, 20.0, models, prediction_is_constant=mode == "no_unet_backward").latents

    def distance(x):
        with torch.no_grad():
            return perceptual(foreseen(x) * 2 - 1, target)

    before, after = distance(others), distance(moved)
    assert (moved - others).abs().sum() > 0
    assert torch.all(after < before), (family, before, after)


def test_x0_is_the_latent_minus_sigma_times_the_velocity(pipe):
    _, pipe = pipe
    sampler = pipe.backbone.sampler(4, 1, "cpu")
    t = sampler.timesteps[1]
    sigma = sampler.sigma(t)
    x, v = torch.randn((2, 4, 16, 16)), torch.randn((2, 4, 16, 16))
    torch.testing.assert_close(sampler.predicted_original(x, v, t), x - sigma * v)
    following = sampler.sigmas[2]
    torch.testing.assert_close(sampler.step([0, 1], x, v, t), x + (following - sigma) * v)
    assert 0 < following < sigma < 1


# --- fast modes -----------------------------------------------------------------------------------------


def tiny_decoder():
    torch.manual_seed(0)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).eval()


FAST = {"reuse_noise": dict(fast_modes=["reuse_noise"]), "no_unet_backward": dict(fast_modes=["no_unet_backward"]),
        "sync_image_scale": dict(sync_image_scale=0.5), "sync_decoder": dict(sync_decoder=tiny_decoder())}


@pytest.mark.slow
def test_every_fast_mode_changes_a_synced_panorama_and_still_syncs(pipe):
    family, pipe = pipe
    case = dict(width=64, height=32, window=WINDOW, stride=8, num_inference_steps=2, seed=2, output_type="latent",
                max_sequence_length=32)
    faithful = pipe("a land", **case).images
    multidiffusion = pipe("a land", sync_weight=0, **case).images
    for name, options in FAST.items():
        fast = pipe("a land", **options, **case).images
        assert torch.isfinite(fast).all(), name
        assert (fast - faithful).abs().max() > 1e-4, f"{family} {name} changed nothing"
        assert (fast - multidiffusion).abs().max() > 1e-4, f"{family} {name} no longer syncs"
        assert torch.equal(pipe("a land", sync_weight=0, **options, **case).images, multidiffusion), name


def test_dpm_solver_is_refused_in_one_sentence(pipe):
    _, pipe = pipe
    with pytest.raises(ValueError, match="dpm_solver is for the UNet models' DDPM schedule") as error:
        pipe("a land", window=WINDOW, fast_modes=["dpm_solver"], num_inference_steps=1)
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("control", [False, True])
def test_max_sequence_length_is_a_whole_number_up_to_512(control):
    """diffusers refuses more than 512 T5 tokens; panosync says so in one sentence, before any model work."""
    from panosync.control_flux import ControlSyncFluxPipeline, random_flux_controlnet_like
    from panosync.control_sd3 import ControlSync3Pipeline, random_sd3_controlnet_like

    for family in FAMILIES:
        if control:
            kind, like = ((ControlSync3Pipeline, random_sd3_controlnet_like) if family == "sd3" else
                          (ControlSyncFluxPipeline, random_flux_controlnet_like))
            parts = components(family)
            pipe = kind(**parts, controlnet=like(parts["transformer"]))
        else:
            pipe = ours(family)
        for bad in (0, 513, 32.0, "32", True, None):
            with pytest.raises(ValueError, match=f"^max_sequence_length must be a whole number from 1 to 512 \\(the "
                                                 f"prompt's T5 tokens\\), got {re.escape(repr(bad))}.$"):
                pipe("a land", max_sequence_length=bad, num_inference_steps=1, output_type="latent")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("control", [False, True])
def test_several_views_per_batch_make_the_panorama_one_view_per_batch_makes(family, control):
    """With both guidance branches (SD3's CFG, FLUX's true CFG) and with a ControlNet: each view meets
    its own branch's prompt in the batch (FLUX's embeddings are interleaved, not tiled)."""
    import PIL.Image

    from panosync.control_flux import ControlSyncFluxPipeline, random_flux_controlnet_like
    from panosync.control_sd3 import ControlSync3Pipeline, random_sd3_controlnet_like

    parts = components(family)
    options = dict(negative_prompt="dull", **(dict(guidance_scale=5.0) if family == "sd3" else
                                               dict(true_cfg_scale=2.0)))
    if control:
        kind, like = ((ControlSync3Pipeline, random_sd3_controlnet_like) if family == "sd3" else
                      (ControlSyncFluxPipeline, random_flux_controlnet_like))
        pipe = kind(**parts, controlnet=like(parts["transformer"], seed=1))
        pixels = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
        options["image"] = PIL.Image.fromarray(pixels)
    else:
        pipe = (SyncDiffusion3Pipeline if family == "sd3" else SyncDiffusionFluxPipeline)(**parts)
    # in float64: float32 batches round differently, which the sync gradient amplifies (test_fast_modes)
    pipe = pipe.to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    case = dict(width=64, height=32, window=WINDOW, stride=8, num_inference_steps=2, seed=4, output_type="latent",
                max_sequence_length=32, **options)
    assert len(views_for_canvas(16, 32, WINDOW // 2, 8)) == 3
    one = pipe("a land", view_batch_size=1, **case).images
    several = pipe("a land", view_batch_size=3, **case).images
    assert one.dtype == torch.float64
    torch.testing.assert_close(several, one, rtol=0, atol=1e-9)


# --- the window -----------------------------------------------------------------------------------------


def test_each_family_has_its_default_window_and_takes_others_in_steps_of_its_patch():
    sd3, flux = ours("sd3"), ours("flux")
    assert sd3.window == 16 and flux.window == 128  # SD3: its sample_size; FLUX: 1024 pixels at factor 8
    for pipe in (sd3, flux):
        geometry = pipe.geometry
        assert geometry.with_window(48).window == 24
        with pytest.raises(settings.SettingError, match="window must be a multiple of 4 pixels"):
            geometry.with_window(34)
    # the tiny SD3's position embedding is 16 patches of 2 latents: 64 pixels at factor 2
    with pytest.raises(settings.SettingError, match="at most 64 pixels for this model"):
        settings.check(dict(window=72, width=72, height=72), sd3.geometry)
    canvas = settings.fill_canvas(dict(window=48), flux.geometry)
    assert (canvas["width"], canvas["height"], canvas["stride"]) == (192, 48, 6)  # the chosen window's canvas


def test_a_window_sets_the_views_and_the_dynamic_shift():
    pipe = ours("flux")
    steps = []

    def remember(_, i, t, values):
        steps.append(float(t))

    for window, width in ((32, 96), (48, 96), (32, 192)):
        pipe("a land", window=window, width=width, height=48, num_inference_steps=2, seed=1, output_type="latent",
             max_sequence_length=32, sync_weight=0, callback_on_step_end=remember)
    # more tokens per view, a larger shift: the second step's σ is higher for the larger window ...
    assert steps[1] < steps[3]
    # ... and the shift is one view's, whatever the panorama's size
    assert steps[1] == steps[5]
    assert pipe.window == 128  # the call's window does not outlive it


def test_a_window_is_refused_for_what_it_is():
    """Its type first (the Python API takes any value), and a bound it breaks named as the window's."""
    flux = ours("flux")
    for bad in ("32", 32.0, True):
        with pytest.raises(settings.SettingError, match="window must be a whole number, got"):
            flux("a land", window=bad, num_inference_steps=1, output_type="latent")
    # alone, a large window's default canvas (four windows wide) breaks the canvas limit: the window says so
    with pytest.raises(settings.SettingError, match="window 8192 is too large for the canvas limit: its default "
                                                    "canvas, four windows wide, would be 32768 pixels wide, over "
                                                    "16384; choose a window of at most 4096 pixels, or give width."):
        flux("a land", window=8192, num_inference_steps=1, output_type="latent")
    # below LPIPS's smallest view no sync_image_scale helps: the window's own lower bound
    for pipe in (flux, ours("sd3")):
        with pytest.raises(settings.SettingError, match="^window must be at least 16 pixels"):
            pipe("a land", window=4, width=16, height=4, num_inference_steps=1, output_type="latent")


def test_a_unet_model_takes_only_its_native_window(sync_pipe):
    with pytest.raises(ValueError, match="window must be 32 pixels for this model"):
        sync_pipe("a land", window=64, width=64, height=64, num_inference_steps=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_panorama(family):
    pipe = ours(family)
    case = dict(width=64, height=32, window=WINDOW, stride=8, num_inference_steps=2, seed=2, output_type="latent")
    plain = pipe("a land", **case).images
    pipe.enable_sync_checkpointing()
    assert pipe.transformer.is_gradient_checkpointing
    recomputed = []  # the real checkpointing, counted: it runs in the gradient pass only
    checkpoint = pipe.transformer._gradient_checkpointing_func
    pipe.transformer._gradient_checkpointing_func = lambda *args: recomputed.append(1) or checkpoint(*args)
    torch.testing.assert_close(pipe("a land", **case).images, plain, rtol=0, atol=1e-5)
    assert recomputed
    recomputed.clear()
    pipe("a land", **{**case, "sync_weight": 0})  # no sync: no pass with autograd, nothing checkpointed
    assert not recomputed
    assert not pipe.enable_sync_checkpointing(False).transformer.is_gradient_checkpointing


def test_tiled_decode_tiles_at_the_calls_window(pipe):
    """Tiles are the call's window, not the family's default: a canvas of one 64-pixel window is one
    tile, the one-piece decode exactly (with the VAE's shift and scaling factors); a wider canvas in
    tiles stays close to it."""
    _, pipe = pipe
    case = dict(height=64, window=64, stride=8, num_inference_steps=1, seed=4, sync_weight=0, output_type="np",
                max_sequence_length=32)
    whole = pipe("a land", width=64, tiled_decode=False, **case).images[0]
    tiled = pipe("a land", width=64, tiled_decode=True, **case).images[0]
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    wide = dict(case, width=160)
    whole = pipe("a land", tiled_decode=False, **wide).images[0]
    tiled = pipe("a land", tiled_decode=True, **wide).images[0]
    assert tiled.shape == whole.shape == (64, 160, 3)
    assert 0 < np.abs(tiled - whole).mean() < 0.25 * whole.std()
