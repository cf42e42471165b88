"""The `aedr` command: argument parsing and composition root, nothing else.

Subcommands: `score` and `calibrate` work on files; `serve` runs the stream worker; `demo` runs
the whole system on this machine; `db upgrade` applies migrations. Expected failures (a missing
model, a bad calibration, a bad config) print one `aedr: error:` line and exit 2, never a trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

EXIT_USAGE = 2


def _add_model_args(parser: argparse.ArgumentParser, multiple: bool) -> None:
    parser.add_argument(
        "--model", required=True, action="append" if multiple else "store",
        help="diffusers autoencoder: a local directory or a hub id in the local cache"
        + (" (repeat for several)" if multiple else ""),
    )
    parser.add_argument("--subfolder", default=None, help="e.g. 'vae' for a whole pipeline directory")
    parser.add_argument("--kind", choices=["kl", "vq", "tiny"], default=None,
                        help="autoencoder family (default: from config.json)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if present)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                        help="weight dtype; losses are always fp32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tile", type=int, default=None,
                        help="crop every image to at most TILE×TILE (a multiple of the spatial factor)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aedr", description="AEDR generative-model attribution")
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="score image files: JSON Lines on stdout")
    _add_model_args(score, multiple=True)
    score.add_argument("--calibration", action="append", default=[],
                       help="calibration JSON (repeatable; matched to models by weights hash)")
    score.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")

    cal = sub.add_parser("calibrate", help="fit a model's threshold on images it generated")
    _add_model_args(cal, multiple=False)
    cal.add_argument("--images", required=True, help="directory of the model's own images")
    cal.add_argument("--alpha", type=float, default=None, help="fixed α (default 0.05)")
    cal.add_argument("--validation", default=None, help="held-out own images, to select α")
    cal.add_argument("--negatives", action="append", default=[], help="images not from this model")
    cal.add_argument("--out", required=True, help="calibration JSON to write")
    cal.add_argument("--plot", default=None, help="PNG of the score distributions and τ")
    cal.add_argument("--quiet", action="store_true", help="no progress bar")

    return parser


def _fail(message: str) -> int:
    print(f"aedr: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_score(args: argparse.Namespace) -> int:
    from .calibration import Calibration
    from .models import load_autoencoder
    from .offline import iter_image_paths, score_records
    from .scoring import preprocessing_spec

    models = [
        load_autoencoder(m, subfolder=args.subfolder, kind=args.kind, name=m, device=args.device, dtype=args.dtype)
        for m in args.model
    ]
    calibrations = [Calibration.load(path) for path in args.calibration]
    by_hash = {c.weights_sha256: c for c in calibrations}
    unmatched = [c.model for c in calibrations if c.weights_sha256 not in {m.weights_sha256 for m in models}]
    if unmatched:
        return _fail(f"calibration for {', '.join(unmatched)} matches none of the loaded models' weights")
    pairs = []
    for model in models:
        calibration = by_hash.get(model.weights_sha256)
        if calibration is not None:
            calibration.check_matches(model.weights_sha256, preprocessing_spec(model.spatial_factor, args.tile))
        pairs.append((model, calibration))
    failed = False
    for record in score_records(iter_image_paths(args.paths), pairs, args.batch_size, args.tile):
        failed = failed or "error" in record
        sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return 1 if failed else 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .models import load_autoencoder
    from .offline import calibrate, plot_calibration

    if args.alpha is not None and args.validation is not None:
        return _fail("give either --alpha or --validation/--negatives, not both")
    model = load_autoencoder(args.model, subfolder=args.subfolder, kind=args.kind, name=args.model,
                             device=args.device, dtype=args.dtype)
    calibration, sets = calibrate(model, args.images, args.alpha, args.validation, args.negatives,
                                  args.batch_size, args.tile, progress=not args.quiet)
    calibration.save(args.out)
    if args.plot:
        plot_calibration(calibration, sets, args.plot)
    summary = {"model": calibration.model, "alpha": calibration.alpha, "threshold": calibration.threshold,
               "n": calibration.n, "out": args.out}
    print(json.dumps(summary), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .calibration import CalibrationError
    from .models import ModelNotFound

    args = build_parser().parse_args(argv)
    handlers = {"score": _cmd_score, "calibrate": _cmd_calibrate}
    try:
        return handlers[args.command](args)
    except (ModelNotFound, CalibrationError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
