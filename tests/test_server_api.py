"""The HTTP API on tiny random-weight models: every field's bounds, the job lifecycle, cancel, the
queue bound, the token, the body limit, and a real server that is killed mid-job and restarted."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import pytest
from fastapi.testclient import TestClient

from panosync.cli import main
from panosync.settings import model_defaults
from panosync.metadata import read_parameters
from panosync.models import resolve_model
from panosync.server.api import create_app, wait_seconds
from panosync.server.generation import PanoramaModel
from panosync.server.limits import Limits
from panosync.server.schema import FIELDS, UINT32_MAX, FieldError, PredictionRequest

# sync_pipe: 16-latent windows, VAE factor 2, so 32-pixel windows; 3 views at stride 8.
TINY = dict(width=64, height=32, stride=8, num_inference_steps=2, sync_weight=0)
LONG = dict(width=64, height=32, stride=8, num_inference_steps=500)  # runs until cancelled


@pytest.fixture(scope="module")
def model(sync_pipe):
    return PanoramaModel(sync_pipe, "tiny-test", model_defaults(resolve_model("tiny-random")))


def client_for(model, state_dir, **options):
    limits = Limits(**{name: options.pop(name) for name in list(options) if name in Limits.__dataclass_fields__})
    return TestClient(create_app(model, state_dir, limits, **options))


@pytest.fixture
def client(model, tmp_path):
    with client_for(model, tmp_path / "state") as client:
        yield client


def wait_for(client, job_id, done, timeout=120, headers=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/predictions/{job_id}", headers=headers).json()
        if done(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s: {job}")


def finished(job):
    return job["status"] in ("succeeded", "failed", "canceled")


def test_openapi_schema_has_every_field_with_its_range(client):
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["PredictionRequest"]
    assert tuple(request["properties"]) == FIELDS and request["required"] == ["prompt"]  # no ControlNet here
    ranges = {name: {key: value for option in spec.get("anyOf", [spec]) for key, value in option.items()
                     if key in ("minimum", "maximum", "exclusiveMinimum")}
              for name, spec in request["properties"].items()}
    assert ranges["guidance_scale"] == {"minimum": 0, "maximum": 30}
    assert ranges["sync_decay_rate"] == {"exclusiveMinimum": 0, "maximum": 1}
    assert ranges["seed"] == {"minimum": 0, "maximum": UINT32_MAX}
    assert ranges["num_inference_steps"] == {"minimum": 1, "maximum": 999}  # this model's scheduler (steps_offset 1)


# (field, value, words the message must hold)
OUT_OF_RANGE = [  # the sentences of the command, batch and --from-png (settings.check), word for word
    ("prompt", "", "prompt must not be empty"),
    ("prompt", "   ", "prompt must not be empty"),
    ("prompt", "x" * 2001, "at most 2000 characters"),
    ("negative_prompt", 5, "negative_prompt must be text, got 5."),
    ("width", 65, "multiple of 2 pixels"),
    ("width", 16, "at least one window, 32 pixels"),
    ("width", 100_000, "width must be from 1 to 16384, got 100000."),
    ("width", "128", "width must be a whole number, got '128'."),  # lax pydantic took these three
    ("width", 128.0, "width must be a whole number, got 128.0."),
    ("width", True, "width must be a whole number, got True."),
    ("height", 31, "multiple of 2 pixels"),
    ("height", 0, "height must be from 1 to 16384, got 0."),
    ("guidance_scale", 30.5, "guidance_scale must be from 0 to 30, got 30.5."),
    ("guidance_scale", -1, "guidance_scale must be from 0 to 30, got -1."),
    ("guidance_scale", "NaN", "guidance_scale must be a finite number, got nan."),  # sent as a bare NaN, below
    ("guidance_scale", "7.5", "guidance_scale must be a number, got '7.5'."),
    ("sync_weight", -0.1, "sync_weight must be 0 or more, got -0.1."),
    ("sync_decay_rate", 0, "sync_decay_rate must be more than 0 and at most 1, got 0."),
    ("sync_decay_rate", 1.01, "sync_decay_rate must be more than 0 and at most 1, got 1.01."),
    ("sync_freq", 0, "sync_freq must be from 1 to 1000, got 0."),
    ("sync_freq", 1.5, "sync_freq must be a whole number, got 1.5."),
    ("sync_threshold", -1, "sync_threshold must be from 0 to 1000, got -1."),
    ("num_inference_steps", 0, "num_inference_steps must be from 1 to 1000, got 0."),
    ("num_inference_steps", 1001, "num_inference_steps must be from 1 to 1000, got 1001."),
    ("num_inference_steps", 1000, "at most 999 with this model's scheduler"),  # DDIM's steps_offset 1
    ("stride", 0, "stride must be 1 or more, got 0."),
    ("stride", 17, "between 1 and the window size (16 latent pixels)"),
    ("seed", -1, "seed must be from 0 to 4294967295, got -1."),
    ("seed", 2**32, "seed must be from 0 to 4294967295, got 4294967296."),
    ("loop_closure", "sometimes", "loop_closure must be true or false, got 'sometimes'."),
    ("loop_closure", "yes", "loop_closure must be true or false, got 'yes'."),
    ("sync_wieght", 3, "Extra inputs are not permitted (the fields are prompt"),
]


@pytest.mark.parametrize("field, value, allowed", OUT_OF_RANGE, ids=[f"{f}={v!r:.12}" for f, v, _ in OUT_OF_RANGE])
def test_a_field_out_of_range_is_refused_with_its_name_and_what_is_allowed(client, field, value, allowed):
    body = {"prompt": "a land", **TINY, field: value}
    if field == "guidance_scale" and value == "NaN":  # JSON has no NaN; Python's encoder writes it anyway
        response = client.post("/predictions", content=b'{"prompt": "a land", "guidance_scale": NaN}',
                               headers={"content-type": "application/json"})
    else:
        response = client.post("/predictions", json=body)
    assert response.status_code == 422
    answer = response.json()
    assert [error["loc"][-1] for error in answer["detail"]] == [field]
    assert answer["message"].startswith(field) and allowed in answer["message"]
    assert client.get("/predictions").json()["results"] == []  # refused before it was queued


def test_the_prompt_is_required(client):
    response = client.post("/predictions", json=TINY)
    assert response.status_code == 422 and response.json()["message"] == "prompt must be given (text)."


def test_null_means_the_default_except_for_threshold_and_seed():
    request = PredictionRequest(prompt="a", width=None, sync_threshold=None, seed=None)
    assert request.given() == {"prompt": "a", "sync_threshold": None, "seed": None}  # every step; a random seed
    assert PredictionRequest(prompt="a").given() == {"prompt": "a"}  # the model's settings


def test_the_edges_of_every_range_are_accepted(model):
    edges = dict(prompt="a", width=32, height=32, guidance_scale=30, sync_weight=0, sync_decay_rate=1, sync_freq=1000,
                 sync_threshold=0, num_inference_steps=999, stride=16, seed=UINT32_MAX)
    assert model.prepare(edges, Limits()) == {**model.defaults, **edges}
    assert model.prepare({"prompt": "a", "width": 64, "height": 32}, Limits(max_pixels=64 * 32))["width"] == 64
    with pytest.raises(FieldError, match="width × height must be at most 2,046 pixels"):
        model.prepare({"prompt": "a", "width": 64, "height": 32}, Limits(max_pixels=64 * 32 - 2))
    # past settings' own limit too (67,108,864): the sentence gives this server's, the one that applies here
    with pytest.raises(FieldError, match="width × height must be at most 4,194,304 pixels on this server"):
        model.prepare({"prompt": "a", "width": 16384, "height": 16384}, Limits(max_pixels=4_194_304))


def test_a_job_runs_to_a_png_with_the_commands_metadata(client, model):
    response = client.post("/predictions", json={"prompt": "a land at night", **TINY, "seed": 7})
    assert response.status_code == 201 and response.headers["location"].endswith(response.json()["id"])
    job = response.json()
    assert job["input"] == {"prompt": "a land at night", **TINY, "seed": 7}
    assert job["parameters"]["guidance_scale"] == 7.5 and job["parameters"]["sync_decay_rate"] == 0.95  # defaults
    job = wait_for(client, job["id"], finished)
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["progress"] == {"step": 2, "total": 2, "syncing": False, "sync_weight": 0.0}
    assert 0 < job["metrics"]["pipeline_seconds"] <= job["metrics"]["total_seconds"]

    png = client.get(job["urls"]["output"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    path = Path(client.app.state.store.outputs) / f"{job['id']}.png"
    assert path.read_bytes() == png.content
    stored = read_parameters(path)
    assert stored == {**job["parameters"], "model": "tiny-test", "device": "cpu", "dtype": "float32",
                      "threads": model.threads}  # a CPU picture records its thread count
    # the picture is the pipeline's for those parameters
    expected = model.pipe(**job["parameters"], output_type="np").images[0]
    assert np.array_equal(np.asarray(PIL.Image.open(path)), (expected * 255).round().astype(np.uint8))

    listed = client.get("/predictions").json()["results"]
    assert [entry["id"] for entry in listed] == [job["id"]]
    assert client.get("/predictions", params={"status": "failed"}).json()["results"] == []
    assert client.get("/predictions/nope").status_code == 404


def test_a_models_recommended_fast_modes_are_the_servers_default(sync_pipe, tmp_path):
    import json

    folder = tmp_path / "model"
    sync_pipe.save_pretrained(folder)
    (folder / "recommended.json").write_text(json.dumps({"sync_weight": 10.0, "fast_modes": ["no_unet_backward"]}))
    model = PanoramaModel(sync_pipe, "recommending", model_defaults(resolve_model(str(folder))))
    parameters = model.prepare({"prompt": "a land", **TINY, "sync_weight": 10.0, "seed": 1}, Limits())
    assert parameters["fast_modes"] == ["no_unet_backward"]
    image = model.generate(parameters)
    faithful = sync_pipe(**{**parameters, "fast_modes": []}, output_type="np").images[0]
    assert not np.array_equal(np.asarray(image), (faithful * 255).round().astype(np.uint8))
    assert model.metadata(parameters, image)["fast_modes"] == ["no_unet_backward"]  # --from-png makes it again


def test_prefer_wait_answers_with_the_finished_job(client):
    response = client.post("/predictions", json={"prompt": "a land", **TINY}, headers={"Prefer": "wait=60"})
    assert response.status_code == 201 and response.headers["preference-applied"] == "wait=60"
    job = response.json()
    assert job["status"] == "succeeded" and isinstance(job["parameters"]["seed"], int)  # a random seed, reported
    assert client.get(job["urls"]["output"]).status_code == 200


def test_prefer_header_parsing():
    assert wait_seconds(None) is None and wait_seconds("respond-async") is None
    assert wait_seconds("wait") == 60 and wait_seconds("respond-async, wait=5") == 5 and wait_seconds("wait=9999") == 600


def test_progress_cancel_and_the_queue_bound(model, tmp_path):
    with client_for(model, tmp_path / "state", max_queue=1) as client:
        running = client.post("/predictions", json={"prompt": "a land", **LONG, "sync_weight": 20}).json()
        job = wait_for(client, running["id"], lambda job: job["progress"]["step"] >= 1)
        # every step syncs here: the latest step done reports its weight, w · rate^i
        step = job["progress"]["step"]
        assert job["status"] == "running" and job["progress"]["syncing"] is True
        assert job["progress"]["sync_weight"] == pytest.approx(20 * 0.95 ** (step - 1))

        waiting = client.post("/predictions", json={"prompt": "a land", **TINY}).json()
        assert waiting["status"] == "queued" and waiting["queue_position"] == 0
        full = client.post("/predictions", json={"prompt": "a land", **TINY})
        assert full.status_code == 429 and "queue is full (1 jobs waiting)" in full.json()["detail"]

        assert client.post(f"/predictions/{waiting['id']}/cancel").json()["status"] == "canceled"
        assert client.post(f"/predictions/{running['id']}/cancel").json()["cancel_requested"] is True
        job = wait_for(client, running["id"], finished)
        assert job["status"] == "canceled" and job["progress"]["step"] < 500
        assert client.post(f"/predictions/{running['id']}/cancel").status_code == 409
        assert client.get(f"/predictions/{running['id']}/output.png").status_code == 409
        assert client.get(f"/predictions/{waiting['id']}").json()["status"] == "canceled"  # never ran
        assert client.get(f"/predictions/{waiting['id']}").json()["started_at"] is None


def test_a_token_guards_the_jobs(model, tmp_path):
    with client_for(model, tmp_path / "state", token="s3cret") as client:
        bad = {"prompt": "a land", "guidance_scale": 99}  # passes the guard only to fail validation: nothing runs
        assert client.post("/predictions", json=bad).status_code == 401
        assert client.get("/predictions").status_code == 401
        assert client.post("/predictions", json=bad, headers={"Authorization": "Bearer wrong"}).status_code == 401
        response = client.post("/predictions", json=bad, headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 422
        assert client.get("/predictions", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").json()["model"] == "tiny-test"


def test_a_large_body_is_refused(model, tmp_path):
    # 16 KiB of fields and room for an image input and its mask of max_pixels each, uncompressed, in base64
    with client_for(model, tmp_path / "state", max_pixels=64 * 32) as client:
        assert client.get("/health").json()["max_body_bytes"] == 16 * 1024 + 2 * 4 * 64 * 32 == 32768
        big = b'{"prompt": "' + b"x" * 40_000 + b'"}'
        response = client.post("/predictions", content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "32768 bytes" in response.json()["message"]
        chunked = client.post("/predictions", content=iter([big[:20_000], big[20_000:]]),
                              headers={"content-type": "application/json"})  # no Content-Length
        assert chunked.status_code == 413


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, sync_pipe):
    folder = tmp_path_factory.mktemp("tiny-model")
    sync_pipe.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_killed_server_keeps_its_results_on_restart(model_folder, tmp_path):
    """Start `panosync serve`, finish a job, kill the server mid-job, start it again: the finished job
    and its PNG are there, the interrupted one failed, the queued one runs."""
    state, port = tmp_path / "state", free_port()
    command = [sys.executable, "-m", "panosync.cli", "serve", "--model", str(model_folder), "--state-dir",
               str(state), "--port", str(port)]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                                os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start in 180 s"
                time.sleep(0.25)
        done = httpx.post(f"{url}/predictions", json={"prompt": "a land", **TINY, "seed": 3},
                          headers={"Prefer": "wait=120"}, timeout=130).json()
        assert done["status"] == "succeeded"
        png = httpx.get(done["urls"]["output"]).content
        interrupted = httpx.post(f"{url}/predictions", json={"prompt": "a land", **LONG, "sync_weight": 0}).json()
        queued = httpx.post(f"{url}/predictions", json={"prompt": "a land", **TINY, "seed": 4}).json()
        while httpx.get(f"{url}/predictions/{interrupted['id']}").json()["progress"]["step"] < 1:
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()

    with client_for(PanoramaModel.load(str(model_folder)), state) as client:
        again = client.get(f"/predictions/{done['id']}").json()
        assert again["status"] == "succeeded" and again["parameters"] == done["parameters"]
        assert client.get(f"/predictions/{done['id']}/output.png").content == png
        failed = client.get(f"/predictions/{interrupted['id']}").json()
        assert failed["status"] == "failed" and failed["error"].startswith("interrupted")
        assert wait_for(client, queued["id"], finished)["status"] == "succeeded"

    # the PNG carries what `panosync generate --from-png` needs to make the same panorama
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    first.write_bytes(png)
    assert main(["generate", "--from-png", str(first), "--out", str(second), "--quiet"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(first)), np.asarray(PIL.Image.open(second)))


@pytest.mark.slow
def test_the_api_runs_pocket_in_its_recommended_mode_faithful_and_fast(tmp_path):
    """No `fast_modes` runs the model's recommended settings (pocket's: reuse_noise and lpips_alex), `[]`
    asks for the paper's gradient and a list for those fast modes; the job's parameters say which ran."""
    from panosync.bundled import bundled_model_folder, recommended_settings

    recommended = recommended_settings(bundled_model_folder("pocket"))
    pocket = PanoramaModel.load("pocket", device="cpu", dtype="float32")
    small = dict(width=128, num_inference_steps=2, sync_threshold=1, seed=3)
    with client_for(pocket, tmp_path / "state") as client:
        jobs = {}
        for name, extra in (("recommended", {}), ("faithful", {"fast_modes": []}),
                            ("fast", {"fast_modes": ["no_unet_backward"]})):
            answer = client.post("/predictions", json={"prompt": "snowy mountains", **small, **extra},
                                 headers={"Prefer": "wait=120"})
            assert answer.status_code == 201, answer.text
            jobs[name] = answer.json()
            assert jobs[name]["status"] == "succeeded", jobs[name]
        assert jobs["recommended"]["parameters"]["fast_modes"] == recommended["fast_modes"]
        assert jobs["faithful"]["parameters"]["fast_modes"] == []
        assert jobs["fast"]["parameters"]["fast_modes"] == ["no_unet_backward"]
        for name in jobs:  # the rest stays the model's
            assert jobs[name]["parameters"]["sync_weight"] == recommended["sync_weight"]
        pictures = {name: client.get(jobs[name]["urls"]["output"]).content for name in jobs}
        assert pictures["fast"] != pictures["faithful"]


# the parameters the API took after the public ones: (body, field, words of the message)
NEW_FIELDS_OUT_OF_RANGE = [
    ({"fast_modes": ["turbo"]}, "fast_modes", "fast_modes: every value must be one of reuse_noise, no_unet_backward, "
                                              "lpips_alex, dpm_solver, got 'turbo'."),
    ({"fast_modes": "reuse_noise"}, "fast_modes", "fast_modes must be a list, got 'reuse_noise'."),
    ({"sync_image_scale": 0}, "sync_image_scale", "sync_image_scale must be more than 0"),
    ({"sync_image_scale": 0.1}, "sync_image_scale", "shrinks the 32-pixel views below 16 pixels"),
    ({"anchor": 3}, "anchor", "anchor must be a view index from 0 to 2 (this canvas has 3 views)"),
    ({"anchor": -1}, "anchor", "anchor must be 0 or more, got -1."),
    ({"tiled_decode": "sometimes"}, "tiled_decode", "tiled_decode must be true or false, got 'sometimes'."),
    ({"view_batch_size": 2}, "view_batch_size", "Extra inputs are not permitted"),  # the server's own setting
    ({"sync_decoder": "/etc"}, "sync_decoder", "Extra inputs are not permitted"),  # not a path on the server
]


@pytest.mark.parametrize("change, field, allowed", NEW_FIELDS_OUT_OF_RANGE,
                         ids=[f"{field}={change[field]!r:.12}" for change, field, _ in NEW_FIELDS_OUT_OF_RANGE])
def test_the_newer_fields_are_checked_like_the_others(client, change, field, allowed):
    response = client.post("/predictions", json={"prompt": "a land", **TINY, **change})
    assert response.status_code == 422
    answer = response.json()
    assert answer["detail"][0]["loc"][1] == field if isinstance(answer["detail"], list) else True
    assert answer["message"].startswith(field) and allowed in answer["message"], answer["message"]
    assert client.get("/predictions").json()["results"] == []


def test_the_newer_fields_run_and_are_reported(client, model):
    body = {"prompt": "a land", **TINY, "sync_weight": 5, "sync_threshold": 1, "seed": 2, "anchor": 0,
            "fast_modes": ["reuse_noise"], "sync_image_scale": 0.5, "tiled_decode": True}
    job = client.post("/predictions", json=body, headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded", job
    assert {name: job["parameters"][name] for name in ("anchor", "fast_modes", "sync_image_scale", "tiled_decode")} \
        == {"anchor": 0, "fast_modes": ["reuse_noise"], "sync_image_scale": 0.5, "tiled_decode": True}
    expected = model.pipe(**job["parameters"], output_type="np").images[0]
    png = PIL.Image.open(Path(client.app.state.store.outputs) / f"{job['id']}.png")
    assert np.array_equal(np.asarray(png), (expected * 255).round().astype(np.uint8))


def test_an_overflow_fails_the_job_with_its_sentence_not_a_class_name(client):
    """A weight so large the latent overflows: the job fails with NonFiniteError's advice, as the
    command prints it (once "NonFiniteError: …")."""
    body = {"prompt": "a land", **TINY, "sync_weight": 1e30}
    job = client.post("/predictions", json=body, headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "failed" and "became NaN or infinite in float32" in job["error"], job
    assert not job["error"].startswith("NonFiniteError"), job["error"]


def test_fast_modes_none_is_faithful_as_on_the_command(client):
    """["none"] names no fast mode on the command and in a JSONL job; the API once refused it."""
    body = {"prompt": "a land", **TINY, "fast_modes": ["none"]}
    job = client.post("/predictions", json=body, headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded" and job["parameters"]["fast_modes"] == [], job
