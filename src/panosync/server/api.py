"""The HTTP API: jobs that make panoramas, with the public SyncDiffusion API's fields.

    POST   /predictions                  queue a job (201); `Prefer: wait` or `wait=N` answers when it is done
    GET    /predictions                  jobs, newest first
    GET    /predictions/{id}             status, progress, parameters, and when done the output's URL
    GET    /predictions/{id}/output.png  the panorama, with the same PNG metadata as `panosync generate`;
                                         `?format=jpg|webp` (or output.jpg, output.webp) and `quality`
                                         (1-100): a JPEG or WebP of it, its metadata in XMP
    POST   /predictions/{id}/cancel      cancel a queued or running job
    DELETE /predictions/{id}             forget a finished job and its output (204)
    GET    /health                       the model (and its LoRAs), the queue and the state folder, without a token

Every field is checked before a job is queued. An answer that is not a success is JSON whose
`message` is one sentence (`detail` holds the same, or for 422 the invalid fields):

    400  the body cannot be read as JSON: it is not UTF-8 text, or nests too deeply
    401  a missing or wrong bearer token, when the server has one: checked before the body is read
    404  no such job
    409  not now: the output of a job that has not succeeded, cancelling a finished job, deleting a
         queued or running one ("cancel it first")
    410  the job succeeded but its PNG is gone from outputs/ (deleted by hand, by --keep or DELETE);
         a PNG removed while it is being sent is sent whole (it is read from the file opened first)
    413  a body over the limit
    422  a field out of range, or a string that is not text (a lone surrogate such as \\ud800), in
         a field of text or in place of a number: the message names the field and what it may be
    429  the queue is full
    507  the state folder cannot take the job (full, not writable): the store's sentence; what the
         request had saved (its condition images, its image inputs) is removed again
    503  /health only: the state folder is degraded; the body says why (`reason`), and POST answers 507

Waiting. `Prefer: wait` holds no thread: the waiting clients' jobs are looked up together, in one
short call to the store every WAIT_POLL_SECONDS, from the event loop (waiting.py), so waiting
clients never delay a request that submits, reads or cancels. At most `Limits.max_waiters` clients
wait at once. Each of them holds a queued or running job, so that bound is reached only on a
server whose --max-queue is larger than it (the defaults, a queue of 16 and 32 waiters, never
reach it). A request past the bound is still queued and answered at once (201) with the job as it
is, without `Preference-Applied` and with a `Panosync-Wait` header that says why: poll the job's
URL instead. So is a request whose job cannot be read back after the wait (the store failed): the
job as it was queued, and the header saying so. (Not a 503 or a 507: the job is queued, and a
client that retried would queue it twice.)

Tokens. With a token, every route but /health needs `Authorization: Bearer <token>`, checked
before anything else, and so do the schema and its pages (/openapi.json, /docs, /redoc) unless the
app is created with `public_docs` (`panosync serve --public-docs`).

A server started with LoRAs (`--lora`) takes `lora_scales`, {name: scale}, the weight of each for
one panorama (the names /health lists); a name it did not load is a 422. No request names a file.

A server started with ControlNets (`--controlnet`) makes ControlSync panoramas: the same endpoints,
and every request needs a `condition` image (base64 or a data URL), with `preprocess`,
`canny_low`, `canny_high`, `controlnet_conditioning_scale` and `resize_condition` as the `control`
command's options. A server without one refuses those fields, and its schema does not list them.

A server without ControlNets takes an image input, as `panosync generate` does: `image` (base64 or
a data URL; img2img, or extending it onto a larger canvas, or upscaling it with `resize_image`),
`mask_image` (inpainting: white is repainted, black kept), `strength` and `image_at`. The canvas is
the image's size unless width or height is given. Each is checked before the job is queued (an
unreadable or transparent image, a mask of colours, all black or of another size, an image larger
than the canvas, a corner that runs it past the canvas: a 422 naming the field); the images are
kept in the state folder by their content while a job refers to them, and the PNG's metadata names
each as {"path", "sha256"}. A ControlSync server refuses these fields.

Every server takes region prompts, `regions`: a list of {"box": [x0, y0, x1, y1]} or {"mask":
base64 or a data URL}, each with a "prompt" and optionally a "negative_prompt" and a "weight". Each
is checked against the request's canvas before the job is queued (regions.plan_regions: a 422 whose
sentence names the region); a mask is read and checked like an image input, kept in the state
folder by its content beside them, and named in the job's parameters and the PNG's metadata as
{"path", "sha256"}; the job's input names it by its file.

Beside this module: the token and body-size middlewares (middleware.py), the waiting clients
(waiting.py), the schema's description of this server (openapi.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import math
import os
import stat
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from email.utils import formatdate
from pathlib import Path
from typing import BinaryIO, Literal, Optional

import PIL.Image
from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..metadata import FORMATS, lossy_file, read_parameters
from .generation import PanoramaModel
from .jobs import SUCCEEDED, Job, JobNotFinished, JobStore, QueueFull, StoreFault, image_paths
from .worker import Worker
from .middleware import BearerToken, BodySizeLimit
from .openapi import describe_server, error_answers
from .limits import Limits
from .schema import IMAGE_UPLOADS, UPLOADS, FieldError, PredictionRequest, describe_error
from .uploads import decode_condition, decode_image_input, decode_regions, file_sha256
from .waiting import DEFAULT_WAIT_SECONDS, MAX_WAIT_SECONDS, WAIT_HEADER, JobWaiters, wait_seconds

__all__ = ["create_app", "printable", "wait_seconds", "WAIT_HEADER"]

log = logging.getLogger("panosync.server")

OPEN_PATHS = ("/health",)
DOCS_PATHS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
OUTPUT_CHUNK_BYTES = 64 * 1024
OutputFormat = Literal["png", "jpg", "jpeg", "webp"]
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


def _time(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def _finite(value):
    """`value` with NaN and infinities as strings: JSON has no such numbers, and a client may send them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value


