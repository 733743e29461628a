"""Photo Sphere XMP (photosphere.py, metadata.save_png): every loop-closed panorama's PNG carries
GPano's fields, uncompressed before its pixels, read back alike by our reader and by PIL's XMP
reader; a panorama that is not loop-closed, or taller than the sphere, carries none; the command
says what a loop-closed panorama covers."""

import json
import struct

import PIL.Image
import pytest

from panosync.cli import sphere_words
from panosync.metadata import read_parameters, save_png
from panosync.photosphere import XMP_KEYWORD, gpano_fields, read_gpano, vertical_degrees, xmp_packet


def chunks(path) -> list[tuple[bytes, bytes]]:
    """The PNG's chunks, in order: (type, data)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        found.append((kind, data[at + 8:at + 8 + length]))
        at += 12 + length
    return found


def itxt(data: bytes) -> tuple[str, bool, str]:
    """An iTXt chunk's keyword, whether it is compressed, and its text."""
    keyword, rest = data.split(b"\0", 1)
    compressed = rest[0] == 1
    _, _, text = rest[2:].split(b"\0", 2)
    return keyword.decode("latin-1"), compressed, text.decode("utf-8")


@pytest.mark.parametrize("width, height, top", [(2048, 512, 256), (1024, 512, 0), (512, 64, 96), (1000, 250, 125)])
def test_a_loop_closed_png_carries_gpano_before_its_pixels(tmp_path, width, height, top):
    path = save_png(PIL.Image.new("RGB", (width, height), (40, 90, 160)), tmp_path / "pano.png",
                    {"prompt": "a sea", "loop_closure": True})
    kinds = [kind for kind, _ in chunks(path)]
    xmp = [itxt(data) for kind, data in chunks(path) if kind == b"iTXt"]
    assert [(keyword, compressed) for keyword, compressed, _ in xmp] == [(XMP_KEYWORD, False)]
    assert kinds.index(b"iTXt") < kinds.index(b"IDAT")
    expected = {"ProjectionType": "equirectangular", "UsePanoramaViewer": "True",
                "FullPanoWidthPixels": str(width), "FullPanoHeightPixels": str(width // 2),
                "CroppedAreaImageWidthPixels": str(width), "CroppedAreaImageHeightPixels": str(height),
                "CroppedAreaLeftPixels": "0", "CroppedAreaTopPixels": str(top), "PoseHeadingDegrees": "0.0"}
    assert read_gpano(xmp[0][2]) == expected
    with PIL.Image.open(path) as image:  # another reader: PIL's (defusedxml)
        description = image.getxmp()["xmpmeta"]["RDF"]["Description"]
    assert {name: description[name] for name in expected} == expected
    assert read_parameters(path)["loop_closure"] is True  # the parameters are where they were


@pytest.mark.parametrize("parameters, size", [({"loop_closure": False}, (2048, 512)), ({}, (2048, 512)),
                                              ({"loop_closure": True}, (512, 512))])
def test_no_gpano_without_loop_closure_or_on_a_band_taller_than_the_sphere(tmp_path, parameters, size):
    path = save_png(PIL.Image.new("RGB", size), tmp_path / "flat.png", {"prompt": "a sea", **parameters})
    assert not [data for kind, data in chunks(path) if kind == b"iTXt"]
    assert gpano_fields(*size) is None or not parameters.get("loop_closure")


def test_the_band_is_centred_on_the_horizon_and_read_from_elements_too():
    assert vertical_degrees(2048, 512) == 90 and vertical_degrees(2048, 1024) == 180
    fields = gpano_fields(2048, 512)
    assert fields["CroppedAreaTopPixels"] * 2 + fields["CroppedAreaImageHeightPixels"] == fields["FullPanoHeightPixels"]
    elements = xmp_packet({}).replace('xmlns:GPano="http://ns.google.com/photos/1.0/panorama/"/>',
                                      'xmlns:GPano="http://ns.google.com/photos/1.0/panorama/">'
                                      '<GPano:ProjectionType>equirectangular</GPano:ProjectionType>'
                                      '</rdf:Description>')
    assert read_gpano(elements) == {"ProjectionType": "equirectangular"}
    assert read_gpano("no xmp here") == {}


def test_the_command_says_what_of_the_sphere_a_panorama_covers():
    assert sphere_words(2048, 512) == ("a 360° panorama 90° high (±45° about the horizon), with Photo Sphere "
                                       "metadata (GPano) for 360° viewers")
    assert "(the full sphere)" in sphere_words(2048, 1024)
    assert "carries no Photo Sphere metadata (make it at most 256 high)" in sphere_words(512, 512)
