import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPanoramaPipeline

from panosync.pipeline import SyncDiffusionPipeline
from panosync.sync import SyncSchedule, sync_gradient
from panosync.views import crop, views_for_canvas
from reference_loop import reference_panorama


def noise_for(pipe, width, height, seed=0):
    shape = (1, 4, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --- MultiDiffusion: sync_weight = 0 is diffusers' panorama pipeline ---------------------------


@pytest.mark.slow
def test_sync_weight_zero_equals_diffusers_panorama_pipeline(sd_shaped_pipe):
    pipe = sd_shaped_pipe
    multidiffusion = StableDiffusionPanoramaPipeline(
        **pipe.components, safety_checker=None, requires_safety_checker=False
    )
    multidiffusion.set_progress_bar_config(disable=True)
    noise = noise_for(pipe, 1024, 512, seed=3)
    ours = pipe("a land", width=1024, height=512, stride=8, sync_weight=0, num_inference_steps=3,
                latents=noise, view_batch_size=1, output_type="latent").images  # diffusers' default batch
    theirs = multidiffusion("a land", width=1024, height=512, num_inference_steps=3, latents=noise,
                            output_type="latent").images
    assert ours.shape == theirs.shape == (1, 4, 64, 128)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_sync_threshold_zero_is_multidiffusion_too(small_pipe):
    kwargs = dict(width=48, height=16, stride=4, num_inference_steps=3, seed=5, output_type="latent")
    plain = small_pipe("a", sync_weight=0, **kwargs).images
    # no LPIPS is needed when no step syncs: this call would load it otherwise
    never = small_pipe("a", sync_weight=20, sync_threshold=0, **kwargs).images
    assert torch.equal(plain, never)


# --- Faithful mode: the reference implementation's panorama ------------------------------------

REFERENCE_CASE = dict(width=80, height=32, stride=8, num_inference_steps=4, sync_weight=20.0, sync_decay_rate=0.9,
                      sync_threshold=3)


@pytest.mark.slow
def test_faithful_mode_reproduces_the_reference_loop(sync_pipe):
    noise = noise_for(sync_pipe, 80, 32, seed=3)
    reference = reference_panorama(sync_pipe, "a land", "", noise=noise, **REFERENCE_CASE)
    ours = sync_pipe("a land", latents=noise, output_type="latent", view_batch_size=1, **REFERENCE_CASE).images
    unsynced = sync_pipe("a land", latents=noise, output_type="latent", **{**REFERENCE_CASE, "sync_weight": 0}).images
    assert (reference - unsynced).abs().max() > 0.1  # sync changed the result ...
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)  # ... exactly as the reference does


@pytest.mark.slow
def test_faithful_loop_closure_reproduces_the_reference_loop_round_the_circle(sync_pipe):
    # The reference code has no loop closure; its loop with views that wrap (column indices modulo the
    # width) is what loop-closed SyncDiffusion means, and faithful mode must be exactly that.
    case = {**REFERENCE_CASE, "width": 96, "stride": 12}  # 48 latent columns: views at 0, 12, 24, 36; the last wraps
    noise = noise_for(sync_pipe, 96, 32, seed=5)
    reference = reference_panorama(sync_pipe, "a land", "", noise=noise, loop_closure=True, **case)
    ours = sync_pipe("a land", latents=noise, output_type="latent", view_batch_size=1, loop_closure=True,
                     **case).images
    open_canvas = reference_panorama(sync_pipe, "a land", "", noise=noise, **case)
    assert (reference - open_canvas).abs().max() > 0.1  # the wrapping views change the result ...
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)  # ... exactly as the reference does


@pytest.mark.slow
def test_batching_views_changes_nothing_but_rounding(sync_pipe):
    noise = noise_for(sync_pipe, 80, 32, seed=3)
    one = sync_pipe("a land", latents=noise, output_type="latent", view_batch_size=1, **REFERENCE_CASE).images
    many = sync_pipe("a land", latents=noise, output_type="latent", view_batch_size=3, **REFERENCE_CASE).images
    torch.testing.assert_close(many, one, rtol=0, atol=2e-3)


