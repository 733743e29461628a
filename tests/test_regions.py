"""Region prompts in the pipelines (regions.py): a region over the whole canvas is its prompt's
panorama on every family (ControlSync's included); no regions is today's panorama; a batch's
(view, prompt) pairs go through the network together, only those a view needs; the prediction is
the weighted mean of the prompts'; bootstrapping; the sync loss's pixel weights; the anchor; bad
regions are one sentence before any model work. Tiny random-weight models (tiny.py)."""

import numpy as np
import PIL.Image
import pytest
import torch

from panosync.control import ControlSyncPipeline, random_controlnet_like
from panosync.lpips import PerceptualDistance
from panosync.regions import (Bootstrap, RegionalPrediction, feather, main_prompt, parse_region_option, plan_regions,
                              region_anchor, split_region_option, sync_pixel_weights)
from panosync.settings import SettingError
from panosync.views import View, crop, views_for_canvas

from test_call import KINDS, canvas

STEPS = 3


@pytest.fixture(scope="module", params=list(KINDS))
def family(request):
    ours, _, components = KINDS[request.param]
    # float64: a synced region panorama and the plain one differ only in the rounding of their backwards
    pipe = ours(**components()).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe


def options(pipe, **extra):
    return dict(canvas(pipe), num_inference_steps=STEPS, seed=3, output_type="np", **extra)


@pytest.mark.parametrize("sync_weight", [0.0, 5.0])
def test_a_region_over_the_whole_canvas_is_its_prompts_panorama(family, sync_weight):
    """With region_base 0 (each region's prompt alone): the prompt is nowhere."""
    name, pipe = family
    plain = pipe("snowy mountains", **options(pipe, sync_weight=sync_weight)).images
    region = pipe("a city at night", regions=[{"box": [0, 0, 64, 32], "prompt": "snowy mountains"}], region_base=0.0,
                  **options(pipe, sync_weight=sync_weight)).images
    if sync_weight == 0:
        assert np.array_equal(plain, region)
    else:
        assert np.abs(plain - region).max() < 1e-9
    if sync_weight == 0:  # what the prompt changes, once
        other = pipe("a city at night", **options(pipe, sync_weight=sync_weight)).images
        assert np.abs(other - region).max() > 1e-3  # the background's prompt is nowhere
        based = pipe("a city at night", regions=[{"box": [0, 0, 64, 32], "prompt": "snowy mountains"}],
                     **options(pipe, sync_weight=sync_weight)).images
        assert np.abs(based - region).max() > 1e-3  # by default (region_base 0.15) it reaches into the region


def test_no_regions_is_the_panorama_of_today(sync_pipe):
    """No regions runs the plain prediction (the families' own tests pin it to diffusers'), whatever
    region_base says."""
    settings = dict(width=64, height=32, num_inference_steps=STEPS, seed=3, output_type="np", sync_weight=5.0)
    today = sync_pipe("snowy mountains", **settings).images
    for empty in ([], None):
        assert np.array_equal(today, sync_pipe("snowy mountains", regions=empty, region_base=0.7, **settings).images)


def test_a_region_changes_only_the_views_it_reaches_into(sync_pipe):
    """One step on a 4-window canvas with a region on its right quarter (latent columns 48 on, its
    feathered edge from 46): only views that reach column 46 read the region's prompt, so the
    latents left of them (before column 31) are the plain panorama's, and the region's differ."""
    settings = dict(width=128, height=32, num_inference_steps=1, seed=3, output_type="latent", sync_weight=0.0)
    plain = sync_pipe("snowy mountains", **settings).images
    region = sync_pipe("snowy mountains", regions=[{"box": [96, 0, 128, 32], "prompt": "a red city"}],
                       **settings).images
    assert torch.equal(plain[..., :31], region[..., :31])
    assert (plain[..., 48:] - region[..., 48:]).abs().mean() > 1e-3  # a tiny random model's prompts differ little


class NetworkCalls:
    """Counts the denoising network's calls and the items in each."""

    def __init__(self, network):
        self.sizes = []
        self.handle = network.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        latents = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self.sizes.append(latents.shape[0])

    def close(self):
        self.handle.remove()


