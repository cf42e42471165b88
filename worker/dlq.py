"""`aedr dlq replay`: send dead letters back to the input topic once their cause is fixed (a
limit raised, a host allowed, a bug corrected).

Each dead letter goes back with its original key and value, and its headers without the
`aedr.*` ones the worker added. The worker then processes it as any upload: a dead letter that
now scores moves its `events` row from `failed` to `scored` (worker.storage.records), and one
that fails again is not dead-lettered a second time. Replaying is idempotent: every replayed
dead letter is remembered by the fingerprint of its key and value (the `replays` table), so a
second replay of the same dead letters changes nothing (`--again` replays them anyway). A dead
letter whose value the broker refused (`aedr.value_dropped`) cannot be replayed: it is counted
and left; its `aedr.source` says where the original is.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from .clock import SystemClock
from .config import Settings
from .kafka_io import make_producer, make_reader
from .messages import Message, Outbound
from .storage import SqlStore, reaching
from .window import Window

log = logging.getLogger(__name__)

PUBLISH_BATCH = 200


@dataclass
class ReplayReport:
    replayed: Counter = field(default_factory=Counter)  # by reason
    already: Counter = field(default_factory=Counter)  # replayed before (skipped)
    filtered: int = 0  # another reason than --reason
    value_dropped: int = 0  # cannot be replayed
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {"replayed": sum(self.replayed.values()), "replayed_by_reason": dict(self.replayed),
                "already_replayed": sum(self.already.values()), "other_reason": self.filtered,
                "value_dropped": self.value_dropped, "dry_run": self.dry_run}


def fingerprint(message: Message) -> str:
    digest = hashlib.sha256()
    digest.update(message.key or b"")
    digest.update(b"\0")
    digest.update(message.value or b"")
    return digest.hexdigest()


def original(message: Message, topic: str) -> Outbound:
    """The dead letter as it was first published: key, value, and headers but the `aedr.*`."""
    return Outbound(topic, message.key, message.value,
                    tuple((k, v) for k, v in message.headers if not k.startswith("aedr.")))


def replay(settings: Settings, reason: str | None = None, since: datetime | None = None, dry_run: bool = False,
           again: bool = False, progress: bool = False) -> ReplayReport:
    kafka = settings.kafka
    report = ReplayReport(dry_run=dry_run)
    database_url = settings.database.resolved_url()
    with reaching(database_url):
        store = SqlStore.from_url(database_url, settings.database)
        store.ping()
    reader = make_reader(kafka, kafka.dlq_topic, f"{kafka.group_id}.dlq-replay")
    producer = None if dry_run else make_producer(kafka)
    try:
        now_ms = int(SystemClock().time() * 1000)
        window = Window(reader, kafka.dlq_topic, int(since.timestamp() * 1000) if since else None, None, now_ms)
        bar = _bar(window.total, progress)
        while not window.finished():
            messages = window.poll(timeout_ms=500, max_records=PUBLISH_BATCH)
            if bar is not None:
                bar.update(len(messages))
            chosen = []
            for m in messages:
                why = dict(m.headers).get("aedr.reason", b"").decode("utf-8", "replace")
                if reason and why != reason:
                    report.filtered += 1
                elif "aedr.value_dropped" in dict(m.headers):
                    report.value_dropped += 1
                else:
                    chosen.append((m, why, fingerprint(m)))
            done = set() if again else store.replayed([fp for _, _, fp in chosen])
            todo = []
            for m, why, fp in chosen:  # the same dead letter twice (published again after a crash): once
                if fp in done:
                    report.already[why] += 1
                else:
                    todo.append((m, why, fp))
                    done.add(fp)
            if not todo:
                continue
            if not dry_run:
                assert producer is not None
                producer.publish([original(m, kafka.topic) for m, _, _ in todo], timeout_s=30)
                store.record_replays([{"fingerprint": fp, "source": f"{m.topic}/{m.partition}/{m.offset}",
                                       "reason": why} for m, why, fp in todo])
            for _, why, _ in todo:
                report.replayed[why] += 1
        if bar is not None:
            bar.close()
        return report
    finally:
        reader.close()
        if producer is not None:
            producer.close(timeout_s=10)
        store.close()


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="dead letter", file=sys.stderr, dynamic_ncols=True, desc="replay")
