"""A batch's jobs: one JSON object a line, with the HTTP API's fields and an optional `name`, each
checked against settings.py and the model's geometry before anything runs; and what the output
folder holds for a job (a rerun keeps its PNG when its parameters match and its pixels are the ones
panosync wrote; a file panosync did not write is not replaced).

A line's `image` and `mask_image` are image files, as `panosync generate`'s --image and --mask: a
relative path is read from the jobs file's folder (so a folder of jobs and pictures can be moved
as one), read whole, checked and hashed with the lines, before any model loads; the PNG records
each as {"path": its absolute path, "sha256": its file's}, so that a changed picture makes the job
again on a rerun, and `panosync generate --from` finds it.

A line's `regions` (regions.py; batch/command.py shows a line) are boxes and masks, each with a
prompt; a region's `mask` names an image file, read from the jobs file's folder when relative, and
read, checked and hashed as an image is. Every region is checked on the canvas (regions.plan_regions)
before any model loads when the model's geometry is known then (else once it has loaded), and the
PNG records them as `panosync generate` does."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..input_images import ImageFile, check_regions_on_canvas, read_image_file, regions_metadata

# The fields a line may set: the HTTP API's (settings' served parameters), but not ControlSync's
# (a batch makes SyncDiffusion panoramas), and the PNG's name.
FIELDS = tuple(p.name for p in settings.PARAMETERS if p.served and not p.control) + ("lora_scales",)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # fullmatch: "$" would let a final newline through
WINDOWS_DEVICES = re.compile(r"CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9]", re.IGNORECASE)  # reserved, with any extension
NULL_MEANS_SOMETHING = settings.NULL_MEANS_SOMETHING  # as in the HTTP API
# A line's image input files, and the sentence for a mask without its image.
IMAGE_INPUTS = ("image", "mask_image")
MASK_WITHOUT_IMAGE = "mask_image says which of an image's pixels are repainted: give image too."
# A PNG made before panosync took image inputs records none of their settings: it was made with these.
IMAGE_DEFAULTS = {name: settings.BY_NAME[name].default for name in settings.IMAGE_NAMES}
# Keys of a PNG's metadata that do not change the picture, or say where it was made: not compared.
NOT_COMPARED = ("device", "dtype", "view_batch_size")
# The model's keys that a PNG carries only when they were given: one given then and not now differs too.
MODEL_OPTIONS = ("model_config", "vae", "loras", "textual_inversions",
                 "ip_adapter", "ip_adapter_image")
# Unset until the model is loaded, for a model whose configs cannot be read before (a hub id not in
# the cache, a checkpoint file): then any canvas of the PNG is the one the model's defaults made.
CANVAS = ("width", "height", "stride", "window")
SHOWN_BAD_LINES = 20  # of a file with more, the rest are counted
SHOWN_CHARACTERS = 80  # of a user's value (a field's name, a `name`) in a sentence


def cut(text: str, characters: int = SHOWN_CHARACTERS) -> str:
    """`text` as a sentence shows it: whole when short, else its start and how long it was (a
    megabyte sent as a field's name is not echoed)."""
    return text if len(text) <= characters else f"{text[:characters - 1]}… ({len(text):,} characters)"


@dataclass
class BatchJob:
    line: int  # in the file, from 1
    name: str  # the file's name, without its extension: the line's `name`, else line-N
    parameters: dict  # every pipeline parameter, defaults filled in, the seed drawn when not given
    metadata: dict  # what the PNG carries, but for the device and precision it is made in
    seed_given: bool
    extension: str = "png"  # the file's format (metadata.FORMATS): the batch's --format

    @property
    def file(self) -> str:
        return f"{self.name}.{self.extension}"

    def check_regions(self, vae_factor: int) -> None:
        """The job's regions on its canvas (filled in), as `panosync generate` checks them: a
        SettingError with one sentence for a region that cannot be used."""
        check_regions_on_canvas(self.parameters, vae_factor)

    def check_placement(self, pictures: dict | None = None, family: str | None = None,
                        vae_factor: int | None = None) -> None:
        """The job's image input placed on its canvas (image_input.place: the image's size, the mask's,
        the corner, the strength), and whether its strength runs a step, as `panosync generate`
        checks them (the model's `family` counts the steps; None: not known before the model loads,
        and the pipeline counts them); `pictures` the image and mask as read, else read again from
        their files. A ValueError that says what to change."""
        if self.parameters.get("image") is None:
            return
        from ..image_input import checked_release, place
        from ..schedulers import first_step_of_family

        if pictures is None:
            pictures = {name: self.parameters[name].load() for name in IMAGE_INPUTS
                        if self.parameters.get(name) is not None}
        parameters = self.parameters
        placement = place(pictures["image"], pictures.get("mask_image"), parameters["width"], parameters["height"],
                          parameters["strength"], parameters["image_at"], parameters["resize_image"],
                          vae_factor or 8)  # 8 until the model says (the pipeline places it again)
        if family is None or vae_factor is None:
            return
        checked_release(placement, parameters["width"], parameters["height"], vae_factor,
                        parameters["num_inference_steps"], first_step_of_family(family), parameters["loop_closure"],
                        parameters["window"])


def read_jobs(path: str | Path, model: dict, source, view_batch_size: int | None = None,
              loras: tuple = ()) -> list[BatchJob]:
    """Every job of the JSONL file `path`, checked; a ValueError naming every line that is wrong
    (the first SHOWN_BAD_LINES, and how many more) and the field. `model` holds the metadata's
    model keys (model, model_config, vae, textual_inversions, ip_adapter, ip_adapter_image);
    `source` is its ModelSource (its geometry, when known, checks the canvas now); `loras` the LoRAs
    of --lora (loras.LoraSpec), whose weights a line's `lora_scales` sets."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a JSONL file, one job a line.")
    if path.exists() and not path.is_file():  # a pipe would be read once, and gone on a resume
        raise ValueError(f"{path} is a device, pipe or socket, not a file: give a JSONL file, one job a line.")
    if not path.is_file():
        raise ValueError(f"{path}: no such file (give a JSONL file, one job a line).")
    try:
        # utf-8-sig: a byte-order mark some editors write is not part of the first line. Lines end at
        # \n only (str.splitlines would also split inside a prompt at U+2028 and the like).
        lines = [line.removesuffix("\r") for line in path.read_text(encoding="utf-8-sig").split("\n")]
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}): write the jobs as JSON lines.") from None
    recommended = settings.recommended_of(source)
    family = getattr(source, "family", None)
    jobs, names, bad = [], {}, []  # names: the name casefolded (one file on macOS and Windows) -> its job
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            job = _read_job(number, text, recommended, source.geometry, model, view_batch_size, loras, path.parent,
                            family)
        except ValueError as error:
            bad.append(f"line {number}: {error}")
            continue
        other = names.get(job.name.casefold())
        if other is not None and other.name == job.name:
            bad.append(f"line {number}: name {job.name!r} is the name of line {other.line} too: give every job its "
                       f"own name.")
            continue
        if other is not None:
            bad.append(f"line {number}: name {job.name!r} and line {other.line}'s {other.name!r} differ only in case, "
                       f"the same file on macOS and Windows: give every job a name of its own.")
            continue
        names[job.name.casefold()] = job
        jobs.append(job)
    if len(bad) == 1:
        raise ValueError(f"{path} {bad[0]}")
    if bad:
        more = f"\n  and {len(bad) - SHOWN_BAD_LINES:,} more." if len(bad) > SHOWN_BAD_LINES else ""
        raise ValueError(f"{path} has {len(bad):,} bad lines, and nothing was run:\n  "
                         + "\n  ".join(bad[:SHOWN_BAD_LINES]) + more)
    if not jobs:
        raise ValueError(f"{path} holds no job: write one JSON object a line, e.g. {{\"prompt\": \"snowy mountains\", "
                         f"\"seed\": 1}}.")
    return jobs


def _read_job(number: int, text: str, recommended: dict, geometry, model: dict,
              view_batch_size: int | None, loras: tuple = (), folder: Path = Path("."),
              family: str | None = None) -> BatchJob:
    from ..loras import check_lora_scales, weights_metadata

    try:
        fields = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: JSON nested beyond Python's stack
        raise ValueError(f"not valid JSON ({error}).") from None
    if not isinstance(fields, dict):
        raise ValueError(f"a job is a JSON object of fields, got a JSON {settings.json_kind(fields)}.")
    unknown = sorted(set(fields) - set(FIELDS) - {"name"})
    if unknown:
        raise ValueError(f"{cut(unknown[0])} is no field of a job: the fields are {', '.join(FIELDS)}, and name.")
    name = fields.pop("name", None)
    if name is not None and not (isinstance(name, str) and NAME.fullmatch(name)):
        raise ValueError(f"name must be a file name of letters, digits, '.', '-' and '_', not starting with a dot "
                         f"or dash, at most 100 characters, got {cut(repr(name))}.")
    if name is not None and re.fullmatch(r"line-\d+", name, re.IGNORECASE):  # Line-2.png is line-2.png on macOS
        raise ValueError(f"name {name!r} is how jobs without a name are named: choose another.")
    if name is not None and WINDOWS_DEVICES.fullmatch(name.split(".")[0]):
        raise ValueError(f"name {name!r} is a device on Windows (CON, NUL, COM1 …), where no file can have it: "
                         f"choose another.")
    try:
        lora_scales = check_lora_scales(fields.pop("lora_scales", None), loras)
    except ValueError as error:  # its sentence shows the value given, which may be long
        raise ValueError(cut(str(error), 4 * SHOWN_CHARACTERS)) from None
    given = {key: value for key, value in fields.items() if value is not None or key in NULL_MEANS_SOMETHING}
    if given.get("prompt") is None:
        raise ValueError("prompt must be given (text).")
    values = settings.resolve({key: value for key, value in given.items() if value is not None}, None, recommended)
    for key in NULL_MEANS_SOMETHING:  # an explicit null wins over a recommended value
        if key in given and given[key] is None:
            values[key] = None
    # the image input's settings too, none or not, as `panosync generate` records them
    values = {key: value for key, value in values.items() if key in settings.PIPELINE_NAMES + settings.IMAGE_NAMES}
    values["view_batch_size"] = view_batch_size
    files, pictures = _image_files(values, folder)
    if pictures:  # the canvas is the image's unless given, as on the command
        from ..image_input import canvas_of_image

        values["width"], values["height"] = canvas_of_image(pictures["image"].size, values["width"],
                                                            values["height"], values["resize_image"] is True)
    if geometry is not None:
        values = settings.fill_canvas(values, geometry)
    settings.check(values, geometry)
    values.update(files)
    values["regions"] = _region_files(values.get("regions"), folder)
    seed_given = values["seed"] is not None
    if not seed_given:
        values["seed"] = settings.draw_seed()
    metadata = {**values, **{name: file.metadata() for name, file in files.items()},
                "regions": regions_metadata(values["regions"]), **model, **weights_metadata(loras, (), lora_scales)}
    if lora_scales:  # for the maker, which sets them for this panorama only
        values["lora_scales"] = lora_scales
    job = BatchJob(number, name or f"line-{number}", values, metadata, seed_given)
    if values.get("width") is not None and values.get("height") is not None:  # else once the model has loaded
        job.check_placement(pictures, family, geometry.vae_factor if geometry is not None else None)
    if geometry is not None:  # else once the model has loaded (the window, the VAE factor)
        job.check_regions(geometry.vae_factor)
    return job


def _image_files(values: dict, folder: Path) -> tuple[dict, dict]:
    """The line's image and mask files (input_images.ImageFile: read whole, checked, hashed), by
    their absolute paths, a relative one read from `folder` (the jobs file's); and the pictures."""
    from ..image_input import mask_pixels

    if values.get("mask_image") is not None and values.get("image") is None:
        raise ValueError(MASK_WITHOUT_IMAGE)
    files, pictures = {}, {}
    for name in IMAGE_INPUTS:
        given = values.get(name)
        if given is None:
            continue
        if not isinstance(given, str) or not given.strip():
            raise ValueError(f"{name} must name an image file (a path; a relative one is read from the jobs file's "
                             f"folder), got {settings.shown(given)}.")
        path = os.path.abspath(folder / Path(given).expanduser())
        pictures[name], sha256 = read_image_file(path, name)
        files[name] = ImageFile(name, path, sha256)
    if "mask_image" in pictures:
        mask_pixels(pictures["mask_image"])  # one channel, not all black: before any model loads, whatever the canvas
    return files, pictures


def _region_files(regions, folder: Path) -> list | None:
    """The line's regions (a list, settings.check saw), each a region's keys with a prompt
    (regions.as_region), its mask an image file (input_images.ImageFile: read whole, checked, hashed)
    by its absolute path, a relative one read from `folder` (the jobs file's)."""
    from ..regions import as_region

    if not regions:
        return None
    files = []
    for number, region in enumerate(regions, 1):
        as_region(region, number)
        mask = region.get("mask")
        if mask is not None:
            if not isinstance(mask, str) or not mask.strip():
                raise settings.SettingError("regions", f"Region {number}'s mask must name an image file (a path; a "
                                                       f"relative one is read from the jobs file's folder), got "
                                                       f"{settings.shown(mask)}.")
            path = os.path.abspath(folder / Path(mask).expanduser())
            region = {**region, "mask": ImageFile("region_mask", path, read_image_file(path, "region_mask")[1])}
        files.append(region)
    return files


def settle_canvas(jobs: list[BatchJob], geometry, path: str | Path) -> None:
    """Fill in and check each job's canvas once the model's geometry is known (a model whose configs
    could not be read before it loaded); a ValueError naming the line as `read_jobs` does."""
    for job in jobs:
        job.parameters.update(settings.fill_canvas(job.parameters, geometry))
        job.metadata.update({key: job.parameters[key] for key in CANVAS})
        try:
            settings.check(job.parameters, geometry)
            job.check_placement()
            job.check_regions(geometry.vae_factor)
        except ValueError as error:
            raise ValueError(f"{path} line {job.line}: {error}") from None


# What an output folder holds for a job (examine): KEEP, its PNG; MAKE, nothing, or something that
# is no file (a folder: the job fails when its PNG is written); REPLACED, CUT_SHORT, UNVERIFIED or
# EDITED, a PNG made again, saying why; FOREIGN, a file panosync did not write, never replaced unasked.
KEEP, MAKE = "kept", "make"
CUT_SHORT = "cut short or damaged"
UNVERIFIED = "without a digest of their pixels to verify them by (written by an older panosync)"
EDITED = "whose pixels changed after panosync wrote them"
REPLACED = "made before with other parameters (another jobs file, lines changed since, or an image input changed)"
FOREIGN = "not written by panosync"


def examine(job: BatchJob, folder: Path) -> str:
    """What `folder` holds for the job: KEEP when its file was made with the job's parameters (a seed
    the line left to chance matches any) and its pixels are the ones panosync wrote (the digest in its
    metadata); MAKE when there is none; REPLACED when it was made with other parameters; CUT_SHORT, UNVERIFIED
    (written before panosync stored a digest) or EDITED for a PNG to make again, saying so; FOREIGN
    for a file that carries no panosync metadata, or a pipe, device or link, not replaced unasked;
    a panosync file in another format than its name says is REPLACED."""
    from ..metadata import DIGEST, FORMATS, pixels_digest, read_metadata

    import PIL.Image

    path = folder / job.file
    if not path.is_file():
        # a link to nothing (os.replace would replace the link), a pipe, a device: not ours to replace (a
        # folder fails its job when the file is written, and the others are made)
        return FOREIGN if path.is_symlink() or (path.exists() and not path.is_dir()) else MAKE
    try:
        stored = settings.stored_parameters(read_metadata(path))
    except ValueError:
        return FOREIGN
    if any(stored.get(key) != job.metadata.get(key) for key in MODEL_OPTIONS):
        return REPLACED
    for key, wanted in job.metadata.items():
        if key in NOT_COMPARED or (key == "seed" and not job.seed_given) or (wanted is None and key in CANVAS):
            continue
        if stored.get(key, IMAGE_DEFAULTS.get(key)) != wanted:
            return REPLACED
    try:
        with PIL.Image.open(path) as image:
            if image.format != FORMATS.get(path.suffix.lower()):  # PNG bytes under a .jpg name
                return REPLACED
            digest = pixels_digest(image)  # decodes every pixel: a PNG cut short (a crash mid-copy) fails here
    except (ValueError, OSError, SyntaxError, PIL.Image.DecompressionBombError):
        return CUT_SHORT
    if not isinstance(stored.get(DIGEST), str):
        return UNVERIFIED
    return KEEP if stored[DIGEST] == digest else EDITED


def adopt_seed(job: BatchJob, folder: Path) -> None:
    """A kept PNG's seed, for a job whose line left it to chance: the summary says the seed made."""
    from ..metadata import read_parameters

    if not job.seed_given:
        seed = read_parameters(folder / job.file).get("seed")
        job.parameters["seed"] = job.metadata["seed"] = seed