def test_each_batch_runs_the_prompts_its_views_need_in_one_network_call(sync_pipe):
    """Two regions at the ends of a 4-window canvas: every step is one UNet call (all views in one
    batch) holding each view once per prompt that reaches into it, not every view with every prompt."""
    regions = [{"box": [0, 0, 24, 32], "prompt": "a sea"}, {"box": [104, 0, 128, 32], "prompt": "a city"}]
    settings = dict(width=128, height=32, num_inference_steps=STEPS, seed=3, output_type="np", sync_weight=0.0,
                    view_batch_size=100)
    calls = NetworkCalls(sync_pipe.unet)
    try:
        sync_pipe("hills", regions=regions, **settings)
    finally:
        calls.close()
    plan = plan_regions(regions, 128, 32, 2, 16, False).with_base(0.15)  # the default region_base
    views = views_for_canvas(16, 64, 16, 4)
    pairs = sum(len(plan.prompts_of(view)) for view in views)
    assert len(views) < pairs < 3 * len(views)
    assert calls.sizes == [2 * pairs] * STEPS  # both guidance branches in one call per step


def test_the_prediction_is_the_weighted_mean_of_the_prompts():
    plan = plan_regions([{"box": [0, 0, 16, 16], "prompt": "a", "weight": 3.0}], 32, 16, 2, 8, False)
    views = [View(0, 0, 8, 8), View(0, 8, 8, 8)]
    # each prompt predicts a constant: its row number + 1 (panorama 0's own prompt is row 0)
    predict_rows = lambda x, t, item_views, rows: torch.cat([torch.full_like(x[:1], row + 1.0) for row in rows])
    predicted = RegionalPrediction(plan, predict_rows, panoramas=1)(torch.zeros(2, 4, 8, 8), 10, views)
    for n, view in enumerate(views):
        background, region = crop(plan.weights[0], view), crop(plan.weights[1], view)
        expected = (background * 1 + region * 2) / (background + region)
        assert torch.allclose(predicted[n, 0], expected)
    assert predicted[0, 0, 0, 0] == 2  # inside the region: its prompt alone
    assert predicted[1, 0, 0, -1] == 1  # far from it: the background's


def test_bootstrapping_puts_a_flat_noised_colour_around_the_region():
    plan = plan_regions([{"box": [0, 0, 8, 16], "prompt": "a"}], 32, 16, 2, 8, False)
    colours = torch.tensor([[[5.0, 5.0, 5.0, 5.0]]])  # one step, one region
    noise = torch.zeros(1, 4, 8, 16)
    bootstrap = Bootstrap(plan.masks, colours, noise, [torch.tensor(7)], noised=lambda clean, noise, t: clean + noise)
    seen = {}

    def predict_rows(x, t, views, rows):
        seen[t] = x.clone()
        return torch.zeros_like(x)

    predict = RegionalPrediction(plan, predict_rows, panoramas=1, bootstrap=bootstrap)
    x = torch.ones(1, 4, 8, 8)
    for t in (7, 3):  # a bootstrapped step, then one that is not
        predict(x, t, [View(0, 0, 8, 8)])
    region_input = seen[7][-1, 0]  # the region's item comes after the background's
    mask = crop(plan.masks[0], View(0, 0, 8, 8))
    assert torch.allclose(region_input, mask + 5 * (1 - mask))
    assert region_input[0, 0] == 1 and region_input[0, -1] == 5
    assert torch.equal(seen[3][-1], x[0])


def test_feathered_masks_ramp_across_an_edge_and_keep_the_canvas_edges():
    box = torch.zeros(1, 4, 16)
    box[..., 8:] = 1
    ramp = feather(box, 2, loop_closure=False)[0, 0]
    assert ramp[:4].eq(0).all() and ramp[-4:].eq(1).all()
    assert (ramp[3:13].diff() > 0).all()  # a tent-smoothed ramp across the edge, two radii each side
    assert torch.equal(feather(torch.ones(1, 4, 16), 2, False), torch.ones(1, 4, 16))
    wrapped = feather(box, 2, loop_closure=True)[0, 0]
    assert 0 < wrapped[0] < 1 and 0 < wrapped[-1] < 1  # the seam is an edge too


def test_sync_counts_the_pixels_of_the_anchors_prompt():
    plan = plan_regions([{"box": [48, 0, 64, 16], "prompt": "a"}], 64, 16, 2, 8, False)
    views = views_for_canvas(8, 32, 8, 2)
    anchor = region_anchor(views, plan)
    assert main_prompt(plan, views[anchor]) == 0 and crop(plan.share(0), views[anchor]).min() == 1
    far, near = views[0], views[-1]
    weights = sync_pixel_weights(plan, [far, near], 16, "same_prompt", 0)
    assert weights[0].min() == 1  # the first view is all background
    assert weights[1][..., 8:].max() == 0 and weights[1].mean() < 0.1  # the last lies in the region but its edge
    assert sync_pixel_weights(plan, [far, near], 16, "whole", 0) is None
    outside = sync_pixel_weights(plan, [far, views[-4]], 16, "outside", 0)
    assert outside[0].min() == 1 and outside[1].max() == 0  # a view the region reaches into is not synced


