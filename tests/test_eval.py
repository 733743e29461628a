"""The paper's metrics on inputs whose answer is known, and `panosync evaluate` end to end on a tiny
random-weight model: outputs, their schema, and resuming."""

import csv
import io
import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import make_pipe
from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.eval.clip_score import ClipScorer, ClipUnavailable
from panosync.eval.command import parse_methods, parse_seeds, read_prompts
from panosync.eval.crops import crop_batch, crop_corners, crops
from panosync.eval.fidelity import fid, inception_features, kid, kid_subset_size, knn_giqa
from panosync.eval.inception import load_inception, resize_like_tensorflow1
from panosync.eval.perceptual import (VGG_LAYERS, gram_matrices, intra_lpips, intra_style_loss, load_style_features,
                                      lpips_between_pairs, pairs, style_loss)
from panosync.eval.report import METRICS, csv_columns, csv_text, markdown
from pocket.landscapes import render_landscape

SIZE = 32  # crop size of the tests: LPIPS-VGG's five stages still have a pixel at the last


def landscape(time, width, seed=3, ground="green", terrain="mountains"):
    return render_landscape({"time": time, "ground": ground, "terrain": terrain}, seed, width, SIZE)


@pytest.fixture(scope="module")
def style():
    return load_style_features()


# ------------------------------------------------------------------------------------------ crops


def test_crops_cover_rows_and_columns_without_overlap():
    assert crop_corners(70, 100, 32) == [(0, 0), (0, 32), (0, 64), (32, 0), (32, 32), (32, 64)]
    canvas = np.arange(70 * 100 * 3).reshape(70, 100, 3)
    tiles = crops(canvas, 32)
    assert len(tiles) == 6 and all(t.shape == (32, 32, 3) for t in tiles)
    np.testing.assert_array_equal(tiles[4], canvas[32:64, 32:64])
    batch = crop_batch(canvas.astype(np.uint8), 32)
    assert batch.shape == (6, 3, 32, 32) and 0 <= batch.min() and batch.max() <= 1
    with pytest.raises(ValueError, match="holds no 32x32 crop"):
        crop_corners(20, 100, 32)


def test_pocket_quality_uses_the_eval_implementation():
    from panosync.eval import perceptual
    from panosync.eval import crops as eval_crops
    from pocket import quality

    assert quality.crops is eval_crops.crops and quality.intra_lpips is perceptual.intra_lpips


# --------------------------------------------------------------------------- Intra-LPIPS / Style


def test_identical_crops_score_zero(lpips_vgg, style):
    panorama = np.tile(landscape("day", SIZE), (1, 3, 1))
    assert intra_lpips(panorama, SIZE, lpips_vgg) == 0
    assert intra_style_loss(panorama, SIZE, style) == 0


def test_a_panorama_of_two_different_halves_scores_higher_than_a_coherent_one(lpips_vgg, style):
    coherent = landscape("sunset", 4 * SIZE)  # one scene, horizontally stationary
    montage = np.concatenate([landscape("day", 2 * SIZE), landscape("night", 2 * SIZE, ground="snow")], axis=1)
    assert intra_lpips(montage, SIZE, lpips_vgg) > intra_lpips(coherent, SIZE, lpips_vgg) + 0.05
    assert intra_style_loss(montage, SIZE, style) > 2 * intra_style_loss(coherent, SIZE, style)


def test_pairwise_lpips_equals_the_lpips_package(lpips_vgg):
    panorama = np.concatenate([landscape("day", 2 * SIZE), landscape("night", SIZE)], axis=1)
    tiles = crop_batch(panorama, SIZE)
    first, second = pairs(len(tiles))
    expected = lpips_vgg(tiles[first] * 2 - 1, tiles[second] * 2 - 1).reshape(-1)
    torch.testing.assert_close(lpips_between_pairs(tiles, lpips_vgg), expected, rtol=1e-5, atol=1e-6)


def test_style_loss_is_symmetric_and_zero_only_for_the_same_style(style):
    a = crop_batch(landscape("day", SIZE), SIZE)
    b = crop_batch(landscape("night", SIZE, ground="desert"), SIZE)
    grams_a, grams_b = gram_matrices(style(a)), gram_matrices(style(b))
    assert [g.shape[-1] for g in grams_a] == [64, 128, 256, 512, 512]
    ab, ba = style_loss(grams_a, grams_b), style_loss(grams_b, grams_a)
    assert ab.item() > 0 and torch.equal(ab, ba)
    assert style_loss(grams_a, grams_a).item() == 0


