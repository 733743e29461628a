"""An SDXL model through every front end, as an SD one goes: the HTTP API runs a job, the page's
generate call makes a panorama, and evaluate measures SDXL panoramas (a tiny SDXL folder saved by
diffusers' own StableDiffusionXLPipeline, as a downloaded one is)."""

import json

import numpy as np
import PIL.Image
import pytest

from panosync import settings
from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.server.api import create_app
from panosync.server.generation import PanoramaModel
from panosync.server.limits import Limits
from panosync.xl import SyncDiffusionXLPipeline

CANVAS = dict(width=64, height=32, stride=8, num_inference_steps=2, sync_threshold=1, seed=5)


@pytest.fixture(scope="module")
def xl_model(xl_folder):
    return PanoramaModel.load(str(xl_folder), device="cpu", dtype="float32")


def expected_picture(model: PanoramaModel, parameters: dict) -> np.ndarray:
    call = {name: parameters[name] for name in settings.PIPELINE_NAMES if name in parameters}
    image = model.pipe(**call, output_type="np").images[0]
    return (image * 255).round().astype(np.uint8)


@pytest.mark.slow
def test_the_api_runs_an_sdxl_job(xl_model, tmp_path):
    from fastapi.testclient import TestClient

    assert type(xl_model.pipe) is SyncDiffusionXLPipeline
    with TestClient(create_app(xl_model, tmp_path / "state", Limits())) as client:
        response = client.post("/predictions", json={"prompt": "a land", **CANVAS}, headers={"Prefer": "wait=120"})
        job = response.json()
        assert response.status_code in (200, 201) and job["status"] == "succeeded", job
        png = tmp_path / "api.png"
        png.write_bytes(client.get(job["urls"]["output"]).content)
    parameters = read_parameters(png)
    assert parameters["model"] == str(xl_model.name)
    assert parameters["sync_threshold"] == 1 and parameters["seed"] == 5
    assert np.array_equal(np.asarray(PIL.Image.open(png)), expected_picture(xl_model, job["parameters"]))


def test_the_page_makes_an_sdxl_panorama(xl_model, tmp_path):
    from panosync.server.ui import build_ui

    page = build_ui(xl_model, Limits(), tmp_path / "outputs")
    generate = next(function for function in page.fns.values() if function.name == "generate")
    values = {block.elem_id: block.value for block in generate.inputs}
    values.update(prompt="a land", randomize=False, **CANVAS)
    outputs = generate.fn(*[values[block.elem_id] for block in generate.inputs], progress=lambda *a, **k: None)
    path = outputs[0]
    parameters = read_parameters(path)
    assert PIL.Image.open(path).size == (64, 32) and parameters["seed"] == 5
    assert np.array_equal(np.asarray(PIL.Image.open(path)), expected_picture(xl_model, parameters))


@pytest.mark.slow
def test_evaluate_measures_sdxl_panoramas(xl_folder, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("snowy mountains\n")
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(xl_folder), "--prompts", str(prompts), "--seeds", "0-1", "--width", "64",
                 "--height", "32", "--stride", "8", "--steps", "1", "--sync-threshold", "1", "--examples", "1",
                 "--out", str(out), "--quiet"]) == 0
    assert "images: 6 made" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert [method["name"] for method in results["methods"]] == ["multidiffusion", "syncdiffusion"]
    for method in results["methods"]:
        assert method["metrics"]["intra_lpips"]["mean"] > 0 and method["crops"] == 4
    assert read_parameters(out / "panoramas/syncdiffusion/000-seed0.png")["model"] == str(xl_folder)
