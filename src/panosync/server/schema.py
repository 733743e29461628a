"""What a prediction request may hold: every served parameter of settings.py, each with its range
there, and the limits a server sets. Ranges that depend on the model (multiples of the VAE factor,
at least one window, the stride at most a window) are checked by settings.check with the model's
geometry, in `generation.PanoramaModel.prepare`."""

from __future__ import annotations

import json
import types
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model
from pydantic_core import PydanticCustomError

from .. import settings
from ..geometry import MAX_STEPS  # noqa: F401 (the API's name for it)
from ..regions import MAX_REGIONS, MAX_WEIGHT
from ..settings import MAX_PROMPT_CHARACTERS, UINT32_MAX  # noqa: F401 (the API's names for them)
from ..settings import lone_surrogate
from ..settings import SettingError as FieldError  # noqa: F401 (a request's field out of range: 422)

SERVED = tuple(parameter for parameter in settings.PARAMETERS if parameter.served)
# The fields of the API, in settings' order: the public SyncDiffusion API's first. Derived here, at
# import, so that a parameter added to settings.PARAMETERS before this import is served.
FIELDS = tuple(parameter.name for parameter in SERVED if not parameter.control)
# ControlSync's fields, for a server started with --controlnet.
CONTROL_FIELDS = tuple(parameter.name for parameter in SERVED if parameter.control)
# An image input's fields (img2img, inpainting, extending): the plain pipelines', refused by a ControlSync server.
IMAGE_FIELDS = tuple(parameter.name for parameter in SERVED if parameter.from_image)
# The image fields that hold an image (base64 or a data URL), and what each is called in sentences.
IMAGE_UPLOADS = {"image": "image", "mask_image": "mask"}
# Fields whose value a refusal does not echo back: megabytes of base64 (a region may hold a mask).
UPLOADS = ("condition", *IMAGE_UPLOADS, "regions")
NULL_MEANS_SOMETHING = settings.NULL_MEANS_SOMETHING
# The LoRAs' weights, for a server started with --lora: not a parameter of settings.py, as the LoRAs
# themselves are the server's (no request names a file).
LORA_FIELDS = ("lora_scales",)
LORA_SCALES_HELP = ("the weight of each LoRA the server loaded, by its name (GET /health lists them), from -10 to 10, "
                    "for this panorama only; a LoRA left out keeps its default")


def _one_or_a_list(value):
    """One condition or scale stands for a list of one: a lone ControlNet's."""
    return value if isinstance(value, list) or value is None else [value]


NOT_TEXT = "invalid_text"  # our error type; pydantic's own for such strings is "string_unicode"


def _valid_text(text: str) -> str:
    if lone_surrogate(text) is not None:
        raise PydanticCustomError(NOT_TEXT, "is not text: it holds a lone surrogate")
    return text


# A string that is text: JSON allows escapes of half a UTF-16 pair, which no encoding can write.
Text = Annotated[str, AfterValidator(_valid_text)]

ScaleList = Annotated[Optional[list[Annotated[float, Field(ge=0)]]], BeforeValidator(_one_or_a_list)]

ConditionList = Annotated[Optional[list[Text]], BeforeValidator(_one_or_a_list)]

IMAGE_HELPS = {
    "image": "an image to start from, base64 (PNG, JPEG, WebP…) or a data URL: repainted (img2img), inpainted "
             "(with mask_image), extended (smaller than the canvas) or upscaled (with resize_image). The canvas is "
             "its size unless width or height is given",
    "mask_image": "the image's mask, base64 or a data URL, of the image's size: white where the image is repainted, "
                  "black where it is kept (one channel; not all black)",
}

REGIONS_HELP = (f"region prompts: up to {MAX_REGIONS} parts of the canvas with a prompt of their own, the prompt "
                f"covering the rest (none: the prompt everywhere). Each is an object with a box [x0, y0, x1, y1] in "
                f"pixels (x1 and y1 excluded) or a mask (base64 or a data URL of a black-and-white image of the "
                f"canvas's size, white inside), a prompt, and optionally a negative_prompt (default: the request's) "
                f"and a weight (0 to {MAX_WEIGHT:g}, default 1: how strongly it wins where it overlaps other prompts). "
                f"Every region is checked against the canvas before the job is queued")
