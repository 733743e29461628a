"""Google's Photo Sphere XMP (GPano): what tells a viewer (Photo Sphere Viewer, Pannellum, Google
Photos, Facebook) that a loop-closed panorama is a 360° image (docs/algorithm.md, "360° geometry").

An equirectangular image maps longitude linearly to x and latitude to y; W pixels are 360°, so the
full sphere is W × W/2. A loop-closed panorama W × H is a horizontal band of it, centred on the
horizon: H/W × 360° high (512 × 2048: 90°, ±45°). GPano says so: the full panorama W × W/2, the
image the part of it from (0, (W/2 − H)/2). A band taller than the sphere (H > W/2) is none, and
gets no GPano.

Pure code: the packet (an XMP string) and reading one back; metadata.py writes it into PNG, JPEG
and WebP files.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

# the PNG iTXt keyword (and JPEG APP1 namespace) XMP lives under, by Adobe's XMP specification
XMP_KEYWORD = "XML:com.adobe.xmp"
GPANO = "http://ns.google.com/photos/1.0/panorama/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"


def gpano_fields(width: int, height: int, heading: float = 0.0) -> dict[str, object] | None:
    """The GPano fields of a loop-closed `width` × `height` panorama (a band of the sphere centred
    on the horizon), facing `heading` degrees at its centre; None where it is taller than a sphere."""
    full_height = width // 2
    if height > full_height:
        return None
    return {"ProjectionType": "equirectangular", "UsePanoramaViewer": True,
            "FullPanoWidthPixels": width, "FullPanoHeightPixels": full_height,
            "CroppedAreaImageWidthPixels": width, "CroppedAreaImageHeightPixels": height,
            "CroppedAreaLeftPixels": 0, "CroppedAreaTopPixels": (full_height - height) // 2,
            "PoseHeadingDegrees": float(heading)}


def vertical_degrees(width: int, height: int) -> float:
    """How many degrees of latitude a loop-closed `width` × `height` panorama covers."""
    return 360.0 * height / width


def xmp_packet(fields: dict[str, object] | None, descriptions: tuple[str, ...] = ()) -> str:
    """An XMP packet holding `fields` as GPano properties (attributes of one rdf:Description; none
    when None), then `descriptions`: more rdf:Description elements, as XML text."""
    def text(value) -> str:
        return ("True" if value else "False") if isinstance(value, bool) else str(value)

    gpano = ()
    if fields is not None:
        properties = "".join(f'\n   GPano:{name}="{text(value)}"' for name, value in fields.items())
        gpano = (f'<rdf:Description rdf:about="" xmlns:GPano="{GPANO}"{properties}/>',)
    body = "".join(f"  {description}\n" for description in (*gpano, *descriptions))
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
            f' <rdf:RDF xmlns:rdf="{RDF}">\n'
            f'{body}'
            ' </rdf:RDF>\n'
            '</x:xmpmeta>\n'
            '<?xpacket end="w"?>')


def xmp_root(packet: str) -> ElementTree.Element | None:
    """The x:xmpmeta element of an XMP packet; None where it has none or is not XML. Expat (2.4.1
    on) refuses the entity expansions that could blow up, and ElementTree reads no external file."""
    start, end = packet.find("<x:xmpmeta"), packet.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return None
    try:
        return ElementTree.fromstring(packet[start:end + len("</x:xmpmeta>")])
    except ElementTree.ParseError:
        return None


def read_gpano(packet: str) -> dict[str, str]:
    """The GPano properties of an XMP packet, as text (attributes or elements of its
    rdf:Descriptions); empty where it has none or is not XML."""
    root = xmp_root(packet)
    if root is None:
        return {}
    found = {}
    for description in root.iter(f"{{{RDF}}}Description"):
        for name, value in description.attrib.items():
            if name.startswith(f"{{{GPANO}}}"):
                found[name[len(GPANO) + 2:]] = value
        for child in description:
            if child.tag.startswith(f"{{{GPANO}}}"):
                found[child.tag[len(GPANO) + 2:]] = child.text or ""
    return found
