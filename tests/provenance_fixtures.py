"""Builders for provenance test files: nothing downloaded, everything made here.

A certificate chain (root CA → intermediate CA → signing certificate with the extensions C2PA
requires: digitalSignature key usage, an allowed EKU, no CA flag, key identifiers), images signed
with c2pa-python's Builder and then tampered, XMP packets, generator text chunks and EXIF, images
watermarked with invisible-watermark, and the hostile variants. Shared by the unit tests,
scripts/provenance_robustness.py and bench/provenance.py.
"""

from __future__ import annotations

import datetime
import functools
import io
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, PngImagePlugin

SDXL_AGENT = "Stable Diffusion XL"
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
COMPOSITE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
CAPTURE = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"


# --- certificates -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Chain:
    root_pem: bytes
    chain_pem: bytes  # signing certificate, then the intermediate
    key_pem: bytes


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aedr tests")])


def _certificate(key, subject: str, issuer_key, issuer: str, ca: bool, path_length: int | None, issuer_has_key_id: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
    )
    if issuer_has_key_id:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if not ca:  # C2PA accepts emailProtection (among a few); anyExtendedKeyUsage is refused
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@functools.lru_cache(maxsize=4)
def make_chain(label: str = "test") -> Chain:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _certificate(root_key, f"{label} root CA", root_key, f"{label} root CA", True, 1, False)
    inter = _certificate(inter_key, f"{label} intermediate CA", root_key, f"{label} root CA", True, 0, True)
    leaf = _certificate(leaf_key, f"{label} signer", inter_key, f"{label} intermediate CA", False, None, True)
    pem = serialization.Encoding.PEM
    return Chain(
        root_pem=root.public_bytes(pem),
        chain_pem=leaf.public_bytes(pem) + inter.public_bytes(pem),
        key_pem=leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


# --- images -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _photo(height: int, width: int) -> bytes:
    from skimage import data

    base = Image.fromarray(data.astronaut())
    return np.asarray(base.resize((width, height), Image.BICUBIC), dtype=np.uint8).tobytes()


def photo(height: int = 512, width: int = 512) -> np.ndarray:
    """A real photograph (scikit-image's astronaut) at the given size, RGB uint8."""
    return np.frombuffer(_photo(height, width), dtype=np.uint8).reshape(height, width, 3).copy()


def other_photos() -> list[np.ndarray]:
    """Unmarked photographs that ship with scikit-image (controls for the watermark null)."""
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                 "retina", "camera", "moon", "coins", "page", "text", "clock", "grass", "gravel", "brick"):
        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        out.append(np.ascontiguousarray(image[..., :3].astype(np.uint8)))
    return out


def encode(rgb: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


# --- C2PA ---------------------------------------------------------------------------------------

def manifest_definition(source_type: str | None = TRAINED, agent: str | None = SDXL_AGENT,
                        claim_generator: str = "FakeGen") -> dict:
    action: dict = {"action": "c2pa.created"}
    if source_type:
        action["digitalSourceType"] = source_type
    if agent:
        action["softwareAgent"] = {"name": agent, "version": "1.0"}
    return {
        "claim_generator_info": [{"name": claim_generator, "version": "1.0"}],
        "title": "aedr test image",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [action]}}],
    }


