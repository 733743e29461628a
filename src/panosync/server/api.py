"""The HTTP API: jobs that make panoramas, with the public SyncDiffusion API's fields.

    POST /predictions                 queue a job (201); `Prefer: wait` or `wait=N` answers when it is done
    GET  /predictions                 jobs, newest first
    GET  /predictions/{id}            status, progress, parameters, and when done the output's URL
    GET  /predictions/{id}/output.png the panorama, with the same PNG metadata as `panosync generate`
    POST /predictions/{id}/cancel     cancel a queued or running job
    GET  /health                      the model and the queue, without a token

Every field is checked before a job is queued: 422 says which field and what it may be. A full
queue is 429, a body over the limit 413, a missing or wrong bearer token (when one is set) 401.

A server started with ControlNets (`--controlnet`) makes ControlSync panoramas: the same endpoints,
and every request needs a `condition` image (base64 or a data URL), with `preprocess`,
`canny_low`, `canny_high`, `controlnet_conditioning_scale` and `resize_condition` as the `control`
command's options. A server without one refuses those fields.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import re
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .. import __version__
from .generation import PanoramaModel
from .jobs import SUCCEEDED, Job, JobStore, QueueFull, Worker
from .schema import FieldError, Limits, PredictionRequest, describe_error
from .uploads import decode_condition, save_condition

DEFAULT_WAIT_SECONDS = 60
MAX_WAIT_SECONDS = 600
PREFER_WAIT = re.compile(r"(?:^|[,;]\s*)wait(?:\s*=\s*(\d+))?\s*(?:$|[,;])")


def wait_seconds(prefer: str | None) -> int | None:
    """The seconds a `Prefer` header asks the server to wait for the result (RFC 7240's "wait")."""
    match = PREFER_WAIT.search(prefer.strip()) if prefer else None
    if match is None:
        return None
    return min(int(match.group(1) or DEFAULT_WAIT_SECONDS), MAX_WAIT_SECONDS)


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


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, whether they say their length or not,
    before the app reads them."""

    def __init__(self, app, max_bytes: int, hint: str = ""):
        self.app = app
        self.max_bytes = max_bytes
        self.hint = hint

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        message = f"The request body is larger than this server's limit of {self.max_bytes} bytes.{self.hint}"
        await JSONResponse({"detail": message, "message": message}, status_code=413)(scope, receive, send)


def create_app(model: PanoramaModel, state_dir: str | Path, limits: Limits = Limits(),
               token: str | None = None) -> FastAPI:
    """The API for `model`, its jobs kept in `state_dir`. The store opens and the worker starts with
    the app (its lifespan), so one app object can be started, stopped and started again."""
    store = JobStore(state_dir)
    worker = Worker(store, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.open()
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)
            store.close()

    controlnets = model.controlnets or []
    control = (f" ControlSync with {', '.join(controlnets)}: every request needs a condition." if model.control else
               " This server has no ControlNet: the ControlSync fields (condition …) are refused.")
    app = FastAPI(title="panosync", version=__version__, lifespan=lifespan,
                  description="SyncDiffusion panoramas. The fields are those of the public SyncDiffusion API; "
                              f"the model is {model.name} (window {model.window * model.vae_factor} pixels, "
                              f"VAE factor {model.vae_factor}).{control}")
    app.state.store, app.state.worker, app.state.model, app.state.limits = store, worker, model, limits
    # Condition images make control requests large; a server without ControlNets keeps bodies small.
    app.add_middleware(BodySizeLimit, max_bytes=limits.body_limit(len(controlnets)),
                       hint="" if model.control else " ControlSync's condition images need a server started with "
                                                     "--controlnet, which allows larger bodies.")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        errors = _finite(jsonable_encoder(error.errors()))
        return JSONResponse({"detail": errors, "message": "; ".join(describe_error(e) for e in errors)},
                            status_code=422)

    bearer = HTTPBearer(auto_error=False, description="Needed when the server was started with a token.")

    def authorized(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if token is None:
            return
        given = "" if credentials is None else credentials.credentials
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "This server needs the header Authorization: Bearer <token>, with the token it "
                                     "was started with.", headers={"WWW-Authenticate": "Bearer"})

    def job_json(job: Job, request: Request) -> dict:
        url = str(request.url_for("get_prediction", job_id=job.id))
        total_seconds = None if job.completed_at is None else job.completed_at - job.created_at
        return {
            "id": job.id,
            "status": job.status,
            "input": job.input,
            "parameters": job.parameters,
            "model": model.name,
            "progress": {"step": job.step, "total": job.total, "syncing": job.sync_weight > 0,
                         "sync_weight": job.sync_weight},
            "queue_position": store.queue_position(job),
            "cancel_requested": job.cancel_requested,
            "error": job.error,
            "created_at": _time(job.created_at),
            "started_at": _time(job.started_at),
            "completed_at": _time(job.completed_at),
            "metrics": {"pipeline_seconds": job.pipeline_seconds, "total_seconds": total_seconds},
            "urls": {"get": url, "cancel": f"{url}/cancel",
                     "output": f"{url}/output.png" if job.status == SUCCEEDED else None},
        }

    def find(job_id: str) -> Job:
        job = store.get(job_id)
        if job is None:
            raise HTTPException(404, f"No job {job_id} on this server.")
        return job

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model.name, "controlnets": model.controlnets, "device": model.device.type,
                "queued": store.waiting(), "max_queue": limits.max_queue, "max_pixels": limits.max_pixels,
                "max_body_bytes": limits.body_limit(len(controlnets))}

    def accept(given: dict) -> tuple[dict, dict]:
        """The job's input (as sent, a condition by the name of its file) and parameters; the
        condition images read, checked and kept in the state folder. A FieldError otherwise."""
        parameters_given, input = dict(given), dict(given)
        if model.control and given.get("condition"):
            conditions = given["condition"]
            parameters_given["condition"] = [
                decode_condition(text, "condition" if len(conditions) == 1 else f"condition[{index}]",
                                 limits.max_pixels) for index, text in enumerate(conditions)]
        parameters = model.prepare(parameters_given, limits)
        if model.control:
            paths = [save_condition(image, store.conditions) for image in parameters["condition"]]
            parameters["condition"] = [str(path) for path in paths]
            input["condition"] = [path.name for path in paths]
        return input, parameters

    @app.post("/predictions", status_code=201, dependencies=[Depends(authorized)],
              responses={422: {"description": "a field out of range: the message names it and what is allowed"},
                         429: {"description": "the queue is full"}})
    async def create_prediction(body: PredictionRequest, request: Request, response: Response,
                                prefer: Optional[str] = Header(None, description="wait or wait=N: answer when the "
                                                               f"job is done, waiting at most N seconds "
                                                               f"(default {DEFAULT_WAIT_SECONDS}, "
                                                               f"at most {MAX_WAIT_SECONDS})")) -> dict:
        given = body.given()
        try:  # in a thread: condition images take a while to read and write
            input, parameters = await asyncio.to_thread(accept, given)
        except FieldError as error:
            location = ("body", error.field) if error.field else ("body",)
            sent = None if error.field == "condition" else given.get(error.field)  # not megabytes of base64 back
            raise RequestValidationError([{"type": "value_error", "loc": location, "msg": str(error),
                                           "input": sent}]) from None
        try:
            job = store.add(input, parameters, limits.max_queue)
        except QueueFull:
            raise HTTPException(429, f"The queue is full ({limits.max_queue} jobs waiting): try again when a job "
                                     f"has finished.") from None
        worker.notify()
        seconds = wait_seconds(prefer)
        if seconds is not None:
            job = await asyncio.to_thread(worker.wait, job.id, seconds)
            response.headers["Preference-Applied"] = f"wait={seconds}"
        response.headers["Location"] = str(request.url_for("get_prediction", job_id=job.id))
        return job_json(job, request)

    @app.get("/predictions", dependencies=[Depends(authorized)])
    def list_predictions(request: Request,
                         status: Optional[Literal["queued", "running", "succeeded", "failed", "canceled"]] = None,
                         limit: int = Query(100, ge=1, le=1000)) -> dict:
        return {"results": [job_json(job, request) for job in store.list(status, limit)]}

    @app.get("/predictions/{job_id}", dependencies=[Depends(authorized)])
    def get_prediction(job_id: str, request: Request) -> dict:
        return job_json(find(job_id), request)

    @app.get("/predictions/{job_id}/output.png", dependencies=[Depends(authorized)], response_class=FileResponse,
             responses={200: {"content": {"image/png": {}}}})
    def get_output(job_id: str):
        job = find(job_id)
        if job.status != SUCCEEDED:
            raise HTTPException(409, f"Job {job_id} is {job.status}: only a succeeded job has an output.")
        return FileResponse(store.output_path(job), media_type="image/png", filename=f"panosync-{job_id}.png",
                            content_disposition_type="inline")

    @app.post("/predictions/{job_id}/cancel", dependencies=[Depends(authorized)])
    def cancel_prediction(job_id: str, request: Request) -> dict:
        job = find(job_id)
        if job.finished:
            raise HTTPException(409, f"Job {job_id} has finished ({job.status}): there is nothing to cancel.")
        store.request_cancel(job_id)
        worker.cancel(job_id)
        return job_json(store.get(job_id), request)

    return app
