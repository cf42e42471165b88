"""Provenance extraction cost per image at 1 MP and 12 MP, JPEG and PNG, per signal kind.

    .venv/bin/python bench/provenance.py --repeats 5 > /tmp/provenance-bench.md

A second table times the hostile files of tests/unit/test_provenance_hostile.py (the errors each
gets, and the process's peak RSS before and after all of them: native allocations included).

Two sections measure provenance in the worker (docs/PROVENANCE.md, "Cost in the pipeline"):

    .venv/bin/python bench/provenance.py --skip      # what skip_reconstruction_when_trusted saves
    .venv/bin/python bench/provenance.py --e2e       # `aedr serve` throughput, provenance on vs off

`--skip` runs the worker's own prepare + score path (worker.prepare, the zoo watchlist) on
uploads carrying a trusted credential, with the rule off and on. `--e2e` drains a topic of 1 MP
uploads (every extractor doing full work) with `aedr serve` on a local broker and Postgres
(bench/bench.py's harness), alternating provenance on and off, and reads the worker's own time
per stage from its /metrics.

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
    parser.add_argument("--skip", action="store_true", help="only the skip-rule saving")
    parser.add_argument("--e2e", action="store_true", help="only the end-to-end throughput, provenance on vs off")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="image sides (--skip: 256 512; --e2e: 1024)")
    parser.add_argument("--n", type=int, default=None, help="uploads per run (--skip: 2; --e2e: 12)")
    args = parser.parse_args()
    if args.skip:
        skip_saving(args.sizes or [256, 512], args.n or 2, min(args.repeats, 3))
        return
    if args.e2e:
        end_to_end(args.sizes or [1024], args.n or 12, min(args.repeats, 3))
        return
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
    print(f"\nPeak RSS before the hostile files {before // 1024} MiB, after {after // 1024} MiB. {_load()}")


def _load() -> str:
    """The machine's load at the end of a section: the cores are shared, and this says how much."""
    import os

    one, five, fifteen = os.getloadavg()
    return f"Load average at the end (1, 5, 15 min): {one:.1f}, {five:.1f}, {fifteen:.1f} on {os.cpu_count()} cores."


def _upload(event_id: str, data: bytes) -> bytes:
    import base64
    import json

    return json.dumps({"event_id": event_id, "image_b64": base64.b64encode(data).decode()}).encode()


def skip_saving(sizes: list[int], n: int, repeats: int) -> None:
    """Per-upload time of prepare (decode, provenance, cut) + scoring through the whole zoo, for
    uploads whose trusted credential names the generator: rule off (scored) vs on (skipped)."""
    from worker.config import FetchSettings, ImageSettings, WatchlistEntry
    from worker.fetch import Fetcher
    from worker.messages import Message
    from worker.prepare import prepare
    from worker.provenance_step import Provenance
    from worker.watchlist import Watchlist
    from worker.zoo import ZOO

    chain = F.make_chain("bench")
    anchors = TrustAnchors(pem=chain.root_pem.decode(), count=1)
    entries = [WatchlistEntry(m.name, str(m.path), str(m.calibration_path)) for m in ZOO]
    watchlist = Watchlist.load(entries, "cpu", 16)
    fetcher = Fetcher(FetchSettings(), 1 << 26)
    steps = {rule: Provenance(ProvenanceSettings(skip_reconstruction_when_trusted=rule), anchors) for rule in (False, True)}

    def run(messages: list[Message], step: Provenance) -> float:
        start = time.perf_counter()
        prepared = [prepare(m, fetcher, ImageSettings(), watchlist.prepare, inspect=step.inspect) for m in messages]
        images = [p.image for p in prepared if p.image is not None]
        if images:
            watchlist.score(images)
        return (time.perf_counter() - start) / len(messages)

    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; watchlist: the "
          f"{len(ZOO)} zoo models on CPU; {n} uploads per run, median of {repeats} interleaved runs; ms per upload\n")
    print("| upload (JPEG, trusted C2PA credential) | rule off: prepare + score | rule on: prepare only | saved |")
    print("|---|---:|---:|---:|")
    for side in sizes:
        data = F.sign(F.encode(F.photo(side, side), "JPEG", quality=95), "image/jpeg", chain)
        messages = [Message("bench", 0, i, None, _upload(f"s{i}", data)) for i in range(n)]
        run(messages[:1], steps[False])  # warm-up: this shape's first call
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(repeats):
            for rule in ((False, True) if r % 2 == 0 else (True, False)):
                times[rule].append(run(messages, steps[rule]))
        off, on = (statistics.median(times[k]) * 1000 for k in (False, True))
        print(f"| {side}×{side} | {off:.0f} | {on:.0f} | {off - on:.0f} ({(off - on) / off:.0%}) |")
        sys.stdout.flush()
    print(f"\n{_load()}")