def test_style_backbone_vgg16_offline_and_vgg19_when_torchvision_has_it(tmp_path, style, lpips_vgg):
    assert style.backbone.startswith("VGG16")
    torch.testing.assert_close(style.layers[0].weight, lpips_vgg.net.slice1[0].weight)  # the same ImageNet VGG16

    # A checkpoint laid out as torchvision's vgg19 (random values): found, and every conv fits.
    state, index = {}, 0
    channels = 3
    for entry in VGG_LAYERS["vgg19"]:
        if entry != "M":
            state[f"features.{index}.weight"] = torch.randn(entry, channels, 3, 3)
            state[f"features.{index}.bias"] = torch.randn(entry)
            channels, index = entry, index + 2
        else:
            index += 1
    torch.save(state, tmp_path / "vgg19-dcbb9e9d.pth")
    vgg19 = load_style_features(torchvision_cache_dir=tmp_path)
    assert vgg19.backbone.startswith("VGG19")
    torch.testing.assert_close(vgg19.layers[2].weight, state["features.2.weight"])
    assert len(vgg19(torch.rand(1, 3, SIZE, SIZE))) == 5


# ------------------------------------------------------------------------------ FID, KID, GIQA


def test_tensorflow1_resize_samples_at_i_times_in_over_out():
    row = torch.tensor([[[[0.0, 10.0]]]])
    np.testing.assert_allclose(resize_like_tensorflow1(row.expand(1, 1, 2, 2), 4)[0, 0, 0], [0, 5, 10, 10])
    constant = torch.full((1, 3, 5, 7), 42.0)
    torch.testing.assert_close(resize_like_tensorflow1(constant, 299), torch.full((1, 3, 299, 299), 42.0))


def test_fid_is_torchmetrics_formula_zero_for_a_set_with_itself():
    from torchmetrics.image.fid import FrechetInceptionDistance

    from panosync.eval.fidelity import _Precomputed

    generator = torch.Generator().manual_seed(0)
    real = torch.rand(10, 64, generator=generator, dtype=torch.float64)
    fake = torch.rand(13, 64, generator=generator, dtype=torch.float64) ** 2
    reference = FrechetInceptionDistance(feature=_Precomputed(64))
    reference.update(real, real=True)
    reference.update(fake, real=False)
    assert fid(real, fake) == pytest.approx(float(reference.compute()), rel=1e-6)
    assert fid(real, fake) > 1
    assert abs(fid(real, real)) < 1e-9


def test_inception_features_set_apart_different_images():
    inception = load_inception()
    days = [landscape("day", SIZE, seed=s) for s in range(2)]
    nights = [landscape("night", SIZE, seed=s, ground="snow") for s in range(2)]
    day_features, night_features = inception_features(days, inception), inception_features(nights, inception)
    assert day_features.shape == (2, 2048) and day_features.dtype == torch.float64
    assert (day_features >= 0).all()  # pool features after ReLUs
    assert fid(day_features, night_features) > 1 and abs(fid(day_features, day_features)) < 1e-6


def test_kid_subset_size_adapts_to_small_sets():
    assert kid_subset_size(5, 3000) == 5 and kid_subset_size(5000, 3000) == 1000
    torch.manual_seed(0)
    real, fake = torch.rand(5, 16), torch.rand(7, 16) + 0.5
    mean, std, size = kid(real, fake, subsets=10)
    assert size == 5 and mean > 0 and std >= 0
    assert kid(real, fake, subsets=10) == (mean, std, size)  # fixed subset draws


def test_knn_giqa_is_the_sum_of_inverse_l1_distances_to_the_k_nearest():
    reference = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 3.0]])
    query = torch.tensor([[0.5, 0.0], [10.0, 10.0]])
    scores = knn_giqa(query, reference, k=2)
    assert scores[0].item() == pytest.approx(1 / 0.5 + 1 / 0.5)
    assert scores[1].item() == pytest.approx(1 / 14 + 1 / 19)
    assert knn_giqa(query, reference, k=8)[0].item() == pytest.approx(2 + 2 + 1 / 5.5)  # K lowered to 3
    assert knn_giqa(reference[:1], reference, k=1).item() == pytest.approx(1.0)  # itself skipped


# ------------------------------------------------------------------------------------------- CLIP


