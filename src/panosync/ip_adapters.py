"""What a user names as an IP-Adapter and its image prompt: parsed, checked before any model loads,
and loaded onto a pipeline.

    --ip-adapter PATH_OR_HUB_ID[:SCALE]        a .safetensors file, a folder holding one, or a hub id
    --ip-adapter-weight-name SUBFOLDER/FILE    the file in a folder or hub repository (a hub id needs it)
    --ip-adapter-image-encoder FOLDER_OR_HUB_ID  default: the image_encoder/ folder beside the adapter file
    --ip-adapter-image FILE                    the image prompt

As with LoRAs (loras.py, whose checks these are), a user's files are never trusted: the adapter
must be a safetensors file whose header parses and whose keys are an IP-Adapter's, the image
encoder a folder with its config and safetensors weights, the image a picture read whole within
the pixel limit (conditions.py's checks). The adapter's and the image's SHA-256 are recorded, so
that a PNG names the exact files it was made with and `--from` refuses one that changed since.
Every refusal is a ValueError of one sentence.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

from .families import FLUX, SD3
from .loras import HUB_ID, check_safetensors, check_scale, check_unchanged, resolve_weights, split_scale

WHAT = "IP-Adapter"
IMAGE_WHAT = "IP-Adapter image"
ENCODER_FOLDER = "image_encoder"  # beside the adapter file, as diffusers' load_ip_adapter looks for it
# An image encoder's files that name what it is and hold its weights; pytorch_model.bin alone is a pickle
ENCODER_CONFIG = "config.json"
ENCODER_WEIGHTS = "model.safetensors"
# Which encoder each family's IP-Adapters take, for the sentence that asks for one
ENCODER_HINT = ("SD/SDXL: the CLIP vision encoder published beside the adapter; SD3: a SigLIP encoder such as "
                "google/siglip-so400m-patch14-384; FLUX.1: a CLIP encoder such as openai/clip-vit-large-patch14")
NO_CONTROL_IMAGE_PROMPT = (SD3, FLUX)  # ControlSync on these families loads an adapter but its call takes no image


@dataclass(frozen=True)
class IpAdapterSpec:
    """One IP-Adapter, checked: `source` as the user named it, `path` the local file it resolved to
    (for a hub id, the file in the hub cache), `sha256` of that file, `scale` its weight;
    `image_encoder` as the user named it (None: the image_encoder/ folder beside the file) and
    `encoder_path` where it loads from (a local folder, or a hub id). Paths only: it travels to Ray
    workers."""

    source: str
    path: str
    sha256: str
    encoder_path: str
    scale: float = 1.0
    weight_name: str | None = None
    image_encoder: str | None = None

    def metadata(self) -> dict:
        return {"source": self.source, "weight_name": self.weight_name, "scale": self.scale, "sha256": self.sha256,
                "image_encoder": self.image_encoder}


@dataclass(frozen=True)
class IpAdapterImageSpec:
    """The image prompt, checked: `path` as the user named it, `sha256` of the file."""

    path: str
    sha256: str

    def metadata(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}

    def load(self):
        """The image as RGB, once its file is found with the SHA-256 it was checked with."""
        image, sha256 = _read_image(self.path)
        if sha256 != self.sha256:
            raise ValueError(f"The {IMAGE_WHAT} {self.path} changed after it was checked (its SHA-256 differs): give "
                             f"it again.")
        return image


# ------------------------------------------------------------------------------------ checking


def ip_adapter_spec(text: str, weight_name: str | None = None, image_encoder: str | None = None) -> IpAdapterSpec:
    """The checked IP-Adapter of `--ip-adapter PATH_OR_HUB_ID[:SCALE]`, `--ip-adapter-weight-name` and
    `--ip-adapter-image-encoder`. Reads the file (header and hash); loads no model."""
    source, scale = split_scale(text, "--ip-adapter")
    path, weight_name, sha256 = _find_adapter(source, weight_name)
    return IpAdapterSpec(source, str(path), sha256, _encoder_path(image_encoder, path, source, weight_name), scale,
                         weight_name, image_encoder)


def _is_hub_id(source: str) -> bool:
    return not os.path.lexists(Path(source).expanduser()) and bool(HUB_ID.fullmatch(source)) \
        and not source.endswith(".safetensors")


def _find_adapter(source: str, weight_name: str | None) -> tuple[Path, str | None, str]:
    """The adapter's local file, the weight name it was found by, and its SHA-256."""
    if weight_name is None and _is_hub_id(source):
        raise ValueError(f"The {WHAT} {source} is a hub id: name its file with --ip-adapter-weight-name SUBFOLDER/FILE "
                         f"(e.g. models/ip-adapter_sd15.safetensors).")
    path, weight_name = resolve_weights(source, weight_name, WHAT, subfolders=True)
    return path, weight_name, check_safetensors(path, f"The {WHAT} {source}", lora=False, ip_adapter=True)