def printable(value):
    """`value` with every lone surrogate in its strings (keys too) written as an escape, \\ud800: JSON
    lets a client send half a UTF-16 pair, which no answer can encode, so echoing it would fail."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (list, tuple)):
        return [printable(item) for item in value]
    if isinstance(value, dict):
        return {printable(key): printable(item) for key, item in value.items()}
    return value


def unreadable_body(error: StarletteHTTPException) -> str | None:
    """The sentence for FastAPI's 400 "There was an error parsing the body", by its cause (the
    exception JSON decoding raised); None for any other refusal."""
    cause = error.__cause__
    if error.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnicodeDecodeError):
        return (f"The body is not UTF-8 text (byte {cause.object[cause.start]:#04x} at offset {cause.start} is not "
                f"valid {cause.encoding.upper()}): send JSON encoded as UTF-8.")
    if isinstance(cause, RecursionError):
        return "The body's JSON nests arrays or objects too deeply to read: send one flat object of fields."
    if isinstance(cause, ValueError) and "digits" in str(cause):  # int() refuses over 4300 (sys.get_int_max_str_digits)
        return ("The body holds a number of thousands of digits, more than any field takes: send numbers within the "
                "fields' ranges.")
    return f"The body cannot be read as JSON ({type(cause).__name__}): send one JSON object encoded as UTF-8."


def output_response(file: BinaryIO, filename: str) -> StreamingResponse:
    """The PNG in `file`, already open, streamed from its handle and closed when sent: removing the
    file meanwhile (retention, DELETE) cannot break the answer, as an open file stays readable. The
    headers are FileResponse's (length, modification time, ETag), without ranges."""
    status = os.fstat(file.fileno())

    def chunks():
        with file:
            while chunk := file.read(OUTPUT_CHUNK_BYTES):
                yield chunk

    etag = hashlib.md5(f"{status.st_mtime}-{status.st_size}".encode(), usedforsecurity=False).hexdigest()
    return StreamingResponse(chunks(), media_type="image/png", headers={
        "content-disposition": f'inline; filename="{filename}"', "content-length": str(status.st_size),
        "last-modified": formatdate(status.st_mtime, usegmt=True), "etag": f'"{etag}"'})


