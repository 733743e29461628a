"""The panorama bars of issue 13 on inputs whose answer is known: fidelity by nearest-neighbour LPIPS,
adherence on rendered landscapes, and the bar logic."""

import numpy as np
import pytest
import torch

from pocket.landscapes import render_landscape
from pocket.bar_measures import (EVERY_VALUE, check_fresh_seeds, judgeable, kid_testable, lpips_to_references,
                                 nearest_lpips, paired_adherence_difference, panorama_bars, pooled_adherence,
                                 shown_counts, single_window_adherence)
from pocket.panorama_bars import shared_settings, sync_methods
from pocket.quality import FAITHFUL

SIZE = 64  # the pocket model's window in pixels: what the classifier and the references are made at


def render(seed, time="day", ground="green", terrain="mountains"):
    return render_landscape({"time": time, "ground": ground, "terrain": terrain}, seed, SIZE, SIZE)


@pytest.fixture(scope="module")
def references():
    kinds = [("day", "green", "mountains"), ("sunset", "snow", "hills"), ("night", "desert", "sea"),
             ("day", "snow", "mountains"), ("sunset", "green", "sea"), ("night", "green", "hills")]
    return np.stack([render(seed, *kind) for seed, kind in enumerate(kinds)])


def blotches(seed: int) -> np.ndarray:
    """Yellow and blue blobs, the destroyed picture of issue 13: smooth, coherent, and no landscape."""
    coarse = np.random.default_rng(seed).random((4, 4, 1))
    field = torch.nn.functional.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(SIZE, SIZE),
                                            mode="bicubic", align_corners=False)[0, 0].clamp(0, 1).numpy()
    yellow, blue = np.array([240, 200, 60.0]), np.array([50, 80, 200.0])
    return (field[..., None] * yellow + (1 - field[..., None]) * blue).round().astype(np.uint8)


def test_lpips_to_references_is_lpips_and_a_reference_is_its_own_nearest(lpips_vgg, references):
    table = lpips_to_references(references[:2], references, lpips_vgg)
    assert table.shape == (2, len(references))
    a, b = (torch.from_numpy(references[i]).permute(2, 0, 1)[None].float() / 255 * 2 - 1 for i in (0, 3))
    assert float(table[0, 3]) == pytest.approx(float(lpips_vgg(a, b)), abs=1e-5)
    np.testing.assert_allclose(nearest_lpips(references[:2], references, lpips_vgg), 0, atol=1e-6)


def test_blotches_and_a_flat_image_score_worse_fidelity_than_a_genuine_sample(lpips_vgg, references):
    genuine = render(100, "day", "green", "hills")  # a seed and combination not among the references
    flat = np.full((SIZE, SIZE, 3), 128, np.uint8)
    scores = nearest_lpips(np.stack([genuine, blotches(0), blotches(1), flat]), references, lpips_vgg)
    assert scores[0] < scores[1:].min(), scores


def summary(landscape=0.40, mountains=0.30, fid=180.0, kid=0.020, snow=0.9, mixed=0.8, intra=0.5):
    return {"nn_lpips_by_prompt": {"a landscape": landscape, "snowy mountains": mountains}, "fid": fid, "kid": kid,
            "adherence": {"ground = snow": snow}, "mixed_share": mixed, "intra_lpips": intra}


JUDGED = ["ground = snow"]


def met(candidate):
    return [bar.met for bar in panorama_bars(summary(), candidate, JUDGED)]


def test_the_bars_pass_at_their_limits_and_fail_past_them():
    at_limits = dict(landscape=0.44, mountains=0.33, fid=198.0, kid=0.022, snow=0.9, mixed=0.4, intra=0.425)
    assert met(summary(**at_limits)) == [True] * 7
    for past in (dict(landscape=0.441), dict(mountains=0.331), dict(fid=198.5), dict(kid=0.0221), dict(snow=0.89),
                 dict(mixed=0.41), dict(intra=0.426)):
        assert met(summary(**{**at_limits, **past})).count(False) == 1, past


def test_a_destroyed_but_coherent_picture_fails_fidelity_even_on_one_prompt_of_two():
    """The picture of issue 13: blotches agree with each other, so the montage bars pass; fidelity does not,
    even where the other prompt's panoramas are fine."""
    assert met(summary(landscape=0.50, fid=190.0, mixed=0.2, intra=0.3)) == [False, True, True, True, True, True, True]


