"""How each provenance signal survives common transformations: a markdown table for
docs/PROVENANCE.md, from fixtures built here (tests/provenance_fixtures.py).

    .venv/bin/python scripts/provenance_robustness.py > /tmp/robustness.md

Every transformation is a Pillow re-save that copies the metadata the target format can hold
(EXIF and XMP for JPEG; text chunks, EXIF and XMP for PNG), as a careful editor would; "strip" is
a re-save without metadata (lossless for PNG, q=95 for JPEG). Pillow, like most re-encoders,
never copies a C2PA manifest. A cell is what extraction then reports for that kind of signal:
the strength, "—" when it is gone, and for the watermark matching bits / payload bits, with ✔
when it still alerts (≥ the documented bound) and ✗ when it does not.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import provenance_fixtures as F  # noqa: E402
from worker.provenance import ProvenanceSettings, alerts, extract  # noqa: E402
from worker.provenance import watermark as W  # noqa: E402
from worker.provenance.settings import TrustAnchors  # noqa: E402


def _carry(src: Image.Image, fmt: str) -> dict:
    """Save options that copy what metadata `fmt` can hold from the source image."""
    info, kw = src.info, {}
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    exif = src.getexif()
    if len(exif):
        kw["exif"] = exif.tobytes()
    if xmp:
        kw["xmp"] = xmp if isinstance(xmp, bytes) else xmp.encode()
    if fmt == "PNG":  # Pillow writes no XMP to PNG by itself: an iTXt chunk, as XMP specifies
        text = PngImagePlugin.PngInfo()
        for key, value in info.items():
            if isinstance(key, str) and isinstance(value, str) and key != "XML:com.adobe.xmp":
                text.add_text(key, value)
        if xmp:
            text.add_itxt("XML:com.adobe.xmp", xmp.decode() if isinstance(xmp, bytes) else xmp, lang="", tkey="")
            kw.pop("xmp")
        kw["pnginfo"] = text
    return kw


def _save(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def transform(data: bytes, how: str) -> bytes:
    with Image.open(io.BytesIO(data)) as src:
        src.load()
        fmt = src.format
        rgb = src.convert("RGB")
        keep = _carry(src, fmt)
        quality = {"quality": 95} if fmt == "JPEG" else {}
        if how == "jpeg95-444":  # no chroma subsampling: the U plane the watermark lives in is kept
            return _save(rgb, "JPEG", quality=95, subsampling=0, **_carry(src, "JPEG"))
        if how.startswith("jpeg"):
            return _save(rgb, "JPEG", quality=int(how[4:]), **_carry(src, "JPEG"))
        if how.startswith("resize"):
            f = float(how[6:])
            out = rgb.resize((round(rgb.width * f), round(rgb.height * f)), Image.LANCZOS)
            return _save(out, fmt, **quality, **keep)
        if how == "crop aligned":  # offsets multiple of 8: the watermark's block grid survives
            return _save(rgb.crop((64, 64, rgb.width - 64, rgb.height - 64)), fmt, **quality, **keep)
        if how == "crop":
            return _save(rgb.crop((37, 53, rgb.width - 29, rgb.height - 41)), fmt, **quality, **keep)
        if how == "strip":
            return _save(rgb, fmt, **quality)
    raise ValueError(how)


TRANSFORMS = ["original", "jpeg95-444", "jpeg95", "jpeg85", "jpeg75", "resize0.75", "resize0.5", "crop aligned", "crop", "strip"]
HEADERS = ["original", "JPEG q95 4:4:4", "JPEG q95", "JPEG q85", "JPEG q75", "resize ×0.75", "resize ×0.5", "crop (8-aligned)", "crop (unaligned)", "metadata strip"]


def fixtures(size: int) -> dict[str, tuple[str, bytes]]:
    """name → (signal kind, file); a watermark's kind names its payload: "watermark:sdxl"."""
    chain = F.make_chain("robustness")
    rgb = F.photo(size, size)
    jpeg = F.encode(rgb, "JPEG", quality=95)
    return {
        "C2PA, trusted, signed JPEG": ("c2pa", F.sign(jpeg, "image/jpeg", chain)),
        "C2PA, trusted, signed PNG": ("c2pa", F.sign(F.encode(rgb, "PNG"), "image/png", chain)),
        "IPTC DigitalSourceType (JPEG XMP)": ("iptc", F.jpeg_with_xmp(jpeg, F.xmp_packet())),
        "IPTC DigitalSourceType (PNG XMP)": ("iptc", F.png_with_xmp(rgb, F.xmp_packet())),
        "A1111 parameters (PNG text)": ("metadata", F.png_with_text(rgb, {"parameters": F.a1111_parameters()})),
        "A1111 parameters (JPEG EXIF UserComment)": ("metadata", F.jpeg_with_exif(rgb, user_comment=F.a1111_parameters())),
        "ComfyUI prompt (PNG text)": ("metadata", F.png_with_text(rgb, {"prompt": F.comfyui_prompt()})),
        "SDXL watermark (48 bits)": ("watermark:sdxl", F.encode(F.watermarked(rgb, "sdxl"), "PNG")),
        "SD 1 watermark (136 bits)": ("watermark:sd1", F.encode(F.watermarked(rgb, "sd1"), "PNG")),
        "SD 2 watermark (32 bits)": ("watermark:sd2", F.encode(F.watermarked(rgb, "sd2"), "PNG")),
    }


