"""Does a second member joining a live consumer group get its share, on the local Tansu broker,
with each partition assignment strategy? Prints one JSON line per strategy and run: the
assignment reached and the seconds it took (or `converged: false` after --timeout).

    .venv/bin/python scripts/tansu_rebalance.py --runs 2

docs/OPERATIONS.md ("Consumer groups") quotes its output; the test suite checks each strategy
with one member only (tests/integration/test_cluster_kafka.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.config import ASSIGNMENT_STRATEGIES, KafkaSettings  # noqa: E402
from worker.completion import OffsetLedger  # noqa: E402
from worker.kafka_io import LocalBroker, ensure_topics, make_consumer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    with LocalBroker() as broker:
        topic = f"rebalance-{uuid.uuid4().hex[:6]}"
        ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap), 4, [topic])
        for run in range(args.runs):
            for strategy in ASSIGNMENT_STRATEGIES:
                settings = KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic,
                                         group_id=f"g-{strategy}-{run}", partition_assignment_strategy=(strategy,),
                                         session_timeout_ms=6000, heartbeat_interval_ms=1000)
                started = time.monotonic()
                members = [make_consumer(settings, OffsetLedger())]
                while not members[0].assignment() and time.monotonic() - started < args.timeout:
                    members[0].poll(timeout_ms=100, max_records=1)
                first = time.monotonic() - started
                members.append(make_consumer(settings, OffsetLedger()))
                converged = False
                while time.monotonic() - started < args.timeout:
                    for member in members:
                        member.poll(timeout_ms=100, max_records=1)
                    shares = [sorted(p.partition for p in m.assignment()) for m in members]
                    if all(shares) and sorted(sum(shares, [])) == [0, 1, 2, 3]:
                        converged = True
                        break
                print(json.dumps({"strategy": strategy, "run": run, "first_member_s": round(first, 1),
                                  "converged": converged, "seconds": round(time.monotonic() - started, 1),
                                  "assignment": shares}), flush=True)
                for member in members:
                    member.close()


if __name__ == "__main__":
    main()