def converted_output(file: BinaryIO, extension: str, quality: int | None, filename: str, job_id: str) -> Response:
    """The PNG in `file`, already open, as a JPEG or WebP (`extension`) with its metadata
    (metadata.lossy_file), closed when read: 410 when the PNG kept is damaged, 422 when the
    panorama does not fit the format (a WebP's sides, a JPEG's metadata)."""
    with file:
        png = file.read()
    try:
        parameters = read_parameters(io.BytesIO(png))
        image = PIL.Image.open(io.BytesIO(png), formats=("PNG",))
        image.load()
    except (ValueError, OSError, PIL.UnidentifiedImageError):
        raise HTTPException(410, f"The output of job {job_id} on this server's disk is damaged or is no panosync "
                                 f"PNG: submit the job's parameters again to make it again.") from None
    with image:
        try:
            data = lossy_file(image, FORMATS[f".{extension}"], parameters, quality)
        except ValueError as error:
            raise HTTPException(422, f"{str(error).rstrip('.')}: here, ask for format=png or another "
                                     f"format.") from None
    return Response(data, media_type=MEDIA_TYPES[extension],
                    headers={"content-disposition": f'inline; filename="{filename}"'})


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal as {"message": one sentence, "detail": the same or the invalid fields}."""

    def _is_upload(location) -> bool:
        return len(location) > 1 and location[0] == "body" and location[1] in UPLOADS

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        # an upload's field is never echoed back: it may be megabytes of base64
        errors = _finite(jsonable_encoder([{key: value for key, value in e.items()
                                            if key != "input" or not _is_upload(e.get("loc", ()))}
                                           for e in error.errors()]))
        message = "; ".join(describe_error(e) for e in error.errors())  # the values as sent: NaN, not "nan"
        return JSONResponse(printable({"detail": errors, "message": message}), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, error: StarletteHTTPException):
        message = unreadable_body(error) or error.detail
        return JSONResponse({"detail": message, "message": message}, status_code=error.status_code,
                            headers=error.headers)

    @app.exception_handler(StoreFault)
    async def store_fault(request: Request, error: StoreFault):
        return JSONResponse({"detail": str(error), "message": str(error)}, status_code=507)


class Service:
    """What the routes do with the store, the worker and the model: look jobs up and show them,
    check and keep a request, queue it, wait for it. Every method but `wait_for_job` blocks (the
    routes call them in threads)."""

    def __init__(self, model: PanoramaModel, store: JobStore, worker: Worker, waiters: JobWaiters, limits: Limits):
        self.model, self.store, self.worker, self.waiters, self.limits = model, store, worker, waiters, limits

    def job_json(self, job: Job, request: Request, count_queue: bool = True) -> dict:
        """The job as the API shows it; its queue position only with `count_queue` (a store call)."""
        url = str(request.url_for("get_prediction", job_id=job.id))
        total_seconds = None if job.completed_at is None else job.completed_at - job.created_at
        return {
            "id": job.id,
            "status": job.status,
            "input": job.input,
            "parameters": job.parameters,
            "model": self.model.name,
            "progress": {"step": job.step, "total": job.total, "syncing": job.sync_weight > 0,
                         "sync_weight": job.sync_weight},
            "queue_position": self.store.queue_position(job) if count_queue else None,
            "cancel_requested": job.cancel_requested,
            "error": job.error,
            "created_at": _time(job.created_at),
            "started_at": _time(job.started_at),
            "completed_at": _time(job.completed_at),
            "metrics": {"pipeline_seconds": job.pipeline_seconds, "total_seconds": total_seconds},
            "urls": {"get": url, "cancel": f"{url}/cancel",
                     "output": f"{url}/output.png" if job.status == SUCCEEDED else None},
        }

    def accepted_json(self, job: Job, request: Request) -> dict:
        """`job_json` of a job just queued: a store that cannot count the queue now leaves its
        position null rather than turn the accepted job into a 507 (a client would queue it again)."""
        try:
            return self.job_json(job, request)
        except Exception:
            log.exception("counting the queue before job %s", job.id)
            return self.job_json(job, request, count_queue=False)

    def find(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise HTTPException(404, f"No job {job_id} on this server.")
        return job

    def health(self) -> dict:
        try:
            return self.store.health()
        except StoreFault as fault:  # a store too broken to say how it is, is degraded
            return {"status": "degraded", "reason": str(fault), "free_bytes": None}

    def refuse_when_degraded(self) -> None:
        """Refuse a job (507) before anything of it is saved, when the state folder cannot take it."""
        state = self.health()
        if state["status"] != "ok":
            raise StoreFault(state["reason"] or "The state folder cannot take new jobs now.")

    def discard_conditions(self, paths: list[str | Path]) -> None:
        """Remove the condition files a refused request saved; a failure here must not hide the refusal."""
        if not paths:
            return
        try:
            self.store.discard_conditions([Path(path) for path in paths])
        except Exception:
            log.exception("removing the conditions of a refused request")

    def discard_images(self, paths: list[str | Path]) -> None:
        """Remove the image inputs a refused request saved; a failure here must not hide the refusal."""
        if not paths:
            return
        try:
            self.store.discard_images([Path(path) for path in paths])
        except Exception:
            log.exception("removing the image inputs of a refused request")

    def save_images(self, images: list) -> list[dict]:
        """Keep a request's image inputs and region masks (`images`: (what a sentence calls it,
        image) pairs); held by the store until its job is queued or refused. Each as {"path",
        "sha256"}: its file and the SHA-256 of its bytes. When one cannot be kept, none is."""
        saved, paths = [], []
        try:
            for what, image in images:
                paths.append(self.store.save_image(image))
                saved.append({"path": str(paths[-1]), "sha256": file_sha256(paths[-1])})
        except OSError as error:
            self.discard_images(paths)
            raise StoreFault(f"The state folder cannot keep the {what} ({error.strerror or error}): free space in "
                             f"{self.store.state_dir}, or start the server with another --state-dir.") from None
        return saved

    def save_conditions(self, images: list) -> list[Path]:
        """Keep a request's condition images; held by the store until its job is queued or refused."""
        paths = []
        try:
            for image in images:
                paths.append(self.store.save_condition(image))
        except OSError as error:
            self.discard_conditions(paths)
            raise StoreFault(f"The state folder cannot keep the condition image ({error.strerror or error}): free "
                             f"space in {self.store.state_dir}, or start the server with another "
                             f"--state-dir.") from None
        return paths

    def accept(self, given: dict) -> tuple[dict, dict]:
        """The job's input (as sent, a condition, an image input or a region's mask by the name of
        its file) and parameters; the condition images, image inputs and region masks read, checked
        and kept in the state folder. A FieldError otherwise."""
        model, limits = self.model, self.limits
        parameters_given, input = dict(given), dict(given)
        if model.control and given.get("condition"):
            conditions = given["condition"]
            parameters_given["condition"] = [
                decode_condition(text, "condition" if len(conditions) == 1 else f"condition[{index}]",
                                 limits.max_pixels) for index, text in enumerate(conditions)]
        if not model.control:  # a ControlSync server refuses them (prepare), unread
            for name in IMAGE_UPLOADS:
                if given.get(name) is not None:
                    parameters_given[name] = decode_image_input(given[name], name, limits.max_pixels)
        if given.get("regions"):
            parameters_given["regions"] = decode_regions(given["regions"], limits.max_pixels)
        parameters = model.prepare(parameters_given, limits)
        # saved last: a request refused by its fields leaves no file behind
        uploads = [name for name in IMAGE_UPLOADS if parameters.get(name) is not None]
        masked = [number for number, region in enumerate(parameters.get("regions") or [])
                  if region.get("mask") is not None]
        saved = self.save_images([(IMAGE_UPLOADS[name], parameters[name]) for name in uploads]
                                 + [(f"mask of region {number + 1}", parameters["regions"][number]["mask"])
                                    for number in masked])
        for name, record in zip(uploads, saved):
            parameters[name] = record
            input[name] = Path(record["path"]).name
        if masked:
            parameters["regions"], input["regions"] = list(parameters["regions"]), list(given["regions"])
            for number, record in zip(masked, saved[len(uploads):]):
                parameters["regions"][number] = {**parameters["regions"][number], "mask": record}
                input["regions"][number] = {**given["regions"][number], "mask": Path(record["path"]).name}
        if model.control:
            try:
                paths = self.save_conditions(parameters["condition"])
            except BaseException:
                self.discard_images([record["path"] for record in saved])
                raise
            parameters["condition"] = [str(path) for path in paths]
            input["condition"] = [path.name for path in paths]
        return input, parameters

    def queue(self, input: dict, parameters: dict) -> Job:
        """Add the job to the store; when it is refused (429, 507 or anything else), the condition
        files and image inputs saved for it are removed again, so that refused requests cannot fill
        the disk."""
        conditions = parameters.get("condition") if self.model.control else []
        images = image_paths(parameters)
        try:
            return self.store.add(input, parameters, self.limits.max_queue)
        except QueueFull:
            self.discard_conditions(conditions)
            self.discard_images(images)
            raise HTTPException(429, f"The queue is full ({self.limits.max_queue} jobs waiting): try again when a "
                                     f"job has finished.") from None
        except BaseException:
            self.discard_conditions(conditions)
            self.discard_images(images)
            raise

    async def wait_for_job(self, job: Job, seconds: int, request: Request, response: Response) -> Job:
        """The job once it has finished, or as it is after `seconds`; at once when too many clients
        wait. When it cannot be read back (the store failed), the job as it was queued: it is
        accepted, and the answer stays a 201 whose header says to poll."""
        url = request.url_for("get_prediction", job_id=job.id)
        if self.waiters.full():
            response.headers[WAIT_HEADER] = f"not waiting: {self.limits.max_waiters} clients already wait; poll {url}"
            return job
        await self.waiters.wait(job.id, seconds)
        try:
            current = await run_in_threadpool(self.store.get, job.id)
        except Exception:
            log.exception("reading job %s after waiting for it", job.id)
            response.headers[WAIT_HEADER] = (f"not known: the job store could not be read after the wait, so this is "
                                             f"the job as it was queued; poll {url}")
            return job
        response.headers["Preference-Applied"] = f"wait={seconds}"
        return current or job

    def open_output(self, job: Job) -> BinaryIO:
        """The succeeded job's PNG, open for reading; 410 when it is no longer there."""
        path = self.store.output_path(job)
        file = None
        try:
            if path is not None:
                file = open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
        if file is not None and not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            file.close()
            file = None
        if file is None:
            raise HTTPException(410, f"The output of job {job.id} is gone from this server's outputs folder: submit "
                                     f"the job's parameters again (seed {job.parameters.get('seed')}) to make it "
                                     f"again.")
        return file


