"""`aedr evaluate`: a watchlist's verdicts on folders of images with known truth, measured before
alerts go live.

It goes through exactly what `aedr serve` alerts on: the same config, `Watchlist.load` with the
same scoring settings as `service.build`, the same image decoding and limits (`images.decode_image`
with `[images]`), then `watchlist.prepare` → `score` → `verdicts` → `decision.decide`. The one
difference is where the bytes come from (files, not events). The figures are computed from the
predictions alone (`report`), so anyone can recompute them from `--predictions`.

Truth labels: a watchlist model's name, or `none` for images no watched model made. An image's
prediction is its best match, or `none` when no model matched (no alert).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .calibration import clopper_pearson
from .errors import AedrError

NONE = "none"


class EvaluateError(AedrError, ValueError):
    """A bad --truth argument or an unusable folder."""


def parse_truths(values: Sequence[str], watchlist_names: Sequence[str]) -> list[tuple[str, Path]]:
    """NAME=DIR pairs, checked: NAME is a watchlist name or `none`, DIR an existing folder."""
    out = []
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise EvaluateError(f"--truth {value!r}: expected NAME=DIR")
        if name != NONE and name not in watchlist_names:
            raise EvaluateError(f"--truth {value!r}: {name!r} is not a [[watchlist]] name "
                                f"({', '.join(watchlist_names)}) or 'none'")
        path = Path(directory)
        if not path.is_dir():
            raise EvaluateError(f"--truth {value!r}: {directory} is not a directory")
        out.append((name, path))
    if not out:
        raise EvaluateError("give at least one --truth NAME=DIR")
    return out


def report(predictions: Iterable[dict[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    """The figures, from prediction lines alone ({truth, predicted}; predicted None = none).

    Confusion: rows are the truth, columns the prediction, both over the watchlist's models then
    `none`. Recall of model m: its images predicted m / its images; precision: images predicted m
    that are m's / images predicted m. False alerts: images of truth `none` predicted as any model,
    with the 95 % Clopper–Pearson interval. Accuracy: the diagonal over every image."""
    labels = list(models) + [NONE]
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for p in predictions:
        truth, predicted = p["truth"], p["predicted"] or NONE
        if truth not in index or predicted not in index:
            raise EvaluateError(f"prediction {p.get('image')}: label {truth!r} or {predicted!r} is not in {labels}")
        matrix[index[truth], index[predicted]] += 1
    n = int(matrix.sum())
    per_model = {}
    for m in models:
        i = index[m]
        truth_n, predicted_n, correct = int(matrix[i].sum()), int(matrix[:, i].sum()), int(matrix[i, i])
        per_model[m] = {
            "images": truth_n, "predicted": predicted_n, "correct": correct,
            "recall": correct / truth_n if truth_n else None,
            "precision": correct / predicted_n if predicted_n else None,
            "alerted": int(truth_n - matrix[i, index[NONE]]),
        }
    none_n = int(matrix[index[NONE]].sum())
    alerts = int(none_n - matrix[index[NONE], index[NONE]])
    false_alerts: dict[str, Any] = {"images": none_n, "alerts": alerts, "rate": None, "ci95": None}
    if none_n:
        false_alerts.update(rate=alerts / none_n, ci95=list(clopper_pearson(alerts, none_n)))
    generated = n - none_n
    return {
        "labels": labels,
        "confusion": matrix.tolist(),
        "images": n,
        "accuracy": float(np.trace(matrix)) / n if n else None,
        "per_model": per_model,
        "false_alerts": false_alerts,
        "generated_alert_rate": (generated - int(matrix[: len(models), index[NONE]].sum())) / generated if generated else None,
    }


@dataclass
class Prediction:
    image: str
    truth: str
    predicted: str | None
    matches: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.image, "truth": self.truth, "predicted": self.predicted, "matches": self.matches}


def predict(watchlist, files: Sequence[tuple[str, Path]], limits, chunk: int = 16,
            progress: bool = True) -> tuple[list[Prediction], list[dict[str, str]]]:
    """Every (truth, file) through the serve path; unreadable files are returned apart, with
    their reason, never raised."""
    from tqdm import tqdm

    from .decision import decide
    from .images import ImageError, decode_image
    from .scoring import ImageTooSmall

    predictions: list[Prediction] = []
    unreadable: list[dict[str, str]] = []
    pending: list[tuple[str, Path, object]] = []

    def flush() -> None:
        if not pending:
            return
        scores = watchlist.score([item for _, _, item in pending])
        for (truth, path, _), s in zip(pending, scores):
            matches, best = decide(watchlist.verdicts(s))
            predictions.append(Prediction(str(path), truth, best.model if best else None,
                                          [m.as_dict() for m in matches]))
        pending.clear()

    with tqdm(total=len(files), desc="evaluate", unit="img", file=sys.stderr, disable=not progress) as bar:
        for truth, path in files:
            try:
                pixels = decode_image(path.read_bytes(), limits)
                pending.append((truth, path, watchlist.prepare(pixels)))
            except ImageError as exc:
                unreadable.append({"image": str(path), "truth": truth, "error": f"{exc.reason}: {exc}"})
            except ImageTooSmall as exc:
                unreadable.append({"image": str(path), "truth": truth, "error": f"decode: {exc}"})
            except OSError as exc:
                unreadable.append({"image": str(path), "truth": truth, "error": f"read: {exc.strerror or exc}"})
            if len(pending) >= chunk:
                flush()
            bar.update(1)
        flush()
    return predictions, unreadable


def evaluate(config: str | None, truths: Sequence[str], progress: bool = True) -> tuple[dict[str, Any], list[Prediction]]:
    """Load the watchlist as `aedr serve` does and predict every --truth folder."""
    from .config import load_settings
    from .offline import iter_image_paths
    from .service import configure_process
    from .watchlist import Watchlist

    settings = load_settings(config)
    names = [w.name for w in settings.watchlist]
    folders = parse_truths(truths, names)
    scoring = replace(settings.scoring, scorers=1)  # one watchlist here: torch's threads fill the cores
    configure_process(scoring)
    device = (scoring.devices or (scoring.device,))[0]
    watchlist = Watchlist.load(settings.watchlist, device, scoring.batch_size, scoring.compile, scoring.channels_last,
                               scoring.max_batch_pixels)
    files = [(name, path) for name, folder in folders for path in iter_image_paths([folder])]
    if not files:
        raise EvaluateError("no images (png/jpg/webp/…) in the --truth folders")
    predictions, unreadable = predict(watchlist, files, settings.images, settings.batch.max_size, progress)
    result = report([p.as_dict() for p in predictions], names)
    result["unreadable"] = {"count": len(unreadable), "files": unreadable}
    result["truth_folders"] = [{"truth": name, "folder": str(folder)} for name, folder in folders]
    result["watchlist"] = [
        {"name": e.name, "method": e.method.name, "threshold": e.threshold, "threshold_rule": e.calibration.threshold_rule,
         "tile": e.tile, "max_tiles": e.max_tiles}
        for e in watchlist.entries
    ]
    result["config"] = config
    result["created_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return result, predictions


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown tables (every number from `result`)."""
    labels = result["labels"]
    fa = result["false_alerts"]
    lines = [
        f"Images: {result['images']} scored, {result['unreadable']['count']} unreadable. "
        f"Accuracy: {_pct(result['accuracy'])} %. "
        + (f"False alerts on `none`: {fa['alerts']} of {fa['images']} = {_pct(fa['rate'])} % "
           f"(95 % CI {_pct(fa['ci95'][0])}–{_pct(fa['ci95'][1])} %)." if fa["images"] else "No `none` images."),
        "",
        "| truth \\ predicted | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for label, row in zip(labels, result["confusion"]):
        if sum(row):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "| model | images | recall % | predicted | precision % |", "|---|---:|---:|---:|---:|"]
    for name, m in result["per_model"].items():
        lines.append(f"| {name} | {m['images']} | {_pct(m['recall'])} | {m['predicted']} | {_pct(m['precision'])} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str | Path, title: str = "aedr evaluate") -> None:
    """Confusion heat-map: each row (truth) in % of its images, with the counts written in."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    labels = result["labels"]
    matrix = np.asarray(result["confusion"], dtype=float)
    keep = [i for i in range(len(labels)) if matrix[i].sum() > 0]
    rows = matrix[keep]
    share = rows / rows.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 3, 0.7 * len(keep) + 2.2), dpi=110)
    image = ax.imshow(100 * share, cmap="Blues", vmin=0, vmax=100, aspect="auto")
    for r, i in enumerate(keep):
        for j in range(len(labels)):
            pct = 100 * share[r, j]
            text = f"{int(matrix[i, j])}\n{pct:.0f}%" if matrix[i, j] else "·"
            ax.text(j, r, text, ha="center", va="center", fontsize=8,
                    color="white" if pct > 60 else ("darkred" if i != j and pct >= 10 else "black"))
    ax.set_xticks(range(len(labels)), [lab + ("\n(no alert)" if lab == NONE else "") for lab in labels],
                  rotation=30, ha="right")
    ax.set_yticks(range(len(keep)), [labels[i] for i in keep])
    ax.set_xlabel("predicted (best match)")
    ax.set_ylabel("truth")
    fa = result["false_alerts"]
    subtitle = f"accuracy {_pct(result['accuracy'])} %"
    if fa["images"]:
        subtitle += f" · false alerts {_pct(fa['rate'])} % of {fa['images']} real (95 % CI {_pct(fa['ci95'][0])}–{_pct(fa['ci95'][1])})"
    ax.set_title(f"{title}\n{subtitle}", fontsize=10)
    fig.colorbar(image, ax=ax, label="% of the row's images")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(result: dict[str, Any], predictions: Sequence[Prediction], out: str, predictions_path: str | None,
                  plot_path: str | None, markdown_path: str | None) -> None:
    Path(out).write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    if predictions_path:
        with open(predictions_path, "w") as f:
            for p in predictions:
                f.write(json.dumps(p.as_dict(), allow_nan=False) + "\n")
    if plot_path:
        plot(result, plot_path)
    if markdown_path:
        Path(markdown_path).write_text(markdown(result))