def test_adherence_pools_the_prompts_naming_a_value_and_counts_only_the_values_named():
    images = {"snowy mountains": [render(1, ground="snow"), render(2, ground="snow")],
              "snowy hills": [render(3, ground="green", terrain="sea")],
              "a landscape": [render(4)]}
    shares = single_window_adherence(images)
    assert shares == {"ground = snow": pytest.approx(2 / 3), "terrain = mountains": 1.0, "terrain = hills": 0.0}


def test_a_value_is_judgeable_only_when_read_on_both_kinds_of_crops():
    assert judgeable(0.95, 0.90) and not judgeable(0.94, 1.0) and not judgeable(1.0, 0.89)


def test_tuning_seeds_are_refused_and_the_faithful_gradient_is_measured_beside_fast_modes():
    with pytest.raises(ValueError, match="used to tune"):
        check_fresh_seeds(range(100, 112))
    check_fresh_seeds(range(1000, 1012))
    methods = sync_methods({"num_inference_steps": 30, "sync_weight": 40.0, "fast_modes": ["no_unet_backward"]})
    assert methods == {"MultiDiffusion": {"sync_weight": 0.0},
                       "SyncDiffusion": {"sync_weight": 40.0, "fast_modes": ["no_unet_backward"]},
                       FAITHFUL: {"sync_weight": 40.0, "fast_modes": []}}
    # a model synced in its first steps only: faithful mode is every step synced, the paper's way
    methods = sync_methods({"num_inference_steps": 30, "sync_weight": 14.0, "sync_threshold": 8,
                            "fast_modes": ["reuse_noise", "lpips_alex"]})
    assert methods[FAITHFUL] == {"sync_weight": 14.0, "sync_threshold": None, "fast_modes": []}
    assert sync_methods({"sync_weight": 14.0, "sync_threshold": None, "fast_modes": []}).keys() == {
        "MultiDiffusion", "SyncDiffusion"}


def test_sweep_methods_come_after_multidiffusion_and_bad_json_is_one_sentence():
    from pocket.bar_measures import BASELINE
    from pocket.panorama_bars import parse_methods

    methods = parse_methods(['faithful w80={"sync_weight": 80, "fast_modes": []}'])
    assert list(methods) == [BASELINE, "faithful w80"] and methods["faithful w80"]["sync_weight"] == 80
    assert parse_methods([]) == {}  # the model's recommended setting and the paper's gradient
    with pytest.raises(SystemExit, match="NAME="):
        parse_methods(["w80={sync_weight: 80}"])


def test_shown_counts_count_the_crops_showing_what_the_prompt_names():
    tiles = [render(seed, terrain="mountains") for seed in range(3)] + [render(9, terrain="sea")]
    judged = ["terrain = mountains", "ground = green"]
    assert shown_counts("green mountains", tiles, judged) == {"terrain = mountains": 3, "ground = green": 4}
    assert shown_counts("mountains at night", tiles, judged) == {"terrain = mountains": 3}  # night: not asked for
    assert shown_counts("a landscape", tiles, judged) == {}


def test_adherence_from_the_panoramas_counts_is_adherence_of_their_crops():
    panoramas = {"green mountains": [[render(1), render(2, terrain="sea")], [render(3, ground="snow")]],
                 "snowy hills": [[render(4, ground="snow", terrain="hills"), render(5)]]}
    per_panorama = [{"shown": shown_counts(prompt, tiles, EVERY_VALUE), "crops": len(tiles)}
                    for prompt, images in panoramas.items() for tiles in images]
    crops_by_prompt = {prompt: [tile for tiles in images for tile in tiles] for prompt, images in panoramas.items()}
    assert pooled_adherence(per_panorama) == pytest.approx(single_window_adherence(crops_by_prompt))
    assert pooled_adherence(per_panorama) == pytest.approx({"terrain = mountains": 2 / 3, "ground = green": 2 / 3,
                                                            "ground = snow": 1 / 2, "terrain = hills": 1 / 2})


