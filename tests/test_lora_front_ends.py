"""LoRAs and textual inversions on every front end (loras.py): what `--lora PATH_OR_HUB_ID[:SCALE]`
takes and refuses before any model loads, the PNG's record of them (with each file's SHA-256) and
`--from-png`, batch's `lora_scales`, and the server's. LoRAs are random ones of the tiny models
(tests/lora_files.py), so that they change the picture."""

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from fastapi.testclient import TestClient

from lora_files import save_random_lora
from panosync.cli import main
from panosync.loras import (LoraSpec, adapter_name_of, check_lora_scales, lora_specs, split_scale, unique_names,
                            weights_metadata)
from panosync.metadata import read_parameters
from panosync.runner import ModelSpec

# sync_pipe's folder: 32-pixel windows, 3 views at stride 8; two steps are a fraction of a second
CANVAS = ["--width", "64", "--height", "32", "--stride", "8", "--steps", "2", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def loras(tmp_path_factory, sync_pipe):
    """Two LoRAs of the model: a folder holding diffusers' default file, and a named file."""
    root = tmp_path_factory.mktemp("loras")
    style = save_random_lora("sd", sync_pipe.components, root / "style-a").parent
    detail = save_random_lora("sd", sync_pipe.components, root / "more", seed=5, text_encoders=False,
                              weight_name="detail.safetensors")
    return style, detail


def pixels(path):
    with PIL.Image.open(path) as image:
        return np.asarray(image)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_sentence(capsys, code, *words):
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


# ------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text, expected", [
    ("style.safetensors", ("style.safetensors", 1.0)),
    ("style.safetensors:0.8", ("style.safetensors", 0.8)),
    ("owner/name:-1.5", ("owner/name", -1.5)),
    ("C:/loras/a.safetensors", ("C:/loras/a.safetensors", 1.0)),  # what follows the colon is no number
    ("a:b.safetensors:1e-1", ("a:b.safetensors", 0.1)),  # only the last colon splits
])
def test_a_scale_is_split_off_only_when_it_is_a_finite_number(text, expected):
    assert split_scale(text) == expected


@pytest.mark.parametrize("text, words", [("x:11", "from -10 to 10, got 11"), ("x:-10.5", "got -10.5")])
def test_a_scale_out_of_range_is_one_sentence(text, words):
    with pytest.raises(ValueError, match=words):
        split_scale(text)


def test_adapter_names_are_readable_sanitized_and_unique():
    assert adapter_name_of("/loras/film grain v2.safetensors", None) == "film_grain_v2"
    assert adapter_name_of("/loras/style-a/", "pytorch_lora_weights.safetensors") == "style_a"
    assert adapter_name_of("owner/pixel-art-xl", None) == "pixel_art_xl"
    assert adapter_name_of("owner/many", "ink.safetensors") == "ink"
    assert adapter_name_of("/loras/3d.safetensors", None) == "lora_3d"
    assert unique_names(["a", "a", "b", "a"]) == ["a", "a_2", "b", "a_3"]


def test_a_spec_is_checked_hashed_and_stays_picklable(loras):
    style, detail = loras
    specs = lora_specs([f"{style}:0.8", f"{detail}:0.5", str(detail)])
    assert [spec.adapter_name for spec in specs] == ["style_a", "detail", "detail_2"]
    assert specs[0].weight_name == "pytorch_lora_weights.safetensors" and specs[1].weight_name is None
    assert specs[0].sha256 == sha256(style / "pytorch_lora_weights.safetensors") and specs[1].scale == 0.5
    spec = ModelSpec("tiny-random", loras=specs)
    assert pickle.loads(pickle.dumps(spec)) == spec  # what a Ray worker receives
    assert weights_metadata(specs[:1], (), {"style_a": 0.25}) == {"loras": [
        {"source": f"{style}:0.8".rsplit(":", 1)[0], "weight_name": "pytorch_lora_weights.safetensors",
         "scale": 0.25, "sha256": specs[0].sha256}]}
    assert weights_metadata((), ()) == {}  # a PNG without LoRAs reads as before


