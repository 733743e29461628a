"""What a user names as a LoRA (or a textual inversion): parsed, checked before any model loads, and
loaded onto a pipeline.

    --lora PATH_OR_HUB_ID[:SCALE]            a .safetensors file, a folder holding one, or a hub id
    --lora-weight-name NAME                  the file in a folder or hub repository (once, or once per --lora)
    --textual-inversion PATH_OR_HUB_ID[=TOKEN]

A user's file is never trusted: only safetensors are read (a .bin, .pt or .ckpt is a pickle, which
can run code when loaded), its header is parsed with bounds checks before anything else reads it,
and its SHA-256 is recorded, so that a PNG's metadata names the exact weights it was made with and
`--from` refuses a file that changed since. Every refusal is a ValueError of one sentence.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
DEFAULT_EMBEDDING_NAME = "learned_embeds.safetensors"  # diffusers' textual inversion training script's
MAX_FILE_BYTES = 4 * 2**30  # the largest LoRAs published (SDXL, FLUX, full rank) are well under this
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on its JSON header
MIN_SCALE, MAX_SCALE = -10.0, 10.0
REFUSED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# The option that names the file within a folder or hub repository, by what the weights are
WEIGHT_NAME_OPTIONS = {"LoRA": "--lora-weight-name", "IP-Adapter": "--ip-adapter-weight-name"}
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
STREAM_CHUNK = 2**20
# bytes per element of the safetensors dtypes torch reads
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA, checked: `source` as the user named it, `path` the local file it resolved to (for
    a hub id, the file in the hub cache), `sha256` of that file, `adapter_name` the unique name it
    is loaded by (and that requests' `lora_scales` use), `scale` its default weight."""

    source: str
    adapter_name: str
    path: str
    sha256: str
    scale: float = 1.0
    weight_name: str | None = None

    def metadata(self, scale: float | None = None) -> dict:
        """What a PNG records of it; `scale`: the one the panorama was made with, when not the default."""
        return {"source": self.source, "weight_name": self.weight_name,
                "scale": self.scale if scale is None else scale, "sha256": self.sha256}


@dataclass(frozen=True)
class TextualInversionSpec:
    """One textual inversion embedding, checked: `token` the word a prompt uses it by (None: the
    token the file names)."""

    source: str
    path: str
    sha256: str
    token: str | None = None
    weight_name: str | None = None

    def metadata(self) -> dict:
        return {"source": self.source, "weight_name": self.weight_name, "token": self.token, "sha256": self.sha256}


# ------------------------------------------------------------------------------------ parsing


def _finite_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def split_scale(text: str, option: str = "--lora") -> tuple[str, float]:
    """`PATH_OR_HUB_ID[:SCALE]` as (source, scale): split at the last ':' only when what follows is a
    finite number (a path may hold colons); a scale out of [-10, 10], or a ':' after an existing
    file that is not followed by a number, is one sentence naming `option`."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{option} must name a .safetensors file, a folder or a hub id, got {text!r}.")
    head, colon, tail = text.rpartition(":")
    scale = _finite_number(tail) if colon else None
    if scale is None:
        if colon and head and "/" not in tail and not Path(text).expanduser().exists() \
                and Path(head).expanduser().exists():
            raise ValueError(f"The scale of {option} {text} must be a number from {MIN_SCALE:g} to {MAX_SCALE:g}, "
                             f"got {tail!r}.")
        return text, 1.0
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"The scale of {option} {text} must be from {MIN_SCALE:g} to {MAX_SCALE:g}, got {tail}.")
    if not head.strip():
        raise ValueError(f"{option} {text} names no file, folder or hub id before its scale.")
    return head, scale


def check_scale(label: str, scale) -> float:
    """A LoRA's scale (`label` names it in the sentence): a finite number in [-10, 10]; a ValueError
    otherwise."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or not MIN_SCALE <= scale <= MAX_SCALE:
        raise ValueError(f"{label} must be a number from {MIN_SCALE:g} to {MAX_SCALE:g}, got {scale!r}.")
    return float(scale)


def adapter_name_of(source: str, weight_name: str | None) -> str:
    """A readable adapter name: the file's stem, or for a folder or hub id holding diffusers'
    default file name, the folder's or repository's name; letters, digits and '_' only."""
    path = Path(source.rstrip("/\\"))
    if path.suffix == ".safetensors":
        stem = path.stem
    elif weight_name and weight_name != DEFAULT_WEIGHT_NAME:
        stem = Path(weight_name).stem
    else:
        stem = path.name
    name = re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_")
    return name if name and not name[0].isdigit() else f"lora_{name}".rstrip("_")


