"""The HTTP API: jobs that make panoramas, with the public SyncDiffusion API's fields.

    POST   /predictions                  queue a job (201); `Prefer: wait` or `wait=N` answers when it is done
    GET    /predictions                  jobs, newest first
    GET    /predictions/{id}             status, progress, parameters, and when done the output's URL
    GET    /predictions/{id}/output.png  the panorama, with the same PNG metadata as `panosync generate`
    POST   /predictions/{id}/cancel      cancel a queued or running job
    DELETE /predictions/{id}             forget a finished job and its output (204)
    GET    /health                       the model, the queue and the state folder, without a token

Every field is checked before a job is queued. An answer that is not a success is JSON whose
`message` is one sentence (`detail` holds the same, or for 422 the invalid fields):

    400  the body is not text (e.g. not UTF-8)
    401  a missing or wrong bearer token, when the server has one: checked before the body is read
    404  no such job
    409  not now: the output of a job that has not succeeded, cancelling a finished job, deleting a
         queued or running one ("cancel it first")
    410  the job succeeded but its PNG is gone from outputs/ (deleted by hand, or by --keep)
    413  a body over the limit
    422  a field out of range, or a string that is not text (a lone surrogate such as \\ud800): the
         message names the field and what it may be
    429  the queue is full
    507  the state folder cannot take the job (full, not writable): the store's sentence; what the
         request had saved (its condition images) is removed again
    503  /health only: the state folder is degraded; the body says why (`reason`), and POST answers 507

Waiting. `Prefer: wait` holds no thread: the waiting clients' jobs are looked up together, in one
short call to the store every WAIT_POLL_SECONDS, from the event loop (`JobWaiters`), so waiting
clients never delay a request that submits, reads or cancels. At most `Limits.max_waiters` clients
wait at once; a request past them is still queued and answered at once (201) with the job as it
is, without `Preference-Applied` and with a `Panosync-Wait` header that says why: poll the job's
URL instead. (Not a 503: the job is queued, and a client that retried would queue it twice.)

Tokens. With a token, every route but /health needs `Authorization: Bearer <token>`, checked
before anything else, and so do the schema and its pages (/openapi.json, /docs, /redoc) unless the
app is created with `public_docs` (`panosync serve --public-docs`).

A server started with ControlNets (`--controlnet`) makes ControlSync panoramas: the same endpoints,
and every request needs a `condition` image (base64 or a data URL), with `preprocess`,
`canny_low`, `canny_high`, `controlnet_conditioning_scale` and `resize_condition` as the `control`
command's options. A server without one refuses those fields, and its schema does not list them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
from collections import Counter
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional, Union

from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .generation import PanoramaModel
from .jobs import SUCCEEDED, Job, JobNotFinished, JobStore, QueueFull, StoreFault, Worker
from .schema import FieldError, Limits, PredictionRequest, describe_error, describe_request_schema
from .uploads import decode_condition

log = logging.getLogger("panosync.server")

DEFAULT_WAIT_SECONDS = 60
MAX_WAIT_SECONDS = 600
PREFER_WAIT = re.compile(r"(?:^|[,;]\s*)wait(?:\s*=\s*(\d+))?\s*(?:$|[,;])")
# A waiting client hears of its job at most this late; all of them together cost one store call per poll.
WAIT_POLL_SECONDS = 0.1
WAIT_HEADER = "Panosync-Wait"
OPEN_PATHS = ("/health",)
DOCS_PATHS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
TOKEN_NEEDED = ("This server needs the header Authorization: Bearer <token>, with the token it was started with.")


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


class BearerToken:
    """Refuse a request without `Authorization: Bearer <token>` with 401 before the app sees it, and
    so before its body is read or parsed: a stranger learns nothing from how a body is refused, and
    costs nothing by sending a large one. `open_paths` need no token."""

    def __init__(self, app, token: str, open_paths: tuple[str, ...]):
        self.app = app
        self.token = token.encode()
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            return await self.app(scope, receive, send)
        await JSONResponse({"detail": TOKEN_NEEDED, "message": TOKEN_NEEDED}, status_code=401,
                           headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)

    def _authorized(self, scope) -> bool:
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        # compare_digest takes as long for any wrong token of a length: the time says nothing of the token
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)


class JobWaiters:
    """Clients waiting for their jobs to finish (`Prefer: wait`), at most `limit` at once.

    A waiter holds no thread: it awaits an event that one polling task sets when its job has
    finished. That task looks all the waited-for jobs up together, in one short call to the store
    (in a thread, as every blocking store call) per `interval`, and stops when nobody waits. So a
    crowd of waiting clients costs one thread for a moment each interval, never the threads that
    accept and answer other requests."""

    def __init__(self, store: JobStore, limit: int, interval: float = WAIT_POLL_SECONDS):
        self.store = store
        self.limit = limit
        self.interval = interval
        self._events: dict[str, asyncio.Event] = {}  # job id → set when it has finished
        self._waiters: Counter[str] = Counter()  # job id → clients waiting for it
        self._poller: asyncio.Task | None = None

    @property
    def count(self) -> int:
        return sum(self._waiters.values())

    def full(self) -> bool:
        return self.count >= self.limit

    async def wait(self, job_id: str, seconds: float) -> None:
        """Return when `job_id` has finished (or is gone), or after `seconds`."""
        event = self._events.setdefault(job_id, asyncio.Event())
        self._waiters[job_id] += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="panosync-waiters")
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        finally:
            self._waiters[job_id] -= 1
            if self._waiters[job_id] == 0:
                del self._waiters[job_id], self._events[job_id]

    def stop(self) -> None:
        """Stop polling (the server is stopping); whoever still waits is answered by its timeout."""
        if self._poller is not None:
            self._poller.cancel()

    async def _poll(self) -> None:
        while self._events:
            await asyncio.sleep(self.interval)
            job_ids = list(self._events)
            try:
                done = await run_in_threadpool(self._finished_among, job_ids)
            except Exception:  # the store failed: answer the waiters now, with whatever they can read
                log.exception("looking up the jobs that clients wait for")
                done = job_ids
            for job_id in done:
                if job_id in self._events:
                    self._events[job_id].set()

    def _finished_among(self, job_ids: list[str]) -> list[str]:
        jobs = {job_id: self.store.get(job_id) for job_id in job_ids}
        return [job_id for job_id, job in jobs.items() if job is None or job.finished]


class ErrorAnswer(BaseModel):
    """Every answer that is not a success."""

    message: str = Field(description="one sentence: what is wrong, and what to change")
    detail: Union[str, list[dict]] = Field(description="the same sentence; for 422 the invalid fields, each with its "
                                                       "location (loc), message (msg), type and what was sent (input)")


ERRORS = {
    400: "the body is not text (e.g. not UTF-8)",
    401: "the bearer token is missing or wrong (checked before the body is read)",
    404: "no such job on this server",
    409: "the job is not in a state for this: not succeeded (output), finished (cancel), queued or running (delete: "
         "cancel it first)",
    410: "the job succeeded, but its PNG is no longer in the outputs folder",
    413: "the body is larger than the server's limit",
    422: "a field or parameter is out of range or not text: the message names it and what it may be",
    429: "the queue is full: try again when a job has finished",
    507: "the state folder cannot take the job (full or not writable): nothing of the request is kept",
}


def error_answers(*codes: int) -> dict:
    """The `responses` of a route that may answer `codes`, for the OpenAPI schema."""
    return {code: {"model": ErrorAnswer, "description": ERRORS[code]} for code in codes}


def require_bearer(schema: dict) -> None:
    """Mark every operation in the OpenAPI `schema` but those of OPEN_PATHS as needing the token."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "the token the server was started with"}}
    for path, operations in schema["paths"].items():
        if path not in OPEN_PATHS:
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]