def payload_match(rgb: np.ndarray, payload: str, max_pixels: int) -> W.Match | None:
    """The fixture's own payload, in its better channel order."""
    own = [m for m in W.matches(rgb, max_pixels) if m.payload == payload]
    return max(own, key=lambda m: m.matching, default=None)


def cell(data: bytes, kind: str, settings: ProvenanceSettings, anchors: TrustAnchors) -> str:
    result = extract(data, settings, anchors)
    if kind.startswith("watermark:"):
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
        match = payload_match(rgb, kind.split(":")[1], settings.watermark_max_pixels)
        if match is None:
            return "too small"
        mark = "✔" if any(s.kind == "watermark" for s in alerts(result, settings)) else "✗"
        return f"{match.matching}/{match.n} {mark}"
    found = result.of_kind(kind)
    return found[0].strength if found else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="side of the square fixtures (SDXL's native size)")
    args = parser.parse_args()
    chain = F.make_chain("robustness")
    anchors = TrustAnchors(pem=chain.root_pem.decode(), count=1)
    settings = ProvenanceSettings()
    print(f"Fixtures {args.size}×{args.size} (scikit-image astronaut); watermark region ≤ {settings.watermark_max_pixels} px; "
          f"alert bound {W.min_matching_bits(48, settings.watermark_max_chance)}/48, "
          f"{W.min_matching_bits(136, settings.watermark_max_chance)}/136, {W.min_matching_bits(32, settings.watermark_max_chance)}/32.\n")
    print("| signal | " + " | ".join(HEADERS) + " |")
    print("|---|" + "---|" * len(HEADERS))
    for name, (kind, data) in fixtures(args.size).items():
        cells = [cell(data if how == "original" else transform(data, how), kind, settings, anchors) for how in TRANSFORMS]
        print(f"| {name} | " + " | ".join(cells) + " |")
        sys.stdout.flush()
    # The watermark's decoded region: survival of the SDXL payload at several pixel budgets.
    marked = F.encode(F.watermarked(F.photo(args.size, args.size), "sdxl"), "PNG")
    budgets = sorted({1 << 18, 1 << 19, 1 << 20, args.size * args.size})
    columns = TRANSFORMS[1:9]
    print("\nSDXL watermark, matching bits of 48 by decoded region (pixels):\n")
    print("| region (pixels) | " + " | ".join(HEADERS[1:9]) + " |")
    print("|---|" + "---|" * len(columns))
    variants = {how: np.asarray(Image.open(io.BytesIO(transform(marked, how))).convert("RGB")) for how in columns}
    for budget in budgets:
        row = []
        for how in columns:
            match = payload_match(variants[how], "sdxl", budget)
            row.append(f"{match.matching}/48" if match else "too small")
        whole = " (whole image)" if budget >= args.size * args.size else ""
        print(f"| {budget}{whole} | " + " | ".join(row) + " |")
    # The null: best match over every payload and channel order on unmarked photographs.
    worst = []
    for image in F.other_photos():
        match = W.best_match(image, settings.watermark_max_pixels)
        if match is not None:
            worst.append((match.matching / match.n, match.matching, match.n, match.payload))
    top = max(worst)
    print(f"\nUnmarked scikit-image photographs ({len(worst)} of them ≥ 256×256): best match "
          f"{top[1]}/{top[2]} ({top[3]}, accuracy {top[0]:.3f}); alerts: 0.")


if __name__ == "__main__":
    main()