def unique_names(names: list[str]) -> list[str]:
    """`names` with a repeated one numbered (style, style_2, style_3): stable for the same list."""
    seen, unique = set(), []
    for name in names:
        candidate, number = name, 1
        while candidate in seen:
            number += 1
            candidate = f"{name}_{number}"
        seen.add(candidate)
        unique.append(candidate)
    return unique


def lora_specs(loras: list[str] | None, weight_names: list[str] | None = None) -> tuple[LoraSpec, ...]:
    """The checked LoRAs of `--lora` (each `PATH_OR_HUB_ID[:SCALE]`) and `--lora-weight-name` (none,
    one for all, or one per --lora). Reads the files (header and hash); loads no model."""
    loras, weight_names = list(loras or []), list(weight_names or [])
    if not loras:
        if weight_names:
            raise ValueError("--lora-weight-name names the file of a --lora: give --lora too.")
        return ()
    if len(weight_names) not in (0, 1, len(loras)):
        raise ValueError(f"Give --lora-weight-name once for all LoRAs or once for each ({len(loras)}), got "
                         f"{len(weight_names)}.")
    names = weight_names * len(loras) if len(weight_names) == 1 else weight_names or [None] * len(loras)
    return _checked_loras([(*split_scale(text), name) for text, name in zip(loras, names)])


def _checked_loras(parsed: list[tuple[str, float, str | None]]) -> tuple[LoraSpec, ...]:
    """The LoraSpec of each (source, scale, weight_name), named uniquely, its file checked and hashed."""
    adapters = unique_names([adapter_name_of(source, name) for source, _, name in parsed])
    specs = []
    for (source, scale, weight_name), adapter in zip(parsed, adapters):
        path, weight_name = resolve_weights(source, weight_name, "LoRA")
        sha256 = check_safetensors(path, f"The LoRA {source}", lora=True)
        specs.append(LoraSpec(source, adapter, str(path), sha256, scale, weight_name))
    return tuple(specs)


def textual_inversion_specs(items: list[str] | None) -> tuple[TextualInversionSpec, ...]:
    """The checked embeddings of `--textual-inversion PATH_OR_HUB_ID[=TOKEN]`."""
    specs = []
    for text in items or []:
        # split at the last '=' unless the whole text names a file or folder (a path may hold one)
        whole = isinstance(text, str) and os.path.lexists(Path(text).expanduser())
        source, equals, token = text.rpartition("=") if "=" in text and not whole else (text, "", "")
        if equals and not token.strip():
            raise ValueError(f"--textual-inversion {text}: the token after '=' must not be empty.")
        path, weight_name = resolve_weights(source, None, "textual inversion", default_name=DEFAULT_EMBEDDING_NAME)
        sha256 = check_safetensors(path, f"The textual inversion {source}", lora=False)
        specs.append(TextualInversionSpec(source, str(path), sha256, token or None, weight_name))
    return tuple(specs)


# ------------------------------------------------------------------------------------ checking


def resolve_weights(source: str, weight_name: str | None, what: str, default_name: str = DEFAULT_WEIGHT_NAME,
                    subfolders: bool = False) -> tuple[Path, str | None]:
    """The local file `source` names (a file, a folder and the one file in it, or a hub id's file in
    the cache or downloaded, `default_name` unless `weight_name` is given), and the weight name it
    was found by (None for a file given as such). With `subfolders`, the weight name may be a
    relative path within the folder or repository (models/ip-adapter_sd15.safetensors)."""
    path = Path(source).expanduser()
    if weight_name is not None and not _weight_name_ok(weight_name, subfolders):
        kind = "a file name, or a path within the folder or repository" if subfolders else "a file name"
        raise ValueError(f"The weight name of the {what} {source} must be {kind}, got {weight_name!r}.")
    if path.is_dir():
        found = _file_of_folder(path, weight_name, what, source)
        return found, weight_name or found.name
    if os.path.lexists(path):  # lexists: a dangling link is refused by check_safetensors, in its words
        _refuse_pickles(path, what, source)
        return path, None
    if HUB_ID.fullmatch(source) and not source.endswith(".safetensors"):
        name = weight_name or default_name
        return hub_file(source, name, what), name
    _refuse_pickles(path, what, source)
    raise ValueError(f"The {what} {source}: no such file or folder (give a .safetensors file, a folder holding one, "
                     f"or a Hugging Face hub id).")