# What one region may hold, for the schema's readers; the checks are regions.plan_regions', whose
# sentences name the region ("Region 2's box …"), so the request takes any list and leaves them to it.
_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARACTERS}
REGION_SCHEMA = {
    "type": "object",
    "properties": {
        "box": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 4, "maxItems": 4,
                "description": "x0, y0, x1, y1 in pixels, within the canvas; x1 and y1 excluded"},
        "mask": {"type": "string", "description": "base64 (PNG, JPEG, WebP…) or a data URL: one channel of the "
                                                  "canvas's size, white inside the region; not all black"},
        "prompt": {**_TEXT, "description": "what the region shows"},
        "negative_prompt": {**_TEXT, "minLength": 0, "description": "what it should not show (default: the "
                                                                    "request's negative_prompt)"},
        "weight": {"type": "number", "minimum": 0, "maximum": MAX_WEIGHT, "default": 1.0,
                   "description": "its prediction's weight where it overlaps other prompts (the background's is 1)"},
    },
    "required": ["prompt"],
    "oneOf": [{"required": ["box"]}, {"required": ["mask"]}],
    "additionalProperties": False,
}
RegionList = Annotated[list[Any], WithJsonSchema({"type": "array", "items": REGION_SCHEMA, "maxItems": MAX_REGIONS})]


class _Request(BaseModel):
    """A panorama to make. Leave a field out for the model's recommended setting or the paper's."""

    # strict: "128", 128.0 and "yes" are not a width or a flag, as the command, batch and --from
    # refuse them (pydantic's lax mode would convert them); a whole number is still a number
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    def given(self) -> dict:
        """The fields the request sets. A null counts as not set, except where null has a meaning
        of its own (sync_threshold: every step; seed: a random one; …)."""
        return {name: value for name, value in self.model_dump(exclude_unset=True).items()
                if value is not None or name in NULL_MEANS_SOMETHING}


def _field(parameter: settings.Parameter):
    """The pydantic annotation and Field of one parameter, with its range and help."""
    default = parameter.unset if parameter.default is None else json.dumps(parameter.default)
    description = parameter.help + (f" ({default})" if default is not None else "")
    if parameter.control:
        description = "ControlSync: " + description
    bounds = {}
    if parameter.minimum is not None:
        bounds["gt" if parameter.above else "ge"] = parameter.minimum
    if parameter.maximum is not None:
        bounds["le"] = parameter.maximum
    if parameter.name == "prompt":
        return Text, Field(min_length=1, max_length=parameter.maximum, description=description)
    if parameter.name == "condition":
        description = ("ControlSync: the image the panorama follows, base64 (PNG, JPEG, WebP…) or a data URL; a list "
                       "of one per ControlNet when the server has several. Of the canvas's size, which it sets when "
                       "width and height are left out")
        return ConditionList, Field(None, min_length=1, description=description)
    if parameter.name in IMAGE_UPLOADS:
        return Optional[Text], Field(None, description=IMAGE_HELPS[parameter.name])
    if parameter.name == "regions":
        return Optional[RegionList], Field(None, description=REGIONS_HELP)
    if parameter.kind is list and parameter.item is float:
        return ScaleList, Field(None, min_length=1, description=description)
    if parameter.kind is list and parameter.item is int:  # image_at: its length is settings.check's (one sentence)
        return Optional[list[Annotated[int, Field(**bounds)]]], Field(None, description=description)
    if parameter.kind is list:  # fast_modes: "none" names none, as on the command and in a JSONL job
        choices = (*parameter.choices, settings.NO_FAST_MODE) if parameter.name == "fast_modes" else parameter.choices
        return Optional[list[Literal[choices]]], Field(None, description=description)
    if parameter.choices:
        return Optional[Literal[parameter.choices]], Field(None, description=description)
    if parameter.kind is str:
        return Optional[Text], Field(None, max_length=parameter.maximum, description=description)
    return Optional[parameter.kind], Field(None, description=description, **bounds)


# the scales' range is checked by loras.check_lora_scales (one sentence naming the LoRA), not here
LoraScales = Optional[dict[Text, float]]

PredictionRequest = create_model("PredictionRequest", __base__=_Request,
                                 **{parameter.name: _field(parameter) for parameter in SERVED},
                                 lora_scales=(LoraScales, Field(None, description=LORA_SCALES_HELP)))


def field_of(message: str) -> str | None:
    """The field a pipeline check's message is about: they start with the parameter's name."""
    first = message.split(" ", 1)[0]
    return first if first in FIELDS + CONTROL_FIELDS + LORA_FIELDS else None