def test_clip_score_is_100_times_the_cosine_of_the_embeddings(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    images = [landscape("day", SIZE, seed=s) for s in range(3)]
    score = ClipScorer(str(tiny_clip))(images, "snowy mountains")
    model, processor = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        pixels = processor(images=[torch.from_numpy(i).permute(2, 0, 1) for i in images], return_tensors="pt")
        image = model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
        text = model.get_text_features(**processor(text=["snowy mountains"], return_tensors="pt")).pooler_output
    cosine = torch.nn.functional.cosine_similarity(image, text)
    assert score == pytest.approx(max(100 * cosine.mean().item(), 0), abs=1e-4)


def test_clip_score_unavailable_says_why(tmp_path):
    with pytest.raises(ClipUnavailable, match="not a readable CLIP model folder"):
        ClipScorer(str(tmp_path))


# ----------------------------------------------------------------------------------------- input


def test_seeds_prompts_and_methods_are_checked(tmp_path):
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]
    for bad in ("3-1", "a", "1,1", "-2"):
        with pytest.raises(ValueError):
            parse_seeds(bad)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\nsnowy mountains\n\ngreen hills\n")
    assert read_prompts(prompts) == ["snowy mountains", "green hills"]
    with pytest.raises(ValueError, match="no such file"):
        read_prompts(tmp_path / "missing.txt")
    assert parse_methods("syncdiffusion, MultiDiffusion") == ["syncdiffusion", "multidiffusion"]
    with pytest.raises(ValueError, match="comma-separated list"):
        parse_methods("multidiffusion,magic")


