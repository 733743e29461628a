"""Cube maps (cubemap.py, export_command.py): the faces follow OpenGL's cube-map table, the round
trip loses no more than the sampling grids explain, and `panosync export` writes six faces and
the sphere again, or refuses in one sentence before it writes anything."""

import struct
import zlib

import numpy as np
import PIL.Image
import pytest

from panosync import cubemap
from panosync.cli import main
from panosync.photosphere import XMP_KEYWORD, read_gpano

WIDTH = 512  # the sphere of the pure tests: faces of 128


def linear(directions: np.ndarray) -> np.ndarray:
    """A smooth image of the sphere: RGB = 0.5 + 0.4 · (x, y, z). Each channel changes by at most
    0.4 per radian the direction turns, so a sample misplaced by an angle a is off by ≤ 0.4 a."""
    return (0.5 + 0.4 * directions).astype(np.float32)


def one_sentence(capsys, code, *words):
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("panosync: error: ") and err.strip().endswith("."), err
    for word in words:
        assert word in err, err
    return err


# ------------------------------------------------------------------------------ the convention


def test_the_round_trip_is_off_by_no_more_than_the_sampling_grids_explain():
    # Bound: py360convert's grids misplace samples (benchmarks/CUBEMAP.md): half an equirect pixel,
    # π/W (its columns and rows at the ends of their range), half a face texel when faces become the
    # sphere, π/W at a face's centre (a texel read at its corner), and up to half a texel at a face's
    # edge the other way, π/2W: 1.25 × 2π/W radians in all, taken as 1.5 for margin. The image
    # changes ≤ 0.4 per radian, so each value is off by at most 0.4 · 1.5 · 2π/W · 255 = 1.88 levels
    # at W = 512; bilinear's own error on it is second order (< 0.01 level). Measured: largest 1.45,
    # mean 0.50 (errors of the grids fall as 1/W: 2.89 and 1.00 at W = 256). A face swapped or
    # turned is off by tens of levels.
    truth = linear(cubemap.pixel_directions(WIDTH, WIDTH // 2))
    faces = cubemap.faces_of_equirect(truth, WIDTH // 4)
    again = cubemap.equirect_of_faces(faces, WIDTH)
    error = np.abs(again - truth) * 255
    bound = 0.4 * 1.5 * 2 * np.pi / WIDTH * 255
    assert again.shape == truth.shape and again.dtype == np.float32
    assert error.max() <= bound and error.mean() <= bound / 2.5, (error.max(), error.mean())


def opengl_lookup(faces: dict, directions: np.ndarray) -> np.ndarray:
    """The faces sampled in `directions` by OpenGL's cube-map rule, written out here apart from
    cubemap.py: the major axis picks the face, (sc, tc) as the specification's table gives them,
    s = (sc/|ma| + 1)/2 and t = (tc/|ma| + 1)/2, t = 0 the first (top) row; bilinear, clamped."""
    x, y, z = directions.T
    ax, ay, az = np.abs(directions).T
    on_x, on_y, on_z = (ax >= ay) & (ax >= az), (ay > ax) & (ay >= az), (az > ax) & (az > ay)
    picks = [("px", on_x & (x > 0), -z, -y, ax), ("nx", on_x & (x <= 0), z, -y, ax),
             ("py", on_y & (y > 0), x, z, ay), ("ny", on_y & (y <= 0), x, -z, ay),
             ("pz", on_z & (z > 0), x, -y, az), ("nz", on_z & (z <= 0), -x, -y, az)]
    out = np.zeros((len(directions), 3), np.float32)
    for name, chosen, sc, tc, ma in picks:
        face = faces[name]
        size = face.shape[0]
        column = np.clip(((sc / ma + 1) / 2 * size - 0.5)[chosen], 0, size - 1)
        row = np.clip(((tc / ma + 1) / 2 * size - 0.5)[chosen], 0, size - 1)
        left, top = np.minimum(column.astype(int), size - 2), np.minimum(row.astype(int), size - 2)
        across, down = (column - left)[:, None], (row - top)[:, None]
        out[chosen] = ((1 - down) * ((1 - across) * face[top, left] + across * face[top, left + 1])
                       + down * ((1 - across) * face[top + 1, left] + across * face[top + 1, left + 1]))
    return out


def test_the_faces_are_the_opengl_cube_map_of_the_sphere():
    # Bound: the faces' texels lie up to half a texel from their centres (π/W radians at most), so
    # 0.4 · π/512 · 255 = 0.63 levels, and the lookup's own bilinear adds < 0.01. Measured: 0.32.
    # A face in the wrong slot, mirrored or turned, would be off by up to 0.8 · 255.
    faces = cubemap.faces_of_equirect(linear(cubemap.pixel_directions(WIDTH, WIDTH // 2)), WIDTH // 4)
    directions = np.random.default_rng(0).normal(size=(20000, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    error = np.abs(opengl_lookup(faces, directions) - linear(directions)) * 255
    assert error.max() <= 0.4 * np.pi / WIDTH * 255, error.max()
    for name in cubemap.FACES:  # and cubemap.py's own table says the same as OpenGL's
        texels = cubemap.texel_directions(name, 16).reshape(-1, 3)
        assert np.abs(opengl_lookup({n: linear(cubemap.texel_directions(n, 16)) for n in cubemap.FACES}, texels)
                      - linear(texels)).max() < 1e-5


# the labelled sphere: red 255 above the horizon, 0 below; green says which quarter of longitude
# (centred on 0°, 90°, 180°, -90°); blue grows with longitude from -180° to 180°
QUARTERS = {0: 60, 90: 120, 180: 180, -90: 240}


def labelled_sphere(width: int) -> np.ndarray:
    directions = cubemap.pixel_directions(width, width // 2)
    longitude = np.degrees(np.arctan2(directions[..., 0], directions[..., 2]))
    quarter = np.select([np.abs(longitude) <= 45, (longitude > 45) & (longitude <= 135), np.abs(longitude) > 135],
                        [QUARTERS[0], QUARTERS[90], QUARTERS[180]], QUARTERS[-90])
    return np.stack([np.where(directions[..., 1] > 0, 255, 0), quarter,
                     np.round((longitude + 180) / 360 * 255)], axis=-1).astype(np.uint8)


# (face, row and column as fractions of its side, the quarter of longitude seen there, above the horizon)
LANDMARKS = [
    ("pz", 0.5, 0.5, 0, None), ("px", 0.5, 0.5, 90, None), ("nz", 0.5, 0.5, 180, None), ("nx", 0.5, 0.5, -90, None),
    *[(side, 0.15, 0.5, None, True) for side in ("pz", "px", "nz", "nx")],    # upright: sky at the top
    *[(side, 0.85, 0.5, None, False) for side in ("pz", "px", "nz", "nx")],
    ("py", 0.5, 0.5, None, True), ("ny", 0.5, 0.5, None, False),              # the poles
    ("py", 0.9, 0.5, 0, True), ("py", 0.5, 0.9, 90, True), ("py", 0.1, 0.5, 180, True), ("py", 0.5, 0.1, -90, True),
    ("ny", 0.1, 0.5, 0, False), ("ny", 0.5, 0.9, 90, False), ("ny", 0.9, 0.5, 180, False), ("ny", 0.5, 0.1, -90, False),
]


def test_landmarks_of_the_sphere_land_on_their_faces_the_right_way_up():
    faces = cubemap.faces_of_equirect(labelled_sphere(256), 64)
    for name, row, column, quarter, above in LANDMARKS:
        pixel = faces[name][int(row * 64), int(column * 64)]
        if quarter is not None:
            assert pixel[1] == QUARTERS[quarter], (name, row, column, pixel)
        if above is not None:
            assert pixel[0] == (255 if above else 0), (name, row, column, pixel)
    # seen from inside, longitude grows to the right on every side face; on nz it wraps at its middle
    for name in ("nx", "pz", "px"):
        assert faces[name][32, 8, 2] < faces[name][32, 56, 2], name
    assert faces["nz"][32, 8, 2] > 200 and faces["nz"][32, 56, 2] < 55


def test_the_cross_puts_each_face_in_its_place():
    faces = {name: np.full((4, 4), 10 * (i + 1), np.uint8) for i, name in enumerate(cubemap.FACES)}
    sheet = cubemap.cross(faces)
    assert sheet.shape == (12, 16)
    for name, (column, row) in cubemap.CROSS.items():
        assert (sheet[4 * row:4 * row + 4, 4 * column:4 * column + 4] == faces[name]).all()
    assert sheet[0, 0] == 0 and sheet[11, 15] == 0


# ------------------------------------------------------------------------------ the command


@pytest.fixture
def sphere_png(tmp_path):
    path = tmp_path / "sphere.png"
    PIL.Image.fromarray(np.round(linear(cubemap.pixel_directions(256, 128)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def faces_dir(tmp_path, sphere_png):
    folder = tmp_path / "faces"
    assert main(["export", str(sphere_png), "--cubemap", str(folder)]) == 0
    return folder


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_export_writes_six_faces_and_the_sphere_again_with_gpano(tmp_path, sphere_png, suffix, capsys):
    source = sphere_png.with_suffix(suffix)
    PIL.Image.open(sphere_png).save(source, quality=95, lossless=True)  # lossless: WebP's; JPEG takes quality
    folder = tmp_path / "faces"
    assert main(["export", str(source), "--cubemap", str(folder)]) == 0
    assert sorted(path.name for path in folder.iterdir()) == sorted(f"{name}.png" for name in cubemap.FACES)
    assert all(PIL.Image.open(folder / f"{name}.png").size == (64, 64) for name in cubemap.FACES)
    out = tmp_path / "again.png"
    assert main(["export", str(folder), "--equirect", str(out)]) == 0
    with PIL.Image.open(out) as image:
        assert image.size == (256, 128) and image.mode == "RGB"
        gpano = read_gpano(image.info[XMP_KEYWORD])
        again = np.asarray(image, dtype=np.float32)
    assert gpano["ProjectionType"] == "equirectangular" and gpano["UsePanoramaViewer"] == "True"
    assert (gpano["FullPanoWidthPixels"], gpano["FullPanoHeightPixels"]) == ("256", "128")
    assert (gpano["CroppedAreaImageHeightPixels"], gpano["CroppedAreaTopPixels"]) == ("128", "0")
    # the bound of the pure round trip at W = 256 (3.75), plus 8-bit rounding three times, plus JPEG's
    # blocks (not smooth: its sampling error may exceed the bound's)
    tolerance = 0.4 * 1.5 * 2 * np.pi / 256 * 255 + 1.5 + (6 if suffix == ".jpg" else 0)
    assert np.abs(again - np.asarray(PIL.Image.open(source).convert("RGB"), np.float32)).max() <= tolerance
    assert "six faces 64x64" in capsys.readouterr().out


def test_the_sizes_are_chosen_with_face_size_and_width(tmp_path, sphere_png):
    folder, out = tmp_path / "faces", tmp_path / "wide.png"
    assert main(["export", str(sphere_png), "--cubemap", str(folder), "--face-size", "40"]) == 0
    assert PIL.Image.open(folder / "py.png").size == (40, 40)
    assert main(["export", str(folder), "--equirect", str(out), "--width", "96"]) == 0
    assert PIL.Image.open(out).size == (96, 48)


# ------------------------------------------------------------------------------ refusals


def huge_png(path, width=12000, height=6000):
    """A PNG whose header claims width × height (its pixels never follow): refused from the header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_a_band_that_is_not_the_whole_sphere_is_refused(tmp_path, capsys):
    band = tmp_path / "band.png"
    PIL.Image.new("RGB", (256, 64)).save(band)
    code = main(["export", str(band), "--cubemap", str(tmp_path / "faces")])
    one_sentence(capsys, code, "90° of latitude", "whole sphere", "256x128")
    assert not (tmp_path / "faces").exists()


@pytest.mark.parametrize("damage, words", [
    ("missing", ["lacks the face nz", "all six"]),
    ("not square", ["px is 64x48, not square"]),
    ("other size", ["different sizes", "px 32x32"]),
    ("truncated", ["Cannot read face py"]),
    ("not an image", ["not an image file"]),
    ("huge", ["pixels, more than the"]),
    ("two files", ["2 files for the face pz", "keep one"]),
])
def test_faces_that_make_no_cube_are_refused_before_anything_is_written(faces_dir, tmp_path, capsys, damage, words):
    if damage == "missing":
        (faces_dir / "nz.png").unlink()
    elif damage == "not square":
        PIL.Image.new("RGB", (64, 48)).save(faces_dir / "px.png")
    elif damage == "other size":
        PIL.Image.new("RGB", (32, 32)).save(faces_dir / "px.png")
    elif damage == "truncated":
        data = (faces_dir / "py.png").read_bytes()
        (faces_dir / "py.png").write_bytes(data[:len(data) // 2])
    elif damage == "not an image":
        (faces_dir / "pz.png").write_text("not a picture")
    elif damage == "huge":
        huge_png(faces_dir / "ny.png")
    else:
        PIL.Image.open(faces_dir / "pz.png").save(faces_dir / "pz.jpg")
    capsys.readouterr()
    out = tmp_path / "sphere-again.png"
    one_sentence(capsys, main(["export", str(faces_dir), "--equirect", str(out)]), *words)
    assert not out.exists()


def test_existing_files_are_kept_unless_overwrite(faces_dir, tmp_path, sphere_png, capsys):
    out = tmp_path / "taken.png"
    out.write_bytes(b"mine")
    capsys.readouterr()
    one_sentence(capsys, main(["export", str(faces_dir), "--equirect", str(out)]), "exists already", "--overwrite")
    assert out.read_bytes() == b"mine"
    # one face there already: no face is written, the others neither
    folder = tmp_path / "partly"
    folder.mkdir()
    (folder / "py.png").write_bytes(b"mine")
    one_sentence(capsys, main(["export", str(sphere_png), "--cubemap", str(folder)]), "py.png exists already")
    assert [path.name for path in folder.iterdir()] == ["py.png"] and (folder / "py.png").read_bytes() == b"mine"
    assert main(["export", str(faces_dir), "--equirect", str(out), "--overwrite"]) == 0
    assert PIL.Image.open(out).size == (256, 128)


@pytest.mark.parametrize("make, words", [
    (lambda path: path.write_bytes(b"\x89PNG\r\n\x1a\n broken"), ["Cannot read panorama"]),
    (lambda path: path.write_text("hello"), ["not an image file"]),
    (huge_png, ["pixels, more than the"]),
    (lambda path: huge_png(path, 40000, 20000), ["decompression bomb"]),  # PIL's own limit, before ours
    (lambda path: PIL.Image.new("RGBA", (64, 32)).save(path), ["transparency"]),
])
def test_a_panorama_that_cannot_be_read_is_refused(tmp_path, capsys, make, words):
    source = tmp_path / "pano.png"
    make(source)
    one_sentence(capsys, main(["export", str(source), "--cubemap", str(tmp_path / "faces")]), *words)
    assert not (tmp_path / "faces").exists()


def test_options_of_the_other_direction_and_a_missing_extra_are_refused(faces_dir, sphere_png, tmp_path, capsys,
                                                                         monkeypatch):
    capsys.readouterr()
    one_sentence(capsys, main(["export", str(sphere_png), "--cubemap", str(tmp_path / "f"), "--width", "64"]),
                 "--width", "--face-size")
    one_sentence(capsys, main(["export", str(faces_dir), "--equirect", str(tmp_path / "o.png"), "--width", "100"]),
                 "multiple of 8")
    one_sentence(capsys, main(["export", str(faces_dir), "--equirect", str(tmp_path / "o.jpg")]), "ending in .png")
    one_sentence(capsys, main(["export", str(sphere_png), "--equirect", str(tmp_path / "o.png")]), "folder")
    monkeypatch.setitem(__import__("sys").modules, "py360convert", None)  # as if the extra were not installed
    one_sentence(capsys, main(["export", str(sphere_png), "--cubemap", str(tmp_path / "f")]),
                 "sphere extra", "pip install 'panosync[sphere]'")


def test_a_disk_that_fills_while_the_faces_are_written_leaves_the_old_faces_whole(faces_dir, sphere_png, capsys,
                                                                                  monkeypatch):
    before = {path.name: path.read_bytes() for path in faces_dir.iterdir()}
    save, calls = PIL.Image.Image.save, []

    def filling(image, file, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third face finds the disk full
            raise OSError(28, "No space left on device")
        return save(image, file, *args, **kwargs)

    other = sphere_png.with_name("other.png")
    PIL.Image.open(sphere_png).transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT).save(other)  # other faces
    monkeypatch.setattr(PIL.Image.Image, "save", filling)
    assert main(["export", str(other), "--cubemap", str(faces_dir), "--overwrite"]) == 1
    error = capsys.readouterr().err
    assert "could not take the faces (No space left on device): nothing was written" in error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert {path.name: path.read_bytes() for path in faces_dir.iterdir()} == before  # no new face, no leftover