def test_the_adherence_interval_resamples_panoramas_in_pairs():
    """Seeds vary a lot (0 to 8 crops of 8), the method loses one crop on every seed: kept in pairs the
    difference is exactly -1/8 in every resample, where resampling the two methods apart would scatter it."""
    key = "terrain = hills"

    def summary(counts):
        return {"panoramas": [{"prompt": "hills", "seed": seed, "shown": {key: count}, "crops": 8}
                              for seed, count in enumerate(counts)]}
    baseline = [8, 1, 8, 3, 8, 5, 8, 2, 8, 7, 8, 4]
    paired = paired_adherence_difference(summary(baseline), summary([c - 1 for c in baseline]), key)
    assert paired["panoramas"] == 12
    assert [paired["difference"], paired["low"], paired["high"]] == pytest.approx([-1 / 8] * 3)
    noisy = paired_adherence_difference(summary(baseline), summary([8 - c for c in baseline]), key)
    assert noisy["low"] < noisy["difference"] < noisy["high"]
    assert noisy["difference"] == pytest.approx((sum(8 - c for c in baseline) - sum(baseline)) / 96)
    assert paired_adherence_difference({"panoramas": [{"prompt": "hills", "seed": 0}]}, summary(baseline), key) is None


def test_the_adherence_difference_pools_crops_and_takes_each_methods_own_count():
    """Shares pooled over crops (a ratio of sums, as the adherence table), each method over its own crops."""
    key = "terrain = hills"
    baseline = {"panoramas": [{"prompt": "hills", "seed": 0, "shown": {key: 8}, "crops": 8},
                              {"prompt": "hills", "seed": 1, "shown": {key: 0}, "crops": 4}]}
    candidate = {"panoramas": [{"prompt": "hills", "seed": 0, "shown": {key: 2}, "crops": 4},
                               {"prompt": "hills", "seed": 1, "shown": {key: 4}, "crops": 4}]}
    paired = paired_adherence_difference(baseline, candidate, key)
    assert paired["difference"] == pytest.approx(6 / 8 - 8 / 12)
    assert paired["low"] <= paired["difference"] <= paired["high"]


def test_stride_and_guidance_move_every_method_and_leave_the_rest():
    recommended = {"num_inference_steps": 30, "guidance_scale": 7.5, "stride": 12, "sync_weight": 14.0}
    assert shared_settings(recommended) == recommended
    assert shared_settings(recommended, guidance=5.0) == {**recommended, "guidance_scale": 5.0}
    assert shared_settings(recommended, stride=10, guidance=5.0) == {**recommended, "stride": 10,
                                                                          "guidance_scale": 5.0}
    assert recommended["guidance_scale"] == 7.5  # the model's own settings are not changed in place


def test_an_unjudgeable_value_is_reported_as_information_and_never_barred():
    from pocket.bar_measures import BASELINE
    from pocket.bar_report import adherence_table

    # listed unjudged value first: the table still puts the judged ones first
    baseline = {**summary(), "adherence": {"terrain = hills": 0.5, "ground = snow": 0.9}}
    # a method far below MultiDiffusion on the unjudgeable value still meets every bar
    candidate = {**summary(mixed=0.3, intra=0.3), "adherence": {"ground = snow": 0.9, "terrain = hills": 0.1}}
    bars = panorama_bars(baseline, candidate, JUDGED)
    assert [bar.met for bar in bars] == [True] * 7 and not any("hills" in bar.what for bar in bars)
    assert [bar.met for bar in panorama_bars(baseline, candidate, [*JUDGED, "terrain = hills"])].count(False) == 1
    report = {"methods": {BASELINE: {**baseline, "panoramas": []}, "SyncDiffusion": {**candidate, "panoramas": []}},
              "single_windows": {"adherence": {"ground = snow": 1.0, "terrain = hills": 0.8}}, "judgeable": JUDGED}
    rows = adherence_table(report)
    assert rows[2] == "| ground = snow | 100% | 90% | 90% |"
    assert rows[3] == "| terrain = hills (not judgeable: information only) | 80% | 50% | 10% |"


def test_the_kid_bar_is_left_out_where_multidiffusions_kid_is_within_noise_of_zero():
    clear, near_zero = summary(kid=0.020), {**summary(kid=0.001), "kid_std": 0.0007}
    assert kid_testable(clear) and not kid_testable(near_zero) and not kid_testable({**summary(kid=-0.001)})
    candidate = summary(kid=0.5, mixed=0.3, intra=0.3)  # any KID at all
    assert [bar.met for bar in panorama_bars(near_zero, candidate, JUDGED)] == [True] * 6
    assert [bar.met for bar in panorama_bars(clear, candidate, JUDGED)].count(False) == 1
