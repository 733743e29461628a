"""The HTTP server under faults and load, on tiny random-weight models: waiting clients hold no
thread, and a store that fails during a wait leaves the accepted job a 201; text that is not text
is a 422, a body that is not UTF-8 a 400; gone outputs are 410, one removed while it is sent is
sent whole; jobs can be deleted; the token is checked before the body is read (and guards the
docs); the OpenAPI schema describes this server; a degraded state folder is 507; and `serve`'s
options fail early with one sentence."""

import asyncio
import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import anyio.to_thread
import httpx
import numpy as np
import PIL.Image
import pytest
import uvicorn
from fastapi.testclient import TestClient

from panosync.cli import main
from panosync.settings import model_defaults
from panosync.control import ControlSyncPipeline, random_controlnet_like
from panosync.models import resolve_model
from panosync.server import command
from panosync.server.api import WAIT_HEADER, create_app, printable
from panosync.server.generation import PanoramaModel
from panosync.server.jobs import StoreFault
from panosync.server.retention import DEFAULT_MIN_FREE_BYTES, Retention
from panosync.server.limits import Limits
from panosync.server.schema import FIELDS

from test_server_api import LONG, TINY, finished, free_port, wait_for

TOKEN = {"Authorization": "Bearer s3cret"}


@pytest.fixture(scope="module")
def model(sync_pipe):
    return PanoramaModel(sync_pipe, "tiny-test", model_defaults(resolve_model("tiny-random")))


@pytest.fixture(scope="module")
def control_model(sync_pipe):
    pipe = ControlSyncPipeline(**sync_pipe.components, controlnet=random_controlnet_like(sync_pipe.unet, 2))
    return PanoramaModel(pipe, "tiny-test", model_defaults(resolve_model("tiny-random"), control=True),
                         controlnets=["tiny-random"])


def client_for(model, state_dir, token=None, public_docs=False, min_free_bytes=None, **limits):
    return TestClient(create_app(model, state_dir, Limits(**limits), token=token, public_docs=public_docs,
                                 min_free_bytes=min_free_bytes))


