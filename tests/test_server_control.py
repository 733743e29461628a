"""ControlSync over HTTP, on a tiny random-weight model and ControlNet loaded from folders as
`panosync serve --controlnet` loads them: a control job is the pipeline's panorama and its PNG
makes the same one again with `panosync control --from-png`; bad conditions, and control fields
sent to a server without a ControlNet, are 422s that name the field, before anything is queued."""

import base64
import io

import numpy as np
import PIL.Image
import pytest
from fastapi.testclient import TestClient

from panosync.cli import main
from panosync.settings import model_defaults
from panosync.conditions import prepare_condition
from panosync.control import random_controlnet_like
from panosync.metadata import read_parameters
from panosync.models import resolve_model
from panosync.server.api import create_app
from panosync.server.generation import MISSING_CONDITION, PanoramaModel
from panosync.server.limits import Limits
from panosync.server.schema import CONTROL_FIELDS, FIELDS, FieldError
from panosync.server.uploads import decode_condition, save_condition

# sync_pipe: 16-latent windows, VAE factor 2, so 32-pixel windows; 3 views at stride 8.
TINY = dict(stride=8, num_inference_steps=2, sync_weight=0)


def png_bytes(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def base64_png(image: PIL.Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode("ascii")


def photo(size=(64, 32), seed=0) -> PIL.Image.Image:
    """Blocks of colour with sharp edges, for Canny to find."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (-(-size[1] // 8), -(-size[0] // 8), 3), dtype=np.uint8)
    return PIL.Image.fromarray(blocks.repeat(8, axis=0).repeat(8, axis=1)[:size[1], :size[0]])


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sync_pipe):
    root = tmp_path_factory.mktemp("control-server")
    sync_pipe.save_pretrained(root / "model")
    random_controlnet_like(sync_pipe.unet, sync_pipe.vae_scale_factor).save_pretrained(root / "controlnet")
    return root


@pytest.fixture(scope="module")
def control_model(folders):
    return PanoramaModel.load(str(folders / "model"), "cpu", "float32", controlnets=[str(folders / "controlnet")])


@pytest.fixture
def client(control_model, tmp_path):
    with TestClient(create_app(control_model, tmp_path / "state")) as client:
        yield client


def test_a_control_job_is_the_pipelines_panorama_and_the_png_makes_it_again(client, control_model, folders,
                                                                            tmp_path):
    source = photo((32, 16))
    body = {"prompt": "a city", **TINY, "seed": 5, "width": 64, "height": 32, "preprocess": "canny", "canny_low": 50,
            "canny_high": 150, "resize_condition": True, "controlnet_conditioning_scale": 0.8,
            "condition": "data:image/png;base64," + base64_png(source)}
    response = client.post("/predictions", json=body, headers={"Prefer": "wait=120"})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "succeeded", job["error"]
    # the input names the stored condition instead of echoing its base64
    stored_condition = client.app.state.store.conditions / job["input"]["condition"][0]
    assert job["input"]["condition"] == [stored_condition.name] and job["parameters"]["condition"] == [
        str(stored_condition)]
    assert job["parameters"]["sync_threshold"] == 10  # the ControlSync paper's default
    png = client.get(job["urls"]["output"])
    assert png.status_code == 200

    # the pipeline called directly with the same condition, prepared as the `control` command does
    edges = prepare_condition(source, 64, 32, True, "canny", 50, 150)
    pipeline_parameters = {name: value for name, value in job["parameters"].items() if name not in CONTROL_FIELDS}
    expected = control_model.pipe(**pipeline_parameters, image=edges, controlnet_conditioning_scale=0.8,
                                  output_type="np").images[0]
    served = np.asarray(PIL.Image.open(io.BytesIO(png.content)))
    assert np.array_equal(served, (expected * 255).round().astype(np.uint8))
    # and the condition mattered: without it (scale 0) the panorama differs
    plain = control_model.pipe(**pipeline_parameters, image=edges, controlnet_conditioning_scale=0.0,
                               output_type="np").images[0]
    assert not np.array_equal(served, (plain * 255).round().astype(np.uint8))

    # the metadata is the `control` command's, so it makes the same panorama
    first, again = tmp_path / "served.png", tmp_path / "again.png"
    first.write_bytes(png.content)
    parameters = read_parameters(first)
    assert {name: parameters[name] for name in ("condition", "controlnet", "controlnet_conditioning_scale", "preprocess",
                                                "canny_low", "canny_high", "resize_condition", "model")} == dict(
        condition=[str(stored_condition)], controlnet=[str(folders / "controlnet")], controlnet_conditioning_scale=[0.8],
        preprocess="canny", canny_low=50, canny_high=150, resize_condition=True, model=str(folders / "model"))
    assert main(["control", "--from-png", str(first), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(served, np.asarray(PIL.Image.open(again)))


def test_the_canvas_is_the_conditions_size_unless_given(client, control_model):
    edges = base64_png(photo((64, 32)))
    job = client.post("/predictions", json={"prompt": "a", "condition": edges, **TINY, "num_inference_steps": 1},
                      headers={"Prefer": "wait=120"}).json()
    assert job["status"] == "succeeded" and (job["parameters"]["width"], job["parameters"]["height"]) == (64, 32)
    assert job["parameters"]["preprocess"] == "none" and job["parameters"]["controlnet_conditioning_scale"] == [1.0]
    assert PIL.Image.open(io.BytesIO(client.get(job["urls"]["output"]).content)).size == (64, 32)
    health = client.get("/health").json()
    assert health["controlnets"] == control_model.controlnets
    assert health["max_body_bytes"] == 16 * 1024 + 4 * Limits().max_pixels


def transparent_png() -> str:
    return base64_png(PIL.Image.new("RGBA", (64, 32), (0, 0, 0, 0)))


# (fields besides the prompt, the field named, words the message must hold)
BAD_CONTROL_REQUESTS = [
    ({}, "condition", MISSING_CONDITION),
    ({"condition": 5}, "condition", "condition must be an image as base64 text or a data URL, got 5."),
    ({"condition": "PNG 64x32", "controlnet_conditioning_scale": []}, "controlnet_conditioning_scale",
     "controlnet_conditioning_scale must hold at least one value, got []."),
    ({"condition": "not an image!"}, "condition", "neither base64 nor a data URL"),
    ({"condition": "data:image/png,abc"}, "condition", "a data URL but not a base64 one"),
    ({"condition": base64.b64encode(b"plain text, not a picture").decode()}, "condition", "not an image file"),
    ({"condition": "PNG 48x32", "width": 64, "height": 32}, "condition",
     "The condition is 48x32 pixels but the canvas is 64x32: give a condition of the canvas's size, or let panosync "
     "resize it (resize_condition=True"),
    ({"condition": "PNG 65x32"}, "condition", "65x32 pixels, not a multiple of 2 (the VAE factor)"),
    ({"condition": ["PNG 64x32", "PNG 64x32"]}, "condition", "one image per ControlNet (1), got 2"),
    ({"condition": "TRANSPARENT"}, "condition", "has transparency"),
    ({"condition": "PNG 64x32", "preprocess": "canny", "canny_low": 300, "canny_high": 200}, "canny_low",
     "canny_low (300) must not exceed canny_high (200)"),
    ({"condition": "PNG 64x32", "preprocess": "sobel"}, "preprocess",
     "preprocess must be one of none, canny, got 'sobel'."),
    ({"condition": "PNG 64x32", "controlnet_conditioning_scale": -1}, "controlnet_conditioning_scale",
     "controlnet_conditioning_scale: every value must be 0 or more, got -1."),
    ({"condition": "PNG 64x32", "controlnet_conditioning_scale": [1, 1]}, "controlnet_conditioning_scale",
     "one number for all ControlNets or a list of one per ControlNet (1), got 2"),
    ({"condition": "PNG 64x32", "width": 100_000}, "width", "width must be from 1 to 16384, got 100000."),
]


def with_images(fields: dict) -> dict:
    def image(value):
        if value == "TRANSPARENT":
            return transparent_png()
        if isinstance(value, str) and value.startswith("PNG "):
            return base64_png(photo(tuple(map(int, value[4:].split("x")))))
        return value

    return {name: [image(item) for item in value] if isinstance(value, list) and name == "condition"
            else image(value) for name, value in fields.items()}


@pytest.mark.parametrize("fields, field, message", BAD_CONTROL_REQUESTS,
                         ids=[f"{field}:{message[:24]}" for _, field, message in BAD_CONTROL_REQUESTS])
def test_a_bad_condition_is_refused_with_its_field_before_it_is_queued(client, fields, field, message):
    response = client.post("/predictions", json={"prompt": "a land", **TINY, **with_images(fields)})
    assert response.status_code == 422, response.text
    answer = response.json()
    assert [error["loc"][1] for error in answer["detail"]] == [field]  # ("body", field[, list index])
    assert answer["message"].startswith(field) and message in answer["message"]
    assert len(answer["message"]) < 400  # no base64 echoed back
    assert client.get("/predictions").json()["results"] == []


def test_a_condition_over_the_pixel_limit_is_refused_from_its_header(control_model, tmp_path):
    with TestClient(create_app(control_model, tmp_path / "state", Limits(max_pixels=64 * 32))) as client:
        response = client.post("/predictions", json={"prompt": "a", "condition": base64_png(photo((64, 40)))})
        assert response.status_code == 422
        assert "is 64x40 = 2,560 pixels, more than the 2,048 allowed" in response.json()["message"]
        # the body limit makes room for one such condition, uncompressed, in base64, and no more
        assert client.get("/health").json()["max_body_bytes"] == 16 * 1024 + 4 * 64 * 32
        big = {"prompt": "a", "condition": "A" * (4 * 64 * 32 + 16 * 1024)}
        assert client.post("/predictions", json=big).status_code == 413


def test_a_server_without_a_controlnet_refuses_the_control_fields(sync_pipe, tmp_path):
    plain = PanoramaModel(sync_pipe, "tiny-test", model_defaults(resolve_model("tiny-random")))
    with TestClient(create_app(plain, tmp_path / "state")) as client:
        for fields in ({"condition": base64_png(photo((64, 32)))}, {"preprocess": "canny"},
                       {"controlnet_conditioning_scale": 0.5}):
            response = client.post("/predictions", json={"prompt": "a land", "width": 64, "height": 32, **fields})
            assert response.status_code == 422
            field = next(iter(fields))
            assert [error["loc"][-1] for error in response.json()["detail"]] == [field]
            assert response.json()["message"] == (f"{field} is a ControlSync field, and this server has no ControlNet: "
                                                  f"leave it out, or start the server with --controlnet ID_OR_PATH.")
        # a body as large as a condition image fits (the server takes image inputs): the field is refused
        big = client.post("/predictions", json={"prompt": "a", "condition": "A" * 20_000})
        assert big.status_code == 422 and big.json()["message"].startswith("condition is a ControlSync field")
        assert client.get("/predictions").json()["results"] == []
        schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictionRequest"]
        assert tuple(schema["properties"]) == FIELDS  # this server does not advertise what it refuses


def test_conditions_decode_from_base64_or_data_urls_and_are_stored_once(tmp_path):
    image = photo((32, 16))
    encoded = base64_png(image)
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))  # as `base64` writes it
    for text in (encoded, wrapped, "data:image/png;base64," + encoded, "data:;base64," + encoded):
        assert np.array_equal(np.asarray(decode_condition(text, "condition", 10_000)), np.asarray(image))
    with pytest.raises(FieldError, match="condition is neither base64"):
        decode_condition("%%%", "condition", 10_000)
    first = save_condition(image, tmp_path / "conditions")
    assert save_condition(image.convert("RGB"), tmp_path / "conditions") == first  # named by its pixels
    assert save_condition(photo((32, 16), seed=1), tmp_path / "conditions") != first
    assert np.array_equal(np.asarray(PIL.Image.open(first)), np.asarray(image))
    assert [path.name for path in (tmp_path / "conditions").iterdir() if path.name.startswith(".")] == []


def test_serve_with_a_bad_controlnet_is_one_sentence_before_loading(tmp_path, capsys, monkeypatch):
    from panosync.server import generation

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the ControlNet was checked")

    monkeypatch.setattr(generation, "load_pipeline", no_loading)
    monkeypatch.setattr(generation, "load_control_pipeline", no_loading)
    missing = tmp_path / "no-such" / "controlnet"
    code = main(["serve", "--port", "0", "--model", "tiny-random", "--controlnet", str(missing), "--state-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and f"No such ControlNet folder: {missing}" in err and "Traceback" not in err