def create_app(model: PanoramaModel, state_dir: str | Path, limits: Limits = Limits(), token: str | None = None,
               public_docs: bool = False, retention=None) -> FastAPI:
    """The API for `model`, its jobs kept in `state_dir` (finished ones as long as `retention`, a
    retention.Retention, allows). The store opens and the worker starts with the app (its
    lifespan), so one app object can be started, stopped and started again. With `token`, every
    route but /health needs it, the schema and docs too unless `public_docs`."""
    store = JobStore(state_dir, retention=retention)
    worker = Worker(store, model)
    waiters = JobWaiters(store, limits.max_waiters)

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
    control = (f" ControlSync with {', '.join(controlnets)}: every request needs a condition." if model.control else
               " This server has no ControlNet: the ControlSync fields (condition …) are refused.")
    app = FastAPI(title="panosync", version=__version__, lifespan=lifespan,
                  description="SyncDiffusion panoramas. The fields are those of the public SyncDiffusion API; "
                              f"the model is {model.name} (window {model.window * model.vae_factor} pixels, "
                              f"VAE factor {model.vae_factor}).{control}")
    app.state.store, app.state.worker, app.state.model, app.state.limits = store, worker, model, limits
    app.state.waiters = waiters
    # Condition images make control requests large; a server without ControlNets keeps bodies small.
    app.add_middleware(BodySizeLimit, max_bytes=limits.body_limit(len(controlnets)),
                       hint="" if model.control else " ControlSync's condition images need a server started with "
                                                     "--controlnet, which allows larger bodies.")
    if token is not None:  # added last, so it runs first: before the body is read, its size judged or parsed
        app.add_middleware(BearerToken, token=token, open_paths=OPEN_PATHS + (DOCS_PATHS if public_docs else ()))
    guarded = (401,) if token is not None else ()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        errors = _finite(jsonable_encoder(error.errors()))
        message = "; ".join(describe_error(e) for e in errors)
        return JSONResponse(printable({"detail": errors, "message": message}), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, error: StarletteHTTPException):
        return JSONResponse({"detail": error.detail, "message": error.detail}, status_code=error.status_code,
                            headers=error.headers)

    @app.exception_handler(StoreFault)
    async def store_fault(request: Request, error: StoreFault):
        return JSONResponse({"detail": str(error), "message": str(error)}, status_code=507)

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

    @app.get("/health", responses={503: {"description": "the state folder is degraded (`reason` says why): new "
                                                        "jobs are refused with 507 until it recovers"}})
    def health(response: Response) -> dict:
        state = store_health()
        if state["status"] != "ok":
            response.status_code = 503
        return {**state, "model": model.name, "controlnets": model.controlnets, "device": model.device.type,
                "queued": store.waiting(), "max_queue": limits.max_queue, "max_pixels": limits.max_pixels,
                "max_body_bytes": limits.body_limit(len(controlnets)), "waiting_clients": waiters.count,
                "max_waiters": limits.max_waiters}

    def store_health() -> dict:
        try:
            return store.health()
        except StoreFault as fault:  # a store too broken to say how it is, is degraded
            return {"status": "degraded", "reason": str(fault), "free_bytes": None}

    def refuse_when_degraded() -> None:
        """Refuse a job (507) before anything of it is saved, when the state folder cannot take it."""
        state = store_health()
        if state["status"] != "ok":
            raise StoreFault(state["reason"] or "The state folder cannot take new jobs now.")

    def discard_conditions(paths: list[str | Path]) -> None:
        """Remove the condition files a refused request saved; a failure here must not hide the refusal."""
        if not paths:
            return
        try:
            store.discard_conditions([Path(path) for path in paths])
        except Exception:
            log.exception("removing the conditions of a refused request")

    def save_conditions(images: list) -> list[Path]:
        """Keep a request's condition images; held by the store until its job is queued or refused."""
        paths = []
        try:
            for image in images:
                paths.append(store.save_condition(image))
        except OSError as error:
            discard_conditions(paths)
            raise StoreFault(f"The state folder cannot keep the condition image ({error.strerror or error}): free "
                             f"space in {store.state_dir}, or start the server with another --state-dir.") from None
        return paths

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
        if model.control:  # saved last: a request refused by its fields leaves no file behind
            paths = save_conditions(parameters["condition"])
            parameters["condition"] = [str(path) for path in paths]
            input["condition"] = [path.name for path in paths]
        return input, parameters

    def queue(input: dict, parameters: dict) -> Job:
        """Add the job to the store; when it is refused (429, 507 or anything else), the condition
        files saved for it are removed again, so that refused requests cannot fill the disk."""
        try:
            return store.add(input, parameters, limits.max_queue)
        except QueueFull:
            discard_conditions(parameters.get("condition") if model.control else [])
            raise HTTPException(429, f"The queue is full ({limits.max_queue} jobs waiting): try again when a job "
                                     f"has finished.") from None
        except BaseException:
            discard_conditions(parameters.get("condition") if model.control else [])
            raise

    async def wait_for_job(job: Job, seconds: int, request: Request, response: Response) -> Job:
        """The job once it has finished, or as it is after `seconds`; at once when too many clients wait."""
        if waiters.full():
            response.headers[WAIT_HEADER] = (f"not waiting: {limits.max_waiters} clients already wait; poll "
                                             f"{request.url_for('get_prediction', job_id=job.id)}")
            return job
        await waiters.wait(job.id, seconds)
        response.headers["Preference-Applied"] = f"wait={seconds}"
        return await run_in_threadpool(store.get, job.id) or job

    @app.post("/predictions", status_code=201, responses={
        201: {"description": f"queued; with Prefer: wait, finished or as it is after the wait. A request past the "
                             f"{limits.max_waiters} clients that may wait at once is answered at once, with the "
                             f"header {WAIT_HEADER} saying so",
              "headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}},
                          "Preference-Applied": {"description": "wait=N when the server waited",
                                                 "schema": {"type": "string"}},
                          WAIT_HEADER: {"description": "why the server did not wait", "schema": {"type": "string"}}}},
        **error_answers(400, *guarded, 413, 422, 429, 507)})
    async def create_prediction(body: PredictionRequest, request: Request, response: Response,
                                prefer: Optional[str] = Header(None, description="wait or wait=N: answer when the "
                                                               f"job is done, waiting at most N seconds "
                                                               f"(default {DEFAULT_WAIT_SECONDS}, "
                                                               f"at most {MAX_WAIT_SECONDS})")) -> dict:
        given = body.given()
        # Every store call and condition image goes to a thread: the event loop keeps answering others.
        await run_in_threadpool(refuse_when_degraded)
        try:
            input, parameters = await run_in_threadpool(accept, given)
        except FieldError as error:
            location = ("body", error.field) if error.field else ("body",)
            sent = None if error.field == "condition" else given.get(error.field)  # not megabytes of base64 back
            raise RequestValidationError([{"type": "value_error", "loc": location, "msg": str(error),
                                           "input": sent}]) from None
        job = await run_in_threadpool(queue, input, parameters)
        worker.notify()
        seconds = wait_seconds(prefer)
        if seconds is not None:
            job = await wait_for_job(job, seconds, request, response)
        response.headers["Location"] = str(request.url_for("get_prediction", job_id=job.id))
        return await run_in_threadpool(job_json, job, request)

    @app.get("/predictions", responses=error_answers(*guarded, 422))
    def list_predictions(request: Request,
                         status: Optional[Literal["queued", "running", "succeeded", "failed", "canceled"]] = None,
                         limit: int = Query(100, ge=1, le=1000)) -> dict:
        return {"results": [job_json(job, request) for job in store.list(status, limit)]}

    @app.get("/predictions/{job_id}", responses=error_answers(*guarded, 404, 422))
    def get_prediction(job_id: str, request: Request) -> dict:
        return job_json(find(job_id), request)

    @app.get("/predictions/{job_id}/output.png", response_class=FileResponse,
             responses={200: {"content": {"image/png": {}}}, **error_answers(*guarded, 404, 409, 410, 422)})
    def get_output(job_id: str):
        job = find(job_id)
        if job.status != SUCCEEDED:
            raise HTTPException(409, f"Job {job_id} is {job.status}: only a succeeded job has an output.")
        path = store.output_path(job)
        if path is None or not path.is_file():
            raise HTTPException(410, f"The output of job {job_id} is gone from this server's outputs folder: submit "
                                     f"the job's parameters again (seed {job.parameters.get('seed')}) to make it "
                                     f"again.")
        return FileResponse(path, media_type="image/png", filename=f"panosync-{job_id}.png",
                            content_disposition_type="inline")

    @app.post("/predictions/{job_id}/cancel", responses=error_answers(*guarded, 404, 409, 422, 507))
    def cancel_prediction(job_id: str, request: Request) -> dict:
        job = find(job_id)
        if job.finished:
            raise HTTPException(409, f"Job {job_id} has finished ({job.status}): there is nothing to cancel.")
        store.request_cancel(job_id)
        worker.cancel(job_id)
        return job_json(store.get(job_id), request)

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

    def openapi() -> dict:
        """FastAPI's schema, made to say what this server takes: its model's bounds, its fields, its token."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # caches itself in app.openapi_schema, which this changes in place
            describe_request_schema(schema["components"]["schemas"]["PredictionRequest"],
                                    window_pixels=model.window * model.vae_factor, vae_factor=model.vae_factor,
                                    max_side=limits.max_side, window_latents=model.window,
                                    max_steps=model.max_steps, control=model.control)
            if token is not None:
                require_bearer(schema)
        return app.openapi_schema

    app.openapi = openapi
    return app
