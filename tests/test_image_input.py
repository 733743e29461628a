"""Images as inputs in the pipelines (image_input.py): one window with sync off equals each family's
own diffusers img2img and inpainting pipelines for the same generator (the VAE's sample, then the
noise); strength 1 on a flow model is text-to-panorama; an extended image keeps its pixels and its
view is the anchor; loop closure makes an image's edges meet; bad images and masks are one sentence.
Tiny random-weight models (tiny.py)."""

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch

from panosync.backbones.flux import unpack
from panosync.image_input import NEVER, anchor_holding_most, feathered_alpha, inward_ramp, place, release_steps
from panosync.schedulers import first_step_flow, first_step_unet
from panosync.settings import SettingError
from panosync.tiny import tiny_random_components
from panosync.pipeline import SyncDiffusionPipeline
from panosync.views import views_for_canvas

from test_call import KINDS

WINDOW = 32  # pixels: 16 latents at VAE factor 2, every tiny model's
STEPS = 5
# diffusers' img2img keeps the encoded latent channels-last in memory through its loop, where ours
# merges views into a fresh tensor: the UNets' convolutions round differently (inpainting blends
# into a fresh tensor at every step and is equal bit for bit)
LAYOUT_ROUNDING = 1e-5
THEIRS = {
    "sd": ("StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    "sdxl": ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    "sd3": ("StableDiffusion3Img2ImgPipeline", None),  # diffusers' SD3 inpainting needs 16 latent channels
    "flux": ("FluxImg2ImgPipeline", "FluxInpaintPipeline"),
}
# the guidance each family's text pipeline uses by default (diffusers' img2img defaults differ)
GUIDANCE = {"sd": 7.5, "sdxl": 5.0, "sd3": 7.0, "flux": 3.5}


def random_image(size=WINDOW, seed=0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def right_half_mask(size=WINDOW) -> PIL.Image.Image:
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2:] = 255
    return PIL.Image.fromarray(mask)


def pixels(image: PIL.Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image) / 255.0).permute(2, 0, 1).float()


@pytest.fixture(scope="module", params=list(THEIRS))
def family(request):
    name = request.param
    ours_class, _, components = KINDS[name]
    ours = ours_class(**components())
    ours.set_progress_bar_config(disable=True)
    theirs = {}
    for kind, class_name in zip(("img2img", "inpaint"), THEIRS[name]):
        if class_name is None:
            continue
        their_class = getattr(diffusers, class_name)
        required, _ = their_class._get_signature_keys(their_class)
        built = components()
        options = dict(requires_safety_checker=False) if name == "sd" else {}
        theirs[kind] = their_class(**{key: built.get(key) for key in required}, **options)
        theirs[kind].set_progress_bar_config(disable=True)
    return name, ours, theirs


