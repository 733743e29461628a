"""One small adapter per model family (base.py says what an adapter gives the joint diffusion): the UNets
(sd.py, sdxl.py over unet.py) and the flow-matching transformers (sd3.py, flux.py over flow.py)."""

from .base import Backbone, PromptConditioning, Sampler, ViewConditioning
from .flow import FlowBackbone, FlowSampler
from .flux import FluxBackbone, FluxConditioning
from .sd3 import SD3Conditioning, StableDiffusion3Backbone
from .sd import StableDiffusionBackbone, TextConditioning
from .sdxl import StableDiffusionXLBackbone, XLConditioning

__all__ = ["Backbone", "PromptConditioning", "Sampler", "ViewConditioning", "StableDiffusionBackbone",
           "TextConditioning", "StableDiffusionXLBackbone", "XLConditioning", "FlowBackbone", "FlowSampler",
           "FluxBackbone", "FluxConditioning", "StableDiffusion3Backbone", "SD3Conditioning"]