def test_sync_step_moves_views_towards_the_anchor(sync_pipe):
    pipe = sync_pipe
    noise = noise_for(pipe, 96, 32, seed=11)
    views = views_for_canvas(16, 48, pipe.window, 8)
    embeddings = pipe.backbone.encode_prompt(["a land"], [""], "cpu")
    pipe.scheduler.set_timesteps(20)
    t = pipe.scheduler.timesteps[0]

    def predicted_image(x):
        noise_pred = pipe.backbone.guided_prediction(x, t, embeddings, 7.5)
        return pipe.decode_to_unit(pipe.scheduler.step(noise_pred, t, x).pred_original_sample)

    perceptual = pipe.perceptual_distance()
    with torch.no_grad():
        target = perceptual.target_features(predicted_image(crop(noise, views[len(views) // 2])) * 2 - 1)
    others = torch.cat([crop(noise, v) for j, v in enumerate(views) if j != len(views) // 2])

    def distance(x):
        with torch.no_grad():
            return perceptual(predicted_image(x) * 2 - 1, target)

    gradient, _ = sync_gradient(others, predicted_image, lambda images: perceptual(images * 2 - 1, target))
    before, after = distance(others), distance(others - 20 * gradient)
    assert gradient.abs().sum() > 0
    assert torch.all(after < before), (before, after)


def test_sync_schedule_follows_the_definitions():
    schedule = SyncSchedule(weight=20, decay_rate=0.5, freq=2, threshold=5)
    assert [schedule.is_active(i) for i in range(7)] == [False, True, False, True, False, False, False]
    assert schedule.weight_at(1) == 10 and schedule.weight_at(3) == 2.5 and schedule.weight_at(2) == 0
    assert all(SyncSchedule(weight=20).is_active(i) for i in range(100))  # no threshold: every step
    assert not any(SyncSchedule(weight=0).is_active(i) for i in range(10))


# --- Seeds ---------------------------------------------------------------------------------------


def test_same_seed_same_panorama_different_seed_different(small_pipe):
    kwargs = dict(width=48, height=16, stride=4, num_inference_steps=2, sync_weight=0, output_type="np")
    first = small_pipe("a land", seed=7, **kwargs)
    again = small_pipe("a land", seed=7, **kwargs)
    other = small_pipe("a land", seed=8, **kwargs)
    assert first.seed == 7 and np.array_equal(first.images, again.images)
    assert np.abs(first.images - other.images).max() > 1e-3


def test_synced_panorama_is_deterministic(sync_pipe):
    kwargs = dict(width=64, height=32, stride=8, num_inference_steps=2, sync_weight=20, output_type="latent")
    assert torch.equal(sync_pipe("a", seed=1, **kwargs).images, sync_pipe("a", seed=1, **kwargs).images)


def test_seed_draws_the_reference_noise(small_pipe):
    seen = {}

    def keep_first(pipe, step, t, state):
        seen.setdefault("latents", state["latents"])

    # one step of DDIM from the reference's draw, checked through the initial noise it started from
    small_pipe("a", width=32, height=16, stride=4, num_inference_steps=1, sync_weight=0, seed=42, output_type="latent",
               callback_on_step_end=keep_first)
    torch.manual_seed(42)
    reference_draw = torch.randn((1, 4, 8, 16))
    replayed = small_pipe("a", width=32, height=16, stride=4, num_inference_steps=1, sync_weight=0,
                          latents=reference_draw, output_type="latent").images
    assert torch.equal(seen["latents"], replayed)


def test_random_seed_is_reported_and_reproduces(small_pipe):
    kwargs = dict(width=32, height=16, stride=4, num_inference_steps=2, sync_weight=0, output_type="np")
    first = small_pipe("a", **kwargs)
    assert isinstance(first.seed, int)
    assert np.array_equal(small_pipe("a", seed=first.seed, **kwargs).images, first.images)


def test_negative_prompt_and_guidance_change_the_result(small_pipe):
    kwargs = dict(width=32, height=16, stride=4, num_inference_steps=2, sync_weight=0, seed=3, output_type="latent")
    base = small_pipe("a land", **kwargs).images
    assert not torch.equal(base, small_pipe("a land", negative_prompt="night", **kwargs).images)
    assert not torch.equal(base, small_pipe("a land", **{**kwargs, "guidance_scale": 2.0}).images)


# --- Canvases and outputs ------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", [(48, 16), (16, 48), (40, 40), (34, 18), (16, 16)])
def test_horizontal_vertical_2d_and_odd_canvases(small_pipe, width, height):
    out = small_pipe("a", width=width, height=height, stride=3, num_inference_steps=1, sync_weight=0, seed=0,
                     output_type="np")
    assert out.images.shape == (1, height, width, 3)
    assert np.isfinite(out.images).all() and 0 <= out.images.min() and out.images.max() <= 1


def test_output_types(small_pipe):
    kwargs = dict(width=32, height=16, stride=4, num_inference_steps=1, sync_weight=0, seed=0)
    pil = small_pipe("a", **kwargs).images
    array = small_pipe("a", output_type="np", **kwargs).images
    latent = small_pipe("a", output_type="latent", **kwargs).images
    assert pil[0].size == (32, 16) and array.shape == (1, 16, 32, 3) and latent.shape == (1, 4, 8, 16)
    assert np.array_equal(np.asarray(pil[0]), (array[0] * 255).round().astype(np.uint8))
    images, seed = small_pipe("a", return_dict=False, **kwargs)
    assert seed == 0 and images[0].size == (32, 16)


def test_callback_sees_every_step_and_which_steps_sync(sync_pipe):
    # sync every 2nd step, in the first 3, with a weight halving each step: only step 1 syncs
    steps = []
    sync_pipe("a", width=64, height=32, stride=8, num_inference_steps=4, sync_weight=10.0, sync_decay_rate=0.5,
              sync_freq=2, sync_threshold=3, seed=0, output_type="latent",
              callback_on_step_end=lambda p, i, t, s: steps.append((i, s["sync_weight"])))
    assert steps == [(0, 0.0), (1, 5.0), (2, 0.0), (3, 0.0)]


def test_anchor_can_be_chosen(sync_pipe):
    kwargs = dict(width=64, height=32, stride=8, num_inference_steps=1, seed=2, output_type="latent")
    centre = sync_pipe("a", **kwargs).images
    assert torch.equal(centre, sync_pipe("a", anchor=1, **kwargs).images)  # 3 views: the centre is 1
    assert not torch.equal(centre, sync_pipe("a", anchor=0, **kwargs).images)


# --- Loop closure ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sync_weight", [0.0, 20.0])
def test_loop_closed_diffusion_treats_the_seam_like_any_other_place(sync_pipe, sync_weight):
    # On a circle every place is alike: turning the initial noise turns the panorama by as much.
    # A missing wrap view, or a seam covered by fewer views, breaks this.
    kwargs = dict(width=96, height=32, stride=4, num_inference_steps=3, sync_weight=sync_weight, output_type="latent",
                  loop_closure=True, view_batch_size=1)  # turned, the views would batch in other company
    noise = noise_for(sync_pipe, 96, 32, seed=9)
    views = views_for_canvas(16, 48, sync_pipe.window, 4, loop_closure=True)
    shift = 5 * 4  # five strides: the anchor moves with the content
    result = sync_pipe("a", latents=noise, anchor=len(views) // 2, **kwargs).images
    turned = sync_pipe("a", latents=noise.roll(shift, dims=-1), anchor=len(views) // 2 + 5, **kwargs).images
    torch.testing.assert_close(turned, result.roll(shift, dims=-1), rtol=0, atol=2e-4)


@pytest.mark.parametrize("height", [32, 48])  # one row of views, and two
def test_seam_free_decode_matches_a_turned_decode(sync_pipe, height):
    # Decoding a turned latent gives the turned image, up to the decoder's global attention; a
    # plain decode does not: its first and last columns never saw each other. (With random weights
    # the images are noise-like: neighbouring columns differ about as much as the seam's, so only
    # a comparison like this one tells a seam from none.)
    latent = noise_for(sync_pipe, 96, height, seed=2)
    shift = 24  # latent columns: the seam moves to the middle of the turned image
    with torch.no_grad():
        seamless = sync_pipe.decode_panorama(latent, loop_closure=True)
        seamless_turned = sync_pipe.decode_panorama(latent.roll(shift, dims=-1), loop_closure=True)
        plain = sync_pipe.decode_panorama(latent, loop_closure=False)
        plain_turned = sync_pipe.decode_panorama(latent.roll(shift, dims=-1), loop_closure=False)
    pixels = shift * sync_pipe.vae_scale_factor
    seamless_error = (seamless_turned - seamless.roll(pixels, dims=-1)).abs().max()
    plain_error = (plain_turned - plain.roll(pixels, dims=-1)).abs().max()
    assert seamless_error < 0.1 * plain_error, (seamless_error, plain_error)


# --- Bad input: one sentence, before any model work -------------------------------------------------

BAD_INPUTS = [
    (dict(width=33), "width must be a multiple of 2"),
    (dict(height=15), "height must be a multiple of 2"),
    (dict(width=14), "width must be at least one window, 16 pixels"),
    (dict(stride=0), "stride must be 1 or more"),
    (dict(stride=9), "stride must be between 1 and the window size"),
    (dict(num_inference_steps=0), "num_inference_steps must be"),
    (dict(num_inference_steps=-3), "num_inference_steps must be"),
    (dict(guidance_scale=-1.0), "guidance_scale must be from 0 to 30"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
    (dict(sync_weight=float("nan")), "sync_weight must be a finite number"),
    (dict(sync_decay_rate=float("inf")), "sync_decay_rate must be a finite number"),
    (dict(sync_weight=-1.0), "sync_weight must be 0 or more"),
    (dict(sync_decay_rate=1.5), "sync_decay_rate must be more than 0 and at most 1"),
    (dict(sync_freq=0), "sync_freq must be from 1 to 1000"),
    (dict(sync_threshold=-1), "sync_threshold must be from 0 to 1000"),
    (dict(output_type="jpeg"), "output_type must be one of"),
    (dict(anchor=99), "anchor must be a view index"),
    (dict(latents=torch.zeros(1, 4, 3, 3)), "latents must have shape"),
    (dict(view_batch_size=0), "view_batch_size must be 1 or more"),
]


@pytest.mark.parametrize("change,message", BAD_INPUTS)
def test_bad_input_is_refused_before_model_work(small_pipe, change, message, monkeypatch):
    def no_model_work(*args, **kwargs):
        raise AssertionError("the text encoder ran before the input was checked")

    monkeypatch.setattr(small_pipe.backbone, "encode_prompt", no_model_work)
    kwargs = dict(width=32, height=16, stride=4, num_inference_steps=2, seed=0) | change
    with pytest.raises(ValueError, match=message):
        small_pipe("a", **kwargs)


def test_non_ddim_scheduler_is_refused(small_pipe):
    from diffusers import EulerDiscreteScheduler

    pipe = SyncDiffusionPipeline(**{**small_pipe.components, "scheduler": EulerDiscreteScheduler.from_config(
        small_pipe.scheduler.config)})
    with pytest.raises(ValueError, match="DDIMScheduler"):
        pipe("a", width=32, height=16, stride=4, num_inference_steps=1)


@pytest.mark.slow
def test_more_steps_than_the_schedule_holds_are_refused(small_pipe):
    # Stable Diffusion's DDIM (steps_offset 1) puts the 1000th step past its 1000 training timesteps
    assert small_pipe.scheduler.config.steps_offset == 1
    with pytest.raises(ValueError, match="num_inference_steps must be at most 999"):
        small_pipe("a", width=32, height=16, stride=4, num_inference_steps=1000)
    # 999 steps run: the first steps (the noisiest timestep, where 1000 would overflow) through the
    # pipeline, stopped after two; the last step (to the clean end) through the scheduler it steps with
    class Stop(Exception):
        pass

    def stop_after_two(pipe, step, timestep, tensors):
        assert torch.isfinite(tensors["latents"]).all()
        if step == 1:
            raise Stop
        return {}

    with pytest.raises(Stop):
        small_pipe("a", width=16, height=16, num_inference_steps=999, sync_weight=0, seed=0, output_type="latent",
                   callback_on_step_end=stop_after_two)
    scheduler = small_pipe.scheduler
    scheduler.set_timesteps(999)
    assert int(scheduler.timesteps[0]) == 999 and int(scheduler.timesteps[-1]) == 1
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(scheduler.step(torch.zeros_like(latent), scheduler.timesteps[-1], latent).prev_sample).all()


def test_default_canvas_and_stride_follow_the_window(small_pipe):
    # window 8 latents, VAE factor 2: one window high (16 px), four wide (64 px), stride 8 / 4 = 2
    default = small_pipe("a", num_inference_steps=1, sync_weight=0, seed=0, output_type="latent").images
    explicit = small_pipe("a", width=64, height=16, stride=2, num_inference_steps=1, sync_weight=0, seed=0,
                          output_type="latent").images
    other_stride = small_pipe("a", width=64, height=16, stride=3, num_inference_steps=1, sync_weight=0, seed=0,
                              output_type="latent").images
    assert torch.equal(default, explicit) and not torch.equal(default, other_stride)


def test_generator_is_the_same_draw_as_its_seed(small_pipe):
    kwargs = dict(width=32, height=16, stride=4, num_inference_steps=1, sync_weight=0, output_type="latent")
    by_seed = small_pipe("a", seed=7, **kwargs)
    by_generator = small_pipe("a", generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(by_seed.images, by_generator.images) and by_generator.seed is None


def test_progress_bar_says_which_steps_sync(sync_pipe, capsys):
    # a long mininterval makes tqdm skip every redraw it may skip, as fast steps do (CI caught it)
    sync_pipe.set_progress_bar_config(disable=False, mininterval=60)
    try:
        sync_pipe("a", width=64, height=32, num_inference_steps=3, sync_threshold=1, seed=0, output_type="latent")
    finally:
        sync_pipe.set_progress_bar_config(disable=True)
    err = capsys.readouterr().err
    assert "sync w=20" in err and "no sync" in err and "3/3" in err


def test_a_lone_view_is_not_synced(sync_pipe):
    weights = []
    kwargs = dict(width=32, height=32, num_inference_steps=2, seed=0, output_type="latent")
    alone = sync_pipe("a", callback_on_step_end=lambda p, i, t, s: weights.append(s["sync_weight"]), **kwargs).images
    assert weights == [0.0, 0.0] and torch.equal(alone, sync_pipe("a", sync_weight=0, **kwargs).images)
