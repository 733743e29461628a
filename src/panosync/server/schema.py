"""What a prediction request may hold: the public SyncDiffusion API's fields, each with the range
that makes sense for any model, and the limits a server sets. Ranges that depend on the model
(multiples of the VAE factor, at least one window, the stride at most a window) are checked in
`generation.PanoramaModel.prepare`, which has the model's geometry."""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

UINT32_MAX = 2**32 - 1
MAX_PROMPT_CHARACTERS = 2000  # CLIP reads 77 tokens; anything far longer is a mistake, not a prompt
MAX_STEPS = 1000  # the DDPM training schedule has 1000 timesteps: DDIM cannot take more

# The fields of the public API, in its order.
FIELDS = ("prompt", "negative_prompt", "width", "height", "guidance_scale", "sync_weight", "sync_decay_rate",
          "sync_freq", "sync_threshold", "num_inference_steps", "stride", "seed", "loop_closure")

# ControlSync's fields, for a server started with --controlnet.
CONTROL_FIELDS = ("condition", "preprocess", "canny_low", "canny_high", "controlnet_conditioning_scale",
                  "resize_condition")

# Fields where an explicit null means something other than "the default": every step, a random seed.
NULL_MEANS_SOMETHING = ("sync_threshold", "seed")


@dataclass(frozen=True)
class Limits:
    """What a server accepts beyond the fields' own ranges.

    max_pixels  width × height of one panorama (default: 512 × 8192, four times SD 2 base's default canvas)
    max_side    the longest width or height, whatever the other (default 16384)
    max_queue   jobs waiting to run, not counting the one running; more are refused with 429
    max_body_bytes  size of a request body; larger ones are refused with 413 (default: see `body_limit`)
    max_waiters  clients waiting at once for their jobs (`Prefer: wait`); a request past them is
                 queued and answered at once, without waiting (see api.py). Each waiter holds a
                 queued or running job, so the bound is reached only when max_queue + 1 (the
                 queue and the running job) is at least max_waiters: never with the defaults
                 (16 and 32); it bounds the waiting clients of a server with a larger --max-queue
    """

    max_pixels: int = 512 * 8192
    max_side: int = 16384
    max_queue: int = 16
    max_body_bytes: int | None = None  # None: `body_limit`'s choice
    max_waiters: int = 32

    def __post_init__(self):
        for name in ("max_pixels", "max_side", "max_queue", "max_body_bytes", "max_waiters"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be 1 or more, got {getattr(self, name)}.")

    def body_limit(self, controlnets: int = 0) -> int:
        """max_body_bytes when set; else 16 KiB of fields, and with ControlNets room for one condition
        image per ControlNet as large as the largest canvas, base64-encoded, even if it does not
        compress at all (3 bytes a pixel, 4/3 of that in base64): 16 MiB each at the default
        max_pixels. A Canny edge map of 512 × 3072 is a PNG of a few hundred kilobytes."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return FIELDS_BODY_BYTES + controlnets * 4 * self.max_pixels


FIELDS_BODY_BYTES = 16 * 1024  # the public fields need well under 5 KiB, prompts included


def _one_or_a_list(value):
    """One condition or scale stands for a list of one: a lone ControlNet's."""
    return value if isinstance(value, list) or value is None else [value]


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in `text` (a JSON escape like \\ud800 with no partner),
    None when there is none. Such a string is not text: it cannot be encoded, stored or shown."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


NOT_TEXT = "invalid_text"  # our error type; pydantic's own for such strings is "string_unicode"


def _valid_text(text: str) -> str:
    if lone_surrogate(text) is not None:
        raise PydanticCustomError(NOT_TEXT, "is not text: it holds a lone surrogate")
    return text


# A string that is text: JSON allows escapes of half a UTF-16 pair, which no encoding can write.
Text = Annotated[str, AfterValidator(_valid_text)]

ScaleList = Annotated[Optional[list[Annotated[float, Field(ge=0)]]], BeforeValidator(_one_or_a_list)]
ConditionList = Annotated[Optional[list[Text]], BeforeValidator(_one_or_a_list)]


class PredictionRequest(BaseModel):
    """A panorama to make. Leave a field out for the model's recommended setting or the paper's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: Text = Field(min_length=1, max_length=MAX_PROMPT_CHARACTERS, description="what the panorama shows")
    negative_prompt: Optional[Text] = Field(None, max_length=MAX_PROMPT_CHARACTERS,
                                            description="what it should not show (default: empty)")
    width: Optional[int] = Field(None, ge=1, description="pixels: a multiple of the model's VAE factor, at least one "
                                                         "window (default: four windows)")
    height: Optional[int] = Field(None, ge=1, description="pixels: a multiple of the model's VAE factor, at least one "
                                                          "window (default: one window)")
    guidance_scale: Optional[float] = Field(None, ge=0, le=30, description="classifier-free guidance (7.5)")
    sync_weight: Optional[float] = Field(None, ge=0, description="gradient-descent weight w of the sync step; "
                                                                 "0 is MultiDiffusion (20)")
    sync_decay_rate: Optional[float] = Field(None, gt=0, le=1, description="the weight at step i is w · rate^i (0.95)")
    sync_freq: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description="sync at every n-th step (1)")
    sync_threshold: Optional[int] = Field(None, ge=0, le=MAX_STEPS,
                                          description="sync only in the first n steps; null: every step (the paper)")
    num_inference_steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description="DDIM steps (50)")
    stride: Optional[int] = Field(None, ge=1, description="view stride in latent pixels, 1 to the model's window "
                                                          "(default: a quarter window)")
    seed: Optional[int] = Field(None, ge=0, le=UINT32_MAX, description="seed of the initial noise; null: a random one, "
                                                                       "reported with the result")
    loop_closure: Optional[bool] = Field(None, description="a 360° panorama whose left and right edges meet (false)")
    # ControlSync: only on a server started with --controlnet, where `condition` is required
    condition: ConditionList = Field(
        None, min_length=1, description="ControlSync: the image the panorama follows, base64 (PNG, JPEG, WebP…) or a "
                                        "data URL; a list of one per ControlNet when the server has several. Of the "
                                        "canvas's size, which it sets when width and height are left out")
    preprocess: Optional[Literal["none", "canny"]] = Field(
        None, description="ControlSync: none (the condition is ready) or canny (take the Canny edges of the image)")
    canny_low: Optional[int] = Field(None, ge=0, le=1020, description="Canny: gradients below this are never edges (100)")
    canny_high: Optional[int] = Field(None, ge=0, le=1020,
                                      description="Canny: gradients above this are always edges (200)")
    controlnet_conditioning_scale: ScaleList = Field(
        None, min_length=1, description="ControlSync: weight of the ControlNet's residuals, one number for all or a "
                                        "list of one per ControlNet; 0 turns one off (1.0)")
    resize_condition: Optional[bool] = Field(
        None, description="ControlSync: resize a condition whose size is not width × height (false: refuse it)")

    def given(self) -> dict:
        """The fields the request sets. A null counts as not set, except where null has a meaning
        of its own (sync_threshold: every step; seed: a random one)."""
        return {name: value for name, value in self.model_dump(exclude_unset=True).items()
                if value is not None or name in NULL_MEANS_SOMETHING}


class FieldError(ValueError):
    """A request whose `field` is out of the range the model or the server allows."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


def field_of(message: str) -> str | None:
    """The field a pipeline check's message is about: they start with the parameter's name."""
    first = message.split(" ", 1)[0]
    return first if first in FIELDS + CONTROL_FIELDS else None


def describe_error(error: dict) -> str:
    """One sentence per invalid field: its name, what is wrong, what was sent."""
    if error.get("type") == "json_invalid":  # its location is a character of the body, not a field
        reason = error.get("ctx", {}).get("error", "")
        return f"body: not valid JSON at character {error['loc'][-1]}{': ' + reason if reason else ''}."
    field = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
    if error.get("type") in (NOT_TEXT, "string_unicode"):
        kind = expected_kind(field.split(".")[0])
        if kind not in (None, "text"):  # a number, a flag or a choice sent as a string that is not text
            return _not_text_but(field, kind, error.get("input"))
        return _not_text(field, error.get("input"))
    if error.get("type") == "value_error":  # our own sentences name the field and what was sent
        return error["msg"] if error["msg"].startswith(field) else f"{field}: {error['msg']}"
    text = f"{field}: {error['msg']}"
    if error.get("type") == "extra_forbidden":
        text += f" (the fields are {', '.join(FIELDS)}; with a ControlNet also {', '.join(CONTROL_FIELDS)})"
    elif "input" in error and not isinstance(error["input"], dict) and field.split(".")[0] != "condition":
        text += f" (got {error['input']!r})"
    return text


def _surrogate_at(sent) -> str:
    index = lone_surrogate(sent) if isinstance(sent, str) else None
    return "" if index is None else f" (U+{ord(sent[index]):04X} at character {index})"


def _not_text(field: str, sent) -> str:
    """The sentence for a string with a lone surrogate: where it is, not the string (a prompt may
    be long). On a field's name (which pydantic places at the body) the name itself is shown."""
    subject = f"body: the field name {sent!r}" if field == "body" else field
    return (f"{subject} is not text: it holds a lone surrogate{_surrogate_at(sent)}, half of a UTF-16 pair that no "
            f"encoding can write: send valid UTF-8.")


def _not_text_but(field: str, kind: str, sent) -> str:
    """The sentence for a field that is not text (a number, say) sent as a string with a lone surrogate."""
    return f"{field} must be {kind}, got a string holding a lone surrogate{_surrogate_at(sent)}, which is not text."


def expected_kind(field: str) -> str | None:
    """What a request's `field` may be, in words ("a whole number", "text" …); None for no such field."""
    spec = PredictionRequest.model_fields.get(field)
    return None if spec is None else _kind(spec.annotation)


def _kind(annotation) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _kind(args[0])
    if origin in (Union, types.UnionType):  # Optional[X]: what X may be (null is left out, as the schema says)
        kinds = [_kind(arg) for arg in args if arg is not type(None)]
        return " or ".join(kinds)
    if origin is list:  # the message names the item (condition.0): what one item may be
        return _kind(args[0])
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(arg) for arg in args)
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(annotation, "text")


def describe_request_schema(schema: dict, window_pixels: int, vae_factor: int, max_side: int, window_latents: int,
                            max_steps: int, control: bool) -> None:
    """Make the JSON schema of PredictionRequest (`schema`, changed in place) say what one server
    takes: its model's canvas (multiples of the VAE factor, at least one window, at most the
    server's longest side), stride and steps; the ControlSync fields only when it has ControlNets,
    and then `condition` as required."""
    properties = schema["properties"]
    for side in ("width", "height"):
        _set_bounds(properties[side], minimum=window_pixels, maximum=max_side, multipleOf=vae_factor)
    _set_bounds(properties["stride"], maximum=window_latents)
    _set_bounds(properties["num_inference_steps"], maximum=max_steps)
    if control:
        schema["required"] = [*schema.get("required", []), "condition"]
    else:
        for name in CONTROL_FIELDS:
            del properties[name]


def _set_bounds(spec: dict, **bounds) -> None:
    """Set `bounds` on the field's non-null type (an optional field is anyOf [type, null])."""
    for option in spec.get("anyOf", [spec]):
        if option.get("type") != "null":
            option.update(bounds)
