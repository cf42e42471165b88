"""The `aedr` command: argument parsing and dispatch, nothing else (a running worker is
composed in `worker.service.build`).

Subcommands: `score`, `calibrate` and `calibrate-watchlist` work on files; `evaluate` measures a
watchlist's verdicts on folders of known truth, through the serve path; `serve` runs the stream
worker; `demo` runs the whole system on this machine; `db upgrade` applies migrations and
`db prune` deletes old rows. Expected failures (a missing model, a bad calibration, a bad config,
a failed migration) print one `aedr: error:` line and exit with the documented status, never a
trace.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import NoReturn, Sequence

from .config import AUTOENCODER_KINDS

# Exit statuses (README "Command line"): 0 done; 1 some inputs failed (score) or the worker
# stopped on a fault of its own; 2 a usage, configuration, model, calibration or device error;
# 3 a service (database, broker) unreachable at start; 70 a bug (an unexpected exception).
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_BUG = 70


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `45s` or `2w` as a timedelta (at least one second)."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    number, unit = text[:-1], text[-1:].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90d, 12h, 30m or 2w")
    result = timedelta(**{units[unit]: value})
    if result.total_seconds() < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than a second")
    return result


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aedr")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown (not installed)"


def _add_model_args(parser: argparse.ArgumentParser, multiple: bool) -> None:
    parser.add_argument(
        "--model", required=True, action="append" if multiple else "store",
        help="diffusers autoencoder: a local directory or a hub id in the local cache"
        + (" (repeat for several)" if multiple else ""),
    )
    parser.add_argument("--subfolder", default=None, help="e.g. 'vae' for a whole pipeline directory")
    parser.add_argument("--name", default=None, help="model name in the output (default: --model as given)")
    parser.add_argument("--kind", choices=AUTOENCODER_KINDS, default=None,
                        help="autoencoder family (default: from config.json's _class_name)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if present)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                        help="weight dtype; losses are always fp32")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    _add_tile_args(parser)


def _add_tile_args(parser: argparse.ArgumentParser) -> None:
    from .scoring import DEFAULT_MAX_TILES, DEFAULT_TILE

    parser.add_argument("--tile", type=positive_int, default=DEFAULT_TILE,
                        help=f"tile side in pixels, a multiple of the spatial factor (default {DEFAULT_TILE})")
    parser.add_argument("--max-tiles", type=positive_int, default=DEFAULT_MAX_TILES,
                        help=f"at most this many aligned tiles per image (default {DEFAULT_MAX_TILES}); "
                             "bounds the work and memory per image")


def _add_method_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=["auto", "aedr", "fused"], default="auto",
                        help="score method: aedr = the paper's t'; fused = fitted on own images vs negatives; "
                             "auto (default) = fused when there are ≥ 20 own images and ≥ 20 negatives, else aedr")
    parser.add_argument("--max-false-alerts", type=fraction, default=None, metavar="B",
                        help="set τ so that at most a fraction B of the negatives is attributed "
                             "(refused when the negatives are too few to show B)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `aedr: error:` line (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"aedr: error: {self.prog.removeprefix('aedr ')}: {message} (see `{self.prog} --help`)\n"
                  if self.prog != "aedr" else f"aedr: error: {message} (see `aedr --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aedr", description="AEDR generative-model attribution")
    parser.add_argument("--version", action="version", version=f"aedr {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    score = sub.add_parser("score", help="score image files: JSON Lines on stdout")
    _add_model_args(score, multiple=True)
    score.add_argument("--calibration", action="append", default=[],
                       help="calibration JSON (repeatable; matched to models by weights hash)")
    score.add_argument("--trust-anchor", action="append", default=[], metavar="PEM",
                       help="C2PA trust anchors (PEM; repeatable): credentials chaining to one are 'trusted'")
    score.add_argument("--no-provenance", action="store_true",
                       help="do not read provenance (C2PA, IPTC, generator metadata, SD/SDXL watermark)")
    score.add_argument("--progress", action="store_true", default=None,
                       help="a progress bar on stderr (default: only when stderr is a terminal)")
    score.add_argument("--no-progress", dest="progress", action="store_false")
    score.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")

    cal = sub.add_parser("calibrate", help="fit a model's threshold on images it generated")
    _add_model_args(cal, multiple=False)
    cal.add_argument("--images", required=True, help="directory of the model's own images")
    cal.add_argument("--alpha", type=fraction, default=None, help="fixed α (default 0.05)")
    cal.add_argument("--validation", default=None, help="held-out own images, to select α")
    cal.add_argument("--negatives", action="append", default=[], help="images not from this model")
    cal.add_argument("--out", required=True, help="calibration JSON to write")
    cal.add_argument("--plot", default=None, help="PNG of the score distributions and τ")
    cal.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_method_args(cal)

    calw = sub.add_parser("calibrate-watchlist",
                          help="calibrate every model of a watchlist together to one false-alert target")
    calw.add_argument("--config", required=True, help="worker TOML: its [[watchlist]] models and calibration paths")
    calw.add_argument("--images", action="append", default=[], metavar="NAME=DIR", required=True,
                      help="a watchlist model's own images (one per model)")
    calw.add_argument("--validation", action="append", default=[], metavar="NAME=DIR",
                      help="a model's held-out own images: its recall at τ is recorded")
    calw.add_argument("--negatives", action="append", default=[], required=True, metavar="DIR",
                      help="images no watched model made (real photos); the target bounds their alerts")
    calw.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: scoring.device of the config)")
    calw.add_argument("--batch-size", type=int, default=16)
    calw.add_argument("--quiet", action="store_true", help="no progress bar")
    calw.add_argument("--plot-dir", default=None, help="write calibration-<name>.png per model there")
    _add_tile_args(calw)
    _add_method_args(calw)

    ev = sub.add_parser("evaluate", help="a watchlist's verdicts on folders of known truth, through the serve path")
    ev.add_argument("--config", required=True, help="the worker TOML that `aedr serve` runs with")
    ev.add_argument("--truth", action="append", default=[], required=True, metavar="NAME=DIR",
                    help="images made by watchlist model NAME, or NAME=none for images no watched model made")
    ev.add_argument("--out", required=True, help="report JSON to write")
    ev.add_argument("--predictions", default=None, help="JSON Lines: one per scored image")
    ev.add_argument("--plot", default=None, help="confusion heat-map PNG")
    ev.add_argument("--markdown", default=None, help="the report as Markdown tables")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")

    serve = sub.add_parser("serve", help="run the stream worker")
    serve.add_argument("--config", default=None, help="TOML settings (AEDR_<SECTION>__<KEY> overrides)")
    serve.add_argument("--log-level", default=None, help="overrides logging.level (default INFO)")

    demo = sub.add_parser("demo", help="run the whole system locally: broker, worker, database, report")
    demo.add_argument("--database-url", default=None, help="default: SQLite in a temporary directory")
    demo.add_argument("--per-model", type=positive_int, default=30, help="generated images per zoo model")
    demo.add_argument("--real", type=positive_int, default=60, help="real photo crops")
    demo.add_argument("--metrics-port", type=int, default=None)
    demo.add_argument("--timeout", type=float, default=300.0)

    db = sub.add_parser("db", help="database administration")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply Alembic migrations")
    up.add_argument("--config", default=None, help="TOML settings (database.url)")
    up.add_argument("--database-url", default=None, help="overrides the config")
    prune = db_sub.add_parser("prune", help="delete events (and their attributions) older than a cut-off")
    prune.add_argument("--older-than", type=duration, required=True, help="e.g. 90d, 12h, 2w")
    prune.add_argument("--config", default=None, help="TOML settings (database.*)")
    prune.add_argument("--database-url", default=None, help="overrides the config")
    prune.add_argument("--batch-size", type=positive_int, default=5000, help="events per transaction")
    prune.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")

    rescan = sub.add_parser("rescan", help="score past uploads again with some watchlist models (a time window)")
    rescan.add_argument("--config", required=True, help="the worker's TOML settings")
    rescan.add_argument("--model", action="append", required=True, metavar="NAME",
                        help="a [[watchlist]] name (repeatable): only these models score")
    rescan.add_argument("--since", required=True, help="RFC 3339 time: uploads from then on")
    rescan.add_argument("--until", default=None, help="RFC 3339 time: uploads before then (default: now)")
    rescan.add_argument("--progress", action="store_true", default=None, help="a progress bar on stderr")
    rescan.add_argument("--no-progress", dest="progress", action="store_false")

    dlq = sub.add_parser("dlq", help="the dead-letter topic")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    rep = dlq_sub.add_parser("replay", help="publish dead letters to the input topic again (original key and value)")
    rep.add_argument("--config", required=True, help="the worker's TOML settings")
    rep.add_argument("--reason", default=None, choices=[r.value for r in _reasons()],
                     help="only dead letters with this reason")
    rep.add_argument("--since", default=None, help="RFC 3339 time: dead letters from then on")
    rep.add_argument("--dry-run", action="store_true", help="count what would be replayed; publish nothing")
    rep.add_argument("--again", action="store_true", help="replay dead letters replayed before too")
    rep.add_argument("--progress", action="store_true", default=None, help="a progress bar on stderr")
    rep.add_argument("--no-progress", dest="progress", action="store_false")

    return parser


def _reasons():
    from .events import Reason

    return list(Reason)


def _cmd_rescan(args: argparse.Namespace) -> int:
    stop = threading.Event()
    _stop_on_signals(stop)
    from .config import load_settings
    from .logs import configure
    from .rescan import parse_time, run_rescan
    from .service import configure_process

    settings = load_settings(args.config)
    configure(settings.logging.format, "WARNING")
    configure_process(settings.scoring)
    since = parse_time(args.since)
    until = parse_time(args.until) if args.until else None
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    report = run_rescan(settings, args.model, since, until, stop, progress)
    print(json.dumps(report.as_dict()))
    return 0


def _cmd_dlq(args: argparse.Namespace) -> int:
    from .config import load_settings
    from .dlq import replay
    from .logs import configure
    from .rescan import parse_time

    settings = load_settings(args.config)
    configure(settings.logging.format, "WARNING")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    report = replay(settings, args.reason, parse_time(args.since) if args.since else None, args.dry_run, args.again,
                    progress)
    print(json.dumps(report.as_dict()))
    return 0


def _fail(message: str) -> int:
    print(f"aedr: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _check_tile(models, tile: int | None, max_tiles: int | None = 1) -> str | None:
    if max_tiles is not None and max_tiles < 1:
        return f"--max-tiles must be ≥ 1, got {max_tiles}"
    for model in models:
        if tile is not None and (tile < model.spatial_factor or tile % model.spatial_factor):
            return f"--tile {tile} must be a positive multiple of {model.name}'s spatial factor {model.spatial_factor}"
    return None


def _cmd_score(args: argparse.Namespace) -> int:
    from .calibration import Calibration
    from .models import load_autoencoder
    from .offline import iter_image_paths, score_records
    from .provenance import ProvenanceSettings
    from .provenance_step import load as load_provenance
    from .scoring import preprocessing_spec

    models = [
        load_autoencoder(m, subfolder=args.subfolder, kind=args.kind, name=m if len(args.model) > 1 or not args.name else args.name,
                         device=args.device, dtype=args.dtype)
        for m in args.model
    ]
    if problem := _check_tile(models, args.tile, args.max_tiles):
        return _fail(problem)
    calibrations = [Calibration.load(path) for path in args.calibration]
    by_hash = {c.weights_sha256: c for c in calibrations}
    unmatched = [c.model for c in calibrations if c.weights_sha256 not in {m.weights_sha256 for m in models}]
    if unmatched:
        return _fail(f"calibration for {', '.join(unmatched)} matches none of the loaded models' weights")
    pairs = []
    for model in models:
        calibration = by_hash.get(model.weights_sha256)
        if calibration is not None:
            calibration.check_matches(model.weights_sha256,
                                      preprocessing_spec(model.spatial_factor, args.tile, model.dtype, args.max_tiles),
                                      model.kind)
        pairs.append((model, calibration))
    provenance = load_provenance(ProvenanceSettings(enabled=not args.no_provenance,
                                                    trust_anchor_paths=tuple(args.trust_anchor)))
    failed = False
    unreadable: list[tuple] = []

    def paths():
        for path in iter_image_paths(args.paths, lambda p, exc: unreadable.append((p, f"read: {exc.strerror or exc}"))):
            yield from _drain(unreadable)
            yield path
        yield from _drain(unreadable)

    progress = sys.stderr.isatty() if args.progress is None else args.progress
    bar = None
    inputs = paths()
    if progress:
        from tqdm import tqdm

        inputs = list(inputs)  # walking is cheap; the total makes the bar useful
        bar = tqdm(total=len(inputs), unit="image", file=sys.stderr, dynamic_ncols=True)
    last = None
    # smaller chunks with a bar, so that it moves while a large set is scored
    chunk = max(4 * args.batch_size, 32) if bar else 256
    for record in score_records(inputs, pairs, args.batch_size, args.tile, chunk=chunk, max_tiles=args.max_tiles,
                                provenance=provenance):
        failed = failed or "error" in record
        sys.stdout.write(json.dumps(record) + "\n")
        if bar is not None and record["image"] != last:
            last = record["image"]
            bar.update(1)
    if bar is not None:
        bar.close()
    sys.stdout.flush()
    return 1 if failed else 0


def _drain(items: list) -> list:
    out = list(items)
    items.clear()
    return out


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .models import load_autoencoder
    from .offline import calibrate, plot_calibration

    if args.alpha is not None and args.validation is not None and args.max_false_alerts is None:
        return _fail("give either --alpha or --validation/--negatives, not both")
    if args.alpha is not None and args.max_false_alerts is not None:
        return _fail("give either --alpha or --max-false-alerts, not both")
    if args.max_false_alerts is not None and not 0 < args.max_false_alerts < 1:
        return _fail(f"--max-false-alerts must be in (0, 1), got {args.max_false_alerts:g}")
    if not Path(args.images).is_dir():
        return _fail(f"--images {args.images} is not a directory")
    for d in args.negatives + ([args.validation] if args.validation else []):
        if not Path(d).is_dir():
            return _fail(f"{d} is not a directory")
    model = load_autoencoder(args.model, subfolder=args.subfolder, kind=args.kind, name=args.name or args.model,
                             device=args.device, dtype=args.dtype)
    if problem := _check_tile([model], args.tile, args.max_tiles):
        return _fail(problem)
    calibration, sets = calibrate(model, args.images, args.alpha, args.validation, args.negatives,
                                  args.batch_size, args.tile, progress=not args.quiet, method=args.method,
                                  max_false_alerts=args.max_false_alerts, max_tiles=args.max_tiles)
    calibration.save(args.out)
    if args.plot:
        plot_calibration(calibration, sets, args.plot)
    summary = {"model": calibration.model, "method": calibration.method["name"], "rule": calibration.threshold_rule,
               "alpha": calibration.alpha, "threshold": calibration.threshold, "n": calibration.n,
               "false_alerts": calibration.false_alerts, "recall": calibration.recall, "out": args.out}
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _pairs(values: Sequence[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise _UsageError(f"{option} {value!r}: expected NAME=DIR")
        if name in out:
            raise _UsageError(f"{option}: {name} given twice")
        if not Path(directory).is_dir():
            raise _UsageError(f"{option} {value!r}: {directory} is not a directory")
        out[name] = directory
    return out


def _cmd_calibrate_watchlist(args: argparse.Namespace) -> int:
    from .config import load_settings
    from .models import load_autoencoder
    from .offline import calibrate_watchlist, plot_calibration

    if args.max_false_alerts is None or not 0 < args.max_false_alerts < 1:
        return _fail("--max-false-alerts B, a fraction in (0, 1), is required")
    settings = load_settings(args.config)
    if not settings.watchlist:
        return _fail(f"{args.config} has no [[watchlist]] models")
    images, validation = _pairs(args.images, "--images"), _pairs(args.validation, "--validation")
    for d in args.negatives:
        if not Path(d).is_dir():
            return _fail(f"--negatives {d} is not a directory")
    device = args.device or (None if settings.scoring.device in ("", "auto") else settings.scoring.device)
    models = [
        (e.name, load_autoencoder(e.model, subfolder=e.subfolder or None, kind=e.kind or None, name=e.name,
                                  device=device, dtype=e.dtype))
        for e in settings.watchlist
    ]
    if problem := _check_tile([m for _, m in models], args.tile, args.max_tiles):
        return _fail(problem)
    calibrations, joint, sets = calibrate_watchlist(
        models, images, args.negatives, args.max_false_alerts, validation, method=args.method,
        batch_size=args.batch_size, tile=args.tile, max_tiles=args.max_tiles, progress=not args.quiet)
    for entry, calibration, scores in zip(settings.watchlist, calibrations, sets):
        Path(entry.calibration).parent.mkdir(parents=True, exist_ok=True)
        calibration.save(entry.calibration)
        if args.plot_dir:
            Path(args.plot_dir).mkdir(parents=True, exist_ok=True)
            plot_calibration(calibration, scores, Path(args.plot_dir) / f"calibration-{entry.name}.png")
        print(json.dumps({"model": entry.name, "method": calibration.method["name"], "threshold": calibration.threshold,
                          "false_alerts": calibration.false_alerts["rate"], "recall": calibration.recall["recall"],
                          "out": entry.calibration}), file=sys.stderr)
    print(json.dumps({"watchlist_false_alerts": joint["union_false_alerts"], "per_model_level": joint["per_model_level"]}),
          file=sys.stderr)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, write_outputs

    result, predictions = evaluate(args.config, args.truth, progress=not args.quiet)
    write_outputs(result, predictions, args.out, args.predictions, args.plot, args.markdown)
    fa = result["false_alerts"]
    print(json.dumps({"images": result["images"], "unreadable": result["unreadable"]["count"],
                      "accuracy": result["accuracy"], "false_alert_rate": fa["rate"], "false_alert_ci95": fa["ci95"],
                      "out": args.out}), file=sys.stderr)
    return 0


class _UsageError(Exception):
    """A bad argument found while dispatching: one `aedr: error:` line, exit 2."""


def _cmd_serve(args: argparse.Namespace) -> int:
    stop, reload = threading.Event(), threading.Event()
    _stop_on_signals(stop, reload)  # before the slow imports and the model loading: a stop then is clean too
    from .config import load_settings
    from .logs import configure
    from .service import build, configure_process

    settings = load_settings(args.config)
    configure(settings.logging.format, args.log_level or settings.logging.level)
    configure_process(settings.scoring)
    service = build(settings, stop, config_path=args.config, reload=reload)
    if service is None:  # stopped during start-up
        return 0
    try:
        status = service.run()
    finally:
        service.close()
    if status:
        print(f"aedr: error: stopped on a fault of its own, for a restart: {service.worker.fault}", file=sys.stderr)
    return status


def _stop_on_signals(stop: threading.Event, reload: threading.Event | None = None) -> None:
    """SIGTERM/SIGINT set `stop`: the worker finishes its batch, commits and exits 0. SIGHUP sets
    `reload`: the worker reloads its watchlist (worker.reload)."""
    import signal

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        if reload is not None:
            signal.signal(signal.SIGHUP, lambda *_: reload.set())


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    return run_demo(args.per_model, args.real, args.database_url, args.metrics_port, args.timeout)


def _cmd_db(args: argparse.Namespace) -> int:
    from .config import load_settings, mask_url

    settings = load_settings(args.config)
    url = args.database_url or settings.database.resolved_url()
    if args.db_command == "prune":
        return _cmd_prune(args, url, settings)
    from .storage import reaching, upgrade

    with reaching(url):
        upgrade(url)
    print(f"aedr: database {mask_url(url)} is at the latest migration", file=sys.stderr)
    return 0


def _cmd_prune(args: argparse.Namespace, url: str, settings) -> int:
    """One JSON line on stdout with what was (or would be) deleted; progress on stderr."""
    from datetime import datetime, timezone

    from .config import mask_url
    from .storage import make_engine, prune, reaching

    cutoff = datetime.now(timezone.utc) - args.older_than
    with reaching(url):
        engine = make_engine(url, settings.database)
        try:
            result = prune(engine, cutoff, args.batch_size, args.dry_run,
                           progress=lambda r: print(f"aedr: pruned {r.events} event(s) in {r.batches} batch(es)",
                                                    file=sys.stderr) if r.batches % 20 == 0 else None)
        finally:
            engine.dispose()
    print(json.dumps({"database": mask_url(url), "cutoff": cutoff.isoformat(), "dry_run": result.dry_run,
                      "events": result.events, "attributions": result.attributions, "batches": result.batches,
                      "seconds": round(result.seconds, 3)}))
    return 0


def _quiet_libraries() -> None:
    """diffusers warns about optional packages (accelerate) on every load: noise for our users."""
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import AedrError

    args = build_parser().parse_args(argv)
    _quiet_libraries()
    handlers = {"score": _cmd_score, "calibrate": _cmd_calibrate, "calibrate-watchlist": _cmd_calibrate_watchlist,
                "evaluate": _cmd_evaluate, "serve": _cmd_serve, "demo": _cmd_demo, "db": _cmd_db,
                "rescan": _cmd_rescan, "dlq": _cmd_dlq}
    try:
        return handlers[args.command](args)
    except AedrError as exc:
        print(f"aedr: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except _UsageError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line, and the traceback only when asked for
        import os
        import traceback

        if os.environ.get("AEDR_TRACEBACK"):
            traceback.print_exc()
        print(f"aedr: error: unexpected {type(exc).__name__}: {str(exc)[:300]} (a bug; set AEDR_TRACEBACK=1 "
              "to see where)", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
