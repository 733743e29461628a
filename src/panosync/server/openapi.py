"""The API's OpenAPI schema, made to describe one server: its model's bounds and its fields (see
`schema.describe_request_schema`), the error answers of each route, and its token."""

from __future__ import annotations

from typing import Union

from fastapi import FastAPI
from pydantic import BaseModel, Field

from .generation import PanoramaModel
from .limits import Limits
from .schema import describe_request_schema


class ErrorAnswer(BaseModel):
    """Every answer that is not a success."""

    message: str = Field(description="one sentence: what is wrong, and what to change")
    detail: Union[str, list[dict]] = Field(description="the same sentence; for 422 the invalid fields, each with its "
                                                       "location (loc), message (msg), type and what was sent (input)")


ERRORS = {
    400: "the body cannot be read as JSON: not UTF-8 text, or nested too deeply",
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


def require_bearer(schema: dict, open_paths: tuple[str, ...]) -> None:
    """Mark every operation in the OpenAPI `schema` but those of `open_paths` as needing the token."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "the token the server was started with"}}
    for path, operations in schema["paths"].items():
        if path not in open_paths:
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]


def describe_server(app: FastAPI, model: PanoramaModel, limits: Limits, token: str | None,
                    open_paths: tuple[str, ...]) -> None:
    """Make `app`'s schema (/openapi.json, built on first use) say what this server takes: its
    model's bounds, its fields, and with `token` that every path but `open_paths` needs it."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # caches itself in app.openapi_schema, which this changes in place
            describe_request_schema(schema["components"]["schemas"]["PredictionRequest"],
                                    window_pixels=model.window * model.vae_factor, vae_factor=model.vae_factor,
                                    max_side=limits.max_side, window_latents=model.window,
                                    max_steps=model.max_steps, control=model.control,
                                    loras=tuple(lora.adapter_name for lora in model.loras))
            if token is not None:
                require_bearer(schema, open_paths)
        return app.openapi_schema

    app.openapi = openapi
