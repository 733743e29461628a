"""`panosync export`: a panorama of the whole sphere as six cube-map faces for a game engine's
skybox, and six faces as the panorama again (cubemap.py holds the convention; docs/cubemap.md).

    panosync export sphere.png --cubemap faces/       # faces/px.png nx py ny pz nz, W/4 on a side
    panosync export faces/ --equirect sphere.png      # 4 × the face size wide, with Photo Sphere XMP

Every file the user gives is read whole and checked (a regular file within the size and pixel
limits, one still RGB or grey picture: conditions.load_condition_image and rgb_image), and every
file to be written is checked to be writable and new (unless --overwrite), before any pixel is
resampled or written. A refusal is a ValueError whose sentence says what to change.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import PIL.Image

from . import cubemap
from .conditions import load_condition_image, rgb_image
from .files import check_folder, check_writable, write_temporary
from .metadata import write_png
from .photosphere import gpano_fields
from .settings import MAX_PIXELS

# what --equirect reads as a face, by file name: one file per face, whichever of these it ends in
FACE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def add_parser(commands) -> argparse.ArgumentParser:
    """The `export` subcommand on `commands` (argparse's subparsers), its options included."""
    command = commands.add_parser(
        "export", help="cube-map faces from a 360° panorama of the whole sphere (W x W/2), and back",
        description="Cut a panorama of the whole sphere (an equirectangular image twice as wide as high) into "
                    "the six faces of a cube map, px nx py ny pz nz as OpenGL, three.js and Babylon.js take them "
                    "(--cubemap), or put six faces together again as the panorama, a PNG that 360° viewers "
                    "show as a sphere (--equirect). Needs the sphere extra.")
    command.add_argument("source", metavar="PANO_OR_DIR",
                         help="the panorama (PNG, JPEG, WebP) with --cubemap; the folder of faces with --equirect")
    target = command.add_mutually_exclusive_group(required=True)
    target.add_argument("--cubemap", metavar="DIR", help="write the six faces to DIR as px.png nx.png py.png ny.png "
                                                         "pz.png nz.png")
    target.add_argument("--equirect", metavar="OUT.png", help="write the panorama the faces in PANO_OR_DIR show")
    command.add_argument("--face-size", type=int, metavar="N",
                         help="pixels on a face's side, with --cubemap (default: the panorama's width / 4)")
    command.add_argument("--width", type=int, metavar="N",
                         help=f"the panorama's width, a multiple of {cubemap.WIDTH_MULTIPLE}, with --equirect; its "
                              f"height is half (default: 4 x the face size)")
    command.add_argument("--overwrite", action="store_true", help="replace files that exist already")
    return command


def export(args: argparse.Namespace) -> int:
    """Run `panosync export` (exit status 0); a ValueError that says what to change otherwise."""
    cubemap.library()  # the extra first: nothing is worth checking without it
    if args.cubemap is not None:
        return write_faces(args)
    return write_equirect(args)


# ------------------------------------------------------------------------------ sphere -> faces


def write_faces(args: argparse.Namespace) -> int:
    if args.width is not None:
        raise ValueError("--width sets the panorama --equirect writes: with --cubemap give --face-size.")
    what = f"panorama {args.source}"
    image = rgb_image(load_condition_image(args.source, MAX_PIXELS, "panorama"), what)
    cubemap.check_full_sphere(image.width, image.height, f"The panorama {args.source}")
    size = args.face_size if args.face_size is not None else max(1, image.width // 4)
    cubemap.check_face_size(size, max_pixels=MAX_PIXELS)
    folder = check_folder(args.cubemap, "--cubemap")
    paths = [folder / f"{name}.png" for name in cubemap.FACES]
    for path in paths:
        check_new(path, "--cubemap", args.overwrite)
    faces = cubemap.faces_of_equirect(np.asarray(image), size)
    folder.mkdir(parents=True, exist_ok=True)
    # all six written beside their places first, then renamed: a full disk leaves the folder as it
    # was, never a cube of some new faces and some old
    written = []
    try:
        for name, path in zip(cubemap.FACES, paths):
            face = PIL.Image.fromarray(faces[name])
            written.append(write_temporary(path, lambda file, face=face: face.save(file, format="PNG")))
    except OSError as failure:
        for temporary in written:
            temporary.unlink(missing_ok=True)
        raise OSError(f"{folder} could not take the faces ({failure.strerror or failure}): nothing was written "
                      f"there; free some space and export again.") from None
    for temporary, path in zip(written, paths):
        os.replace(temporary, path)
    print(f"wrote {folder}: six faces {size}x{size}, {' '.join(cubemap.FACES)}.png (OpenGL cube-map order and "
          f"orientation; pz faces the panorama's centre)")
    return 0


def check_new(path: Path, option: str, overwrite: bool) -> None:
    """check_writable, and a ValueError when `path` exists already and `overwrite` is not given."""
    check_writable(path, option)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists already: give --overwrite to replace it, or another {option}.")


# ------------------------------------------------------------------------------ faces -> sphere


def write_equirect(args: argparse.Namespace) -> int:
    if args.face_size is not None:
        raise ValueError("--face-size sets the faces --cubemap writes: with --equirect give --width.")
    out = Path(args.equirect).expanduser()
    if out.suffix.lower() != ".png":
        raise ValueError(f"--equirect {out}: panosync writes the panorama as a PNG (its Photo Sphere XMP says it is "
                         f"the whole sphere): give a name ending in .png.")
    check_new(out, "--equirect", args.overwrite)
    faces = read_faces(Path(args.source).expanduser())
    size = faces[cubemap.FACES[0]].shape[0]
    # 4 faces around the equator; rounded to the multiple the library's c2e takes
    default = max(cubemap.WIDTH_MULTIPLE, round(4 * size / cubemap.WIDTH_MULTIPLE) * cubemap.WIDTH_MULTIPLE)
    width = args.width if args.width is not None else default
    cubemap.check_equirect_width(width, max_pixels=MAX_PIXELS)
    image = PIL.Image.fromarray(cubemap.equirect_of_faces(faces, width))
    write_sphere_png(image, out)
    print(f"wrote {out} ({image.width}x{image.height}, the whole sphere, with Photo Sphere metadata (GPano) for "
          f"360° viewers)")
    return 0


def read_faces(folder: Path) -> dict[str, np.ndarray]:
    """The six faces in `folder` (FACES, each by its name and one of FACE_EXTENSIONS), read whole
    and checked, as (N, N, 3) uint8 arrays; a ValueError naming what is missing or wrong."""
    if not folder.is_dir():
        kind = "a file" if folder.exists() else "missing"
        raise ValueError(f"{folder} is {kind}: with --equirect, give the folder that holds the six faces "
                         f"{' '.join(cubemap.FACES)} (.png, .jpg or .webp).")
    found, missing = {}, []
    for name in cubemap.FACES:
        candidates = [folder / f"{name}{extension}" for extension in FACE_EXTENSIONS
                      if (folder / f"{name}{extension}").exists()]
        if len(candidates) > 1:
            raise ValueError(f"{folder} holds {len(candidates)} files for the face {name} "
                             f"({', '.join(path.name for path in candidates)}): keep one.")
        if candidates:
            found[name] = candidates[0]
        else:
            missing.append(name)
    if missing:
        raise ValueError(f"{folder} lacks the face{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"(files named {missing[0]}.png, .jpg or .webp): a cube map needs all six, "
                         f"{' '.join(cubemap.FACES)}.")
    # six faces share the pixel limit, so each is refused from its header before six are decoded
    faces = {name: np.asarray(rgb_image(load_condition_image(path, MAX_PIXELS // 6, f"face {name}"),
                                        f"face {name} ({path})"))
             for name, path in found.items()}
    cubemap.check_faces(faces)
    return faces


def write_sphere_png(image: PIL.Image.Image, path: Path) -> Path:
    """`image`, the whole sphere, as a PNG carrying Photo Sphere XMP (GPano) for 360° viewers, as a
    loop-closed panorama's (metadata.write_png); whole or not at all."""
    return write_png(image, path, gpano_fields(image.width, image.height))
