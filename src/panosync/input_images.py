"""An image input's files on the command and in batch (image_input.py does the rest): read whole
and checked before any model loads, hashed, recorded in the PNG's metadata by path and SHA-256,
and found again unchanged by --from. A region prompt's mask (regions.py) is such a file too:
a region on the command and in batch holds its mask as an ImageFile, which the PNG records as it
records an image, and the pipeline gets as a picture (loaded_regions)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

# what each image input is called in sentences, and the option that names it
WHAT = {"image": ("image", "--image"), "mask_image": ("mask", "--mask"),
        "region_mask": ("region mask", "--region-mask")}
# how a sentence tells the user to use another file than the PNG's: a region's mask is given again
# with every region, since region options replace all of the PNG's regions
OTHERS = {"region_mask": "give every region again (--region, --region-mask) to name the ones to use"}


@dataclass(frozen=True)
class ImageFile:
    """An image input's file, checked: `path` as the user named it, `sha256` of its bytes."""

    name: str  # "image", "mask_image" or "region_mask"
    path: str
    sha256: str

    def metadata(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}

    def load(self) -> PIL.Image.Image:
        """The image, once its file is found with the SHA-256 it was checked with."""
        image, sha256 = read_image_file(self.path, self.name)
        if sha256 != self.sha256:
            raise ValueError(f"The {WHAT[self.name][0]} {self.path} changed after it was checked (its SHA-256 "
                             f"differs): give it again.")
        return image


def read_image_file(path: str, name: str) -> tuple[PIL.Image.Image, str]:
    """The image at `path` read whole (conditions.py's checks: a regular file within the size and
    pixel limits, one still picture, no transparency for an image) and its SHA-256."""
    from .conditions import load_condition_image, rgb_image
    from .settings import MAX_PIXELS

    what = WHAT[name][0]
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{WHAT[name][1]} must name an image file, got {path!r}.")
    image = load_condition_image(path, MAX_PIXELS, what)
    data = Path(path).expanduser().read_bytes()
    if name == "image":
        image = rgb_image(image, what)
    return image, hashlib.sha256(data).hexdigest()


def image_file(path: str, name: str) -> ImageFile:
    """The checked file, by its absolute path (a PNG's record then reads it from any folder)."""
    _, sha256 = read_image_file(path, name)
    return ImageFile(name, os.path.abspath(os.path.expanduser(path)), sha256)


def image_file_of_png(stored, name: str) -> ImageFile:
    """The image input a PNG's metadata records ({"path", "sha256"}), found again unchanged."""
    what, option = WHAT[name]
    others = OTHERS.get(name, f"give {option} to name the one to use")
    if not isinstance(stored, dict) or not isinstance(stored.get("path"), str) \
            or not isinstance(stored.get("sha256"), str):
        raise ValueError(f"The PNG's record of its {what} is not an object with path and sha256: it was changed after "
                         f"panosync wrote it.")
    try:
        found = image_file(stored["path"], name)
    except ValueError as error:
        raise ValueError(f"The {what} the PNG was made from cannot be read again: {str(error).rstrip('.')}; "
                         f"{others}.") from None
    if found.sha256 != stored["sha256"]:
        raise ValueError(f"The {what} {stored['path']} has changed since the PNG was made (its SHA-256 differs): the "
                         f"picture would differ; restore that file, or {others}.")
    return found


def image_files_of_request(given: dict, stored: dict) -> dict:
    """The image and mask files of a request: the options given, else the PNG's records (--from)."""
    files = {}
    for name in WHAT:
        if given.get(name) is not None:
            files[name] = image_file(given[name], name)
        elif stored.get(name) is not None:
            files[name] = image_file_of_png(stored[name], name)
    if "mask_image" in files and "image" not in files:
        raise ValueError("--mask says which of an image's pixels are repainted: give --image too.")
    return files


def region_of_record(record, number: int) -> dict:
    """Region `number` of a PNG's metadata, its mask (a {"path", "sha256"} record) found again
    unchanged as an ImageFile; a record that is no region is left for regions.plan_regions to refuse."""
    if isinstance(record, dict) and record.get("mask") is not None:
        return {**record, "mask": image_file_of_png(record["mask"], "region_mask")}
    return record


def regions_metadata(regions) -> list | None:
    """The regions as a PNG records them, as given: a box, or a mask by its file's record (path and
    SHA-256), the prompt, the weight (1 unless given), a negative prompt only where given."""
    if regions is None:
        return None
    records = []
    for region in regions:
        record = {key: value.metadata() if isinstance(value, ImageFile) else value for key, value in region.items()
                  if value is not None}
        records.append({**record, "weight": 1.0 if region.get("weight") is None else region["weight"]})
    return records


def loaded_regions(regions) -> list | None:
    """The regions as the pipeline takes them: each mask file read (and found unchanged, else a
    ValueError that says so); a mask that is a picture already, and a box, as they are."""
    if regions is None:
        return None
    return [{**region, "mask": region["mask"].load()} if isinstance(region, dict) and
            isinstance(region.get("mask"), ImageFile) else region for region in regions]


def check_regions_on_canvas(values: dict, vae_factor: int) -> None:
    """The regions of `values` (their masks read) on its canvas, as the pipeline will check them
    (regions.plan_regions: each box inside it with room, each mask of its size and not all black,
    some weight everywhere): a SettingError with one sentence before any model loads. `values`
    holds the canvas filled in (width, height, window in pixels, loop_closure, tile)."""
    from .regions import plan_regions
    from .settings import wrapped_axes

    if not values.get("regions"):
        return
    plan_regions(loaded_regions(values["regions"]), values["width"], values["height"], vae_factor,
                 values["window"] // vae_factor, *wrapped_axes(values.get("loop_closure"), values.get("tile")))
