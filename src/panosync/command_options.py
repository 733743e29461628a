"""The command-line options of the parameters (settings.PARAMETERS), and the options that say which
model runs where: what `panosync generate` and `control`, `evaluate`, `serve`, `ui` and `batch`
share. Every option defaults to None (not given), so that the next source of a value decides
(settings.resolve)."""

from __future__ import annotations

import argparse
import json
from typing import Iterable

from .precision import DTYPE_HELP
from .settings import BY_NAME, DEFAULT_CONTROLNET, FAST_MODES, NO_FAST_MODE, Parameter


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, names: Iterable[str],
                helps: dict | None = None) -> None:
    """The command-line option of each parameter `names` lists, every default None (not given: the
    next source decides, see settings.resolve). `helps` replaces some parameters' help."""
    for name in names:
        parameter = BY_NAME[name]
        text = (helps or {}).get(name) or _help(parameter)
        flags = [parameter.flag, *parameter.flags]
        if name == "prompt":
            parser.add_argument("prompt", nargs="?", help=text)
        elif parameter.kind is bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif name == "fast_modes":
            modes = _fast_mode_help()
            parser.add_argument("--fast", dest=name, action="append", choices=list(modes), default=None,
                                help=text + ": " + "; ".join(f"{mode}: {words}" for mode, words in modes.items()))
        elif name == "regions":  # a box or a mask file each: two options, one list
            add_region_options(parser)
        elif name == "image_at":
            parser.add_argument(*flags, dest=name, type=xy_pair, default=None, metavar="X,Y", help=text)
        elif parameter.kind is object:  # an image on the command: its file
            parser.add_argument(*flags, dest=name, default=None, metavar="FILE", help=text)
        elif parameter.kind is list:
            item = str if parameter.item is object else parameter.item  # a condition on the command: its file
            parser.add_argument(*flags, dest=name, action="append", type=item, default=None,
                                metavar=name.upper(), help=text + " (repeatable)")
        else:
            # no argparse choices: settings.check refuses another value with one sentence, not a usage text
            parser.add_argument(*flags, dest=name, type=parameter.kind, default=None, help=text)


class RegionOption(argparse.Action):
    """--region and --region-mask: each appends (its kind, "box" or "mask", and its text) to the one
    list `regions`, so that the regions keep the command line's order (region numbers in sentences,
    and which prompt is drawn over which)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), (self.const, values)])


def add_region_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--region and --region-mask, the command's form of the `regions` parameter (the command
    parses and reads them: regions.parse_region_option, input_images)."""
    parser.add_argument("--region", dest="regions", action=RegionOption, const="box", default=None,
                        metavar="X0,Y0,X1,Y1=PROMPT[:WEIGHT]",
                        help="a region prompt: PROMPT in the box from X0,Y0 to X1,Y1 (pixels, X1 and Y1 excluded), "
                             "with its weight where it meets other prompts after a colon (0 to 10, default 1); the "
                             "prompt covers the rest; repeatable, with --region-mask")
    parser.add_argument("--region-mask", dest="regions", action=RegionOption, const="mask", default=None,
                        metavar="MASK.png=PROMPT[:WEIGHT]",
                        help="a region prompt where MASK.png, an image of the canvas's size, is white; its weight "
                             "after a colon as --region's; repeatable, with --region")


def xy_pair(text: str) -> list[int]:
    """--image-at's X,Y: two whole numbers."""
    try:
        x, y = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be two whole numbers X,Y (pixels), got {text!r}") from None
    return [x, y]


def _help(parameter: Parameter) -> str:
    default = parameter.unset if parameter.default is None else json.dumps(parameter.default)
    limits = "" if parameter.kind in (str, bool, list) or (parameter.minimum is None and parameter.maximum is None) \
        else f"; {parameter.range_words()}"
    return f"{parameter.help}{limits} (default: {default})" if default is not None else parameter.help


def _fast_mode_help() -> dict:
    return {**FAST_MODES, NO_FAST_MODE: "none of them, even those the model recommends (with every step synced: "
                                        "faithful mode, --preset faithful)"}


def given_options(args: argparse.Namespace) -> dict:
    """The parameters the options give (None: not given)."""
    return {name: getattr(args, name) for name in BY_NAME if getattr(args, name, None) is not None}