def test_request_scales_must_name_a_loaded_lora_and_be_in_range():
    spec = LoraSpec("a.safetensors", "a", "a.safetensors", "0" * 64)
    assert check_lora_scales({"a": 0}, (spec,)) == {"a": 0.0}
    with pytest.raises(ValueError, match="names 'b', which is no LoRA loaded here"):
        check_lora_scales({"b": 1}, (spec,))
    with pytest.raises(ValueError, match="lora_scales.a must be a number from -10 to 10"):
        check_lora_scales({"a": 10.5}, (spec,))


# ------------------------------------------------------------------------------------ the command


def _bad_inputs(tmp_path, loras):
    style, detail = loras
    empty = tmp_path / "empty.safetensors"
    empty.touch()
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    cut = tmp_path / "cut.safetensors"  # a real LoRA, cut short: a tensor lies past the end
    whole = (style / "pytorch_lora_weights.safetensors").read_bytes()
    cut.write_bytes(whole[:8 + int.from_bytes(whole[:8], "little") + 100])
    pickled = tmp_path / "style.bin"
    pickled.write_bytes(b"not read")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (two / name).write_bytes((style / "pytorch_lora_weights.safetensors").read_bytes())
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    not_lora = tmp_path / "model.safetensors"
    from safetensors.torch import save_file
    import torch

    save_file({"unet.conv_in.weight": torch.zeros(2)}, str(not_lora))
    # a header that says 3 float32 numbers where its bytes hold 2: offsets inside the file, shape wrong
    misshapen = tmp_path / "misshapen.safetensors"
    header = json.dumps({"emb_params": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    misshapen.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    return [
        (["--lora", str(tmp_path / "missing.safetensors")], "no such file or folder"),
        (["--lora", str(pickled)], "a pickle that can run code"),
        (["--lora", str(garbage)], "is not a valid safetensors file"),
        (["--lora", str(cut)], "lies outside the file"),
        (["--lora", str(empty)], "is empty"),
        (["--lora", str(two)], "holds 2 .safetensors files (a.safetensors, b.safetensors): name the one to load "
                               "with --lora-weight-name"),
        (["--lora", str(two), "--lora-weight-name", "c.safetensors"], "holds no c.safetensors"),
        (["--lora", f"{style}:x"], "must be a number from -10 to 10, got 'x'"),
        (["--lora", f"{style}:20"], "must be from -10 to 10, got 20"),
        (["--lora", str(fifo)], "not a regular file"),
        (["--lora", str(zero)], "not a regular file"),
        (["--lora", str(not_lora)], "holds no LoRA weights"),
        (["--lora", str(style), "--lora", str(detail), "--lora-weight-name", "a", "--lora-weight-name", "b",
          "--lora-weight-name", "c"], "Give --lora-weight-name once for all LoRAs or once for each (2), got 3"),
        (["--lora-weight-name", "a.safetensors"], "give --lora too"),
        (["--lora", "someone/no-such-lora"], "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
        (["--textual-inversion", str(pickled)], "a pickle that can run code"),
        (["--textual-inversion", str(misshapen)], "has a type or shape that does not fit its bytes"),
        (["--lora", ":0.5"], "names no file, folder or hub id before its scale"),
    ]


def test_bad_loras_are_one_sentence_before_any_model_loads(sd_folder, loras, tmp_path, monkeypatch, capsys):
    from panosync import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    for options, words in _bad_inputs(tmp_path, loras):
        code = main(["generate", "a", "--model", str(sd_folder), *CANVAS, "--out", str(tmp_path / "x.png"),
                     *options])
        one_sentence(capsys, code, words)
        assert not (tmp_path / "x.png").exists()


def test_a_lora_of_another_family_is_one_sentence(sd_folder, tmp_path, capsys):
    from panosync.tiny import tiny_random_xl_components

    xl = save_random_lora("sdxl", tiny_random_xl_components(), tmp_path / "xl")
    code = main(["generate", "a", "--model", str(sd_folder), *CANVAS, "--out", str(tmp_path / "x.png"),
                 "--lora", str(xl)])
    one_sentence(capsys, code, "is a LoRA for another model: none of its layers matches")


@pytest.mark.slow
def test_generate_records_the_loras_and_from_png_remakes_it_until_a_file_changes(sd_folder, loras, sync_pipe,
                                                                                 tmp_path, capsys):
    style, detail = loras
    plain, styled, again = tmp_path / "plain.png", tmp_path / "styled.png", tmp_path / "again.png"
    assert main(["generate", "a hill", "--model", str(sd_folder), *CANVAS, "--out", str(plain)]) == 0
    assert main(["generate", "a hill", "--model", str(sd_folder), *CANVAS, "--out", str(styled),
                 "--lora", f"{style}:0.8", "--lora", f"{detail}:0.5"]) == 0
    assert "loras" not in read_parameters(plain)
    assert read_parameters(styled)["loras"] == [
        {"source": str(style), "weight_name": "pytorch_lora_weights.safetensors", "scale": 0.8,
         "sha256": sha256(style / "pytorch_lora_weights.safetensors")},
        {"source": str(detail), "weight_name": None, "scale": 0.5, "sha256": sha256(detail)}]
    assert not np.array_equal(pixels(plain), pixels(styled))
    assert main(["generate", "--from-png", str(styled), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(pixels(styled), pixels(again)) and read_parameters(again) == read_parameters(styled)
    # an option given overrides the PNG's LoRAs
    only = tmp_path / "only.png"
    assert main(["generate", "--from-png", str(styled), "--lora", f"{detail}:0.5", "--out", str(only),
                 "--quiet"]) == 0
    assert [lora["source"] for lora in read_parameters(only)["loras"]] == [str(detail)]
    # a LoRA file changed after the fact: the picture would differ, and the command says so
    save_random_lora("sd", sync_pipe.components, detail.parent, seed=6, text_encoders=False, weight_name=detail.name)
    capsys.readouterr()
    code = main(["generate", "--from-png", str(styled), "--out", str(tmp_path / "changed.png"), "--quiet"])
    one_sentence(capsys, code, f"The LoRA {detail} has changed since the PNG was made (its SHA-256 differs)",
                 "--lora")
    detail.unlink()
    code = main(["generate", "--from-png", str(styled), "--out", str(tmp_path / "gone.png"), "--quiet"])
    one_sentence(capsys, code, "cannot be loaded again", "no such file", "give --lora")


@pytest.mark.slow
def test_a_lora_made_for_tiny_random_loads_on_it_and_changes_the_picture(tmp_path):
    """The bundled tiny-random, as `--model tiny-random` takes it (one 512-pixel window, one step)."""
    from panosync.models import load_pipeline, resolve_model

    lora = save_random_lora("sd", load_pipeline(resolve_model("tiny-random")).components, tmp_path / "tiny")
    options = ["generate", "a", "--model", "tiny-random", "--width", "512", "--height", "512", "--steps", "1",
               "--seed", "1", "--quiet"]
    assert main([*options, "--out", str(tmp_path / "plain.png")]) == 0
    assert main([*options, "--out", str(tmp_path / "lora.png"), "--lora", f"{lora}:0.8"]) == 0
    assert not np.array_equal(pixels(tmp_path / "plain.png"), pixels(tmp_path / "lora.png"))
    assert read_parameters(tmp_path / "lora.png")["loras"][0]["scale"] == 0.8


# ------------------------------------------------------------------------------------ batch


@pytest.mark.slow
def test_batch_takes_loras_and_each_lines_scales(sd_folder, loras, tmp_path, capsys):
    style, _ = loras
    canvas = dict(width=64, height=32, stride=8, num_inference_steps=2, seed=3)
    jobs = tmp_path / "jobs.jsonl"
    # scale 0 first: the next line is made at the default scale again
    jobs.write_text(json.dumps({"prompt": "a hill", "name": "off", "lora_scales": {"style_a": 0}, **canvas}) + "\n"
                    + json.dumps({"prompt": "a hill", "name": "on", **canvas}) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(jobs), "--model", str(sd_folder), "--out", str(out), "--quiet",
                 "--lora", f"{style}:0.8"]) == 0
    on, off = read_parameters(out / "on.png"), read_parameters(out / "off.png")
    assert [lora["scale"] for lora in on["loras"]] == [0.8] and [lora["scale"] for lora in off["loras"]] == [0.0]
    assert "lora_scales" not in on and not np.array_equal(pixels(out / "on.png"), pixels(out / "off.png"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["loras"][0]["sha256"] == sha256(style / "pytorch_lora_weights.safetensors")
    # the LoRA-free panorama is the one made at scale 0
    assert main(["generate", "a hill", "--model", str(sd_folder), *CANVAS, "--out", str(tmp_path / "plain.png")]) \
        == 0
    assert np.array_equal(pixels(out / "off.png"), pixels(tmp_path / "plain.png"))
    # a rerun with the same LoRA keeps both; without it, makes both again: their PNGs were made with it
    capsys.readouterr()
    assert main(["batch", str(jobs), "--model", str(sd_folder), "--out", str(out), "--quiet",
                 "--lora", f"{style}:0.8"]) == 0
    assert "0 made, 2 kept" in capsys.readouterr().out
    plain_jobs = tmp_path / "plain.jsonl"
    plain_jobs.write_text(json.dumps({"prompt": "a hill", "name": "on", **canvas}) + "\n")
    assert main(["batch", str(plain_jobs), "--model", str(sd_folder), "--out", str(out), "--quiet"]) == 0
    assert "1 made, 0 kept" in capsys.readouterr().out and "loras" not in read_parameters(out / "on.png")


def test_a_batch_line_naming_an_unknown_lora_is_refused_before_work(sd_folder, loras, tmp_path, capsys):
    style, _ = loras
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a", "lora_scales": {"nope": 1}}) + "\n")
    code = main(["batch", str(jobs), "--model", str(sd_folder), "--out", str(tmp_path / "out"), "--quiet",
                 "--lora", str(style)])
    one_sentence(capsys, code, "line 1: lora_scales names 'nope', which is no LoRA loaded here (loaded: style_a)")


# ------------------------------------------------------------------------------------ the server


@pytest.fixture(scope="module")
def lora_model(sd_folder, loras):
    from panosync.server.generation import PanoramaModel

    style, _ = loras
    return PanoramaModel.load(str(sd_folder), "cpu", "float32", loras=lora_specs([f"{style}:0.8"]))


@pytest.mark.slow
def test_the_server_takes_lora_scales_of_its_loras_only(lora_model, loras, tmp_path):
    from panosync.server.api import create_app

    style, _ = loras
    request = dict(prompt="a hill", width=64, height=32, stride=8, num_inference_steps=2, seed=3)
    with TestClient(create_app(lora_model, tmp_path / "state")) as client:
        health = client.get("/health").json()
        assert health["loras"] == [{"name": "style_a", "source": str(style), "weight_name":
                                    "pytorch_lora_weights.safetensors", "scale": 0.8,
                                    "sha256": sha256(style / "pytorch_lora_weights.safetensors")}]
        schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictionRequest"]
        assert list(schema["properties"]["lora_scales"]["anyOf"][0]["properties"]) == ["style_a"]
        pictures = {}
        for scale in (0, None):  # the default after a request's own scale: the server puts it back
            body = {**request, **({"lora_scales": {"style_a": scale}} if scale is not None else {})}
            job = client.post("/predictions", json=body, headers={"Prefer": "wait=120"}).json()
            assert job["status"] == "succeeded", job
            png = tmp_path / f"{scale}.png"
            png.write_bytes(client.get(job["urls"]["output"]).content)
            pictures[scale] = png
        assert not np.array_equal(pixels(pictures[None]), pixels(pictures[0]))
        assert read_parameters(pictures[0])["loras"][0]["scale"] == 0.0
        assert read_parameters(pictures[None])["loras"][0]["scale"] == 0.8
        # a name the server did not load, or a file's path: refused, nothing queued
        for scales in ({"nope": 1}, {str(style): 1}):
            answer = client.post("/predictions", json={**request, "lora_scales": scales})
            assert answer.status_code == 422 and "which is no LoRA loaded here" in answer.json()["message"]
        answer = client.post("/predictions", json={**request, "lora_scales": {"style_a": 11}})
        assert answer.status_code == 422 and "from -10 to 10" in answer.json()["message"]


def test_a_server_without_loras_refuses_lora_scales(sync_pipe, tmp_path):
    from panosync.models import resolve_model
    from panosync.server.api import create_app
    from panosync.server.generation import PanoramaModel
    from panosync.settings import model_defaults

    model = PanoramaModel(sync_pipe, "tiny-test", model_defaults(resolve_model("tiny-random")))
    with TestClient(create_app(model, tmp_path / "state")) as client:
        assert client.get("/health").json()["loras"] == []
        assert "lora_scales" not in client.get("/openapi.json").json()["components"]["schemas"][
            "PredictionRequest"]["properties"]
        answer = client.post("/predictions", json={"prompt": "a", "lora_scales": {"x": 1}})
        assert answer.status_code == 422
        assert "names 'x', which is no LoRA loaded here (loaded: none: start it with --lora)" in \
            answer.json()["message"]


def test_textual_inversion_on_sd3_is_one_sentence():
    from panosync.loras import TextualInversionSpec, load_textual_inversions

    class NoLoader:  # SD3's pipeline has no load_textual_inversion
        pass

    with pytest.raises(ValueError, match="NoLoader takes no textual inversion"):
        load_textual_inversions(NoLoader(), (TextualInversionSpec("x.safetensors", "x.safetensors", "0"),))


@pytest.mark.slow
def test_the_page_shows_one_slider_per_lora(lora_model, tmp_path):
    import gradio as gr

    from panosync.server.limits import Limits
    from panosync.server.ui import build_ui

    page = build_ui(lora_model, Limits(), tmp_path)
    sliders = [block for block in page.blocks.values() if isinstance(block, gr.Slider)
               and block.elem_id == "lora-style_a"]
    assert len(sliders) == 1 and sliders[0].value == 0.8 and sliders[0].label == "style_a"


@pytest.mark.slow
def test_every_command_checks_its_loras_before_loading(sd_folder, tmp_path, monkeypatch, capsys):
    from panosync import models
    from panosync.server import generation

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(generation, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hills\n")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "hills"}\n')
    bad = ["--model", str(sd_folder), "--lora", str(tmp_path / "style.pt")]
    for command in (["serve", "--state-dir", str(tmp_path / "state"), "--port", "0"], ["ui", "--port", "0"],
                    ["evaluate", "--prompts", str(prompts), "--seeds", "0-1", "--out", str(tmp_path / "eval")],
                    ["batch", str(jobs), "--out", str(tmp_path / "out")]):
        one_sentence(capsys, main([*command, *bad]), "style.pt is a .pt file, a pickle that can run code")
    assert not (tmp_path / "eval").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_textual_inversion_is_loaded_recorded_and_found_again(sd_folder, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    embedding = tmp_path / "glow.safetensors"
    torch.manual_seed(0)
    save_file({"emb_params": torch.randn(1, 32)}, str(embedding))  # the text encoder's width
    out = tmp_path / "glow.png"
    assert main(["generate", "a <glow> hill", "--model", str(sd_folder), *CANVAS, "--out", str(out),
                 "--textual-inversion", f"{embedding}=<glow>"]) == 0
    assert read_parameters(out)["textual_inversions"] == [
        {"source": str(embedding), "weight_name": None, "token": "<glow>", "sha256": sha256(embedding)}]
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(pixels(out), pixels(again))
    save_file({"emb_params": torch.zeros(1, 32)}, str(embedding))
    capsys.readouterr()
    code = main(["generate", "--from-png", str(out), "--out", str(tmp_path / "changed.png"), "--quiet"])
    one_sentence(capsys, code, "has changed since the PNG was made", "--textual-inversion")


def test_a_lora_none_of_whose_layers_exist_in_the_model_is_one_sentence(tmp_path):
    """A FLUX-shaped LoRA on Stable Diffusion: diffusers loads nothing of it (or refuses it)."""
    import torch
    from conftest import make_pipe
    from safetensors.torch import save_file

    from panosync.loras import load_loras, loaded_adapters

    lora = tmp_path / "flux_style.safetensors"
    save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 8),
               "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 4)}, str(lora))
    pipe = make_pipe(window=8, vae_factor=2)
    with pytest.raises(ValueError, match="flux_style.safetensors is a LoRA for another model: none of its layers "
                                         "matches SyncDiffusionPipeline's networks"):
        load_loras(pipe, lora_specs([str(lora)]))
    assert loaded_adapters(pipe) == set()


def test_a_loras_alpha_in_its_metadata_reaches_the_front_ends(tmp_path):
    """A LoRA saved with lora_alpha = 4 × its rank in the file's metadata (as diffusers' training
    scripts save it) weighs 4 times a rank-alpha one: the front ends load it as diffusers'
    load_lora_weights does from the file, not as a bare state dict, which would lose the alpha."""
    from panosync.loras import load_loras, lora_specs

    from conftest import make_pipe
    from lora_files import save_random_lora

    components = make_pipe(window=16, vae_factor=2).components
    file = save_random_lora("sd", components, tmp_path / "alpha", seed=4, rank=4, alpha=16, text_encoders=False)
    canvas = dict(width=64, height=32, stride=8, num_inference_steps=2, seed=0, output_type="np")
    pictures = {}
    for load in ("diffusers", "panosync"):
        pipe = make_pipe(window=16, vae_factor=2)  # the same random weights each time, a LoRA of its own
        if load == "diffusers":
            pipe.load_lora_weights(str(file.parent), adapter_name="alpha")
        else:
            load_loras(pipe, lora_specs([str(file)]))
        pictures[load] = pipe("a land", **canvas).images
    assert np.abs(pictures["diffusers"] - pictures["panosync"]).max() == 0


def test_a_folder_named_like_weights_is_not_taken_for_them_and_a_path_may_hold_an_equals_sign(loras, tmp_path):
    from panosync.loras import lora_specs, textual_inversion_specs

    style, _ = loras
    folder = tmp_path / "nested"
    (folder / "inner.safetensors").mkdir(parents=True)
    (folder / "real.safetensors").write_bytes((style / "pytorch_lora_weights.safetensors").read_bytes())
    assert Path(lora_specs([str(folder)])[0].path).name == "real.safetensors"

    from safetensors.torch import save_file
    import torch

    odd = tmp_path / "a=b.safetensors"
    save_file({"emb_params": torch.zeros((1, 8))}, str(odd))
    spec, = textual_inversion_specs([str(odd)])
    assert spec.token is None and Path(spec.path) == odd
    spec, = textual_inversion_specs([f"{odd}=<tok>"])
    assert spec.token == "<tok>" and Path(spec.path) == odd
