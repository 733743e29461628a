"""The pocket landscape domain: generator, captions, prompt parser and hand-made classifier."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from pocket.classify import (
    accuracy,
    classify,
    classify_time,
    terrain_features,
    time_features,
)
from pocket.landscapes import (
    ATTRIBUTES,
    VOCABULARY,
    caption,
    make_dataset,
    parse_prompt,
    render_landscape,
    sample_attributes,
)

COMBINATIONS = [dict(zip(ATTRIBUTES, values)) for values in itertools.product(*ATTRIBUTES.values())]


def _renders(fixed: dict, count: int, seed: int, width: int = 64) -> list[np.ndarray]:
    """count renders with the attributes in `fixed` and the others drawn at random."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        attrs = {**sample_attributes(rng), **fixed}
        out.append(render_landscape(attrs, seed * 1000 + i, width, 64))
    return out


# ---------------------------------------------------------------------------------------------
# The generator


def test_attributes_and_sampling_are_uniform():
    assert ATTRIBUTES == {
        "time": ("day", "sunset", "night"),
        "ground": ("green", "snow", "desert"),
        "terrain": ("mountains", "hills", "sea"),
    }
    rng = np.random.default_rng(0)
    draws = [sample_attributes(rng) for _ in range(3000)]
    for name, values in ATTRIBUTES.items():
        for value in values:
            share = np.mean([d[name] == value for d in draws])
            assert abs(share - 1 / 3) < 0.04, (name, value, share)


@pytest.mark.parametrize("width", [64, 512])
def test_render_is_deterministic_and_well_formed(width):
    attrs = {"time": "sunset", "ground": "snow", "terrain": "mountains"}
    a = render_landscape(attrs, 123, width=width)
    b = render_landscape(dict(attrs), 123, width=width)
    assert a.shape == (64, width, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_different_seeds_differ():
    for attrs in COMBINATIONS:
        a = render_landscape(attrs, 1).astype(int)
        b = render_landscape(attrs, 2).astype(int)
        assert np.abs(a - b).mean() > 2.0, attrs


def test_every_combination_renders_within_range():
    for attrs in COMBINATIONS:
        image = render_landscape(attrs, 5)
        assert image.shape == (64, 64, 3)
        assert image.std() > 5.0  # not a flat colour


def test_unknown_attribute_values_are_rejected():
    with pytest.raises(ValueError):
        render_landscape({"time": "dawn", "ground": "green", "terrain": "hills"}, 0)
    with pytest.raises(ValueError):
        render_landscape({"time": "day", "ground": "green"}, 0)


def test_times_of_day_differ_in_brightness_and_warmth():
    """Night < sunset < day in sky brightness; sunset skies are warm (red over green), day and
    night skies are not; the whole image follows (night darkest)."""
    sky, warmth, whole = {}, {}, {}
    for t in ATTRIBUTES["time"]:
        images = _renders({"time": t}, 30, seed=10)
        sky[t] = round(float(np.mean([im[:9].mean() for im in images])), 1)
        warmth[t] = round(float(np.mean([time_features(im)["warmth"] for im in images])), 2)
        whole[t] = round(float(np.mean([im.mean() for im in images])), 1)
    print("sky brightness", sky, "warmth", warmth, "image brightness", whole)
    assert sky["night"] + 50 < sky["sunset"] < sky["day"]
    assert whole["night"] + 40 < whole["sunset"] < whole["day"]
    assert warmth["sunset"] > 0.3 and warmth["day"] < -0.2 and warmth["night"] < 0.0


def test_time_of_day_shows_in_every_crop_without_the_sun():
    """Even crops far from any sun or moon carry their time of day (sky colour, terrain light)."""
    for t in ATTRIBUTES["time"]:
        for image in _renders({"time": t}, 4, seed=11, width=512):
            crops = [image[:, x : x + 64] for x in range(0, 512, 64)]
            assert [classify_time(c) for c in crops] == [t] * 8


def test_grounds_differ_in_colour():
    bottom = {}
    for g in ATTRIBUTES["ground"]:
        images = _renders({"ground": g, "time": "day"}, 20, seed=12)
        bottom[g] = np.median(np.stack([im[-4:].reshape(-1, 3).mean(0) for im in images]), axis=0)
    r, gr, b = bottom["green"]
    assert gr > r + 30 and gr > b + 30  # grass: green dominates
    assert bottom["snow"].min() > 180 and bottom["snow"][2] >= bottom["snow"][0]  # white, bluish
    r, gr, b = bottom["desert"]
    assert r > gr > b and r - b > 60  # sand: yellow-orange


def test_terrains_differ_in_skyline():
    stats = {}
    for terrain in ATTRIBUTES["terrain"]:
        feats = [terrain_features(im) for im in _renders({"terrain": terrain}, 30, seed=13)]
        stats[terrain] = {k: round(float(np.median([f[k] for f in feats])), 2) for k in ("jag", "flat", "tv")}
    print(stats)
    assert stats["sea"]["flat"] > 0.9 and stats["sea"]["tv"] < 0.2
    assert stats["mountains"]["jag"] > 2 * stats["hills"]["jag"]
    assert stats["mountains"]["tv"] > 2 * stats["hills"]["tv"] > 2 * stats["sea"]["tv"]


def test_wide_renders_are_horizontally_stationary():
    """The left and right halves of a 512-wide render look alike (per-row mean colours), on
    average there is no left/right trend, and at most two suns/moons appear."""
    rng = np.random.default_rng(14)
    gaps, left, right = [], [], []
    for i in range(24):
        image = render_landscape(sample_attributes(rng), 500 + i, width=512).astype(float)
        l, r = image[:, :256].mean(axis=1), image[:, 256:].mean(axis=1)  # (64, 3) row profiles
        gaps.append(np.abs(l - r).mean())
        left.append(l.mean())
        right.append(r.mean())
    print("left/right row-profile gap: median %.2f, max %.2f" % (np.median(gaps), max(gaps)))
    assert np.median(gaps) < 6.0 and max(gaps) < 16.0
    assert abs(np.mean(left) - np.mean(right)) < 3.0


def test_crops_of_wide_renders_are_classified_as_the_render():
    crops, attributes = [], []
    rng = np.random.default_rng(15)
    for i in range(12):
        attrs = sample_attributes(rng)
        image = render_landscape(attrs, 700 + i, width=512)
        for x in range(0, 512, 64):
            crops.append(image[:, x : x + 64])
            attributes.append(attrs)
    acc = accuracy(crops, attributes)
    print("accuracy on 64x64 crops of 512x64 renders:", acc)
    assert acc["time"] == 1.0
    assert acc["ground"] >= 0.95 and acc["terrain"] >= 0.9


# ---------------------------------------------------------------------------------------------
# Captions and prompts


def test_captions_use_the_vocabulary_and_parse_back():
    rng = np.random.default_rng(16)
    seen = set()
    for _ in range(2000):
        attrs = sample_attributes(rng)
        text = caption(attrs, rng)
        seen.update(text.split())
        assert text == text.strip() and "  " not in text
        named = parse_prompt(text)
        assert named.items() <= attrs.items(), (text, attrs)
    assert seen == set(VOCABULARY)  # closure, and every word is used


def test_caption_round_trip_with_nothing_dropped():
    rng = np.random.default_rng(17)
    for attrs in COMBINATIONS:
        assert parse_prompt(caption(attrs, rng, drop=0.0)) == attrs


def test_caption_drops():
    rng = np.random.default_rng(18)
    attrs = {"time": "night", "ground": "snow", "terrain": "mountains"}
    assert caption(attrs, rng, drop=1.0) == "a landscape"
    assert caption(attrs, rng, drop=0.0) == "snowy mountains at night"
    counts = {name: 0 for name in ATTRIBUTES}
    n = 3000
    for _ in range(n):
        for name in parse_prompt(caption(attrs, rng, drop=0.35)):
            counts[name] += 1
    for name, c in counts.items():
        assert abs(c / n - 0.65) < 0.04, (name, c / n)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("snowy mountains at night", {"ground": "snow", "terrain": "mountains", "time": "night"}),
        ("green hills", {"ground": "green", "terrain": "hills"}),
        ("a sea at sunset", {"terrain": "sea", "time": "sunset"}),
        ("desert hills by day", {"ground": "desert", "terrain": "hills", "time": "day"}),
        ("a sea with a desert shore", {"terrain": "sea", "ground": "desert"}),
        ("a landscape", {}),
        ("A photo of green, rolling HILLS at sunset!", {"ground": "green", "terrain": "hills", "time": "sunset"}),
    ],
)
def test_parse_prompt(prompt, expected):
    assert parse_prompt(prompt) == expected