def _encoder_path(image_encoder: str | None, adapter: Path, source: str, weight_name: str | None) -> str:
    """Where the image encoder loads from: the folder or hub id given, else the image_encoder/
    folder beside the adapter file (for a hub adapter, the repository's, from the cache or
    downloaded); checked as far as can be without loading it."""
    from .loras import hub_file

    if image_encoder is not None:
        if not isinstance(image_encoder, str) or not image_encoder.strip():
            raise ValueError(f"--ip-adapter-image-encoder must name a folder or a hub id, got {image_encoder!r}.")
        folder = Path(image_encoder).expanduser()
        if os.path.lexists(folder):
            _check_encoder_folder(folder, f"The image encoder {image_encoder}")
            return str(folder.resolve())  # a path with a '/': SD3's loader tells a path from a name by it
        if not HUB_ID.fullmatch(image_encoder):
            raise ValueError(f"The image encoder {image_encoder}: no such folder (give a folder holding "
                             f"{ENCODER_CONFIG} and {ENCODER_WEIGHTS}, or a Hugging Face hub id).")
        _check_hub_encoder(image_encoder)
        return image_encoder
    folder = adapter.parent / ENCODER_FOLDER
    missing = f"The {WHAT} {source} has no {ENCODER_FOLDER}/ folder beside it"
    if _is_hub_id(source):
        subfolder = Path(weight_name).parent / ENCODER_FOLDER
        try:
            folder = Path(hub_file(source, (subfolder / ENCODER_CONFIG).as_posix(), "image encoder")).parent
            hub_file(source, (subfolder / ENCODER_WEIGHTS).as_posix(), "image encoder")
        except ValueError as error:
            raise ValueError(f"{missing} that can be had ({str(error).rstrip('.')}): give --ip-adapter-image-encoder "
                             f"({ENCODER_HINT}).") from None
    elif not folder.is_dir():
        raise ValueError(f"{missing}: give --ip-adapter-image-encoder ({ENCODER_HINT}).")
    _check_encoder_folder(folder, f"The image encoder of the {WHAT} {source} ({folder})")
    return str(folder.absolute())


