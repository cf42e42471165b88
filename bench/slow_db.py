"""Benchmark: end-to-end throughput with the database near and far.

A slow database must not set the worker's pace (issue 19): the worker's store is one statement
per batch, and once it is seen to be slow it runs beside the scoring of the next batch
(`batch.store_beside`, worker.overlap). This script measures it. The worker
reaches Postgres through a loopback proxy (tests/integration/proxy.py) that forwards every chunk
`--delay-ms` late in each direction, so each round trip takes 2 × delay longer, as to a database
in another region; the same run without the proxy is the reference.

    .venv/bin/python bench/slow_db.py --delay-ms 200 --n 400 --repeats 3

Prints, per setting, the steady events/s of each repeat (interleaved: near, far, near, far …),
their median, and far/near; with --out, writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench import Stack, machine, make_images, payloads, steady_rate, stop  # noqa: E402
from tests.integration.proxy import CuttableProxy  # noqa: E402


def through(url: str, port: int) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def run_once(stack: Stack, images, model: str, max_size: int, db_url: str) -> float:
    topic = stack.topic(4)
    prefix = uuid.uuid4().hex[:6]
    stack.produce(topic, payloads(images, prefix))
    stored_url, stack.db_url = stack.db_url, db_url
    try:
        proc = stack.serve(topic, [model], max_size)
    finally:
        stack.db_url = stored_url
    try:
        rows = stack.wait_stored(prefix, len(images), [proc])
    finally:
        stop([proc])
    return steady_rate(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kl-f4c4")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--max-size", type=int, default=16, help="batch.max_size (the default)")
    parser.add_argument("--delay-ms", type=float, default=200.0, help="added per chunk, each way")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    images = make_images(args.model, args.n, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp))
        parts = urlsplit(stack.db_url)
        proxy = CuttableProxy((parts.hostname or "127.0.0.1", parts.port or 5432), delay_s=args.delay_ms / 1000).start()
        far_url = through(stack.db_url, proxy.port)
        rates: dict[str, list[float]] = {"near": [], "far": []}
        try:
            for _ in range(args.repeats):
                for label, url in (("near", stack.db_url), ("far", far_url)):
                    rates[label].append(run_once(stack, images, args.model, args.max_size, url))
                    print(f"{label}: {rates[label][-1]:.1f} events/s", file=sys.stderr, flush=True)
        finally:
            proxy.stop()
            stack.close()
    near, far = statistics.median(rates["near"]), statistics.median(rates["far"])
    result = {"machine": machine(), "model": args.model, "size": args.size, "n": args.n, "max_size": args.max_size,
              "added_round_trip_ms": 2 * args.delay_ms, "events_per_s": rates,
              "median": {"near": near, "far": far}, "far_over_near": far / near}
    print(f"| database | events/s (each run) | median |\n|---|---|---:|\n"
          f"| near | {', '.join(f'{r:.1f}' for r in rates['near'])} | {near:.1f} |\n"
          f"| +{2 * args.delay_ms:.0f} ms per round trip | {', '.join(f'{r:.1f}' for r in rates['far'])} | {far:.1f} |\n"
          f"\nfar / near: {far / near:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
