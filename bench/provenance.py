"""Provenance extraction cost per image at 1 MP and 12 MP, JPEG and PNG, per signal kind.

    .venv/bin/python bench/provenance.py --repeats 5 > /tmp/provenance-bench.md

A second table times the hostile files of tests/unit/test_provenance_hostile.py (the errors each
gets, and the process's peak RSS before and after all of them: native allocations included).

Each file carries every kind of evidence at once (C2PA manifest signed by a test chain, XMP with
the IPTC source type, generator metadata, the SDXL watermark), so every extractor does its full
work. Times are medians over the repeats, in milliseconds, on this machine, one process. "decode"
is the pixel decode the watermark needs when the caller passes no pixels; in the worker (phase 2)
the pipeline's own decode is reused, so the worker pays "total − decode".
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import provenance_fixtures as F  # noqa: E402
from worker.provenance import ProvenanceSettings, extract  # noqa: E402
from worker.provenance.settings import TrustAnchors  # noqa: E402

KINDS = ("container", "c2pa", "iptc", "metadata", "decode", "watermark")


def files(height: int, width: int) -> dict[str, bytes]:
    chain = F.make_chain("bench")
    rgb = F.watermarked(F.photo(height, width), "sdxl")
    jpeg = F.encode(rgb, "JPEG", quality=95, subsampling=0,
                    exif=F.exif_bytes(user_comment=F.a1111_parameters()), xmp=F.xmp_packet())
    png = F.png_with_text(rgb, {"parameters": F.a1111_parameters()})
    png = F.png_from_chunks(F.png_chunks(png)[:1] + F.png_chunks(F.png_with_xmp(F.photo(8, 8), F.xmp_packet()))[1:2]
                            + F.png_chunks(png)[1:])
    return {"JPEG": F.sign(jpeg, "image/jpeg", chain), "PNG": F.sign(png, "image/png", chain)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    chain = F.make_chain("bench")
    anchors = TrustAnchors(pem=chain.root_pem.decode(), count=1)
    settings = ProvenanceSettings()
    extract(F.encode(F.watermarked(F.photo(512, 512)), "PNG"), settings, anchors)  # libraries loaded
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, {args.repeats} repeats, "
          f"median ms; watermark region ≤ {settings.watermark_max_pixels} px\n")
    print("| image | format | bytes | signals found | " + " | ".join(KINDS) + " | total | total − decode |")
    print("|---|---|---:|---|" + "---:|" * (len(KINDS) + 2))
    for label, (h, w) in (("1 MP (1024×1024)", (1024, 1024)), ("12 MP (4000×3000)", (3000, 4000))):
        for fmt, data in files(h, w).items():
            per: dict[str, list[float]] = {k: [] for k in KINDS}
            totals: list[float] = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = extract(data, settings, anchors)
                totals.append(time.perf_counter() - start)
                for k in KINDS:
                    per[k].append(result.seconds.get(k, 0.0))
            found = ", ".join(sorted(f"{s.kind}:{s.strength}" for s in result.signals))
            med = {k: statistics.median(v) * 1000 for k, v in per.items()}
            total = statistics.median(totals) * 1000
            print(f"| {label} | {fmt} | {len(data)} | {found} | " + " | ".join(f"{med[k]:.1f}" for k in KINDS)
                  + f" | {total:.1f} | {total - med['decode']:.1f} |")
            sys.stdout.flush()
    hostile(args.repeats, settings, anchors)


def hostile(repeats: int, settings: ProvenanceSettings, anchors: TrustAnchors) -> None:
    from tests.unit.test_provenance_hostile import CASES

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("\n| hostile file | bytes | median ms | errors recorded (kind: reason) |")
    print("|---|---:|---:|---|")
    for name, (data, _) in sorted(CASES.items()):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = extract(data, settings, anchors)
            times.append(time.perf_counter() - start)
        errors = ", ".join(sorted({f"{e.kind}: {e.reason}" for e in result.errors})) or "none"
        print(f"| {name} | {len(data)} | {statistics.median(times) * 1000:.1f} | {errors} |")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\nPeak RSS before the hostile files {before // 1024} MiB, after {after // 1024} MiB.")


if __name__ == "__main__":
    main()