def test_make_dataset_is_deterministic():
    images, captions, attributes = make_dataset(12, seed=3)
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    assert len(captions) == len(attributes) == 12
    again = make_dataset(12, seed=3)
    np.testing.assert_array_equal(images, again[0])
    assert captions == again[1] and attributes == again[2]
    other = make_dataset(12, seed=4)
    assert not np.array_equal(images, other[0])
    small = make_dataset(3, seed=3, size=32)[0]
    assert small.shape == (3, 32, 32, 3)
    for text, attrs in zip(captions, attributes):
        assert parse_prompt(text).items() <= attrs.items()


# ---------------------------------------------------------------------------------------------
# The classifier


@pytest.mark.slow
def test_classifier_accuracy_on_fresh_images():
    images, _, attributes = make_dataset(300, seed=2024)
    acc = accuracy(images, attributes)
    print("classifier accuracy on 300 fresh 64x64 images:", acc)
    assert all(acc[name] >= 0.95 for name in ATTRIBUTES), acc


def test_classifier_is_robust_to_blur_and_colour_shifts():
    """What a small diffusion model gets wrong: blur, a colour cast, noise."""
    from PIL import ImageFilter

    images, _, attributes = make_dataset(120, seed=77)
    rng = np.random.default_rng(0)
    shifted = []
    for image in images:
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.0)), dtype=float)
        cast = blurred * np.exp(rng.normal(0, 0.05, 3)) + rng.normal(0, 4, 3)
        shifted.append(np.clip(cast + rng.normal(0, 3, cast.shape), 0, 255).astype(np.uint8))
    acc = accuracy(shifted, attributes)
    print("classifier accuracy on blurred, colour-shifted images:", acc)
    assert acc["time"] >= 0.97 and acc["ground"] >= 0.9 and acc["terrain"] >= 0.9


def test_classify_accepts_pil_and_float_images():
    image = render_landscape({"time": "night", "ground": "green", "terrain": "sea"}, 9)
    expected = {"time": "night", "ground": "green", "terrain": "sea"}
    assert classify(image) == expected
    assert classify(Image.fromarray(image)) == expected
    assert classify(image.astype(np.float32) / 255.0) == expected
    assert classify_time(Image.fromarray(image).convert("RGBA")) == "night"
