"""Cube maps of the full sphere: six square faces from an equirectangular panorama, and the
panorama again from six faces (docs/cubemap.md).

An equirectangular image W × W/2 is the whole sphere: column x is longitude (x + ½)/W · 360° − 180°
(0° at the image's centre, growing to the right as a viewer turns right), row y is latitude
90° − (y + ½)/(W/2) · 180°. A point of the sphere is a direction in a left-handed frame, x to the
right, y up, z ahead (the image's centre):

    (cos lat · sin lon, sin lat, cos lat · cos lon)

The faces follow the OpenGL cube-map convention (its specification's table "Selection of cube map
images", texel rows stored top first): the left-handed frame above, +x to the right when looking
down +z. three.js's CubeTextureLoader takes the six files in this order, px nx py ny pz nz, and
Babylon.js's CubeTexture the same files (in its order px py pz nx ny nz):

    face  looks at          texel (s, t) in [-1, 1], s to the right, t down, sees the direction
    px    +x, lon  90°      ( 1, -t, -s)
    nx    -x, lon -90°      (-1, -t,  s)
    py    +y, up            ( s,  1,  t)    bottom edge on pz, right edge on px
    ny    -y, down          ( s, -1, -t)    top edge on pz, right edge on px
    pz    +z, lon   0°      ( s, -t,  1)    the panorama's centre (GPano heading 0)
    nz    -z, lon 180°      (-s, -t, -1)    the panorama's left and right edges

Each face is the view from inside the cube: the four side faces upright, sky at the top, and laid
out as a cross (py above pz, then nx pz px nz in a row, ny below pz) their edges meet.

The resampling is py360convert's (the `sphere` extra, chosen by benchmarks/cubemap.py), bilinear;
this module holds the convention, the checks of sizes and the layout. Pure functions of arrays.
"""

from __future__ import annotations

import numpy as np

FACES = ("px", "nx", "py", "ny", "pz", "nz")
# py360convert's faces in its list order, Front Right Back Left Up Down: its cube is this module's
# (measured in tests/test_cubemap.py), only named and ordered otherwise
LIBRARY_ORDER = ("pz", "px", "nz", "nx", "py", "ny")
# (column, row) of each face in the horizontal cross, 4 faces wide and 3 high
CROSS = {"py": (1, 0), "nx": (0, 1), "pz": (1, 1), "px": (2, 1), "nz": (3, 1), "ny": (1, 2)}
# py360convert's c2e refuses an equirectangular width that is not a multiple of 8
WIDTH_MULTIPLE = 8


def library():
    """py360convert, or a ValueError that says which extra brings it."""
    try:
        import py360convert
    except ModuleNotFoundError as error:  # py360convert itself, or numpy's or scipy's absence under it
        raise ValueError(f"panosync export needs {error.name}, which comes with the sphere extra: "
                         f"pip install 'panosync[sphere]'.") from None
    return py360convert


def check_full_sphere(width: int, height: int, what: str = "The panorama") -> None:
    """A ValueError unless `width` × `height` is the whole sphere, W × W/2."""
    if width >= 2 and 2 * height == width:
        return
    even = max(2, width - width % 2)
    degrees = 360.0 * height / width if width else 0.0
    if 2 * height < width:
        raise ValueError(f"{what} is {width}x{height}, a band of {degrees:.4g}° of latitude about the horizon, but a "
                         f"cube map needs the whole sphere (180°): make it {even}x{even // 2}, twice as wide as high.")
    raise ValueError(f"{what} is {width}x{height}, {degrees:.4g}° high where the whole sphere is 180°, so it is no "
                     f"equirectangular sphere a cube map can be cut from: make it {even}x{even // 2}, twice as wide "
                     f"as high.")