def sign(data: bytes, mime: str, chain: Chain, definition: dict | None = None, remote_url: str | None = None) -> bytes:
    """`data` with a C2PA manifest signed by `chain` (embedded, or only referenced at remote_url)."""
    import c2pa

    definition = manifest_definition() if definition is None else definition
    settings = {"builder": {"thumbnail": {"enabled": False}}, "verify": {"verify_after_sign": False}}
    with c2pa.Context.from_dict(settings) as context, \
            c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain.chain_pem, chain.key_pem, None)) as signer, \
            c2pa.Builder(definition, context) as builder:
        if remote_url:
            builder.set_no_embed()
            builder.set_remote_url(remote_url)
        out = io.BytesIO()
        builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(png_chunk(kind, body) for kind, body in chunks)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def tamper_pixels(signed: bytes) -> bytes:
    """Change image data after signing (the manifest untouched)."""
    if signed.startswith(b"\x89PNG"):
        chunks = png_chunks(signed)
        first = next(k for k, (kind, _) in enumerate(chunks) if kind == b"IDAT")
        pixels = bytearray(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")))
        pixels[len(pixels) // 2] ^= 0x40
        rest = [c for c in chunks[first:] if c[0] != b"IDAT"]
        return png_from_chunks(chunks[:first] + [(b"IDAT", zlib.compress(bytes(pixels)))] + rest)
    out = bytearray(signed)
    out[-200] ^= 0x40  # entropy-coded scan data, before EOI
    return bytes(out)


def tamper_manifest(signed: bytes, old: bytes = SDXL_AGENT.encode(), new: bytes = b"Stable Diffusion XM") -> bytes:
    """Rewrite bytes inside the signed manifest (here: the generator's name), same length."""
    assert len(old) == len(new) and signed.count(old) >= 1
    out = signed.replace(old, new)
    if out.startswith(b"\x89PNG"):  # keep chunk CRCs right, so only C2PA can notice
        return png_from_chunks(png_chunks(out))
    return out


# --- XMP, text chunks, EXIF ---------------------------------------------------------------------

def xmp_packet(source_type: str | None = TRAINED, prop: str = "DigitalSourceType", form: str = "element",
               creator_tool: str | None = None, provenance: str | None = None, prefix: str = "") -> bytes:
    attrs, body = "", ""
    if source_type and form == "attribute":
        attrs += f' Iptc4xmpExt:{prop}="{source_type}"'
    elif source_type and form == "resource":
        body += f'<Iptc4xmpExt:{prop} rdf:resource="{source_type}"/>'
    elif source_type:
        body += f"<Iptc4xmpExt:{prop}>{source_type}</Iptc4xmpExt:{prop}>"
    if creator_tool:
        attrs += f' xmp:CreatorTool="{creator_tool}"'
    if provenance:
        attrs += f' dcterms:provenance="{provenance}"'
    text = (
        f'{prefix}<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        ' xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dcterms="http://purl.org/dc/terms/"'
        f"{attrs}>{body}</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    )
    return text.encode("utf-8")


def xmp_many_source_types(n: int) -> bytes:
    """One XMP packet declaring `n` distinct digital source types (each would be a signal)."""
    body = "".join(f"<Iptc4xmpExt:DigitalSourceType>term{i}</Iptc4xmpExt:DigitalSourceType>" for i in range(n))
    return xmp_packet(source_type=None).replace(b"</rdf:Description>", body.encode() + b"</rdf:Description>")


def billion_laughs() -> bytes:
    entities = '<!ENTITY lol0 "lol">' + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    return (f'<?xml version="1.0"?><!DOCTYPE x:xmpmeta [{entities}]>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">&lol9;</x:xmpmeta>').encode()


def external_entity(url: str) -> bytes:
    return (f'<?xml version="1.0"?><!DOCTYPE x:xmpmeta [<!ENTITY ext SYSTEM "{url}">]>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">&ext;</x:xmpmeta>').encode()


def jpeg_with_segments(jpeg: bytes, segments: list[tuple[int, bytes]]) -> bytes:
    """Insert (marker, payload) segments right after SOI (payloads ≤ 65533 bytes each)."""
    body = b"".join(bytes([0xFF, marker]) + struct.pack(">H", len(p) + 2) + p for marker, p in segments)
    return jpeg[:2] + body + jpeg[2:]


def jpeg_with_xmp(jpeg: bytes, packet: bytes) -> bytes:
    return jpeg_with_segments(jpeg, [(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + packet)])


def png_with_text(rgb: np.ndarray, text: dict[str, str], compressed: bool = False) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        if compressed:
            info.add_text(key, value, zip=True)
        else:
            info.add_text(key, value)
    return encode(rgb, "PNG", pnginfo=info)


def png_with_xmp(rgb: np.ndarray, packet: bytes) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", packet.decode("utf-8"), lang="", tkey="")
    return encode(rgb, "PNG", pnginfo=info)


def a1111_parameters(model: str = "sd_xl_base_1.0", model_hash: str = "31e35c80fc") -> str:
    return ("a photo of an astronaut, highly detailed\nNegative prompt: blurry\n"
            f"Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 1024x1024, "
            f'Model hash: {model_hash}, Model: {model}, Lora hashes: "a: 1, b: 2", Version: v1.9.4')


def comfyui_prompt(ckpt: str = "sd_xl_base_1.0.safetensors") -> str:
    return json.dumps({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0]}},
    })