def end_to_end(sizes: list[int], n: int, repeats: int) -> None:
    """Steady-state events/s of one `aedr serve` (kl-f4c4, CPU) draining n uploads that carry every
    kind of provenance, with provenance on and off (alternating), and the worker's own seconds
    per event in each stage (its aedr_stage_seconds_sum / events)."""
    import tempfile
    import uuid

    import importlib.util

    spec = importlib.util.spec_from_file_location("aedr_bench", Path(__file__).resolve().parent / "bench.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)  # bench/bench.py: the same harness as the worker benchmark
    Stack, stage_seconds, steady_rate, stop = harness.Stack, harness.stage_seconds, harness.steady_rate, harness.stop

    chain = F.make_chain("bench")
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; `aedr serve` with kl-f4c4 "
          f"on CPU, batch 2; {n} uploads per run (each: signed C2PA, XMP, A1111 EXIF, SDXL watermark); median of "
          f"{repeats} interleaved runs\n")
    print("| upload | provenance | events/s | s/event: decode | provenance | score | store |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        anchor = Path(tmp) / "anchor.pem"
        anchor.write_bytes(chain.root_pem)
        stack = Stack(Path(tmp))
        try:
            for side in sizes:
                data = files(side, side)["JPEG"]
                rates: dict[bool, list[float]] = {True: [], False: []}
                stages: dict[bool, list[dict[str, float]]] = {True: [], False: []}
                for r in range(repeats):
                    for enabled in ((True, False) if r % 2 == 0 else (False, True)):
                        topic = stack.topic(4)
                        prefix = uuid.uuid4().hex[:6]
                        stack.produce(topic, [_upload(f"{prefix}-{i}", data) for i in range(n)])
                        extra = (f"provenance.enabled={'true' if enabled else 'false'}",
                                 f'provenance.trust_anchor_paths=["{anchor}"]')
                        proc = stack.serve(topic, ["kl-f4c4"], 2, 0, extra)
                        try:
                            rows = stack.wait_stored(prefix, n, [proc])
                            stages[enabled].append({k: v / n for k, v in stage_seconds(proc.metrics_port).items()})
                        finally:
                            stop([proc])
                        rates[enabled].append(steady_rate(rows))
                for enabled in (False, True):
                    per = {k: statistics.median(s.get(k, 0.0) for s in stages[enabled])
                           for k in ("decode", "provenance", "score", "store")}
                    print(f"| {side}×{side} JPEG | {'on' if enabled else 'off'} | {statistics.median(rates[enabled]):.3f} | "
                          + " | ".join(f"{per[k]:.3f}" for k in ("decode", "provenance", "score", "store")) + " |")
                on, off = statistics.median(rates[True]), statistics.median(rates[False])
                print(f"\nThroughput with provenance / without, {side}×{side}: {on / off:.3f}")
                sys.stdout.flush()
            print(f"\n{_load()}")
        finally:
            stack.close()


if __name__ == "__main__":
    main()