def _weight_name_ok(weight_name: str, subfolders: bool) -> bool:
    """A bare file name, or with `subfolders` a relative path that stays within its folder."""
    if not subfolders:
        return bool(weight_name) and Path(weight_name).name == weight_name
    parts = weight_name.split("/")
    return "\\" not in weight_name and all(part and part not in (".", "..") for part in parts)


def _refuse_pickles(path: Path, what: str, source: str) -> None:
    if path.suffix.lower() in REFUSED_SUFFIXES:
        raise ValueError(f"The {what} {source} is a {path.suffix} file, a pickle that can run code when loaded: "
                         f"give its .safetensors version.")


def _only_weights(folder: Path, what: str, source: str) -> Path:
    found = sorted(path for path in folder.iterdir() if path.suffix == ".safetensors" and path.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        pickles = sorted(path.name for path in folder.iterdir() if path.suffix.lower() in REFUSED_SUFFIXES)
        more = f" (only {', '.join(pickles)}: pickles, which can run code when loaded, are not read)" if pickles else ""
        raise ValueError(f"The {what} folder {source} holds no .safetensors file{more}.")
    option = f" with {WEIGHT_NAME_OPTIONS[what]}" if what in WEIGHT_NAME_OPTIONS else ""
    raise ValueError(f"The {what} folder {source} holds {len(found)} .safetensors files "
                     f"({', '.join(path.name for path in found)}): name the one to load{option}.")


def _file_of_folder(folder: Path, weight_name: str | None, what: str, source: str) -> Path:
    if weight_name is None:
        return _only_weights(folder, what, source)
    path = folder / weight_name
    _refuse_pickles(path, what, source)
    if not os.path.lexists(path):
        raise ValueError(f"The {what} folder {source} holds no {weight_name}.")
    return path


def hub_file(repo_id: str, weight_name: str, what: str) -> Path:
    """The hub repository's file: from the cache, or downloaded unless HF_HUB_OFFLINE is set."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from .models import _hub_is_offline

    _refuse_pickles(Path(weight_name), what, f"{repo_id} ({weight_name})")
    cached = try_to_load_from_cache(repo_id, weight_name)
    if isinstance(cached, str):
        return Path(cached)
    option = f" ({WEIGHT_NAME_OPTIONS[what]} names another file)" if what in WEIGHT_NAME_OPTIONS else ""
    if _hub_is_offline():
        raise ValueError(f"The {what} {repo_id} ({weight_name}) is not in the local Hugging Face cache and "
                         f"HF_HUB_OFFLINE is set: download it on a connected machine (huggingface-cli download "
                         f"{repo_id} {weight_name}) or give the local file{option}.")
    try:
        return Path(hf_hub_download(repo_id, weight_name))
    except Exception as error:  # noqa: BLE001 — no such repository or file, no network: the hub's own words
        raise ValueError(f"The {what} {repo_id} ({weight_name}) cannot be had from the Hugging Face hub "
                         f"({type(error).__name__}){option}.") from None


def check_safetensors(path: Path, what: str, lora: bool, ip_adapter: bool = False) -> str:
    """The SHA-256 of `path` once it is known to be a regular, non-empty safetensors file of at
    most MAX_FILE_BYTES whose header parses, whose tensors lie inside the file, and whose keys name
    LoRA weights (`lora`) or an IP-Adapter's image projection and attention layers (`ip_adapter`).
    A ValueError of one sentence otherwise."""
    try:
        # stat of the target, not the link: a link to /dev/zero or a FIFO is what would be read
        info = os.stat(path)
    except OSError as error:
        raise ValueError(f"{what} cannot be read ({error.strerror or error}).") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} is not a regular file (a device, pipe or socket): give a .safetensors file.")
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{what} is not a .safetensors file: only safetensors are read, as they cannot run code.")
    if info.st_size == 0:
        raise ValueError(f"{what} is empty.")
    if info.st_size > MAX_FILE_BYTES:
        raise ValueError(f"{what} is {info.st_size / 2**30:.1f} GiB, over the {MAX_FILE_BYTES // 2**30} GiB a LoRA, "
                         f"embedding or IP-Adapter may be.")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            header = _read_header(file, info.st_size, what)
            file.seek(0)
            while chunk := file.read(STREAM_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise ValueError(f"{what} cannot be read ({error.strerror or error}).") from None
    keys = [key for key in header if key != "__metadata__"]
    if not keys:
        raise ValueError(f"{what} holds no tensor.")
    if lora and not any("lora" in key.lower() for key in keys):
        raise ValueError(f"{what} holds no LoRA weights (no key names lora): it is another kind of file, perhaps a "
                         f"whole model.")
    if ip_adapter and not all(any(key.startswith(prefix) for key in keys) for prefix in ("image_proj.", "ip_adapter.")):
        raise ValueError(f"{what} holds no IP-Adapter weights (its keys must start with image_proj. and ip_adapter.): "
                         f"it is another kind of file, perhaps a LoRA or a whole model.")
    return digest.hexdigest()


def _read_header(file, size: int, what: str) -> dict:
    """The safetensors JSON header, every tensor's offsets checked against the file's size."""
    broken = f"{what} is not a valid safetensors file"
    start = file.read(8)
    if len(start) < 8:
        raise ValueError(f"{broken}: it is shorter than a safetensors header.")
    (length,) = struct.unpack("<Q", start)
    if length < 2 or length > min(MAX_HEADER_BYTES, size - 8):
        raise ValueError(f"{broken}: its header length ({length} bytes) does not fit the file ({size} bytes).")
    try:
        header = json.loads(file.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError(f"{broken}: its header is not JSON.") from None
    if not isinstance(header, dict):
        raise ValueError(f"{broken}: its header is not a JSON object.")
    data = size - 8 - length
    for key, entry in header.items():
        if key == "__metadata__":
            if not (isinstance(entry, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in entry.items())):
                raise ValueError(f"{broken}: its metadata is not a map of texts.")
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            raise ValueError(f"{broken}: tensor {key!r} lies outside the file (cut short, or not safetensors).")
        shape, dtype = entry.get("shape"), entry.get("dtype")
        if dtype not in DTYPE_BYTES or not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0
                                                                            for n in shape)) \
                or math.prod(shape) * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise ValueError(f"{broken}: tensor {key!r} has a type or shape that does not fit its bytes.")
    return header


def check_unchanged(stored: dict, what: str, weights: str, find=None) -> tuple[str, str | None, Path]:
    """A PNG's record of a LoRA, embedding or IP-Adapter ({"source", "weight_name", "sha256", …}):
    its source, weight name and local file, once the file is found again with the same SHA-256; else
    one sentence saying what changed and what to do (`weights`: the option that names others).
    `find(source, weight_name)` gives the (file, SHA-256) of a kind of weights other than a LoRA's
    or an embedding's."""
    if not isinstance(stored, dict) or not isinstance(stored.get("source"), str) \
            or not isinstance(stored.get("sha256"), str):
        raise ValueError(f"The PNG's record of a {what} is not an object with source and sha256: it was changed "
                         f"after panosync wrote it.")
    source, weight_name = stored["source"], stored.get("weight_name")
    weight_name = weight_name if isinstance(weight_name, str) else None
    try:
        if find is None:
            path, _ = resolve_weights(source, weight_name, what)
            sha256 = check_safetensors(path, f"The {what} {source}", lora=what == "LoRA")
        else:
            path, sha256 = find(source, weight_name)
    except ValueError as error:
        raise ValueError(f"The {what} the PNG was made with cannot be loaded again: {str(error).rstrip('.')}; give "
                         f"{weights} to name the one to use.") from None
    if sha256 != stored["sha256"]:
        raise ValueError(f"The {what} {source} has changed since the PNG was made (its SHA-256 differs): the picture "
                         f"would differ; restore that file, or give {weights} to name the one to use.")
    return source, weight_name, path


def loras_of_png(stored: list) -> tuple[LoraSpec, ...]:
    """The LoRAs a PNG's metadata records, each found again unchanged (check_unchanged), at its
    scale, named as the command names them."""
    if not isinstance(stored, list):
        raise ValueError("The PNG's loras is not a list: it was changed after panosync wrote it.")
    found = [(entry, *check_unchanged(entry, "LoRA", "--lora")) for entry in stored]
    adapters = unique_names([adapter_name_of(source, weight_name) for _, source, weight_name, _ in found])
    return tuple(LoraSpec(source, adapter, str(path), entry["sha256"],
                          check_scale(f"The scale of the LoRA {source} in the PNG", entry.get("scale", 1.0)),
                          weight_name)
                 for (entry, source, weight_name, path), adapter in zip(found, adapters))


def textual_inversions_of_png(stored: list) -> tuple[TextualInversionSpec, ...]:
    """The embeddings a PNG's metadata records, each found again unchanged, with its token."""
    if not isinstance(stored, list):
        raise ValueError("The PNG's textual_inversions is not a list: it was changed after panosync wrote it.")
    specs = []
    for entry in stored:
        source, weight_name, path = check_unchanged(entry, "textual inversion", "--textual-inversion")
        token = entry.get("token")
        specs.append(TextualInversionSpec(source, str(path), entry["sha256"], token if isinstance(token, str) else None,
                                          weight_name))
    return tuple(specs)


# ------------------------------------------------------------------------------------ loading


@contextmanager
def quiet_loading():
    """diffusers', transformers' and peft's notices about partial loads are ours to turn into one
    sentence: they are silenced while a LoRA loads, and put back after."""
    import diffusers.utils.logging
    import transformers.utils.logging

    libraries = (diffusers.utils.logging, transformers.utils.logging)
    before = [(library.get_verbosity(), library.is_progress_bar_enabled()) for library in libraries]
    for library in libraries:
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for library, (verbosity, bars) in zip(libraries, before):
            library.set_verbosity(verbosity)
            (library.enable_progress_bar if bars else library.disable_progress_bar)()


def loaded_adapters(pipe) -> set[str]:
    """The adapter names loaded on any of the pipeline's networks."""
    return {name for names in pipe.get_list_adapters().values() for name in names}


def load_loras(pipe, specs: tuple[LoraSpec, ...] | list[LoraSpec]) -> None:
    """Load every LoRA of `specs` onto `pipe` by its adapter name, then make them all active at their
    scales. The file is hashed again first: a file swapped since it was checked is refused."""
    if not specs:
        return
    for spec in specs:
        path = Path(spec.path)
        if check_safetensors(path, f"The LoRA {spec.source}", lora=True) != spec.sha256:
            raise ValueError(f"The LoRA {spec.source} changed after it was checked (its SHA-256 differs): load it "
                             f"again.")
        try:
            with quiet_loading():
                # by its folder and file name, not as a state dict: diffusers reads the file's LoRA
                # metadata (lora_alpha, rank pattern) only from a file
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=spec.adapter_name)
        except MemoryError:
            raise
        except Exception as error:  # noqa: BLE001 — diffusers, peft and transformers raise many kinds for a
            # mismatch, whose words point at reports we silenced: the sentence says what it means
            with quiet_loading():
                _forget(pipe, spec.adapter_name)
            if "OutOfMemory" in type(error).__name__:
                raise
            raise ValueError(f"The LoRA {spec.source} is a LoRA for another model: none of its layers matches "
                             f"{type(pipe).__name__}'s networks in name and shape.") from None
        if spec.adapter_name not in loaded_adapters(pipe):
            raise ValueError(f"The LoRA {spec.source} is a LoRA for another model: none of its layers matches "
                             f"{type(pipe).__name__}'s networks.")
    pipe.set_adapters([spec.adapter_name for spec in specs], adapter_weights=[spec.scale for spec in specs])


