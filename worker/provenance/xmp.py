"""IPTC Digital Source Type (and the creator tool) from XMP packets, parsed without a DTD.

XMP is XML, and XML from an upload is hostile: a billion-laughs entity bomb expands a 1 KB packet
to gigabytes, and an external entity makes the parser open files or URLs. defusedxml refuses any
DTD outright (`forbid_dtd`), which rules out both before a single entity is expanded; XMP never
needs a DTD. The packet size is bounded beforehand (`containers.walk`).

The source type appears as `Iptc4xmpExt:DigitalSourceType` (IPTC Extension 1.2+) or the older
`Iptc4xmpExt:DigitalSourcefileType`, written as an element, an attribute of rdf:Description, or an
element with rdf:resource; the value is a NewsCodes URI (http or https) or a bare term.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
XMP_BASIC = "http://ns.adobe.com/xap/1.0/"
DCTERMS = "http://purl.org/dc/terms/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
SOURCE_TYPE_PROPERTIES = ("DigitalSourceType", "DigitalSourcefileType")
MAX_VALUE = 500  # characters kept of any value


@dataclass
class XmpFacts:
    source_types: list[tuple[str, str]] = field(default_factory=list)  # (property, value)
    creator_tool: str | None = None
    provenance: str | None = None  # dcterms:provenance: where a remote C2PA manifest lives


def parse(packet: bytes) -> XmpFacts:
    """Facts from one XMP packet. Raises `ValueError` (with a short message) for XML that is
    malformed or uses a DTD/entities."""
    import xml.etree.ElementTree as ET

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    try:
        root = fromstring(packet.strip(b"\x00 \t\r\n"), forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise ValueError(f"XMP refused: {type(exc).__name__}") from None
    except ET.ParseError as exc:
        raise ValueError(f"XMP is not well-formed XML: {exc}") from None
    facts = XmpFacts()
    seen: set[tuple[str, str]] = set()

    def value_of(element) -> str:
        text = (element.text or "").strip() or element.get(f"{{{RDF}}}resource", "")
        if not text:  # rdf:Alt / rdf:Seq / rdf:Bag: the first item
            for item in element.iter(f"{{{RDF}}}li"):
                text = (item.text or "").strip() or item.get(f"{{{RDF}}}resource", "")
                if text:
                    break
        return text[:MAX_VALUE]

    for element in root.iter():
        for prop in SOURCE_TYPE_PROPERTIES:
            name = f"{{{IPTC_EXT}}}{prop}"
            values = []
            if element.tag == name:
                values.append(value_of(element))
            attribute = element.get(name)
            if attribute:
                values.append(attribute.strip()[:MAX_VALUE])
            for value in values:
                if value and (prop, value) not in seen:
                    seen.add((prop, value))
                    facts.source_types.append((prop, value))
        if facts.creator_tool is None:
            tool = element.get(f"{{{XMP_BASIC}}}CreatorTool") or (
                value_of(element) if element.tag == f"{{{XMP_BASIC}}}CreatorTool" else "")
            facts.creator_tool = tool.strip()[:MAX_VALUE] or None
        if facts.provenance is None:
            where = element.get(f"{{{DCTERMS}}}provenance") or (
                value_of(element) if element.tag == f"{{{DCTERMS}}}provenance" else "")
            facts.provenance = where.strip()[:MAX_VALUE] or None
    return facts