def create_app(model: PanoramaModel, state_dir: str | Path, limits: Limits = Limits(), token: str | None = None,
               public_docs: bool = False, retention=None, min_free_bytes: int | None = None, engine=None) -> FastAPI:
    """The API for `model`, its jobs kept in `state_dir` (finished ones as long as `retention`, a
    retention.Retention, allows; new ones refused while the folder has under `min_free_bytes` free,
    None: the store's default). The store opens and the worker starts with the app (its lifespan),
    so one app object can be started, stopped and started again. With `token`, every route but
    /health needs it, the schema and docs too unless `public_docs`. With `engine` (a Ray engine, see
    runner/cluster.py) the jobs run on its workers, several at once (ray_worker.py); it stays open
    across starts, for whoever opened it to close."""
    store = (JobStore(state_dir, retention=retention) if min_free_bytes is None else
             JobStore(state_dir, retention=retention, min_free_bytes=min_free_bytes))
    if engine is None:
        worker = Worker(store, model)
    else:
        from .ray_worker import RayWorker

        worker = RayWorker(store, model, engine)
    waiters = JobWaiters(store, limits.max_waiters)
    service = Service(model, store, worker, waiters, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.open()
        worker.start()
        try:
            yield
        finally:
            waiters.stop()
            await asyncio.to_thread(worker.stop)
            store.close()

    controlnets = model.controlnets or []
    control = (f" ControlSync with {', '.join(controlnets)}: every request needs a condition, and image inputs are "
               f"refused." if model.control else
               " This server has no ControlNet: the ControlSync fields (condition …) are refused. An image input "
               "(image, mask_image: base64 or data URLs) is repainted, inpainted or extended; the canvas is its size "
               "unless given.")
    app = FastAPI(title="panosync", version=__version__, lifespan=lifespan,
                  description="SyncDiffusion panoramas. The fields are those of the public SyncDiffusion API; "
                              f"the model is {model.name} (window {model.window * model.vae_factor} pixels, "
                              f"VAE factor {model.vae_factor}).{control}")
    app.state.store, app.state.worker, app.state.model, app.state.limits = store, worker, model, limits
    app.state.waiters = waiters
    # Room for the images a request may hold: a condition per ControlNet, or an image input and its mask.
    app.add_middleware(BodySizeLimit, max_bytes=limits.body_limit(len(controlnets)),
                       hint=" Send smaller images, or start the server with a larger --max-body-bytes.")
    if token is not None:  # added last, so it runs first: before the body is read, its size judged or parsed
        app.add_middleware(BearerToken, token=token, open_paths=OPEN_PATHS + (DOCS_PATHS if public_docs else ()))
    guarded = (401,) if token is not None else ()
    add_error_handlers(app)

    @app.get("/health", responses={503: {"description": "the state folder is degraded (`reason` says why): new "
                                                        "jobs are refused with 507 until it recovers"}})
    def health(response: Response) -> dict:
        state = service.health()
        if state["status"] != "ok":
            response.status_code = 503
        return {**state, "model": model.name, "controlnets": model.controlnets,
                "loras": [{"name": lora.adapter_name, "source": lora.source, "weight_name": lora.weight_name,
                           "scale": lora.scale, "sha256": lora.sha256} for lora in model.loras],
                "device": model.device.type,
                "queued": store.waiting(), "max_queue": limits.max_queue, "max_pixels": limits.max_pixels,
                "max_body_bytes": limits.body_limit(len(controlnets)), "waiting_clients": waiters.count,
                "max_waiters": limits.max_waiters}

    @app.post("/predictions", status_code=201, responses={
        201: {"description": f"queued; with Prefer: wait, finished or as it is after the wait. A request past the "
                             f"{limits.max_waiters} clients that may wait at once, or whose job cannot be read back "
                             f"after the wait, is answered with the job as queued, the header {WAIT_HEADER} saying "
                             f"why",
              "headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}},
                          "Preference-Applied": {"description": "wait=N when the server waited",
                                                 "schema": {"type": "string"}},
                          WAIT_HEADER: {"description": "why the answer is not the waited-for job: poll its URL",
                                        "schema": {"type": "string"}}}},
        **error_answers(400, *guarded, 413, 422, 429, 507)})
    async def create_prediction(body: PredictionRequest, request: Request, response: Response,
                                prefer: Optional[str] = Header(None, description="wait or wait=N: answer when the "
                                                               f"job is done, waiting at most N seconds "
                                                               f"(default {DEFAULT_WAIT_SECONDS}, "
                                                               f"at most {MAX_WAIT_SECONDS})")) -> dict:
        given = body.given()
        # Every store call and condition image goes to a thread: the event loop keeps answering others.
        await run_in_threadpool(service.refuse_when_degraded)
        try:
            input, parameters = await run_in_threadpool(service.accept, given)
        except FieldError as error:
            location = ("body", error.field) if error.field else ("body",)
            sent = None if error.field in UPLOADS else given.get(error.field)  # not megabytes of base64 back
            raise RequestValidationError([{"type": "value_error", "loc": location, "msg": str(error),
                                           "input": sent}]) from None
        job = await run_in_threadpool(service.queue, input, parameters)
        # From here the job is accepted: the answer is a 201 whatever the store does next.
        worker.notify()
        seconds = wait_seconds(prefer)
        if seconds is not None:
            job = await service.wait_for_job(job, seconds, request, response)
        response.headers["Location"] = str(request.url_for("get_prediction", job_id=job.id))
        return await run_in_threadpool(service.accepted_json, job, request)

    @app.get("/predictions", responses=error_answers(*guarded, 422))
    def list_predictions(request: Request,
                         status: Optional[Literal["queued", "running", "succeeded", "failed", "canceled"]] = None,
                         limit: int = Query(100, ge=1, le=1000)) -> dict:
        return {"results": [service.job_json(job, request) for job in store.list(status, limit)]}

    @app.get("/predictions/{job_id}", responses=error_answers(*guarded, 404, 422))
    def get_prediction(job_id: str, request: Request) -> dict:
        return service.job_json(service.find(job_id), request)

    output_answers = {200: {"content": {media: {} for media in MEDIA_TYPES.values()}},
                      **error_answers(*guarded, 404, 409, 410, 422)}

    @app.get("/predictions/{job_id}/output.png", response_class=FileResponse, responses=output_answers)
    def get_output(job_id: str,
                   format: OutputFormat = Query("png", description="png (the file kept), jpg, jpeg or webp"),
                   quality: Optional[int] = Query(None, ge=1, le=100, description="JPEG and WebP: 1-100")):
        """The panorama: the PNG kept, or (`format`) a JPEG or WebP of it carrying the same metadata."""
        return output_in_format(job_id, format, quality)

    @app.get("/predictions/{job_id}/output.{extension}", response_class=FileResponse, responses=output_answers)
    def get_output_as(job_id: str, extension: Literal["jpg", "jpeg", "webp"],
                      quality: Optional[int] = Query(None, ge=1, le=100, description="1-100")):
        """The panorama as a JPEG or WebP carrying the PNG's metadata (its extension: its format)."""
        return output_in_format(job_id, extension, quality)

    def output_in_format(job_id: str, extension: str, quality: int | None):
        job = service.find(job_id)
        if job.status != SUCCEEDED:
            raise HTTPException(409, f"Job {job_id} is {job.status}: only a succeeded job has an output.")
        if extension == "png" and quality is not None:
            raise HTTPException(422, "quality applies to JPEG and WebP, and a PNG is lossless: leave quality out, or "
                                     "ask for format=jpg or webp.")
        file = service.open_output(job)
        if extension == "png":
            return output_response(file, filename=f"panosync-{job_id}.png")
        return converted_output(file, extension, quality, f"panosync-{job_id}.{extension}", job_id)

    @app.post("/predictions/{job_id}/cancel", responses=error_answers(*guarded, 404, 409, 422, 507))
    def cancel_prediction(job_id: str, request: Request) -> dict:
        job = service.find(job_id)
        if job.finished:
            raise HTTPException(409, f"Job {job_id} has finished ({job.status}): there is nothing to cancel.")
        store.request_cancel(job_id)
        worker.cancel(job_id)
        return service.job_json(store.get(job_id), request)

    @app.delete("/predictions/{job_id}", status_code=204, response_class=Response,
                responses=error_answers(*guarded, 404, 409, 422, 507))
    def delete_prediction(job_id: str, request: Request) -> Response:
        try:
            deleted = store.delete(job_id)
        except JobNotFinished:
            status = getattr(store.get(job_id), "status", "not finished")
            cancel = request.url_for("cancel_prediction", job_id=job_id)
            raise HTTPException(409, f"Job {job_id} is {status}: cancel it first (POST {cancel}), then delete "
                                     f"it.") from None
        if deleted is None:
            raise HTTPException(404, f"No job {job_id} on this server.")
        return Response(status_code=204)

    describe_server(app, model, limits, token, OPEN_PATHS)
    return app