def first_line(error: BaseException) -> str:
    """A library's error as a clause of one of our sentences: its first line, at most 200 characters."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]


def _forget(pipe, adapter_name: str) -> None:
    """Remove what a failed load left of an adapter (a network that took it before another refused)."""
    try:
        if adapter_name in loaded_adapters(pipe):
            pipe.delete_adapters(adapter_name)
    except Exception:  # noqa: BLE001 — the load's own error is the one to report
        pass


def apply_lora_scales(pipe, scales: dict, defaults: dict | None = None) -> dict:
    """Make the loaded adapters active at `scales` ({adapter_name: scale}), the others at their
    `defaults`; returns the scales set. A name not loaded, or a scale out of range, is one sentence."""
    loaded = loaded_adapters(pipe)
    unknown = sorted(set(scales) - loaded)
    if unknown:
        known = ", ".join(sorted(loaded)) or "none"
        raise ValueError(f"lora_scales names {unknown[0]!r}, which is no LoRA loaded here (loaded: {known}).")
    chosen = {**(defaults or {}), **{name: check_scale(f"lora_scales.{name}", scale) for name, scale in scales.items()}}
    if chosen:
        pipe.set_adapters(list(chosen), adapter_weights=list(chosen.values()))
    return chosen


def load_textual_inversions(pipe, specs) -> None:
    """Load each embedding onto the pipeline's text encoders (SDXL: clip_l and clip_g both); SD3
    takes none (one sentence)."""
    if not specs:
        return
    if not hasattr(pipe, "load_textual_inversion"):
        raise ValueError(f"{type(pipe).__name__} takes no textual inversion (SD3 has no loader for them): leave "
                         f"--textual-inversion out.")
    from safetensors.torch import load_file

    for spec in specs:
        if check_safetensors(Path(spec.path), f"The textual inversion {spec.source}", lora=False) != spec.sha256:
            raise ValueError(f"The textual inversion {spec.source} changed after it was checked: load it again.")
        try:
            weights = load_file(spec.path)
        except Exception:  # noqa: BLE001 — safetensors' own error for bytes its header misdescribes
            raise ValueError(f"The textual inversion {spec.source} is not a valid safetensors file.") from None
        try:
            with quiet_loading():
                if "clip_l" in weights and hasattr(pipe, "text_encoder_2"):  # SDXL's two encoders
                    pipe.load_textual_inversion(weights["clip_l"], token=spec.token, text_encoder=pipe.text_encoder,
                                                tokenizer=pipe.tokenizer)
                    pipe.load_textual_inversion(weights["clip_g"], token=spec.token,
                                                text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
                else:
                    pipe.load_textual_inversion(weights, token=spec.token)
        except Exception as error:  # noqa: BLE001 — a shape or token mismatch, in the library's words
            raise ValueError(f"The textual inversion {spec.source} cannot be loaded on {type(pipe).__name__} "
                             f"({first_line(error)}): it was made for another model, or its token is taken.") \
                from None


# ------------------------------------------------------------------------------------ front ends


def weights_of_options(loras: list[str] | None, weight_names: list[str] | None, inversions: list[str] | None,
                       stored: dict | None = None) -> tuple[tuple[LoraSpec, ...], tuple[TextualInversionSpec, ...]]:
    """The LoRAs and embeddings of the command's options, else (for --from) of the PNG's
    `stored` metadata, found again unchanged; an option given overrides the PNG's record."""
    stored = stored or {}
    if loras or weight_names:
        lora_list = lora_specs(loras, weight_names)
    else:
        lora_list = loras_of_png(stored["loras"]) if stored.get("loras") else ()
    if inversions:
        inversion_list = textual_inversion_specs(inversions)
    else:
        inversion_list = textual_inversions_of_png(stored["textual_inversions"]) \
            if stored.get("textual_inversions") else ()
    return lora_list, inversion_list