def comfyui_workflow(ckpt: str = "flux1-dev.safetensors") -> str:
    return json.dumps({"nodes": [{"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": [ckpt]},
                                 {"id": 3, "type": "KSampler", "widgets_values": [1, "fixed", 20]}]})


def exif_bytes(software: str | None = None, user_comment: str | None = None, encoding: str = "utf-16-be") -> bytes:
    exif = Image.Exif()
    if software:
        exif[0x0131] = software
    if user_comment is not None:
        ifd = exif.get_ifd(0x8769)
        ifd[0x9286] = b"UNICODE\x00" + user_comment.encode(encoding)
    return exif.tobytes()


def jpeg_with_exif(rgb: np.ndarray, **kw) -> bytes:
    return encode(rgb, "JPEG", quality=95, exif=exif_bytes(**kw))


# --- watermark ----------------------------------------------------------------------------------

def watermarked(rgb: np.ndarray, payload: str = "sdxl", order: str = "bgr") -> np.ndarray:
    """`rgb` with the SD/SDXL reference watermark embedded by invisible-watermark (dwtDct).
    order "bgr": as the reference code (and current diffusers) pass pixels; "rgb": as early
    diffusers SDXL pipelines did (RGB handed over as if BGR)."""
    from imwatermark import WatermarkEncoder

    from worker.provenance.watermark import PAYLOADS

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", list(PAYLOADS[payload][1]))
    image = np.ascontiguousarray(rgb[:, :, ::-1] if order == "bgr" else rgb)
    marked = encoder.encode(image, "dwtDct")
    return np.ascontiguousarray(marked[:, :, ::-1] if order == "bgr" else marked)


# --- hostile ------------------------------------------------------------------------------------

def app11_segments(store: bytes, declared: int | None = None, per_segment: int = 65_000) -> list[tuple[int, bytes]]:
    """A JUMBF store split over JPEG APP11 segments as JPEG-XT does (CI, En, Z, box header)."""
    declared = len(store) + 8 if declared is None else declared
    header = struct.pack(">I4s", declared if declared < 2**32 else 1, b"jumb")
    if declared >= 2**32:
        header += struct.pack(">Q", declared)
    out = []
    for z, start in enumerate(range(0, max(len(store), 1), per_segment), start=1):
        out.append((0xEB, b"JP" + struct.pack(">HI", 1, z) + header + store[start:start + per_segment]))
    return out


def many_text_chunks(rgb: np.ndarray, n: int) -> bytes:
    chunks = png_chunks(encode(rgb, "PNG"))
    texts = [(b"tEXt", f"k{i}".encode() + b"\x00" + b"v" * 16) for i in range(n)]
    return png_from_chunks(chunks[:1] + texts + chunks[1:])


def png_with_exif_chunk(rgb: np.ndarray, exif: bytes) -> bytes:
    chunks = png_chunks(encode(rgb, "PNG"))
    return png_from_chunks(chunks[:1] + [(b"eXIf", exif)] + chunks[1:])


def huge_exif(entries: int = 60_000) -> bytes:
    """A TIFF/EXIF block with tens of thousands of IFD entries (each ASCII, pointing past itself)."""
    count = min(entries, 65_535)
    ifd = struct.pack("<H", count)
    data_offset = 8 + 2 + count * 12 + 4
    for i in range(count):
        ifd += struct.pack("<HHII", 0x0131 if i == 0 else 0x9000 + (i % 4096), 2, 64, data_offset)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + b"A" * 64