def test_evaluate_refuses_a_canvas_of_one_crop_before_loading(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a landscape\n")
    code = main(["evaluate", "--model", "tiny-random", "--prompts", str(prompts), "--width", "512",
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "only one 512x512 crop" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_one_prompt_and_one_seed_before_loading(tmp_path, capsys):
    """One reference image: FID and KID need two; found once the images had been made."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a landscape\n")
    code = main(["evaluate", "--model", "tiny-random", "--prompts", str(prompts), "--seeds", "3",
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2 and "give more seeds" in error and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


def test_syncdiffusion_takes_the_models_recommended_fast_modes_unless_told(tmp_path, tiny_model):
    from panosync.cli import build_parser
    from panosync.eval.command import make_plan

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "recommended.json").write_text(json.dumps({"sync_weight": 30.0, "fast_modes": ["no_unet_backward"]}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a landscape\n")

    def methods(*options):
        args = build_parser().parse_args(["evaluate", "--model", str(model), "--prompts", str(prompts), "--out",
                                          str(tmp_path / "out"), *options])
        return make_plan(args).methods

    assert methods()["syncdiffusion"]["fast_modes"] == ["no_unet_backward"]
    assert methods()["syncdiffusion"]["sync_weight"] == 30.0
    assert methods()["multidiffusion"] == {"sync_weight": 0.0}
    assert "fast_modes" not in methods("--fast", "none")["syncdiffusion"]  # faithful: recorded as before
    assert methods("--fast", "reuse_noise")["syncdiffusion"]["fast_modes"] == ["reuse_noise"]


# ---------------------------------------------------------------------------------------- report


def constructed_results(clip=None):
    def metric(mean, std=0.1):
        return {"mean": mean, "std": std}

    methods = []
    for name, lp in (("multidiffusion", 0.4), ("syncdiffusion", 0.3)):
        rows = [{"file": f"{name}/{s}.png", "prompt": "p", "seed": s, "intra_lpips": lp + s / 100,
                 "intra_style_loss": 1e-3, "clip_score": clip, "giqa": 0.02} for s in range(2)]
        methods.append({"name": name, "settings": {"sync_weight": 0.0}, "panoramas": 2, "crops": 8,
                        "seconds_per_panorama": 1.5,
                        "metrics": {"intra_lpips": metric(lp), "intra_style_loss": metric(1e-3, 1e-4),
                                    "mean_clip_score": None if clip is None else metric(clip),
                                    "fid": {"mean": 50.0, "std": None}, "kid": metric(0.02, 0.001),
                                    "mean_giqa": metric(0.02, 0.001)},
                        "per_panorama": rows})
    return {"model": "m", "prompts": ["p"], "seeds": [0, 1],
            "canvas": {"width": 128, "height": 32, "crop_size": 32, "crops_per_panorama": 4},
            "generation": {"num_inference_steps": 2}, "references": {"count": 2, "size": 32},
            "notes": {"Mean-CLIP-S": "skipped: no weights"}, "methods": methods}


def test_markdown_table_is_laid_out_like_the_paper():
    text = markdown(constructed_results())
    assert "| method | Intra-LPIPS ↓ | Intra-Style-L ↓ (×10⁻³) | Mean-CLIP-S ↑ | FID ↓ | KID ↓ (×10⁻³) | " \
           "Mean-GIQA ↑ (×10⁻³) |" in text
    assert "| MultiDiffusion | 0.400 ± 0.100 | 1.000 ± 0.100 | skipped | 50.00 | 20.00 ± 1.000 | 20.00 ± 1.000 |" in text
    assert "| Intra-LPIPS | lower | 0.400 → 0.300 (-25.0%, better); lower in 2 of 2 panoramas" in text


def test_csv_has_one_row_per_method_and_empty_cells_for_skipped_metrics():
    rows = list(csv.DictReader(io.StringIO(csv_text(constructed_results()))))
    assert list(rows[0]) == csv_columns()
    assert [r["method"] for r in rows] == ["multidiffusion", "syncdiffusion"]
    assert rows[1]["intra_lpips_mean"] == "0.3" and rows[0]["fid_std"] == "" and rows[0]["mean_clip_score_mean"] == ""


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A diffusers folder of a tiny random model with 32-pixel windows."""
    folder = tmp_path_factory.mktemp("model")
    make_pipe(window=16, vae_factor=2).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_evaluate_end_to_end_writes_every_result_and_resumes(tmp_path, tiny_model, tiny_clip, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("snowy mountains\n")
    out = tmp_path / "eval"
    command = ["evaluate", "--model", str(tiny_model), "--prompts", str(prompts), "--seeds", "0-1",
               "--width", "64", "--height", "32", "--stride", "8", "--steps", "1", "--sync-threshold", "1",
               "--clip-model", str(tiny_clip), "--examples", "1", "--out", str(out), "--quiet", "--dtype", "bfloat16"]
    assert main(command) == 0
    assert "images: 6 made, 0 kept" in capsys.readouterr().out
    pictures = sorted(out.rglob("*.png"))
    assert read_parameters(out / "panoramas/syncdiffusion/000-seed0.png")["dtype"] == "bfloat16"  # generated in it
    names = {p.relative_to(out).as_posix() for p in pictures}
    assert {"references/000-seed0.png", "panoramas/multidiffusion/000-seed1.png",
            "panoramas/syncdiffusion/000-seed0.png", "results-chart.png", "results-examples.png"} <= names

    results = json.loads((out / "results.json").read_text())
    assert [m["name"] for m in results["methods"]] == ["multidiffusion", "syncdiffusion"]
    assert results["canvas"] == {"width": 64, "height": 32, "crop_size": 32, "crops_per_panorama": 2}
    assert results["methods"][1]["settings"]["sync_threshold"] == 1
    for method in results["methods"]:
        assert set(method["metrics"]) == {key for key, *_ in METRICS}
        assert all(method["metrics"][key]["mean"] is not None for key, *_ in METRICS)
        assert method["metrics"]["intra_lpips"]["mean"] > 0 and method["crops"] == 4
        assert [(p["prompt"], p["seed"]) for p in method["per_panorama"]] == [("snowy mountains", 0),
                                                                              ("snowy mountains", 1)]
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [r["method"] for r in rows] == ["multidiffusion", "syncdiffusion"]
    assert float(rows[0]["intra_lpips_mean"]) == results["methods"][0]["metrics"]["intra_lpips"]["mean"]
    assert "| SyncDiffusion |" in (out / "results.md").read_text()

    # Again: every image is kept as it was, and the results are the same.
    images = [p for p in pictures if p.parent.name != "eval"]
    stamps = {p: p.stat().st_mtime_ns for p in images}
    assert main(command) == 0
    assert "images: 0 made, 6 kept" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in images} == stamps
    assert json.loads((out / "results.json").read_text())["methods"] == results["methods"]

    # Other settings into the same folder would mix results: refused, before anything is made.
    steps = command.index("--steps") + 1
    assert main(command[:steps] + ["2"] + command[steps + 1 :]) == 2
    assert "was made with num_inference_steps 1" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_with_a_lora_records_it_and_its_panoramas_differ(tmp_path, tiny_model, tiny_clip, capsys):
    """`evaluate --lora`: every image (panoramas and references) is made with the LoRA and says so."""
    from lora_files import save_random_lora

    save_random_lora("sd", make_pipe(window=16, vae_factor=2).components, tmp_path / "lora", seed=2)  # tiny_model's
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("snowy mountains\n")
    command = ["evaluate", "--model", str(tiny_model), "--prompts", str(prompts), "--seeds", "0-1", "--width", "64",
               "--height", "32", "--stride", "8", "--steps", "1", "--clip-model", str(tiny_clip), "--examples", "1",
               "--methods", "syncdiffusion", "--quiet"]
    assert main([*command, "--out", str(tmp_path / "plain")]) == 0
    assert main([*command, "--lora", f"{tmp_path / 'lora'}:0.8", "--out", str(tmp_path / "styled")]) == 0
    for picture in ("panoramas/syncdiffusion/000-seed0.png", "references/000-seed0.png"):
        styled = tmp_path / "styled" / picture
        assert [entry["scale"] for entry in read_parameters(styled)["loras"]] == [0.8]
        plain = np.asarray(PIL.Image.open(tmp_path / "plain" / picture), dtype=np.int16)
        assert np.abs(np.asarray(PIL.Image.open(styled), dtype=np.int16) - plain).max() > 0