def check_face_size(size: int, option: str = "--face-size", max_pixels: int | None = None) -> None:
    """A ValueError unless `size` is a face side panosync makes: at least 1, six faces within `max_pixels`."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{option} must be a whole number of 1 or more (pixels on a face's side), got {size!r}.")
    if max_pixels is not None and 6 * size * size > max_pixels:
        largest = int((max_pixels / 6) ** 0.5)
        raise ValueError(f"{option} {size} makes six faces of {6 * size * size:,} pixels, more than the "
                         f"{max_pixels:,} allowed: give at most {largest}.")


def check_equirect_width(width: int, option: str = "--width", max_pixels: int | None = None) -> None:
    """A ValueError unless `width` is an equirectangular width panosync makes from faces: a multiple
    of WIDTH_MULTIPLE, W × W/2 within `max_pixels`."""
    if isinstance(width, bool) or not isinstance(width, int) or width < WIDTH_MULTIPLE or width % WIDTH_MULTIPLE:
        raise ValueError(f"{option} must be a whole multiple of {WIDTH_MULTIPLE} (pixels; the height is half), "
                         f"got {width!r}.")
    if max_pixels is not None and width * (width // 2) > max_pixels:
        largest = int((2 * max_pixels) ** 0.5) // WIDTH_MULTIPLE * WIDTH_MULTIPLE
        raise ValueError(f"{option} {width} makes a {width}x{width // 2} panorama of {width * (width // 2):,} pixels, "
                         f"more than the {max_pixels:,} allowed: give at most {largest}.")


def faces_of_equirect(image: np.ndarray, face_size: int) -> dict[str, np.ndarray]:
    """The six faces (FACES, each face_size × face_size × C) of an equirectangular image
    (H, W, C) of the whole sphere, uint8 or float, in the dtype it came in."""
    check_full_sphere(image.shape[1], image.shape[0])
    check_face_size(face_size)
    faces = library().e2c(as_float(image), face_w=face_size, mode="bilinear", cube_format="list")
    return {name: like(face, image.dtype) for name, face in zip(LIBRARY_ORDER, faces)}


def equirect_of_faces(faces: dict[str, np.ndarray], width: int) -> np.ndarray:
    """The equirectangular image (width/2, width, C) of the whole sphere that six faces (FACES, each
    square and of one size) show, in the faces' dtype."""
    check_faces(faces)
    check_equirect_width(width)
    dtype = faces[FACES[0]].dtype
    image = library().c2e([as_float(faces[name]) for name in LIBRARY_ORDER], width // 2, width, mode="bilinear",
                          cube_format="list")
    return like(image, dtype)


def check_faces(faces: dict[str, np.ndarray]) -> None:
    """A ValueError unless `faces` holds the six FACES, square, of one size and channel count."""
    missing = [name for name in FACES if name not in faces]
    if missing:
        raise ValueError(f"The cube map lacks the face{'s' if len(missing) > 1 else ''} {', '.join(missing)}: give "
                         f"all six, {' '.join(FACES)}.")
    for name in FACES:
        height, width = faces[name].shape[:2]
        if height != width:
            raise ValueError(f"The face {name} is {width}x{height}, not square: every face of a cube map is N x N.")
    shapes = {name: faces[name].shape for name in FACES}
    if len(set(shapes.values())) > 1:
        sizes = ", ".join(f"{name} {shape[1]}x{shape[0]}" for name, shape in shapes.items())
        raise ValueError(f"The faces are of different sizes or channels ({sizes}): give six of one size.")


def cross(faces: dict[str, np.ndarray], background=0) -> np.ndarray:
    """The six faces laid out as a horizontal cross (module docstring), 4 × 3 faces, the corners
    filled with `background`."""
    check_faces(faces)
    size = faces[FACES[0]].shape[0]
    first = faces[FACES[0]]
    sheet = np.full((3 * size, 4 * size, *first.shape[2:]), background, dtype=first.dtype)
    for name, (column, row) in CROSS.items():
        sheet[row * size:(row + 1) * size, column * size:(column + 1) * size] = faces[name]
    return sheet


def pixel_directions(width: int, height: int) -> np.ndarray:
    """(height, width, 3) unit directions of an equirectangular image's pixel centres (module docstring)."""
    longitude = ((np.arange(width) + 0.5) / width * 2 - 1) * np.pi
    latitude = (0.5 - (np.arange(height) + 0.5) / height) * np.pi
    longitude, latitude = np.meshgrid(longitude, latitude)
    return np.stack([np.cos(latitude) * np.sin(longitude), np.sin(latitude),
                     np.cos(latitude) * np.cos(longitude)], axis=-1)


def texel_directions(face: str, size: int) -> np.ndarray:
    """(size, size, 3) unit directions of a face's texel centres (the table in the module docstring)."""
    centres = (np.arange(size) + 0.5) / size * 2 - 1
    s, t = np.meshgrid(centres, centres)
    one = np.ones_like(s)
    direction = {"px": (one, -t, -s), "nx": (-one, -t, s), "py": (s, one, t), "ny": (s, -one, -t),
                 "pz": (s, -t, one), "nz": (-s, -t, -one)}[face]
    vectors = np.stack(direction, axis=-1)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def as_float(image: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] (uint8 scaled), what the library interpolates without rounding on the way."""
    return image.astype(np.float32) / 255 if image.dtype == np.uint8 else image.astype(np.float32, copy=False)


def like(image: np.ndarray, dtype) -> np.ndarray:
    """`image` (float in [0, 1]) back in `dtype`: uint8 rounded to the nearest level."""
    if np.dtype(dtype) == np.uint8:
        return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return image.astype(dtype, copy=False)
