"""Generator metadata: what generation tools write into PNG text chunks and EXIF.

All of it is `unsigned`: any editor can write, copy or strip these fields, so they are recorded as
evidence and never alert by default. Recognised writers:

- AUTOMATIC1111 (and Forge/SD.Next, same format): text `parameters` in PNG, EXIF UserComment in
  JPEG/WebP; its last line has `Model hash: …, Model: …, Version: …`.
- ComfyUI: text `prompt` (API graph) and `workflow` (UI graph), JSON; the checkpoint or UNet
  loader nodes name the model.
- InvokeAI: `invokeai_metadata` (JSON, 3.x+) or `sd-metadata` (2.x).
- NovelAI: `Software: NovelAI` with `Source` naming its model.
- EXIF `Software` / PNG `Software`, only when it names a known generator (it usually names an
  ordinary editor).

Prompts are never copied into a signal: only tool, model, model hash and version. Text chunks
are parsed by Pillow (no pixels decoded) after the container walk has counted them against the
limits; EXIF bytes go to Pillow's EXIF parser directly.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from . import generators
from .containers import Container
from .settings import ProvenanceSettings
from .signals import METADATA, UNSIGNED, ExtractionError, Signal

MAX_TEXT = 200
MAX_MODELS = 8
_A1111_FIELD = re.compile(r'\s*([A-Za-z][A-Za-z0-9 _-]*):\s*("(?:\\.|[^"\\])*"|[^,]*)(?:,|$)')
_MODEL_INPUTS = ("ckpt_name", "unet_name", "model_name", "model_path")
EXIF_SOFTWARE, EXIF_IFD, EXIF_USER_COMMENT, EXIF_DESCRIPTION = 0x0131, 0x8769, 0x9286, 0x010E


def _clip(value: Any) -> str | None:
    text = " ".join(str(value).split())[:MAX_TEXT] if value is not None else ""
    return text or None


def a1111_fields(text: str) -> dict[str, str]:
    """The `Key: value, …` pairs of the last line of A1111 parameters (quoted values unquoted)."""
    last = text.strip().rsplit("\n", 1)[-1]
    out: dict[str, str] = {}
    for key, value in _A1111_FIELD.findall(last[:20_000]):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1]
        out.setdefault(key.strip(), value)
    return out


def _a1111(text: str, where: str) -> Signal | None:
    fields = a1111_fields(text)
    if "Steps" not in fields and "Model hash" not in fields:
        return None
    model = _clip(fields.get("Model"))
    detail = {"tool": "AUTOMATIC1111", "field": where, "model": model,
              "model_hash": _clip(fields.get("Model hash")), "version": _clip(fields.get("Version"))}
    return Signal(METADATA, UNSIGNED, generators.normalise(model), True, detail)


def _comfyui(prompt: str | None, workflow: str | None) -> Signal:
    models: list[str] = []

    def add(name: Any) -> None:
        text = _clip(name)
        if text and text not in models and len(models) < MAX_MODELS:
            models.append(text)

    try:
        graph = json.loads(prompt) if prompt else None
    except (ValueError, RecursionError):
        graph = None
    if isinstance(graph, dict):
        for node in graph.values():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if isinstance(inputs, dict):
                for key in _MODEL_INPUTS:
                    if isinstance(inputs.get(key), str):
                        add(inputs[key])
    if not models and workflow:
        try:
            ui = json.loads(workflow)
        except (ValueError, RecursionError):
            ui = None
        nodes = ui.get("nodes") if isinstance(ui, dict) else None
        for node in nodes if isinstance(nodes, list) else []:
            if isinstance(node, dict) and "Loader" in str(node.get("type", "")):
                values = node.get("widgets_values")
                if isinstance(values, list) and values and isinstance(values[0], str):
                    add(values[0])
    detail = {"tool": "ComfyUI", "models": models}
    return Signal(METADATA, UNSIGNED, generators.normalise(models[0]) if models else None, True, detail)


def _invokeai(info: dict[str, str]) -> Signal:
    model = None
    for key in ("invokeai_metadata", "sd-metadata"):
        try:
            meta = json.loads(info[key]) if key in info else None
        except (ValueError, RecursionError):
            meta = None
        if isinstance(meta, dict):
            raw = meta.get("model") if key == "invokeai_metadata" else meta.get("model_weights")
            if isinstance(raw, dict):
                raw = raw.get("name") or raw.get("model_name") or raw.get("base")
            model = _clip(raw)
            if model:
                break
    return Signal(METADATA, UNSIGNED, generators.normalise(model), True, {"tool": "InvokeAI", "model": model})


def from_text_chunks(info: dict[str, Any]) -> list[Signal]:
    """Signals from the text chunks of a PNG (Pillow's `info`, str values)."""
    text = {k: v for k, v in info.items() if isinstance(k, str) and isinstance(v, str)}
    found: list[Signal] = []
    if "parameters" in text:
        signal = _a1111(text["parameters"], "png:parameters")
        if signal:
            found.append(signal)
    if "prompt" in text or "workflow" in text:
        found.append(_comfyui(text.get("prompt"), text.get("workflow")))
    if "invokeai_metadata" in text or "sd-metadata" in text or "Dream" in text:
        found.append(_invokeai(text))
    software = text.get("Software", "")
    if software.strip().lower().startswith("novelai"):
        found.append(Signal(METADATA, UNSIGNED, "novelai", True,
                            {"tool": "NovelAI", "source": _clip(text.get("Source"))}))
    elif generators.known(software):
        found.append(Signal(METADATA, UNSIGNED, generators.known(software), True,
                            {"tool": _clip(software), "field": "png:Software"}))
    return found


def user_comment_text(raw: Any) -> str | None:
    """EXIF UserComment: 8 bytes naming the charset, then the text (piexif writes UTF-16)."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < 8:
        return None
    head, body = bytes(raw[:8]), bytes(raw[8:])
    if head.startswith(b"UNICODE"):
        little = body[1::2].count(0) > body[0::2].count(0)
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace")
    return body.decode("utf-8", errors="replace").rstrip("\x00")


def from_exif(raw: bytes) -> list[Signal]:
    """Signals from an EXIF block (JPEG APP1 payload, PNG eXIf, WebP EXIF)."""
    import warnings

    from PIL import Image

    exif = Image.Exif()
    with warnings.catch_warnings():  # Pillow warns per broken tag: an upload's problem, not ours
        warnings.simplefilter("ignore")
        exif.load(raw)  # Pillow skips the 6-byte "Exif" header itself
        user_ifd = exif.get_ifd(EXIF_IFD)
    found: list[Signal] = []
    comment = user_comment_text(user_ifd.get(EXIF_USER_COMMENT))
    description = exif.get(EXIF_DESCRIPTION)
    for where, text in (("exif:UserComment", comment), ("exif:ImageDescription", description)):
        if isinstance(text, str) and text:
            signal = _a1111(text, where)
            if signal:
                found.append(signal)
                break
    software = exif.get(EXIF_SOFTWARE)
    if isinstance(software, str) and generators.known(software):
        found.append(Signal(METADATA, UNSIGNED, generators.known(software), True,
                            {"tool": _clip(software), "field": "exif:Software"}))
    return found


def read(data: bytes, container: Container, settings: ProvenanceSettings) -> tuple[list[Signal], list[ExtractionError]]:
    signals: list[Signal] = []
    errors: list[ExtractionError] = []
    if container.format == "png" and container.text_chunks:
        if container.text_chunks > settings.max_text_chunks:
            errors.append(ExtractionError(METADATA, "limit", f"{container.text_chunks} PNG text chunks; limit {settings.max_text_chunks}"))
        elif container.text_bytes > settings.max_text_bytes:
            errors.append(ExtractionError(METADATA, "limit", f"{container.text_bytes} bytes of PNG text; limit {settings.max_text_bytes}"))
        else:
            from PIL import Image

            try:
                with Image.open(io.BytesIO(data), formats=("PNG",)) as im:
                    signals.extend(from_text_chunks(dict(im.info)))
            except Exception as exc:  # Pillow raises many types on broken chunks
                errors.append(ExtractionError(METADATA, "malformed", f"PNG text: {type(exc).__name__}: {str(exc)[:MAX_TEXT]}"))
    if container.exif is not None:
        if container.exif_bytes > settings.max_exif_bytes:
            errors.append(ExtractionError(METADATA, "limit", f"EXIF of {container.exif_bytes} bytes; limit {settings.max_exif_bytes}"))
        else:
            try:
                signals.extend(from_exif(container.exif))
            except Exception as exc:
                errors.append(ExtractionError(METADATA, "malformed", f"EXIF: {type(exc).__name__}: {str(exc)[:MAX_TEXT]}"))
    return signals, errors