def add_model_options(parser: argparse.ArgumentParser, default_model: str, control: bool = False) -> None:
    """The options that say which model runs where, shared by every command that loads one."""
    parser.add_argument("--model", default=None,
                        help=f"bundled name (pocket, tiny-random), diffusers folder, .safetensors file or hub id "
                             f"(default: {default_model}); its recommended.json gives the defaults")
    if control:
        parser.add_argument("--controlnet", action="append", default=None, metavar="FOLDER_OR_ID",
                            help=f"diffusers ControlNet folder or hub id, repeatable (default: {DEFAULT_CONTROLNET}; "
                                 f"tiny-random: random weights, a smoke test)")
    parser.add_argument("--model-config", dest="model_config", default=None, metavar="FOLDER_OR_ID",
                        help="for a .safetensors/.ckpt --model: diffusers folder or hub id whose configs describe the "
                             "checkpoint's architecture; needed offline")
    parser.add_argument("--vae", default=None, metavar="FOLDER_OR_ID",
                        help="diffusers VAE folder or hub id in place of the model's own, e.g. an fp16-safe SDXL VAE "
                             "(madebyollin/sdxl-vae-fp16-fix): SDXL's own overflows in float16 and decodes in float32")
    parser.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true",
                        help="recompute the network's activations in the sync gradient's backward instead of keeping "
                             "them: less memory (SD3 and FLUX at large windows), slower synced steps, same result")
    add_lora_options(parser)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 …")
    parser.add_argument("--dtype", default="auto", help=DTYPE_HELP)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's threads on a CPU (default: as many as torch uses now, or the --from PNG's): "
                             "on a CPU the picture depends on the count, so a CPU PNG records it, and Ray workers "
                             "use the same; no matter on a GPU")


def add_lora_options(parser: argparse.ArgumentParser) -> None:
    """--lora, --lora-weight-name and --textual-inversion (loras.py checks what they name)."""
    parser.add_argument("--lora", action="append", default=None, metavar="PATH_OR_HUB_ID[:SCALE]",
                        help="a LoRA to load: its .safetensors file, a folder holding one, or a hub id, with its "
                             "weight from -10 to 10 after a colon (default 1), repeatable")
    parser.add_argument("--lora-weight-name", dest="lora_weight_name", action="append", default=None, metavar="NAME",
                        help="the .safetensors file of a --lora folder or hub id: once for all, or once per --lora "
                             "(default: the folder's only one; a hub id's pytorch_lora_weights.safetensors)")
    parser.add_argument("--textual-inversion", dest="textual_inversion", action="append", default=None,
                        metavar="PATH_OR_HUB_ID[=TOKEN]",
                        help="a textual inversion embedding (.safetensors) to load, with the token prompts use it by "
                             "after '=' (default: the file's own), repeatable; not on SD3")


def add_ip_adapter_options(parser: argparse.ArgumentParser, image_help: str | None = None) -> None:
    """--ip-adapter, --ip-adapter-weight-name, --ip-adapter-image-encoder and --ip-adapter-image
    (ip_adapters.py checks what they name)."""
    parser.add_argument("--ip-adapter", dest="ip_adapter", default=None, metavar="PATH_OR_HUB_ID[:SCALE]",
                        help="an IP-Adapter to load: its .safetensors file, a folder holding one, or a hub id (with "
                             "--ip-adapter-weight-name), with its scale after a colon (default 1); needs "
                             "--ip-adapter-image")
    parser.add_argument("--ip-adapter-weight-name", dest="ip_adapter_weight_name", default=None,
                        metavar="SUBFOLDER/FILE",
                        help="the .safetensors file of an --ip-adapter folder or hub id, e.g. "
                             "models/ip-adapter_sd15.safetensors (default: a folder's only one)")
    parser.add_argument("--ip-adapter-image-encoder", dest="ip_adapter_image_encoder", default=None,
                        metavar="FOLDER_OR_HUB_ID",
                        help="the IP-Adapter's image encoder (default: the image_encoder/ folder beside the adapter "
                             "file); SD3: a SigLIP encoder such as google/siglip-so400m-patch14-384, FLUX.1: a CLIP "
                             "encoder such as openai/clip-vit-large-patch14")
    parser.add_argument("--ip-adapter-image", dest="ip_adapter_image", default=None, metavar="FILE",
                        help=image_help or "the image prompt the IP-Adapter conditions the panorama on (PNG, JPEG, "
                                           "WebP)")
