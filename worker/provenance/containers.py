"""A bounded walk over the container of an image file: where its metadata and manifest live.

This is the pre-check that keeps hostile files away from the parsers. It reads only segment and
chunk headers (JPEG, PNG, WebP), never decompresses pixels, stops after a fixed number of chunks,
and reports what it saw: the XMP packets, the EXIF block, how many text chunks, and how large the
C2PA manifest store (JUMBF) is, as written and as its first box declares it. The extractors then
decide from these numbers, before calling Pillow, defusedxml or the native C2PA reader, whether
the input is within the configured limits.

Pure: bytes in, a `Container` out; never raises on malformed input (it records a problem).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
EXIF_JPEG_HEADER = b"Exif\x00\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_PNG_KEYWORD = b"XML:com.adobe.xmp"
MAX_CHUNKS = 65_536  # segments/chunks walked before giving up (a real file has tens)

MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass
class Container:
    format: str = "other"  # jpeg | png | webp | other
    xmp: list[bytes] = field(default_factory=list)
    xmp_bytes: int = 0  # as written (an oversized packet is counted, not kept)
    exif: bytes | None = None
    exif_bytes: int = 0
    text_chunks: int = 0
    text_bytes: int = 0
    manifest_bytes: int = 0  # JUMBF bytes as written (APP11 payloads, caBX, C2PA chunk)
    manifest_segments: int = 0
    manifest_declared: int | None = None  # LBox of the first JUMBF box
    problems: list[str] = field(default_factory=list)

    @property
    def mime(self) -> str | None:
        return MIME.get(self.format)

    @property
    def has_manifest(self) -> bool:
        return self.manifest_segments > 0


def walk(data: bytes, max_xmp_bytes: int = 1 << 20) -> Container:
    if data.startswith(b"\xff\xd8"):
        return _walk_jpeg(data, max_xmp_bytes)
    if data.startswith(PNG_SIGNATURE):
        return _walk_png(data, max_xmp_bytes)
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _walk_webp(data, max_xmp_bytes)
    return Container()


def _jumbf_declared(box: bytes) -> int | None:
    """LBox of a JUMBF box header (XLBox when LBox is 1), or None if too short."""
    if len(box) < 8:
        return None
    size = struct.unpack(">I", box[:4])[0]
    if size == 1 and len(box) >= 16:
        size = struct.unpack(">Q", box[8:16])[0]
    return size


def _add_xmp(out: Container, packet: bytes, limit: int) -> None:
    """Keep packets while their total is within the limit; past it keep none (the caller sees
    `xmp_bytes` over the limit and records one error)."""
    out.xmp_bytes += len(packet)
    if out.xmp_bytes <= limit:
        out.xmp.append(packet)
    else:
        out.xmp.clear()


def _walk_jpeg(data: bytes, max_xmp: int) -> Container:
    out = Container(format="jpeg")
    pos, n, count = 2, len(data), 0
    while pos < n:
        count += 1
        if count > MAX_CHUNKS:
            out.problems.append(f"more than {MAX_CHUNKS} JPEG segments")
            break
        if data[pos] != 0xFF:
            out.problems.append(f"no JPEG marker at byte {pos}")
            break
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD8 or marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if marker in (0xD9, 0xDA):  # end, or start of scan: metadata lies before it
            break
        if pos + 2 > n:
            out.problems.append("truncated JPEG segment header")
            break
        length = struct.unpack(">H", data[pos:pos + 2])[0]
        if length < 2 or pos + length > n:
            out.problems.append(f"JPEG segment 0x{marker:02X} of {length} bytes runs past the end")
            break
        body = data[pos + 2:pos + length]
        if marker == 0xE1 and body.startswith(XMP_JPEG_HEADER):
            _add_xmp(out, body[len(XMP_JPEG_HEADER):], max_xmp)
        elif marker == 0xE1 and body.startswith(EXIF_JPEG_HEADER) and out.exif is None:
            out.exif = body
            out.exif_bytes = len(body)
        elif marker == 0xEB and body.startswith(b"JP") and len(body) >= 8:
            # JPEG-XT box segment: CI "JP", En (2), Z sequence (4), then the box header repeated.
            out.manifest_segments += 1
            out.manifest_bytes += len(body) - 8
            if out.manifest_declared is None:
                out.manifest_declared = _jumbf_declared(body[8:])
        pos += length
    return out


def _walk_png(data: bytes, max_xmp: int) -> Container:
    out = Container(format="png")
    pos, n, count = 8, len(data), 0
    while pos + 8 <= n:
        count += 1
        if count > MAX_CHUNKS:
            out.problems.append(f"more than {MAX_CHUNKS} PNG chunks")
            break
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end + 4 > n:
            out.problems.append(f"PNG chunk {kind!r} of {length} bytes runs past the end")
            break
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            out.text_chunks += 1
            out.text_bytes += length
            if kind == b"iTXt" and data.startswith(XMP_PNG_KEYWORD + b"\x00", start):
                packet = _itxt_text(data[start:end], max_xmp)
                if packet is None:
                    out.problems.append("unreadable XMP iTXt chunk")
                else:
                    _add_xmp(out, packet, max_xmp)
        elif kind == b"caBX":
            out.manifest_segments += 1
            out.manifest_bytes += length
            if out.manifest_declared is None:
                out.manifest_declared = _jumbf_declared(data[start:min(end, start + 16)])
        elif kind == b"eXIf" and out.exif is None:
            out.exif_bytes = length
            out.exif = data[start:end]
        elif kind == b"IEND":
            break
        pos = end + 4
    return out


def _itxt_text(body: bytes, limit: int) -> bytes | None:
    """The text of an iTXt chunk (keyword, flags, language and translated keyword skipped)."""
    try:
        keyword_end = body.index(b"\x00")
        compressed = body[keyword_end + 1]  # (the compression method byte after it: only zlib exists)
        rest = body[keyword_end + 3:]
        rest = rest[rest.index(b"\x00") + 1:]  # language tag
        rest = rest[rest.index(b"\x00") + 1:]  # translated keyword
    except (ValueError, IndexError):
        return None
    if not compressed:
        return rest
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(rest, limit + 1)  # a zip bomb stops at the limit
    except zlib.error:
        return None
    return text  # limit + 1 bytes when over the limit: _add_xmp refuses it


def _walk_webp(data: bytes, max_xmp: int) -> Container:
    out = Container(format="webp")
    pos, n, count = 12, len(data), 0
    while pos + 8 <= n:
        count += 1
        if count > MAX_CHUNKS:
            out.problems.append(f"more than {MAX_CHUNKS} WebP chunks")
            break
        kind, length = struct.unpack("<4sI", data[pos:pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end > n:
            out.problems.append(f"WebP chunk {kind!r} of {length} bytes runs past the end")
            break
        if kind == b"XMP ":
            _add_xmp(out, data[start:end], max_xmp)
        elif kind == b"EXIF" and out.exif is None:
            out.exif_bytes = length
            out.exif = data[start:end]
        elif kind == b"C2PA":
            out.manifest_segments += 1
            out.manifest_bytes += length
            if out.manifest_declared is None:
                out.manifest_declared = _jumbf_declared(data[start:min(end, start + 16)])
        pos = end + (length & 1)
    return out