def test_lpips_pixel_weights_of_one_are_lpips_and_of_zero_nothing():
    lpips = PerceptualDistance("vgg")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    target = lpips.target_features(images[:1].flip(-1))
    plain = lpips(images, target)
    assert torch.allclose(lpips(images, target, pixel_weights=torch.ones(2, 1, 32, 32)), plain)
    assert lpips(images, target, pixel_weights=torch.zeros(2, 1, 32, 32)).abs().max() == 0
    half = torch.zeros(2, 1, 32, 32)
    half[..., 16:] = 1
    assert (lpips(images, target, pixel_weights=half) < plain).all()


def test_the_default_anchor_is_the_view_with_the_most_background(sync_pipe):
    chosen = {}
    original = sync_pipe.prepare_layout

    def recording(values):
        chosen["layout"] = original(values)
        return chosen["layout"]

    sync_pipe.prepare_layout = recording
    try:
        sync_pipe("hills", width=128, height=32, num_inference_steps=1, sync_weight=0.0, output_type="latent",
                  regions=[{"box": [48, 0, 128, 32], "prompt": "a city"}])
    finally:
        del sync_pipe.prepare_layout
    layout = chosen["layout"]
    assert layout.views[layout.anchor].right <= 24  # wholly left of the region: of the background alone


def test_controlsync_takes_regions(sync_pipe):
    pipe = ControlSyncPipeline(**sync_pipe.components, controlnet=random_controlnet_like(sync_pipe.unet, 2))
    pipe.set_progress_bar_config(disable=True)
    condition = PIL.Image.new("RGB", (64, 32), (128, 40, 200))
    settings = dict(image=condition, width=64, height=32, num_inference_steps=STEPS, seed=3, output_type="np",
                    sync_weight=0.0)
    plain = pipe("snowy mountains", **settings).images
    region = pipe("a city", regions=[{"box": [0, 0, 64, 32], "prompt": "snowy mountains"}], region_base=0.0,
                  **settings).images
    assert np.array_equal(plain, region)


def mask_image(width, height, box=None):
    mask = np.zeros((height, width), np.uint8)
    if box:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = 255
    return PIL.Image.fromarray(mask)


def test_a_mask_region_equals_the_box_it_paints(sync_pipe):
    settings = dict(width=64, height=32, num_inference_steps=STEPS, seed=3, output_type="np", sync_weight=0.0)
    box = sync_pipe("hills", regions=[{"box": [32, 0, 64, 32], "prompt": "a city"}], **settings).images
    mask = sync_pipe("hills", regions=[{"mask": mask_image(64, 32, (32, 0, 64, 32)), "prompt": "a city"}],
                     **settings).images
    assert np.array_equal(box, mask)


BAD = [
    ([{"box": [0, 0, 80, 32], "prompt": "a"}], "reaches outside the 64×32 canvas"),
    ([{"box": [10, 0, 10, 32], "prompt": "a"}], "is empty"),
    ([{"box": [0, 0, 32], "prompt": "a"}], "four whole pixels"),
    ([{"mask": mask_image(32, 32, (0, 0, 8, 8)), "prompt": "a"}], "must be the canvas's size, 64×32"),
    ([{"mask": mask_image(64, 32), "prompt": "a"}], "all black: paint the region white"),
    ([{"box": [0, 0, 64, 32], "prompt": "a", "weight": 0}], "weights add up to 0"),
    ([{"box": [0, 0, 64, 32], "prompt": "a", "weight": 0}, {"box": [0, 0, 32, 32], "prompt": "b", "weight": 0}],
     "weights add up to 0"),
    ([{"box": [0, 0, 8, 8], "prompt": "a", "weight": -1}], "weight must be a number from 0 to 10"),
    ([{"box": [0, 0, 8, 8], "prompt": "  "}], "prompt must be a non-empty text"),
    ([{"box": [0, 0, 8, 8]}], "has no prompt"),
    ([{"box": [0, 0, 8, 8], "prompt": "a", "colour": "red"}], "unknown keys colour"),
    ([{"prompt": "a"}], "needs a box or a mask"),
    ([{"box": [0, 0, 8, 8], "mask": mask_image(64, 32, (0, 0, 8, 8)), "prompt": "a"}], "needs a box or a mask"),
    ([{"box": [0, 0, 8, 8], "prompt": "a"}] * 17, "17 regions are more than 16"),
    ("a city", "regions must be a list"),
    (["a city"], "Region 1 must be a dict"),
]