def weights_metadata(loras, inversions=(), scales: dict | None = None) -> dict:
    """What a PNG records of its LoRAs (at `scales`, {adapter_name: scale}, where given) and
    embeddings: nothing at all when there are none, so a PNG made without reads as before."""
    metadata = {}
    if loras:
        metadata["loras"] = [lora.metadata((scales or {}).get(lora.adapter_name)) for lora in loras]
    if inversions:
        metadata["textual_inversions"] = [inversion.metadata() for inversion in inversions]
    return metadata


def check_lora_scales(scales, loras) -> dict:
    """A request's or a job's `lora_scales` ({adapter_name: scale}), checked against the LoRAs
    `loras` names before any model work; a ValueError of one sentence otherwise."""
    from .settings import cut  # a client's names and values, cut short in the sentence

    if scales is None:
        return {}
    if not isinstance(scales, dict):
        raise ValueError(f"lora_scales must be an object of LoRA names and scales, got {cut(repr(scales))}.")
    known = [lora.adapter_name for lora in loras]
    for name, scale in scales.items():
        if name not in known:
            loaded = ", ".join(known) if known else "none: start it with --lora"
            raise ValueError(f"lora_scales names {cut(repr(name))}, which is no LoRA loaded here (loaded: {loaded}).")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"lora_scales.{cut(name)} must be a number from {MIN_SCALE:g} to {MAX_SCALE:g}, got "
                             f"{cut(repr(scale))}.")
        check_scale(f"lora_scales.{cut(name)}", scale)
    return {name: float(scale) for name, scale in scales.items()}
