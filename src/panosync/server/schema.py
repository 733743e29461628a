"""What a prediction request may hold: the public SyncDiffusion API's fields, each with the range
that makes sense for any model, and the limits a server sets. Ranges that depend on the model
(multiples of the VAE factor, at least one window, the stride at most a window) are checked in
`generation.PanoramaModel.prepare`, which has the model's geometry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

UINT32_MAX = 2**32 - 1
MAX_PROMPT_CHARACTERS = 2000  # CLIP reads 77 tokens; anything far longer is a mistake, not a prompt
MAX_STEPS = 1000  # the DDPM training schedule has 1000 timesteps: DDIM cannot take more

# The fields of the public API, in its order.
FIELDS = ("prompt", "negative_prompt", "width", "height", "guidance_scale", "sync_weight", "sync_decay_rate",
          "sync_freq", "sync_threshold", "num_inference_steps", "stride", "seed", "loop_closure")

# Fields where an explicit null means something other than "the default": every step, a random seed.
NULL_MEANS_SOMETHING = ("sync_threshold", "seed")


@dataclass(frozen=True)
class Limits:
    """What a server accepts beyond the fields' own ranges.

    max_pixels  width × height of one panorama (default: 512 × 8192, four times SD 2 base's default canvas)
    max_side    the longest width or height, whatever the other (default 16384)
    max_queue   jobs waiting to run, not counting the one running; more are refused with 429
    max_body_bytes  size of a request body; larger ones are refused with 413
    """

    max_pixels: int = 512 * 8192
    max_side: int = 16384
    max_queue: int = 16
    max_body_bytes: int = 16 * 1024

    def __post_init__(self):
        for name in ("max_pixels", "max_side", "max_queue", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be 1 or more, got {getattr(self, name)}.")


class PredictionRequest(BaseModel):
    """A panorama to make. Leave a field out for the model's recommended setting or the paper's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARACTERS, description="what the panorama shows")
    negative_prompt: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARACTERS,
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
    return first if first in FIELDS else None


def describe_error(error: dict) -> str:
    """One sentence per invalid field: its name, what is wrong, what was sent."""
    field = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
    if error.get("type") == "value_error":  # our own sentences name the field and what was sent
        return error["msg"] if error["msg"].startswith(field) else f"{field}: {error['msg']}"
    text = f"{field}: {error['msg']}"
    if error.get("type") == "extra_forbidden":
        text += f" (the fields are {', '.join(FIELDS)})"
    elif "input" in error and not isinstance(error["input"], dict):
        text += f" (got {error['input']!r})"
    return text