def until(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "it did not happen in time"
        time.sleep(0.05)


def png_base64(size=(64, 32), seed=0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------- waiting


@contextmanager
def live_server(app, thread_tokens: int):
    """`app` under uvicorn on a free loopback port, in a thread whose event loop has `thread_tokens`
    threads for blocking work (anyio's pool: sync routes and run_in_threadpool), as a small machine
    would, and a default executor far larger, so that a wait holding a thread in either shows."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)

    async def serve():
        anyio.to_thread.current_default_thread_limiter().total_tokens = thread_tokens
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64))
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.slow
def test_waiting_clients_hold_no_thread_and_never_delay_a_plain_post(model, tmp_path):
    """Twelve clients wait (Prefer: wait) behind a long job on a server with four threads for
    blocking work; a plain POST and a GET still answer at once, and the waiters add no threads."""
    waiters, threads = 12, 4
    app = create_app(model, tmp_path / "state", Limits(max_queue=64, max_waiters=64))
    with live_server(app, threads) as url, httpx.Client(base_url=url, timeout=60) as client:
        long_job = client.post("/predictions", json={"prompt": "a land", **LONG}).json()
        wait_for(client, long_job["id"], lambda job: job["status"] == "running")
        baseline = threading.active_count()
        with ThreadPoolExecutor(waiters) as pool:
            waiting = [pool.submit(httpx.post, f"{url}/predictions", json={"prompt": "a land", **TINY},
                                   headers={"Prefer": "wait=60"}, timeout=90) for _ in range(waiters)]
            queued = lambda: client.get("/predictions", params={"status": "queued"}).json()["results"]  # noqa: E731
            until(lambda: len(queued()) == waiters)
            time.sleep(0.5)  # from queueing its job to waiting, a request takes a few milliseconds
            # the test's own client threads are in `baseline + waiters`; the server may add its pool at most
            assert threading.active_count() <= baseline + waiters + threads

            started = time.monotonic()
            plain = client.post("/predictions", json={"prompt": "a land", **TINY}, timeout=10)
            listed = client.get("/predictions", params={"limit": 5}, timeout=10)
            assert plain.status_code == 201 and listed.status_code == 200
            assert time.monotonic() - started < 5  # was 42 s with eight waiters (issue 15)

            client.post(f"/predictions/{long_job['id']}/cancel")
            answers = [future.result() for future in waiting]
        assert all(answer.status_code == 201 and answer.headers["preference-applied"] == "wait=60"
                   for answer in answers)
        assert {answer.json()["status"] for answer in answers} == {"succeeded"}  # answered when done, not at 60 s
        wait_for(client, plain.json()["id"], finished)


def test_clients_past_the_waiting_bound_are_queued_and_answered_at_once(model, tmp_path):
    with client_for(model, tmp_path / "state", max_waiters=1) as client:
        long_job = client.post("/predictions", json={"prompt": "a land", **LONG}).json()
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(client.post, "/predictions", json={"prompt": "a land", **TINY},
                                headers={"Prefer": "wait=60"})
            until(lambda: client.get("/health").json()["waiting_clients"] == 1)
            started = time.monotonic()
            second = client.post("/predictions", json={"prompt": "a land", **TINY}, headers={"Prefer": "wait=60"})
            assert time.monotonic() - started < 5
            assert second.status_code == 201 and second.json()["status"] == "queued"
            assert "preference-applied" not in second.headers
            assert second.headers[WAIT_HEADER].startswith("not waiting: 1 clients already wait; poll http")
            client.post(f"/predictions/{long_job['id']}/cancel")
            assert first.result().headers["preference-applied"] == "wait=60"
        assert wait_for(client, second.json()["id"], finished)["status"] == "succeeded"


def test_a_store_that_fails_during_a_wait_answers_201_with_the_job_as_queued(model, tmp_path, monkeypatch):
    """The job is queued: a 507 would make a client that retries queue it twice."""
    # Broke: wait_for_job without its try (507 with the fault's sentence), and accepted_json
    # without its fallback (507 again, from counting the queue).
    with client_for(model, tmp_path / "state") as client:
        store = client.app.state.store
        long_job = client.post("/predictions", json={"prompt": "a land", **LONG}).json()
        wait_for(client, long_job["id"], lambda job: job["status"] == "running")  # the worker reads no job now

        def fault(*args, **kwargs):
            raise StoreFault("The job database in the state folder cannot be read.")

        def add_then_fail(*args, add=store.add):  # the store fails once the job is queued
            job = add(*args)
            monkeypatch.setattr(store, "get", fault)  # the waiters' poll and the read after the wait
            monkeypatch.setattr(store, "queue_position", fault)
            return job

        monkeypatch.setattr(store, "add", add_then_fail)
        started = time.monotonic()
        answer = client.post("/predictions", json={"prompt": "a land", **TINY}, headers={"Prefer": "wait=60"})
        monkeypatch.undo()
        assert time.monotonic() - started < 10  # answered after the failed poll, not after 60 s
        assert answer.status_code == 201, answer.text
        job = answer.json()
        assert job["status"] == "queued" and job["queue_position"] is None and job["error"] is None
        assert "preference-applied" not in answer.headers
        assert answer.headers[WAIT_HEADER] == ("not known: the job store could not be read after the wait, so this is "
                                               f"the job as it was queued; poll {answer.headers['location']}")
        client.post(f"/predictions/{long_job['id']}/cancel")
        assert wait_for(client, job["id"], finished)["status"] == "succeeded"
        assert len(client.get("/predictions").json()["results"]) == 2  # queued once


# ----------------------------------------------------------------------------- text that is not text

NOT_TEXT = [  # (raw JSON body, the field the message names)
    (rb'{"prompt": "\ud800"}', "prompt"),
    (rb'{"prompt": "a land \udfff at night"}', "prompt"),
    (rb'{"prompt": "a", "negative_prompt": "\udc00"}', "negative_prompt"),
    (rb'{"prompt": "a", "\ud800": 1}', "body: the field name '\\ud800'"),
    (b'{"prompt": "\xed\xa0\x80"}', "prompt"),  # the surrogate written in (invalid) UTF-8 bytes
]

# A field that is not text, sent a string that is not text: the message says what the field may be.
NOT_TEXT_NOR_THE_TYPE = [  # (raw JSON body, the start of the message)
    (rb'{"prompt": "a", "width": "\ud800"}', "width must be a whole number"),
    (rb'{"prompt": "a", "seed": "1\ud800"}', "seed must be a whole number"),
    (rb'{"prompt": "a", "guidance_scale": "\ud83d"}', "guidance_scale must be a number"),
    (rb'{"prompt": "a", "loop_closure": "\ud800"}', "loop_closure must be true or false"),
]


@pytest.mark.parametrize("body, field", NOT_TEXT, ids=[field for _, field in NOT_TEXT])
def test_a_lone_surrogate_in_text_is_a_422_naming_the_field(model, tmp_path, body, field):
    with client_for(model, tmp_path / "state") as client:
        response = client.post("/predictions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422
        message = response.json()["message"]
        assert message.startswith(f"{field} is not text: it holds a lone surrogate (U+D")
        assert message.count(".") == 1 and message.endswith("send valid UTF-8.")  # one sentence
        assert client.get("/predictions").json()["results"] == []


def test_an_unknown_field_holding_a_lone_surrogate_is_named_unknown(model, tmp_path):
    """The value's surrogate matters less than the field's being none of the API's."""
    with client_for(model, tmp_path / "state") as client:
        response = client.post("/predictions", content=rb'{"prompt": "a", "sync_wieght": "\ud800"}',
                               headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert response.json()["message"].startswith("sync_wieght: Extra inputs are not permitted (the fields are")


@pytest.mark.parametrize("body, start", NOT_TEXT_NOR_THE_TYPE,
                         ids=[start.split()[0] for _, start in NOT_TEXT_NOR_THE_TYPE])
def test_a_lone_surrogate_in_a_number_says_what_the_field_may_be(model, tmp_path, body, start):
    # Broke: describe_error without the expected_kind case ("width is not text: ...").
    with client_for(model, tmp_path / "state") as client:
        response = client.post("/predictions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422
        message = response.json()["message"]
        assert message.startswith(f"{start}, got a string holding a lone surrogate (U+D"), message
        assert message.count(".") == 1 and message.endswith(", which is not text.")  # one sentence
        assert client.get("/predictions").json()["results"] == []


def test_a_lone_surrogate_in_a_condition_is_a_422(control_model, tmp_path):
    with client_for(control_model, tmp_path / "state") as client:
        body = b'{"prompt": "a", "condition": ["\\ud800"]}'
        response = client.post("/predictions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["message"].startswith("condition.0 is not text")


def test_answers_never_echo_what_cannot_be_encoded():
    assert printable({"\ud800": ["a\udfffb", 1, None]}) == {"\\ud800": ["a\\udfffb", 1, None]}
    assert printable("caf\u00e9 \U0001f304") == "caf\u00e9 \U0001f304"  # real text is left alone


def test_a_body_that_is_not_utf8_is_a_400_that_says_what_to_send(model, tmp_path):
    # Broke: the refused handler without unreadable_body ("There was an error parsing the body").
    with client_for(model, tmp_path / "state") as client:
        latin1 = client.post("/predictions", content='{"prompt": "caf\u00e9"}'.encode("latin-1"),
                             headers={"content-type": "application/json"})
        assert latin1.status_code == 400
        assert latin1.json()["message"] == ("The body is not UTF-8 text (byte 0xe9 at offset 15 is not valid UTF-8): "
                                            "send JSON encoded as UTF-8.")
        deep = client.post("/predictions", content=b'{"prompt": "a", "seed": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                           headers={"content-type": "application/json"})
        assert deep.status_code == 400
        assert deep.json()["message"] == ("The body's JSON nests arrays or objects too deeply to read: send one flat "
                                          "object of fields.")
        huge = client.post("/predictions", content=b'{"prompt": "a", "width": ' + b"9" * 5000 + b"}",
                           headers={"content-type": "application/json"})  # past Python's 4300 digits
        assert huge.status_code == 400
        assert huge.json()["message"] == ("The body holds a number of thousands of digits, more than any field takes: "
                                          "send numbers within the fields' ranges.")
        assert client.get("/predictions").json()["results"] == []


def test_malformed_json_is_a_422_that_says_where(model, tmp_path):
    with client_for(model, tmp_path / "state") as client:
        response = client.post("/predictions", content=b'{"prompt": "a", "width": 3',
                               headers={"content-type": "application/json"})
        assert response.status_code == 422
        assert response.json()["message"] == "body: not valid JSON at character 26: Expecting ',' delimiter."
        for body, got in ((b"", "nothing"), (b"[1]", "a JSON array"), (b"null", "a JSON null")):
            response = client.post("/predictions", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422
            assert response.json()["message"] == ('body: send one JSON object of fields, e.g. {"prompt": "snowy '
                                                  f'mountains"}}, got {got}.')
        response = client.get("/predictions?limit=abc")
        assert response.status_code == 422 and response.json()["message"] == "limit must be a whole number, got 'abc'."
        for headers in ({}, {"content-type": "text/plain"}):  # JSON without its header is text to FastAPI
            response = client.post("/predictions", content=b'{"prompt": "a"}', headers=headers)
            assert response.status_code == 422
            assert response.json()["message"] == ("body: it arrived as text, not as JSON: send one JSON object of "
                                                   "fields with the header Content-Type: application/json.")


# ------------------------------------------------------------------------------ gone and deleted


def test_a_removed_output_is_410_and_a_finished_job_can_be_deleted(model, tmp_path):
    with client_for(model, tmp_path / "state") as client:
        job = client.post("/predictions", json={"prompt": "a land", **TINY, "seed": 5},
                          headers={"Prefer": "wait=60"}).json()
        assert job["status"] == "succeeded"
        (client.app.state.store.outputs / f"{job['id']}.png").unlink()
        gone = client.get(job["urls"]["output"])
        assert gone.status_code == 410
        assert gone.json()["message"] == (f"The output of job {job['id']} is gone from this server's outputs folder: "
                                          f"submit the job's parameters again (seed 5) to make it again.")

        assert client.delete(f"/predictions/{job['id']}").status_code == 204
        assert client.get(f"/predictions/{job['id']}").status_code == 404
        assert client.delete(f"/predictions/{job['id']}").status_code == 404
        assert client.delete("/predictions/nope").json()["message"] == "No job nope on this server."


def test_an_output_removed_while_it_is_sent_is_sent_whole(model, tmp_path):
    """DELETE (or retention) removes a PNG just as a client fetches it: the answer is the whole
    PNG, not a 500 or a broken body; the next fetch of the job is a 404."""
    # Broke: get_output back on FileResponse(path), with or without stat_result= (FileNotFoundError:
    # it opens the path only after the headers have gone, and the file was gone by then).
    app = create_app(model, tmp_path / "state")
    removed = []

    async def delete_when_headers_go(scope, receive, send):
        async def send_then_delete(message):
            if message["type"] == "http.response.start" and scope["path"].endswith("/output.png"):
                job_id = scope["path"].split("/")[2]
                removed.append(app.state.store.delete(job_id))
                assert not (app.state.store.outputs / f"{job_id}.png").exists()
            await send(message)

        await app(scope, receive, send_then_delete)

    with TestClient(delete_when_headers_go) as client:
        job = client.post("/predictions", json={"prompt": "a land", **TINY}, headers={"Prefer": "wait=60"}).json()
        png = (app.state.store.outputs / f"{job['id']}.png").read_bytes()
        sent = client.get(job["urls"]["output"])
        assert removed and sent.status_code == 200 and sent.content == png
        assert sent.headers["content-length"] == str(len(png)) and sent.headers["content-type"] == "image/png"
        assert client.get(job["urls"]["output"]).status_code == 404


def test_an_output_removed_just_before_it_is_opened_is_410(model, tmp_path, monkeypatch):
    # Broke: open_output catching nothing (FileNotFoundError: a 500).
    with client_for(model, tmp_path / "state") as client:
        store = client.app.state.store
        job = client.post("/predictions", json={"prompt": "a land", **TINY, "seed": 7},
                          headers={"Prefer": "wait=60"}).json()
        output_path = store.output_path

        def found_then_removed(found_job):  # retention removes the PNG as the route looks it up
            path = output_path(found_job)
            path.unlink()
            return path

        monkeypatch.setattr(store, "output_path", found_then_removed)
        gone = client.get(job["urls"]["output"])
        assert gone.status_code == 410 and gone.json()["message"].startswith(f"The output of job {job['id']} is gone")


def test_a_queued_or_running_job_is_not_deleted(model, tmp_path):
    with client_for(model, tmp_path / "state") as client:
        running = client.post("/predictions", json={"prompt": "a land", **LONG}).json()
        queued = client.post("/predictions", json={"prompt": "a land", **TINY}).json()
        wait_for(client, running["id"], lambda job: job["status"] == "running")
        for job, status in ((running, "running"), (queued, "queued")):
            refused = client.delete(f"/predictions/{job['id']}")
            assert refused.status_code == 409
            assert refused.json()["message"].startswith(f"Job {job['id']} is {status}: cancel it first (POST http")
        client.post(f"/predictions/{running['id']}/cancel")
        client.post(f"/predictions/{queued['id']}/cancel")
        wait_for(client, running["id"], finished)
        assert client.delete(f"/predictions/{running['id']}").status_code == 204
        assert client.delete(f"/predictions/{queued['id']}").status_code == 204
        assert client.get("/predictions").json()["results"] == []


# ------------------------------------------------------------------------------------- the token


def test_the_token_is_checked_before_the_body_is_read(model, tmp_path):
    with client_for(model, tmp_path / "state", token="s3cret") as client:
        malformed = client.post("/predictions", content=b'{"prompt": ', headers={"content-type": "application/json"})
        assert malformed.status_code == 401 and malformed.headers["www-authenticate"] == "Bearer"
        assert malformed.json()["message"].startswith("This server needs the header Authorization: Bearer <token>")
        huge = client.post("/predictions", content=b"x" * 100_000, headers={"content-type": "application/json"})
        assert huge.status_code == 401  # not 413: a stranger learns nothing of the limits
        surrogate = client.post("/predictions", content=rb'{"prompt": "\ud800"}',
                                headers={"content-type": "application/json", "Authorization": "Basic s3cret"})
        assert surrogate.status_code == 401
        assert client.post("/predictions", content=b'{"prompt": ', headers={
            "content-type": "application/json", **TOKEN}).status_code == 422
        assert client.delete("/predictions/nope").status_code == 401
        assert client.get("/health").status_code == 200


def test_the_docs_need_the_token_unless_they_are_public(model, tmp_path):
    with client_for(model, tmp_path / "private", token="s3cret") as client:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=TOKEN).status_code == 200, path
    with client_for(model, tmp_path / "public", token="s3cret", public_docs=True) as client:
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert client.get(path).status_code == 200, path
        assert client.get("/predictions").status_code == 401
        schema = client.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert schema["paths"]["/predictions"]["post"]["security"] == [{"bearer": []}]
        assert "security" not in schema["paths"]["/health"]["get"]


# ------------------------------------------------------------------------------- the schema


def request_schema(client, headers=None) -> dict:
    return client.get("/openapi.json", headers=headers).json()["components"]["schemas"]["PredictionRequest"]


def bounds(spec: dict) -> dict:
    option = next(option for option in spec.get("anyOf", [spec]) if option.get("type") != "null")
    return {key: option[key] for key in ("minimum", "maximum", "multipleOf") if key in option}


def test_the_schema_describes_this_server(model, control_model, tmp_path):
    with client_for(model, tmp_path / "plain", max_side=4096) as client:
        request = request_schema(client)
        assert tuple(request["properties"]) == FIELDS and request["required"] == ["prompt"]
        for side in ("width", "height"):  # the model's window (32 pixels) in multiples of its VAE factor
            assert bounds(request["properties"][side]) == {"minimum": 32, "maximum": 4096, "multipleOf": 2}
        assert bounds(request["properties"]["stride"]) == {"minimum": 1, "maximum": 16}
        assert bounds(request["properties"]["num_inference_steps"]) == {"minimum": 1, "maximum": 999}
        paths = client.get("/openapi.json").json()["paths"]
        assert "401" not in paths["/predictions"]["post"]["responses"]  # no token, no 401
    with client_for(control_model, tmp_path / "control", token="s3cret") as client:
        request = request_schema(client, TOKEN)
        assert "condition" in request["properties"] and request["required"] == ["prompt", "condition"]
        paths = client.get("/openapi.json", headers=TOKEN).json()["paths"]
    documented = {(path, method): set(operation["responses"]) for path, methods in paths.items()
                  for method, operation in methods.items()}
    assert documented[("/predictions", "post")] >= {"201", "400", "401", "413", "422", "429", "507"}
    assert documented[("/predictions/{job_id}/output.png", "get")] >= {"200", "401", "404", "409", "410"}
    assert documented[("/predictions/{job_id}", "delete")] >= {"204", "401", "404", "409"}
    assert documented[("/predictions/{job_id}/cancel", "post")] >= {"401", "404", "409"}
    assert documented[("/health", "get")] >= {"200", "503"}
    error = paths["/predictions"]["post"]["responses"]["429"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorAnswer"}


# --------------------------------------------------------------------------- a degraded store


def test_a_degraded_state_folder_is_507_and_health_says_why(model, tmp_path):
    # Broke: create_app not passing min_free_bytes to the JobStore (health said ok, 200).
    assert create_app(model, tmp_path / "default").state.store.folder_health.min_free_bytes == DEFAULT_MIN_FREE_BYTES
    with client_for(model, tmp_path / "state", min_free_bytes=2**62) as client:  # no disk has that free
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        reason = health.json()["reason"]
        assert "free" in reason and health.json()["model"] == "tiny-test"
        refused = client.post("/predictions", json={"prompt": "a land", **TINY})
        assert refused.status_code == 507 and refused.json()["message"] == reason
        assert client.get("/predictions").json()["results"] == []


def test_a_refused_control_job_leaves_no_condition_behind(control_model, tmp_path, monkeypatch):
    with client_for(control_model, tmp_path / "state", max_queue=1) as client:
        store = client.app.state.store
        body = {"prompt": "a city", **TINY, "preprocess": "none"}
        running = client.post("/predictions", json={**body, **LONG, "condition": png_base64(seed=1)}).json()
        wait_for(client, running["id"], lambda job: job["status"] == "running")
        client.post("/predictions", json={**body, "condition": png_base64(seed=2)})  # fills the queue
        kept = set(store.conditions.iterdir())
        assert client.post("/predictions", json={**body, "condition": png_base64(seed=3)}).status_code == 429
        assert set(store.conditions.iterdir()) == kept

        def fault(*args, **kwargs):
            raise StoreFault("The state folder is full: free space there.")

        monkeypatch.setattr(store, "add", fault)
        refused = client.post("/predictions", json={**body, "condition": png_base64(seed=4)})
        assert refused.status_code == 507 and refused.json()["message"] == "The state folder is full: free space there."
        assert set(store.conditions.iterdir()) == kept
        client.post(f"/predictions/{running['id']}/cancel")
        wait_for(client, running["id"], finished)


# ------------------------------------------------------------------------------- serve's options


@pytest.fixture
def no_model(monkeypatch):
    """`serve` must refuse its options before it loads a model: loading one fails the test."""
    def load(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(command, "_load", load)


@pytest.mark.parametrize("options, sentence", [
    (["--keep", "forever"], "panosync: error: --keep takes an age (30m, 12h, 7d, 2w)"),
    (["--keep", "7d,2GB,1w"], "panosync: error: --keep takes an age"),
    (["--max-waiters", "0"], "panosync: error: max_waiters must be 1 or more, got 0."),
])
def test_serve_refuses_a_bad_option_in_one_sentence_before_loading(no_model, tmp_path, capsys, options, sentence):
    assert main(["serve", "--port", "0", "--state-dir", str(tmp_path / "state"), *options]) == 2
    error = capsys.readouterr().err
    assert error.startswith(sentence) and error.count("\n") == 1


def test_serve_refuses_a_state_dir_it_cannot_use_before_loading(no_model, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    for state_dir, sentence in ((a_file, f"--state-dir {a_file} is a file: give a folder"),
                                (a_file / "below", f"--state-dir {a_file / 'below'} cannot be created or written"),
                                ("/proc/panosync-state", "--state-dir /proc/panosync-state cannot be created or "
                                                         "written")):
        assert main(["serve", "--port", "0", "--state-dir", str(state_dir)]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"panosync: error: {sentence}") and error.count("\n") == 1, error


def test_serve_passes_keep_public_docs_and_the_waiting_bound_to_the_app(model, tmp_path, monkeypatch):
    import uvicorn as uvicorn_module

    from panosync.server import api

    made = {}
    monkeypatch.setattr(command, "_load", lambda args: model)
    monkeypatch.setattr(api, "create_app", lambda *args, **options: made.update(args=args, options=options))
    monkeypatch.setattr(uvicorn_module, "run", lambda app, **options: None)
    assert main(["serve", "--port", "0", "--state-dir", str(tmp_path / "state"), "--keep", "7d,2GB", "--public-docs",
                 "--max-waiters", "3"]) == 0
    assert made["options"]["retention"] == Retention(max_age_seconds=7 * 86400, max_bytes=2 * 10**9)
    assert made["options"]["public_docs"] is True and made["args"][2].max_waiters == 3
