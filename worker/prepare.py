"""Where an event is decoded: message bytes → a validated event → image bytes → pixels → the
crops and homogeneities every watched model scores. The one place an input is judged unusable.

`prepare` never raises. Whatever the bytes, it returns a `Prepared` that either holds the image,
ready for the models, or a `Rejection` with a `Reason`. An exception that nobody foresaw (a
decoder bug met by this input) is a rejection with `Reason.INTERNAL`: kept apart from the
upload's own faults, and logged with its traceback, but it stops only this one event.

Fetching is the only I/O, and it comes in as an object (`ImageSource`), so the function is
tested with a fake source and runs on any thread.

Provenance (worker.provenance_step) is read here, between decoding and cutting, from the bytes
and the pixels just decoded; it travels on `Prepared.provenance`. It never rejects an event.
When a trusted credential names the generator and the settings say so, the image is not cut
(`image` stays None, `provenance.scoring_skipped` is true): the event is scored without the models.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from .config import ImageSettings
from .events import InvalidEvent, Reason, UploadEvent, decode_b64_image, decode_event, event_id_hint
from .images import decode_image
from .messages import Message
from .scoring import ImageTooSmall

if TYPE_CHECKING:
    from .provenance_step import Findings

log = logging.getLogger(__name__)


class ImageSource(Protocol):
    def fetch(self, url: str) -> bytes:
        """The bytes at `url`, or `InvalidEvent` (fetch / too_large)."""


@dataclass(frozen=True)
class Rejection:
    """Why an event will not be scored."""

    reason: Reason
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class Prepared:
    """One message after preparation: an image for the models, or a rejection."""

    message: Message
    event: UploadEvent | None = None
    image: object | None = None  # the scorer's prepared image (crops and homogeneities)
    rejection: Rejection | None = None
    fetch_s: float = 0.0  # time spent getting the image bytes
    decode_s: float = 0.0  # time spent decoding and cutting them
    provenance: Findings | None = None  # what the file says of its origin (None: not read)

    @property
    def event_id(self) -> str:
        """The event's id; for a value that never parsed, its position in the log."""
        if self.event is not None:
            return self.event.event_id
        return event_id_hint(self.message.value) or f"unparsed:{self.message.source}"


def prepare(
    message: Message,
    source: ImageSource,
    limits: ImageSettings,
    cut: Callable[[np.ndarray], object],
    timer: Callable[[], float] = time.perf_counter,
    inspect: Callable[[bytes, np.ndarray], Findings | None] | None = None,
    decoding: AbstractContextManager | None = None,
) -> Prepared:
    """Decode, validate, fetch, decode the image, `inspect` its provenance, and `cut` it for the
    models (the scorer's `prepare`). Never raises. `decoding` is held while the pixels are
    decoded (a semaphore shared by the scorers: a small upload can decode to hundreds of MB)."""
    event: UploadEvent | None = None
    findings: Findings | None = None
    try:
        event = decode_event(message.value, limits.max_bytes)
        started = timer()
        if event.image_b64 is not None:
            data = decode_b64_image(event.image_b64, limits.max_bytes)
        else:
            data = source.fetch(event.image_url or "")
        fetched = timer()
        with decoding or nullcontext():
            pixels = decode_image(data, limits)
        decoded = timer()
        findings = inspect(data, pixels) if inspect is not None else None
        inspected = timer()
        image = None
        if findings is None or not findings.scoring_skipped:
            try:
                image = cut(pixels)
            except ImageTooSmall as exc:
                raise InvalidEvent(Reason.DECODE, str(exc)) from None
        return Prepared(message, event, image, fetch_s=fetched - started,
                        decode_s=(decoded - fetched) + (timer() - inspected), provenance=findings)
    except InvalidEvent as exc:
        return Prepared(message, event, rejection=Rejection(exc.reason, str(exc)), provenance=findings)
    except Exception as exc:  # a bug met by this input must not stop the partition
        log.exception("unexpected error preparing %s", message.source)
        return Prepared(message, event, rejection=Rejection(Reason.INTERNAL, f"{type(exc).__name__} while preparing"),
                        provenance=findings)
