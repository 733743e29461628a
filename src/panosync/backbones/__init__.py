"""One small adapter per model family (base.py says what an adapter gives the joint diffusion)."""

from .base import Backbone, PromptConditioning, Sampler, ViewConditioning
from .sd import StableDiffusionBackbone, TextConditioning
from .sdxl import StableDiffusionXLBackbone, XLConditioning

__all__ = ["Backbone", "PromptConditioning", "Sampler", "ViewConditioning", "StableDiffusionBackbone",
           "TextConditioning", "StableDiffusionXLBackbone", "XLConditioning"]
