"""The bundled pocket-canny ControlNet: it loads by name, pocket panoramas follow its edges better
than without it, and its training stage resumes where it stopped."""

import numpy as np
import PIL.Image
import pytest
import torch

from panosync.bundled import bundled_controlnet_folder, bundled_model_names
from panosync.conditions import canny_edges
from panosync.models import load_control_pipeline, resolve_controlnet
from pocket.control_train import edge_maps, new_controlnet, train_controlnet
from pocket.edge_match import edge_fscore
from pocket.landscapes import render_landscape
from panosync.tiny import tiny_random_components

needs_bundle = pytest.mark.skipif(bundled_controlnet_folder("pocket-canny") is None,
                                  reason="the bundled pocket-canny ControlNet is absent")


@pytest.fixture(scope="module")
def pocket_control():
    pipe = load_control_pipeline("pocket", ["pocket-canny"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@needs_bundle
def test_loads_by_name(pocket_control):
    source = resolve_controlnet("pocket-canny")
    assert source.kind == "folder" and source.ref == str(bundled_controlnet_folder("pocket-canny"))
    assert "pocket-canny" not in bundled_model_names()  # a ControlNet, not a model to generate with
    assert pocket_control.controlnet.config.block_out_channels == pocket_control.unet.config.block_out_channels
    # trained: the zero convolutions it started with have grown weights
    assert pocket_control.controlnet.controlnet_mid_block.weight.abs().max() > 0


@needs_bundle
def test_unknown_controlnet_lists_bundled():
    with pytest.raises(ValueError, match="pocket-canny"):
        resolve_controlnet("no-such-controlnet")


@pytest.mark.slow
@needs_bundle
def test_panoramas_follow_the_edges(pocket_control):
    """A 128x64 panorama from the edges of an unseen landscape: the Canny edges of the output lie
    closer to the condition's with the ControlNet than without it (conditioning scale 0)."""
    landscape = render_landscape({"time": "day", "ground": "snow", "terrain": "mountains"}, 4242, 128, 64)
    condition = canny_edges(PIL.Image.fromarray(landscape))
    scores = {}
    for scale in (1.0, 0.0):
        scores[scale] = []
        for seed in (0, 1):
            image = pocket_control("snowy mountains", image=condition, width=128, height=64, seed=seed,
                                   num_inference_steps=12, stride=12, sync_weight=0.0,
                                   controlnet_conditioning_scale=scale, output_type="np").images[0]
            scores[scale].append(edge_fscore((image * 255).round().astype(np.uint8), np.asarray(condition))["f"])
    assert np.mean(scores[1.0]) > np.mean(scores[0.0]) + 0.1, scores


def test_edge_fscore_ranks_a_match_above_another_landscape():
    attributes = {"time": "day", "ground": "green", "terrain": "mountains"}
    landscape, other = render_landscape(attributes, 1, 128, 64), render_landscape(attributes, 2, 128, 64)
    edges = np.asarray(canny_edges(PIL.Image.fromarray(landscape)))
    assert edge_fscore(landscape, edges)["f"] == 1.0
    assert edge_fscore(other, edges)["f"] < 0.8
    with pytest.raises(ValueError, match="same size"):
        edge_fscore(other[:, :64], edges)


def _tiny_training_set(count=6):
    torch.manual_seed(0)
    components = tiny_random_components(window=8, vae_factor=4, unet_channels=(32, 64))
    images = np.stack([render_landscape({"time": "day", "ground": "snow", "terrain": "hills"}, s, 32, 32)
                       for s in range(count)])
    latents = {"mean": torch.randn(count, 4, 8, 8), "std": torch.full((count, 4, 8, 8), 0.1),
               "captions": ["snowy hills by day", "hills"] * (count // 2), "scaling_factor": 1.0}
    base = (components["unet"].requires_grad_(False), components["text_encoder"].requires_grad_(False),
            components["tokenizer"])
    return dict(latents=latents, edges=edge_maps(images), base=base, batch=2)


@pytest.mark.training
def test_training_resumes_where_it_stopped(tmp_path):
    """Two steps, then two more from the checkpoint, end exactly where four steps in one go do."""
    data = _tiny_training_set()
    interrupted = tmp_path / "interrupted"
    first = train_controlnet(tmp_path, interrupted, 2, **data)
    assert first["step"] == 2 and (interrupted / "controlnet.pt").is_file()
    resumed = train_controlnet(tmp_path, interrupted, 4, **data)
    straight = train_controlnet(tmp_path, tmp_path / "straight", 4, **data)
    assert resumed["step"] == straight["step"] == 4
    moved = False
    for name, value in straight["controlnet"].items():
        torch.testing.assert_close(resumed["controlnet"][name], value, msg=name)
        moved |= not torch.equal(first["controlnet"][name], value)
    assert moved, "training changed no weight"


@pytest.mark.training
def test_a_new_run_can_start_from_an_exported_controlnet(tmp_path):
    """To follow a retrained UNet the ControlNet is fine-tuned, not trained again from the UNet's copy."""
    data = _tiny_training_set()
    trained = train_controlnet(tmp_path, tmp_path / "first", 3, lr=1e-2, **data)  # far from the UNet's copy
    folder = tmp_path / "exported"
    controlnet = new_controlnet(data["base"][0])
    controlnet.load_state_dict(trained["controlnet"])
    controlnet.save_pretrained(folder)
    started = train_controlnet(tmp_path, tmp_path / "tuned", 1, lr=1e-6, init=folder, **data)
    fresh = train_controlnet(tmp_path, tmp_path / "fresh", 1, lr=1e-6, **data)
    distance = lambda state: max((state["controlnet"][k] - v).abs().max() for k, v in trained["controlnet"].items())
    assert distance(started) < 1e-3 < distance(fresh)
    assert started["init"] == str(folder)