def call_options(name: str, ours: bool) -> dict:
    transformer = {} if name in ("sd", "sdxl") else dict(max_sequence_length=32)
    if ours and name not in ("sd", "sdxl"):
        transformer["window"] = WINDOW
    return dict(num_inference_steps=STEPS, guidance_scale=GUIDANCE[name], output_type="latent", **transformer)


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_one_window_img2img_equals_the_familys_diffusers_pipeline(family, strength):
    name, ours, theirs = family
    image = random_image()
    mine = ours("a land", image=image, strength=strength, generator=torch.Generator().manual_seed(4),
                **call_options(name, True)).images
    their = theirs["img2img"]("a land", image=image, strength=strength, height=WINDOW, width=WINDOW,
                              generator=torch.Generator().manual_seed(4), **call_options(name, False)).images
    if name == "flux":
        their = unpack(their, WINDOW // 2, WINDOW // 2)
    assert mine.shape == their.shape == (1, 4, WINDOW // 2, WINDOW // 2)
    torch.testing.assert_close(mine, their, rtol=LAYOUT_ROUNDING, atol=LAYOUT_ROUNDING * their.abs().max().item())
    if strength == 1 and name in ("sd3", "flux"):
        return  # σ = 1: the image has no weight in the start (the test of text-to-panorama below)
    # the image is what was denoised: another image gives another result
    other = ours("a land", image=random_image(seed=1), strength=strength, generator=torch.Generator().manual_seed(4),
                 **call_options(name, True)).images
    assert (other - mine).abs().max() > 100 * LAYOUT_ROUNDING * their.abs().max()


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_one_window_inpainting_equals_the_familys_diffusers_pipeline(family, strength):
    name, ours, theirs = family
    if "inpaint" not in theirs:
        pytest.skip("diffusers' SD3 inpainting takes 16-channel models only")
    image, mask = random_image(), right_half_mask()
    mine = ours("a land", image=image, mask_image=mask, strength=strength, generator=torch.Generator().manual_seed(4),
                **call_options(name, True)).images
    their = theirs["inpaint"]("a land", image=image, mask_image=mask, strength=strength, height=WINDOW, width=WINDOW,
                              generator=torch.Generator().manual_seed(4), **call_options(name, False)).images
    if name == "flux":
        their = unpack(their, WINDOW // 2, WINDOW // 2)
    assert torch.equal(mine, their)


def test_inpainting_keeps_the_users_pixels_and_matches_diffusers_images():
    pipe = SyncDiffusionPipeline(**tiny_random_components(window=16, vae_factor=2))
    pipe.set_progress_bar_config(disable=True)
    theirs = diffusers.StableDiffusionInpaintPipeline(**{k: v for k, v in pipe.components.items()
                                                         if k not in ("image_encoder", "feature_extractor")},
                                                      safety_checker=None, feature_extractor=None,
                                                      requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    image, mask = random_image(), right_half_mask()
    options = dict(image=image, mask_image=mask, num_inference_steps=STEPS, output_type="pt")
    raw = pipe("a land", generator=torch.Generator().manual_seed(4), paste_back=False, **options).images
    their = theirs("a land", generator=torch.Generator().manual_seed(4), height=WINDOW, width=WINDOW, **options).images
    assert torch.equal(raw, their)
    pasted = pipe("a land", generator=torch.Generator().manual_seed(4), **options).images[0]
    source = pixels(image)
    # kept pixels are the user's own, bit for bit; the painted half is the model's, blended over the feather
    assert torch.equal(pasted[:, :, :16], source[:, :, :16])
    assert torch.equal(pasted[:, :, 16 + 2:], raw[0][:, :, 16 + 2:])
    assert (raw[0][:, :, :16] - source[:, :, :16]).abs().max() > 0.01  # a VAE does not give them back


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_strength_one_on_a_flow_model_is_text_to_panorama(name):
    """σ = 1 at the first step: the image's latent has no weight in the start, and nothing is held."""
    ours_class, _, components = KINDS[name]
    pipe = ours_class(**components())
    pipe.set_progress_bar_config(disable=True)
    options = dict(num_inference_steps=3, window=WINDOW, max_sequence_length=32, output_type="latent",
                   sync_weight=0.0, stride=4)
    blank = PIL.Image.new("RGB", (2 * WINDOW, WINDOW), (0, 0, 0))
    from_image = pipe("a land", image=blank, strength=1.0, generator=torch.Generator().manual_seed(2), **options).images
    generator = torch.Generator().manual_seed(2)
    pipe.vae.encode(torch.zeros(1, 3, WINDOW, 2 * WINDOW)).latent_dist.sample(generator)  # the VAE's draw comes first
    noise = torch.randn((1, 4, WINDOW // 2, WINDOW), generator=generator)
    from_text = pipe("a land", width=2 * WINDOW, height=WINDOW, latents=noise, **options).images
    torch.testing.assert_close(from_image, from_text, rtol=0, atol=1e-6)


def test_an_extended_image_keeps_its_pixels_and_its_view_is_the_anchor():
    pipe = SyncDiffusionPipeline(**tiny_random_components(window=16, vae_factor=2))
    pipe.set_progress_bar_config(disable=True)
    image = random_image()
    anchors = []
    original = pipe.prepare_layout

    def recording(values):
        layout = original(values)
        anchors.append(layout.anchor)
        return layout

    pipe.prepare_layout = recording
    result = pipe("a land", image=image, width=4 * WINDOW, image_at=(0, 0), num_inference_steps=3, seed=1,
                  stride=4, output_type="pt").images[0]
    assert result.shape == (3, WINDOW, 4 * WINDOW)
    # the user's pixels, but for the feather (the VAE factor: 2 pixels) at the border with the painted canvas
    assert torch.equal(result[:, :, :WINDOW - 2], pixels(image)[:, :, :WINDOW - 2])
    assert not torch.equal(result[:, :, WINDOW - 1], pixels(image)[:, :, WINDOW - 1])
    assert anchors == [0]  # the view at the left edge holds the whole image
    pipe("a land", image=image, width=4 * WINDOW, num_inference_steps=2, seed=1, stride=4, output_type="latent")
    views = views_for_canvas(16, 64, 16, 4)
    assert views[anchors[1]].left == 24  # centred: the view holding it, the centre view among equals


def test_release_steps_follow_each_familys_count_and_hold_kept_pixels():
    assert [first_step_unet(10, s) for s in (0.25, 0.3, 0.7, 1.0)] == [8, 7, 3, 0]  # int(10 · s) steps
    assert [first_step_flow(10, s) for s in (0.25, 0.3, 0.7, 1.0)] == [7, 7, 3, 0]  # int(10 − 10 · s) first
    placement = place(random_image(), right_half_mask(), WINDOW, WINDOW, 0.7, None, False)
    release = release_steps(placement, 16, 16, 10, first_step_unet, False, 16)
    assert (release[..., :8] == NEVER).all() and (release[..., 8:] == 3).all()
    # on a larger canvas the outside starts from noise, the image is kept
    placement = place(random_image(), None, 2 * WINDOW, WINDOW, None, (0, 0), False)
    release = release_steps(placement, 16, 32, 10, first_step_unet, False, 16)
    assert (release[..., :16] == NEVER).all() and (release[..., 16:] == 0).all()
    assert anchor_holding_most(views_for_canvas(16, 32, 16, 4), release) == 0


def gradient_image(width=WINDOW, height=WINDOW) -> PIL.Image.Image:
    """Dark on the left, bright on the right: its edges do not meet."""
    row = np.linspace(0, 255, width).astype(np.uint8)
    return PIL.Image.fromarray(np.repeat(np.tile(row, (height, 1))[..., None], 3, axis=2))


def test_with_loop_closure_the_wrap_is_repainted_harder_so_the_edges_can_meet():
    placement = place(gradient_image(), None, WINDOW, WINDOW, 0.3, None, False)
    assert not placement.edges_meet
    release = release_steps(placement, 16, 16, 10, first_step_unet, True, 16)[0, 0, 0]
    plain = release_steps(placement, 16, 16, 10, first_step_unet, False, 16)[0, 0, 0]
    assert (plain == 7).all()
    assert release[0] == release[-1] < 7 and release[8] == 7  # 0.6 at the wrap, the call's 0.3 inside
    assert list(release[:4]) == sorted(release[:4])
    # a panorama whose edges meet already (a loop-closed one) keeps the call's strength everywhere
    rolled = np.roll(np.asarray(gradient_image()), WINDOW // 2, axis=1)
    meeting = np.concatenate([rolled, rolled[:, ::-1]], axis=1)  # up and down again: the ends meet
    placement = place(PIL.Image.fromarray(meeting), None, 2 * WINDOW, WINDOW, 0.3, None, False)
    assert placement.edges_meet
    assert (release_steps(placement, 16, 32, 10, first_step_unet, True, 16) == 7).all()


def test_an_extended_images_border_blends_inwards():
    present = torch.zeros(1, 1, 3, 12)
    present[..., 2:10] = 1
    ramp = inward_ramp(present, 3, loop_closure=False)[0, 0, 1]
    assert ramp.tolist() == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3, 0, 0, 0])
    assert (inward_ramp(torch.ones(1, 1, 4, 6), 3, loop_closure=False) == 1).all()  # the canvas's edge is no border


def test_the_feather_falls_off_linearly_and_wraps():
    kept = torch.zeros(1, 1, 4, 12)
    kept[..., :3] = 1
    alpha = feathered_alpha(kept, 3, loop_closure=True)[0, 0, 0]
    assert alpha[:3].tolist() == [1, 1, 1] and alpha[3:6].tolist() == pytest.approx([0.75, 0.5, 0.25])
    assert alpha[-1] == pytest.approx(0.75)  # round the seam
    assert feathered_alpha(kept, 3, loop_closure=False)[0, 0, 0, -1] == 0


@pytest.mark.parametrize("change, message", [
    (dict(mask_image=PIL.Image.new("L", (WINDOW, WINDOW), 0)), "The mask is all black"),
    (dict(mask_image=PIL.Image.new("RGB", (WINDOW, WINDOW), (255, 0, 0))), "The mask has colours"),
    (dict(mask_image=PIL.Image.new("LA", (WINDOW, WINDOW))), "The mask has transparency"),
    (dict(mask_image=PIL.Image.new("L", (16, 16), 255)), "give a mask of the image's size"),
    (dict(image=PIL.Image.new("RGBA", (WINDOW, WINDOW))), "has transparency"),
    (dict(width=WINDOW, height=WINDOW, image=random_image(size=48), mask_image=None), "larger than the 32x32 canvas"),
    (dict(width=64, image_at=(40, 0)), "runs past the 64x32 canvas"),
    (dict(strength=0.0), "strength must be more than 0 and at most 1"),
    (dict(strength=0.05), "strength 0.05 runs no step of 5"),
    (dict(image=None), "Give image with mask_image"),
])
def test_bad_images_and_masks_are_one_sentence_before_any_model_work(change, message):
    pipe = SyncDiffusionPipeline(**tiny_random_components(window=16, vae_factor=2))
    pipe.set_progress_bar_config(disable=True)
    options = dict(image=random_image(), mask_image=right_half_mask(), num_inference_steps=5, output_type="latent")
    with pytest.raises(ValueError, match=message):
        pipe("a land", **{**options, **change})


def test_resize_image_fits_the_canvas_keeping_the_aspect_ratio():
    placement = place(random_image(size=16), None, 64, 32, None, None, True)
    assert placement.box == (16, 0, 32, 32) and placement.holds  # scaled to the height, centred, the rest painted
    # a border of two latent pixels or less is not worth painting: stretched (an upscale rounded to the factor)
    wide = PIL.Image.new("RGB", (256, 64))
    assert place(wide, None, 360, 88, 0.2, None, True, vae_factor=4).box == (0, 0, 360, 88)
    assert not place(wide, None, 360, 88, 0.2, None, True, vae_factor=4).holds
    assert place(wide, None, 360, 88, 0.2, None, True, vae_factor=2).box == (4, 0, 352, 88)
    with pytest.raises(SettingError, match="larger than the 16x16 canvas"):
        place(random_image(), None, 16, 16, None, None, False)


def inpainting_components() -> dict:
    """Tiny SD components whose UNet is an inpainting one: 9 input channels (latents, mask, masked image)."""
    components = tiny_random_components(window=16, vae_factor=2)
    torch.manual_seed(1)
    components["unet"] = diffusers.UNet2DConditionModel.from_config({**components["unet"].config, "in_channels": 9})
    return components


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_a_9_channel_inpainting_unet_equals_diffusers_inpainting_pipeline(strength):
    pipe = SyncDiffusionPipeline(**inpainting_components())
    pipe.set_progress_bar_config(disable=True)
    theirs = diffusers.StableDiffusionInpaintPipeline(**inpainting_components(), safety_checker=None,
                                                      feature_extractor=None, requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    image, mask = random_image(), right_half_mask()
    options = dict(image=image, mask_image=mask, strength=strength, num_inference_steps=STEPS, output_type="latent")
    mine = pipe("a land", generator=torch.Generator().manual_seed(4), **options).images
    their = theirs("a land", generator=torch.Generator().manual_seed(4), height=WINDOW, width=WINDOW,
                   **options).images
    assert mine.shape == (1, 4, 16, 16) and torch.equal(mine, their)
    # the mask reaches the UNet: another mask, another result
    other = pipe("a land", generator=torch.Generator().manual_seed(4),
                 **{**options, "mask_image": PIL.Image.new("L", (WINDOW, WINDOW), 255)}).images
    assert (other - mine).abs().max() > 0.01
    # a panorama of three views: each view reads its own crop of the mask
    wide = pipe("a land", image=random_image(), mask_image=right_half_mask(), width=2 * WINDOW, image_at=(0, 0),
                num_inference_steps=2, seed=1, stride=8, sync_weight=0.0, output_type="latent").images
    assert wide.shape == (1, 4, 16, 32) and torch.isfinite(wide).all()
    with pytest.raises(ValueError, match="This is an inpainting model"):
        pipe("a land", num_inference_steps=2)


class ArithmeticSampler:
    """timesteps 0, 100, ... 900 (one per step); a latent noised to t is t itself."""

    timesteps = torch.arange(10) * 100
    init_noise_sigma = 1.0

    def noised(self, clean, noise, t):
        return torch.full_like(clean, float(t))


def test_a_pixel_let_go_at_step_r_enters_step_r_noised_to_its_timestep():
    from panosync.image_input import ImageStart

    start = ImageStart(clean=torch.zeros(1, 1, 1, 3), noise=torch.zeros(1, 1, 1, 3),
                       release=torch.tensor([[[[0, 5, NEVER]]]]), first_step=0, from_noise=False, pixels=None, alpha=None)
    sampler = ArithmeticSampler()
    latents = start.start_latents(sampler)
    entering = []
    for i in range(10):
        entering.append(latents[0, 0, 0].tolist())
        latents = start.hold(torch.full_like(latents, -1.0), i, sampler)  # -1: what a denoising step made
    assert entering[5] == [-1, 500, 500] and entering[4] == [-1, 400, 400] and entering[6] == [-1, -1, 600]
    assert latents[0, 0, 0].tolist() == [-1, -1, 0]  # after the last step, the kept pixel is the clean latent


def test_the_sync_schedule_counts_the_steps_an_image_input_skips():
    """strength 0.5 of 10 steps runs steps 5 to 9: sync_threshold 3 syncs none of them, and the weight
    decays from step 5's."""
    pipe = SyncDiffusionPipeline(**tiny_random_components(window=16, vae_factor=2))
    pipe.set_progress_bar_config(disable=True)
    weights = []

    def record(pipe, i, t, kwargs):
        weights.append(kwargs["sync_weight"])

    options = dict(image=PIL.Image.new("RGB", (64, 32), (90, 120, 150)), strength=0.5, num_inference_steps=10,
                   stride=8, seed=1, output_type="latent", callback_on_step_end=record)
    pipe("a land", sync_threshold=3, **options)
    assert weights == [0.0] * 5
    weights.clear()
    pipe("a land", sync_weight=10.0, sync_threshold=6, sync_decay_rate=0.5, **options)
    assert weights == [10.0 * 0.5 ** 5, 0.0, 0.0, 0.0, 0.0]


def test_a_mask_that_paints_no_latent_pixel_is_one_sentence():
    pipe = SyncDiffusionPipeline(**tiny_random_components(window=16, vae_factor=2))
    stripes = np.zeros((WINDOW, WINDOW), np.uint8)
    stripes[:, 1::2] = 255  # one-pixel stripes, between the latent grid's samples
    with pytest.raises(ValueError, match="Nothing is painted at the model's resolution"):
        pipe("a", image=random_image(), mask_image=PIL.Image.fromarray(stripes), num_inference_steps=3)
    with pytest.raises(ValueError, match="strength is an image input's setting: give image"):
        pipe("a", strength=0.5, num_inference_steps=3)
    with pytest.raises(ValueError, match="image_at is an image input's setting"):
        pipe("a", image_at=(0, 0), num_inference_steps=3)