def describe_error(error: dict) -> str:
    """One sentence per invalid field: its name, what is wrong, what was sent."""
    if error.get("type") == "json_invalid":  # its location is a character of the body, not a field
        reason = error.get("ctx", {}).get("error", "")
        return f"body: not valid JSON at character {error['loc'][-1]}{': ' + reason if reason else ''}."
    field = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
    sent = error.get("input")
    surrogate = isinstance(sent, str) and lone_surrogate(sent) is not None and error.get("type") != "extra_forbidden"
    if error.get("type") in (NOT_TEXT, "string_unicode") or surrogate:
        kind = expected_kind(field.split(".")[0])
        if kind not in (None, "text"):  # a number, a flag or a choice sent as a string that is not text
            return _not_text_but(field, kind, error.get("input"))
        return _not_text(field, error.get("input"))
    if error.get("type") == "value_error":  # our own sentences name the field and what was sent
        return error["msg"] if error["msg"].startswith(field) else f"{field}: {error['msg']}"
    if field == "body" and error.get("type") == "model_attributes_type" and isinstance(sent, (str, bytes)):
        return ("body: it arrived as text, not as JSON: send one JSON object of fields with the header "
                "Content-Type: application/json.")
    if field == "body" and error.get("type") in ("missing", "model_attributes_type", "dict_type"):
        got = "nothing" if error.get("type") == "missing" else f"a JSON {settings.json_kind(sent)}"
        return f'body: send one JSON object of fields, e.g. {{"prompt": "snowy mountains"}}, got {got}.'
    if field.split(".")[0] == "condition" and error.get("type") == "string_type":
        return f"condition must be an image as base64 text or a data URL, got {settings.shown(sent)}."
    if field in IMAGE_UPLOADS and error.get("type") == "string_type":
        return f"{field} must be an image as base64 text or a data URL, got {settings.shown(sent)}."
    if error.get("type") == "too_short":
        return f"{field} must hold at least one value, got {settings.shown(sent)}."
    if field.startswith("query.") and error.get("type") in ("int_parsing", "int_type"):
        return f"{field.removeprefix('query.')} must be a whole number, got {settings.shown(sent)}."
    name, *item = field.split(".")
    if error.get("type") != "extra_forbidden" and ("input" in error or error.get("type") == "missing"):
        # a parameter's value out of its type or range, or missing: the sentence the command and batch give
        value = None if error.get("type") == "missing" else error.get("input")  # missing: its input is the body
        sentence = settings.refusal(name, value, item=bool(item))
        if sentence is not None:
            return sentence
    text = f"{field}: {error['msg']}"
    if error.get("type") == "extra_forbidden":
        text += (f" (the fields are {', '.join(FIELDS)}; with a ControlNet also {', '.join(CONTROL_FIELDS)}; with "
                 f"LoRAs also {', '.join(LORA_FIELDS)})")
    elif "input" in error and not isinstance(error["input"], dict) and field.split(".")[0] not in UPLOADS:
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
                            max_steps: int, control: bool, loras: tuple[str, ...] = ()) -> None:
    """Make the JSON schema of PredictionRequest (`schema`, changed in place) say what one server
    takes: its model's canvas (multiples of the VAE factor, at least one window, at most the
    server's longest side), stride and steps; image_at's two values; the ControlSync fields only
    when it has ControlNets, and then `condition` as required and no image fields (ControlSync takes
    no image input); `lora_scales` only when it has LoRAs (`loras`, their names), with their names
    as its properties."""
    properties = schema["properties"]
    for side in ("width", "height"):
        _set_bounds(properties[side], minimum=window_pixels, maximum=max_side, multipleOf=vae_factor)
    _set_bounds(properties["stride"], maximum=window_latents)
    _set_bounds(properties["num_inference_steps"], maximum=max_steps)
    _set_bounds(properties["image_at"], minItems=2, maxItems=2)
    if control:
        schema["required"] = [*schema.get("required", []), "condition"]
        for name in IMAGE_FIELDS:  # ControlSync's pipelines take no image input
            del properties[name]
    else:
        for name in CONTROL_FIELDS:
            del properties[name]
    if not loras:
        for name in LORA_FIELDS:
            del properties[name]
    else:
        scale = {"type": "number", "minimum": -10, "maximum": 10}
        properties["lora_scales"] = {"anyOf": [{"type": "object", "properties": {name: scale for name in loras},
                                                "additionalProperties": False}, {"type": "null"}],
                                     "description": LORA_SCALES_HELP}


def _set_bounds(spec: dict, **bounds) -> None:
    """Set `bounds` on the field's non-null type (an optional field is anyOf [type, null])."""
    for option in spec.get("anyOf", [spec]):
        if option.get("type") != "null":
            option.update(bounds)