@pytest.mark.parametrize("regions, message", BAD)
def test_bad_regions_are_one_sentence_before_any_model_work(sync_pipe, regions, message):
    def no_network(*args, **kwargs):
        raise AssertionError("the network ran")

    handle = sync_pipe.unet.register_forward_pre_hook(no_network)
    try:
        with pytest.raises(SettingError, match=message) as raised:
            sync_pipe("hills", width=64, height=32, num_inference_steps=1, regions=regions)
    finally:
        handle.remove()
    assert raised.value.field == "regions"
    assert str(raised.value).count(". ") == 0  # one sentence


def test_the_region_option_reads_box_prompt_and_weight():
    assert parse_region_option("0,0,512,64=a calm sea") == dict(box=[0, 0, 512, 64], prompt="a calm sea", weight=1.0)
    assert parse_region_option("1,2,3,4=a city: at night:2.5") == dict(box=[1, 2, 3, 4], prompt="a city: at night",
                                                                      weight=2.5)
    assert split_region_option("masks/sea.png=sea", "MASK.png") == ("masks/sea.png", "sea", 1.0)
    for bad in ("0,0,512=a sea", "a sea", "0,0,1,1=", "x,0,1,1=a"):
        with pytest.raises(SettingError):
            parse_region_option(bad)


def test_region_base_gives_the_prompt_a_share_inside_the_regions(sync_pipe):
    """region_base 1 is the prompt's panorama, 0 the region's alone; between, both prompts run."""
    settings = dict(width=64, height=32, num_inference_steps=STEPS, seed=3, output_type="np", sync_weight=0.0)
    whole = [{"box": [0, 0, 64, 32], "prompt": "a city"}]
    prompt_alone = sync_pipe("hills", **settings).images
    region_alone = sync_pipe("a city", **settings).images
    assert np.array_equal(sync_pipe("hills", regions=whole, region_base=1.0, **settings).images, prompt_alone)
    assert np.array_equal(sync_pipe("hills", regions=whole, region_base=0.0, **settings).images, region_alone)
    mixed = sync_pipe("hills", regions=whole, region_base=0.3, **settings).images
    assert np.abs(mixed - prompt_alone).max() > 1e-3 and np.abs(mixed - region_alone).max() > 1e-3
    plan = plan_regions([{"box": [0, 0, 16, 16], "prompt": "a", "weight": 2.0}], 32, 16, 2, 8, False)
    based = plan.with_base(0.25)
    assert torch.allclose(based.weights[1], plan.weights[1] * 0.75)
    assert torch.allclose(based.weights.sum(0), plan.weights.sum(0))  # the same total: only shares move
    with pytest.raises(SettingError, match="region_base must be from 0 to 1"):
        sync_pipe("hills", regions=whole, region_base=1.5, **settings)


def test_a_region_takes_the_calls_negative_prompt_only_where_it_is_one_text(sync_pipe):
    settings = dict(width=64, height=32, num_inference_steps=1, seed=3, output_type="latent", sync_weight=0.0)
    region = [{"box": [32, 0, 64, 32], "prompt": "a city"}]
    for negatives in (dict(negative_prompt=["fog", "rain"]),
                      dict(negative_prompt_embeds=torch.zeros(2, 77, 32, dtype=torch.float64))):
        with pytest.raises(SettingError, match="give every region its negative_prompt"):
            sync_pipe(["hills", "sea"], regions=region, **negatives, **settings)
    own = [{**region[0], "negative_prompt": "smoke"}]
    noise = torch.randn(2, 4, 16, 32, generator=torch.Generator().manual_seed(0))
    both = sync_pipe(["hills", "sea"], negative_prompt=["fog", "rain"], regions=own, latents=noise,
                     **settings).images
    alone = sync_pipe("sea", negative_prompt="rain", regions=own, latents=noise[1:], **settings).images
    assert torch.allclose(both[1:], alone, atol=1e-12)


def test_the_region_option_keeps_a_prompts_colon_unless_a_plain_number_follows():
    assert parse_region_option("0,0,8,8=a clock at 12:30:1") == dict(box=[0, 0, 8, 8], prompt="a clock at 12:30",
                                                                      weight=1.0)
    assert parse_region_option("0,0,8,8=ratio 1:inf")["prompt"] == "ratio 1:inf"
    with pytest.raises(SettingError, match=r"add ':1' after it"):
        parse_region_option("0,0,8,8=a clock at 12:30")