def _check_encoder_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise ValueError(f"{what} is not a folder: give the folder holding {ENCODER_CONFIG} and {ENCODER_WEIGHTS}.")
    if not (folder / ENCODER_CONFIG).is_file():
        raise ValueError(f"{what} holds no {ENCODER_CONFIG}: give a transformers image encoder's folder.")
    if not any(path.suffix == ".safetensors" and path.is_file() for path in folder.iterdir()):
        pickles = sorted(path.name for path in folder.iterdir() if path.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        more = f" (only {', '.join(pickles)}: pickles, which can run code when loaded, are not read)" if pickles else ""
        raise ValueError(f"{what} holds no .safetensors weights{more}.")


def _check_hub_encoder(repo_id: str) -> None:
    """Offline, a hub encoder must be in the cache; online, it is fetched when the adapter loads."""
    from huggingface_hub import try_to_load_from_cache

    from .models import _hub_is_offline

    if _hub_is_offline() and not isinstance(try_to_load_from_cache(repo_id, ENCODER_CONFIG), str):
        raise ValueError(f"The image encoder {repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                         f"set: download it on a connected machine (huggingface-cli download {repo_id}) or give its "
                         f"local folder.")


def ip_adapter_image_spec(path: str) -> IpAdapterImageSpec:
    """The checked image prompt of `--ip-adapter-image FILE`: read whole as an image (conditions.py's
    checks: a regular file, within the pixel limit, an RGB or grayscale picture) and hashed."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"--ip-adapter-image must name an image file, got {path!r}.")
    _, sha256 = _read_image(path)
    return IpAdapterImageSpec(path, sha256)


def _read_image(path: str):
    from .conditions import read_condition_image, rgb_image
    from .settings import MAX_PIXELS

    file = Path(path).expanduser()
    if not file.is_file():  # is_file follows links: a link to a device or a pipe is refused too
        raise ValueError(f"No such {IMAGE_WHAT}: {path} (give a PNG, JPEG or WebP file).")
    try:
        data = file.read_bytes()
    except OSError as error:
        raise ValueError(f"The {IMAGE_WHAT} {path} cannot be read ({error.strerror or error}).") from None
    image = rgb_image(read_condition_image(data, path, MAX_PIXELS, IMAGE_WHAT), IMAGE_WHAT)
    return image, hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ front ends


def ip_adapter_of_options(ip_adapter: str | None, weight_name: str | None = None, image_encoder: str | None = None,
                          image: str | None = None, stored: dict | None = None
                          ) -> tuple[IpAdapterSpec | None, IpAdapterImageSpec | None]:
    """The IP-Adapter and image prompt of the command's options, else (for --from) of the PNG's
    `stored` metadata, found again unchanged; an option given overrides the PNG's record (an encoder
    given alone, the encoder of the PNG's adapter). Both or neither: one without the other is one
    sentence."""
    stored = stored or {}
    if ip_adapter is not None:
        adapter = ip_adapter_spec(ip_adapter, weight_name, image_encoder)
    elif weight_name is not None:
        raise ValueError("--ip-adapter-weight-name names the file of an --ip-adapter: give --ip-adapter too.")
    elif stored.get("ip_adapter") is not None:
        adapter = ip_adapter_of_png(stored["ip_adapter"], image_encoder)
    elif image_encoder is not None:
        raise ValueError("--ip-adapter-image-encoder is the image encoder of an --ip-adapter: give --ip-adapter too.")
    else:
        adapter = None
    if image is not None:
        image_prompt = ip_adapter_image_spec(image)
    elif stored.get("ip_adapter_image") is not None:
        image_prompt = ip_adapter_image_of_png(stored["ip_adapter_image"])
    else:
        image_prompt = None
    if image_prompt is not None and adapter is None:
        raise ValueError("--ip-adapter-image is the image prompt of an IP-Adapter: give --ip-adapter too.")
    if adapter is not None and image_prompt is None:
        raise ValueError("--ip-adapter needs --ip-adapter-image, the image the panorama takes after.")
    return adapter, image_prompt


def ip_adapter_of_png(stored, image_encoder: str | None = None) -> IpAdapterSpec:
    """The IP-Adapter a PNG's metadata records, its file found again unchanged, at its scale, with its
    image encoder (or `image_encoder`, given in its place)."""
    def find(source, weight_name):
        path, _, sha256 = _find_adapter(source, weight_name)
        return path, sha256

    source, weight_name, path = check_unchanged(stored, WHAT, "--ip-adapter", find)
    recorded = stored.get("image_encoder")
    if image_encoder is None and recorded is not None and not isinstance(recorded, str):
        raise ValueError("The PNG's ip_adapter.image_encoder is not text: it was changed after panosync wrote it.")
    encoder = image_encoder if image_encoder is not None else recorded
    try:
        encoder_path = _encoder_path(encoder, path, source, weight_name)
    except ValueError as error:
        if image_encoder is not None:
            raise
        raise ValueError(f"The image encoder the PNG's {WHAT} was made with cannot be loaded again: "
                         f"{str(error).rstrip('.')}; give --ip-adapter-image-encoder to name the one to use.") from None
    scale = check_scale(f"The scale of the {WHAT} {source} in the PNG", stored.get("scale", 1.0))
    return IpAdapterSpec(source, str(path), stored["sha256"], encoder_path, scale, weight_name, encoder)


def ip_adapter_image_of_png(stored) -> IpAdapterImageSpec:
    """The image prompt a PNG's metadata records ({"path", "sha256"}), found again unchanged."""
    if not isinstance(stored, dict) or not isinstance(stored.get("path"), str) \
            or not isinstance(stored.get("sha256"), str):
        raise ValueError(f"The PNG's record of its {IMAGE_WHAT} is not an object with path and sha256: it was changed "
                         f"after panosync wrote it.")
    try:
        found = ip_adapter_image_spec(stored["path"])
    except ValueError as error:
        raise ValueError(f"The {IMAGE_WHAT} the PNG was made with cannot be loaded again: {str(error).rstrip('.')}; "
                         f"give --ip-adapter-image to name the one to use.") from None
    if found.sha256 != stored["sha256"]:
        raise ValueError(f"The {IMAGE_WHAT} {stored['path']} has changed since the PNG was made (its SHA-256 differs): "
                         f"the picture would differ; restore that file, or give --ip-adapter-image to name the one to "
                         f"use.")
    return found


def ip_adapter_metadata(adapter: IpAdapterSpec | None, image: IpAdapterImageSpec | None) -> dict:
    """What a PNG records of its IP-Adapter and image prompt: nothing when there are none, so that a
    PNG made without reads as before."""
    metadata = {}
    if adapter is not None:
        metadata["ip_adapter"] = adapter.metadata()
    if image is not None:
        metadata["ip_adapter_image"] = image.metadata()
    return metadata


def check_family_takes_image_prompt(family: str | None, control: bool) -> None:
    """ControlSync on SD3 and FLUX.1 takes no image prompt: one sentence, before any model loads."""
    if control and family in NO_CONTROL_IMAGE_PROMPT:
        raise ValueError(f"ControlSync on {family} takes no image prompt: leave --ip-adapter and --ip-adapter-image "
                         f"out (panosync generate takes them).")


# ------------------------------------------------------------------------------------ loading


def load_ip_adapter(pipe, spec: IpAdapterSpec | None) -> None:
    """Load `spec`'s adapter and image encoder onto `pipe` with its family's diffusers loader, then set
    its scale. The file is hashed again first: a file swapped since it was checked is refused. An
    adapter of another model (diffusers refuses its shapes) is one sentence."""
    if spec is None:
        return
    from diffusers.loaders import FluxIPAdapterMixin, IPAdapterMixin, SD3IPAdapterMixin

    from .loras import first_line, quiet_loading

    name = type(pipe).__name__
    if "ip_adapter_image" not in inspect.signature(pipe.__call__).parameters:
        raise ValueError(f"{name}'s call takes no image prompt: leave --ip-adapter and --ip-adapter-image out.")
    if not isinstance(pipe, (FluxIPAdapterMixin, SD3IPAdapterMixin, IPAdapterMixin)):
        raise ValueError(f"{name} has no IP-Adapter loader: leave --ip-adapter out.")
    path = Path(spec.path)
    if check_safetensors(path, f"The {WHAT} {spec.source}", lora=False, ip_adapter=True) != spec.sha256:
        raise ValueError(f"The {WHAT} {spec.source} changed after it was checked (its SHA-256 differs): load it again.")
    folder, file = str(path.parent), path.name
    had_encoder = getattr(pipe, "image_encoder", None) is not None
    try:
        with quiet_loading():
            if isinstance(pipe, FluxIPAdapterMixin):
                pipe.load_ip_adapter(folder, weight_name=file, image_encoder_dtype=pipe.dtype,
                                     image_encoder_pretrained_model_name_or_path=spec.encoder_path)
            elif isinstance(pipe, SD3IPAdapterMixin):
                pipe.load_ip_adapter(folder, weight_name=file, subfolder="", image_encoder_folder=spec.encoder_path)
            else:
                beside = Path(spec.encoder_path) == path.parent.absolute() / ENCODER_FOLDER
                if not beside and not had_encoder:  # diffusers' loader finds one in the adapter's folder only
                    _register_clip_encoder(pipe, spec.encoder_path)
                pipe.load_ip_adapter(folder, subfolder="", weight_name=file, image_encoder_folder=ENCODER_FOLDER)
    except Exception as error:  # noqa: BLE001 — diffusers, transformers and torch raise many kinds for a mismatch
        if not had_encoder and getattr(pipe, "image_encoder", None) is None:
            raise ValueError(f"The image encoder {spec.image_encoder or spec.encoder_path} cannot be loaded on {name} "
                             f"({first_line(error)}): give --ip-adapter-image-encoder ({ENCODER_HINT}).") from None
        detail = first_line(error).split(". ")[0].rstrip(".")  # diffusers' first sentence: which layer, which shapes
        raise ValueError(f"The {WHAT} {spec.source} is an IP-Adapter for another model: its layers do not fit "
                         f"{name}'s networks ({detail}).") from None
    pipe.set_ip_adapter_scale(spec.scale)


def _register_clip_encoder(pipe, encoder: str) -> None:
    """A CLIP vision encoder from another folder or a hub id, in the pipeline's dtype and on its device,
    where SD's and SDXL's load_ip_adapter will take it."""
    from transformers import CLIPVisionModelWithProjection

    encoder_model = CLIPVisionModelWithProjection.from_pretrained(encoder, dtype=pipe.dtype)
    pipe.register_modules(image_encoder=encoder_model.to(pipe.device).eval())
