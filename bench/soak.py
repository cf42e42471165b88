"""Soak: one `aedr serve` for hours at a constant fraction of its capacity, sampled as it runs.

Memory that grows slowly and latency that creeps up only show over hours (issue 19). This
script starts a broker (Tansu, loopback), a fresh Postgres database and one worker; measures the
worker's capacity on a pre-filled topic; then offers `--fraction` of it, at a constant rate,
for `--duration-s`. Every `--sample-s` it records the worker's resident memory, open file
descriptors and threads, the backlog (produced − stored, and the worker's own
`aedr_consumer_lag`), and the latency quantiles of the events stored in that interval: from the
producer's send time to the event's `scored_at` in Postgres, and the worker's own part of it
(from its `received_at`, when the worker's poll received the event, to `scored_at`); the rest
was spent in the broker.

    .venv/bin/python bench/soak.py --duration-s 7200 --fraction 0.5 --out-dir bench/soak

Writes soak.csv (one row per sample), summary.json and soak.png (memory, latency, backlog over
time) to --out-dir, and prints the summary: MB/hour after `--warmup-s` (a least-squares line
through the samples), and the latency quantiles in each quarter of the run after warm-up.
`--render SUMMARY_JSON --doc docs/RELIABILITY.md` writes an earlier run's figures into the doc.
With --cpus, the whole stack (broker, worker, producer) runs on those cores only, so that other
work on the machine disturbs it less.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench import PG_SERVER, commit, machine, make_images, steady_rate  # noqa: E402
from worker.corpus import png_bytes  # noqa: E402
from worker.doc_sections import write_section  # noqa: E402
from worker.harness import ServeLauncher, postgres_database  # noqa: E402
from worker.kafka_io import LocalBroker, ensure_topics  # noqa: E402
from worker.config import KafkaSettings  # noqa: E402

COLUMNS = ["t_s", "rss_mb", "fds", "threads", "produced", "stored", "backlog", "lag_gauge", "n",
           "p50_s", "p95_s", "p99_s", "max_s", "worker_cpu_s", "broker_cpu_s", "broker_rss_mb",
           "worker_p50_s", "worker_p99_s"]


def process_stats(pid: int) -> tuple[float, int, int]:
    """Resident MB, open file descriptors and threads of a process (Linux /proc)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss_mb = int(status["VmRSS"].split()[0]) / 1024
    return rss_mb, len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc). With the worker's, the
    broker's tells whether the pinned cores, not the worker, set the latency: Tansu keeps every
    record in memory, so its cost grows over a long run."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lag_gauge(port: int) -> float | None:
    """The sum of the worker's aedr_consumer_lag series (None when it has none)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    values = [s.value for f in text_string_to_metric_families(body) for s in f.samples if s.name == "aedr_consumer_lag"]
    return sum(values) if values else None


class Producer(threading.Thread):
    """Sends events at a constant rate; remembers when each was sent."""

    def __init__(self, bootstrap: str, topic: str, pngs: list[bytes], rate: float, prefix: str):
        super().__init__(daemon=True)
        from kafka import KafkaProducer

        self.producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=5, max_request_size=8 << 20)
        self.topic, self.rate, self.prefix = topic, rate, prefix
        self.images = [base64.b64encode(p).decode() for p in pngs]
        self.sent: dict[str, float] = {}
        self.count = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        wall = time.time() - started
        i = 0
        while not self.stopping.is_set():
            due = started + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, 0.5))
                continue
            event_id = f"{self.prefix}-{i}"
            value = json.dumps({"event_id": event_id, "image_b64": self.images[i % len(self.images)]}).encode()
            self.producer.send(self.topic, value=value, key=event_id.encode())
            with self.lock:
                self.sent[event_id] = wall + due
                self.count = i + 1
            i += 1
        self.producer.flush()
        self.producer.close()

    def take(self, event_ids: list[str]) -> dict[str, float]:
        """When each of these was sent (forgotten here: memory stays flat for the harness too)."""
        with self.lock:
            return {e: self.sent.pop(e) for e in event_ids if e in self.sent}


def capacity(launcher: ServeLauncher, store, bootstrap: str, topic: str, pngs: list[bytes], n: int) -> float:
    """Steady events/s of the (already started) worker on a pre-filled backlog of n events."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=5, max_request_size=8 << 20)
    for i in range(n):
        value = json.dumps({"event_id": f"cap-{i}", "image_b64": base64.b64encode(pngs[i % len(pngs)]).decode()})
        producer.send(topic, value=value.encode(), key=f"cap-{i}".encode())
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 1800
    while stored_count(store, "cap-") < n:
        if time.monotonic() > deadline or any(p.proc.poll() is not None for p in launcher.processes):
            raise RuntimeError("the capacity run did not finish:\n" + launcher.logs())
        time.sleep(1)
    return steady_rate(rows_since(store, "cap-", None))


def stored_count(store, prefix: str) -> int:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM events WHERE event_id LIKE :p"), {"p": prefix + "%"})
                   .scalar_one())


def rows_since(store, prefix: str, after: datetime | None) -> list[dict]:
    from sqlalchemy import text

    query = "SELECT event_id, received_at, scored_at FROM events WHERE event_id LIKE :p AND scored_at IS NOT NULL"
    params: dict = {"p": prefix + "%"}
    if after is not None:
        query += " AND scored_at > :after"
        params["after"] = after
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(query), params).mappings()]


def quantiles(latencies: list[float]) -> list[float | None]:
    if not latencies:
        return [None, None, None, None]
    a = np.asarray(latencies)
    return [float(np.percentile(a, q)) for q in (50, 95, 99)] + [float(a.max())]


def summarise(rows: list[dict], warmup_s: float) -> dict:
    after = [r for r in rows if r["t_s"] >= warmup_s]
    out: dict = {"samples": len(rows), "samples_after_warmup": len(after)}
    if len(after) >= 2:
        t = np.array([r["t_s"] for r in after]) / 3600
        rss = np.array([r["rss_mb"] for r in after])
        slope, _ = np.polyfit(t, rss, 1)
        out.update(mb_per_hour=float(slope), rss_min_mb=float(rss.min()), rss_max_mb=float(rss.max()),
                   rss_first_mb=float(rss[0]), rss_last_mb=float(rss[-1]),
                   fds=[int(min(r["fds"] for r in after)), int(max(r["fds"] for r in after))],
                   threads=[int(min(r["threads"] for r in after)), int(max(r["threads"] for r in after))],
                   backlog_max=int(max(r["backlog"] for r in after)))
        quarters = np.array_split(np.arange(len(after)), 4)
        out["quarters"] = []
        for q in quarters:
            if not len(q):
                continue
            part = [after[i] for i in q]
            p99s = [r["p99_s"] for r in part if r["p99_s"] != ""]
            p50s = [r["p50_s"] for r in part if r["p50_s"] != ""]
            out["quarters"].append({"from_s": part[0]["t_s"], "to_s": part[-1]["t_s"],
                                    "median_p50_s": float(np.median(p50s)) if p50s else None,
                                    "median_p99_s": float(np.median(p99s)) if p99s else None,
                                    "max_p99_s": float(max(p99s)) if p99s else None,
                                    **cores_used(part), **own_part(part)})
    return out


def own_part(part: list[dict]) -> dict:
    """The worker's own part of the latency (received → scored) over these samples, when recorded:
    what is left of the total was spent in the broker, before the worker's poll received it."""
    p99s = [float(r["worker_p99_s"]) for r in part if r.get("worker_p99_s") not in (None, "")]
    return {"median_worker_p99_s": float(np.median(p99s)), "max_worker_p99_s": float(max(p99s))} if p99s else {}


def cores_used(part: list[dict]) -> dict:
    """The worker's and the broker's CPU, in cores, over these samples (when they were recorded)."""
    if len(part) < 2 or part[0].get("worker_cpu_s") in (None, ""):
        return {}
    span = part[-1]["t_s"] - part[0]["t_s"]
    return {f"{who}_cores": (part[-1][f"{who}_cpu_s"] - part[0][f"{who}_cpu_s"]) / span for who in ("worker", "broker")}


def plot(rows: list[dict], warmup_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    axes[0].plot(t, [r["rss_mb"] for r in rows])
    axes[0].set_ylabel("worker RSS (MB)")
    for key in ("p50_s", "p95_s", "p99_s"):
        axes[1].plot(t, [r[key] if r[key] != "" else np.nan for r in rows], label=key[:-2])
    if any(r.get("worker_p99_s") not in (None, "") for r in rows):
        axes[1].plot(t, [r["worker_p99_s"] if r["worker_p99_s"] != "" else np.nan for r in rows],
                     label="p99, worker's own part", linestyle="--")
    axes[1].set_ylabel("latency per interval (s)")
    axes[1].legend()
    axes[2].plot(t, [r["backlog"] for r in rows], label="produced − stored")
    axes[2].plot(t, [r["lag_gauge"] if r["lag_gauge"] != "" else np.nan for r in rows], label="aedr_consumer_lag")
    axes[2].set_ylabel("events waiting")
    axes[2].set_xlabel("minutes")
    axes[2].legend()
    for ax in axes:
        ax.axvline(warmup_s / 60, color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def render(summary: dict, command: str) -> str:
    """The Markdown that docs/RELIABILITY.md shows for a soak (between `<!-- BEGIN soak -->` and
    `<!-- END soak -->`): every figure from `summary`."""
    m = summary["machine"]
    lines = [
        f"Made with `{command}` (commit {summary.get('commit', '?')}, finished {summary['finished']}; "
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {pinning(summary)}).",
        "",
        f"Model `{summary['model']}`, {summary['size']}×{summary['size']} PNG uploads. Capacity on a backlog: "
        f"{summary['capacity_events_per_s']:.1f} events/s; offered at a constant "
        f"{summary['offered_events_per_s']:.1f} events/s ({summary['fraction']:.0%}) for "
        f"{summary['duration_s'] / 3600:.2f} h; sampled {summary['samples']} times, "
        f"{summary['samples_after_warmup']} after the warm-up of {summary['warmup_s'] / 60:.0f} min.",
        "",
        "| after warm-up | value |",
        "|---|---:|",
        f"| resident memory, least-squares slope | {summary['mb_per_hour']:+.2f} MB/hour |",
        f"| resident memory, first → last sample | {summary['rss_first_mb']:.1f} → {summary['rss_last_mb']:.1f} MB |",
        f"| resident memory, min – max | {summary['rss_min_mb']:.1f} – {summary['rss_max_mb']:.1f} MB |",
        f"| open file descriptors, min – max | {summary['fds'][0]} – {summary['fds'][1]} |",
        f"| threads, min – max | {summary['threads'][0]} – {summary['threads'][1]} |",
        f"| backlog (produced − stored), max | {summary['backlog_max']} |",
        "",
        "Latency (upload sent → event stored in Postgres), per sampling interval, by quarter of the run "
        "after warm-up:",
        "",
        "| minutes | median p50 (s) | median p99 (s) | worst p99 (s) |",
        "|---|---:|---:|---:|",
    ]
    own = all("median_worker_p99_s" in q for q in summary["quarters"])
    if own:
        lines[-2] += " worker's own part: median p99 (s) | worst (s) |"
        lines[-1] += "---:|---:|"
    cores = all("worker_cores" in q for q in summary["quarters"])
    if cores:
        lines[-2] += " worker, cores | broker, cores |"
        lines[-1] += "---:|---:|"
    for q in summary["quarters"]:
        lines.append(f"| {q['from_s'] / 60:.0f}–{q['to_s'] / 60:.0f} | {q['median_p50_s']:.3f} | "
                     f"{q['median_p99_s']:.3f} | {q['max_p99_s']:.3f} |"
                     + (f" {q['median_worker_p99_s']:.3f} | {q['max_worker_p99_s']:.3f} |" if own else "")
                     + (f" {q['worker_cores']:.2f} | {q['broker_cores']:.2f} |" if cores else ""))
    return "\n".join(lines)


def pinning(summary: dict) -> str:
    if summary.get("broker_cpus"):
        return f"the worker and producer pinned to cores `{summary['cpus']}`, the broker to `{summary['broker_cpus']}`"
    return f"the stack pinned to cores `{summary['cpus']}`"


def side_log(path: Path, fields: int | None = None) -> list[list[float]]:
    """The numbers of a side log, a line each (blank and `#` lines skipped; with `fields`, lines
    of another length too)."""
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#") and (fields is None or len(line.split()) == fields)]


def quarters(rows: list) -> list[list]:
    return [[rows[i] for i in part] for part in np.array_split(np.arange(len(rows)), 4) if len(part)]


def side_table(path: Path) -> str:
    """Quarters of a side log (lines `epoch_s worker_cpu_s broker_cpu_s broker_rss_mb`, sampled
    beside a run made before soak.py recorded these columns): cores each process used, and the
    broker's memory."""
    rows = side_log(path)
    lines = ["| minutes of the side log | worker, cores | broker, cores | broker RSS (MB) |", "|---|---:|---:|---:|"]
    for part in quarters(rows):
        a, b = part[0], part[-1]
        span = b[0] - a[0]
        lines.append(f"| {(a[0] - rows[0][0]) / 60:.0f}–{(b[0] - rows[0][0]) / 60:.0f} | {(b[1] - a[1]) / span:.2f} | "
                     f"{(b[2] - a[2]) / span:.2f} | {a[3]:.0f} → {b[3]:.0f} |")
    return "\n".join(lines)


def core_set(spec: str) -> set[int]:
    """Cores from a list such as `0`, `0-1` or `0,2-3`."""
    return {c for part in spec.split(",") for c in range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1)}


def pin_process(pid: int, cores: set[int]) -> None:
    """Every thread of a running process to these cores: `sched_setaffinity(pid)` moves only
    its main thread, and the broker's runtime threads already exist (Linux /proc)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cores)


def side_latency_table(path: Path) -> str:
    """Quarters of a side log of the worker's own latency (lines `epoch_s n p50_s p99_s max_s`, a
    query of the run's database each minute, made beside a run from before soak.py recorded the
    worker_p50_s and worker_p99_s columns)."""
    rows = side_log(path, fields=5)
    lines = ["| minutes of the side log | events | median p50 (s) | median p99 (s) | worst p99 (s) |",
             "|---|---:|---:|---:|---:|"]
    for chunk in quarters(rows):
        lines.append(f"| {(chunk[0][0] - rows[0][0]) / 60:.0f}–{(chunk[-1][0] - rows[0][0]) / 60:.0f} | "
                     f"{sum(r[1] for r in chunk):.0f} | {np.median([r[2] for r in chunk]):.3f} | "
                     f"{np.median([r[3] for r in chunk]):.3f} | {max(r[3] for r in chunk):.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", type=Path, metavar="SUMMARY_JSON",
                        help="no run: write an earlier run's summary into --doc (or print it)")
    parser.add_argument("--doc", type=Path, help="with --render or --side-latency: the Markdown file to write into")
    parser.add_argument("--command", default="", help="with --render: the command that made the run")
    parser.add_argument("--section", default="soak", help="with --render: the section of --doc to write")
    parser.add_argument("--side", type=Path, help="no run: print the quarters of a side log of CPU and memory")
    parser.add_argument("--side-latency", type=Path,
                        help="no run: print the quarters of a side log of the worker's own latency")
    parser.add_argument("--model", default="kl-f4c4")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=7200)
    parser.add_argument("--fraction", type=float, default=0.5, help="of the measured capacity")
    parser.add_argument("--capacity", type=float, help="events/s; measured when not given")
    parser.add_argument("--capacity-n", type=int, default=600, help="events in the capacity run")
    parser.add_argument("--sample-s", type=float, default=30)
    parser.add_argument("--warmup-s", type=float, default=900)
    parser.add_argument("--cpus", help="cores for the whole stack, e.g. 1 or 0-1")
    parser.add_argument("--broker-cpus", help="other cores for the broker alone (with --cpus): Tansu keeps every "
                        "record in memory and its cost grows over hours; on its own cores it does not take the "
                        "worker's CPU")
    parser.add_argument("--out-dir", default="bench/soak")
    args = parser.parse_args()
    if args.side:
        print(side_table(args.side))
        return 0
    if args.side_latency:
        text = side_latency_table(args.side_latency)
        print(text)
        if args.doc:
            write_section(args.doc, "soak-latency", text)
        return 0
    if args.render:
        text = render(json.loads(args.render.read_text()), args.command or "bench/soak.py")
        if args.doc:
            try:
                write_section(args.doc, args.section, text)
            except ValueError as exc:
                raise SystemExit(f"soak: {exc}") from None
        else:
            print(text)
        return 0
    if args.cpus:
        os.sched_setaffinity(0, core_set(args.cpus))  # the broker and the worker inherit it
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made_at = commit()  # now: the tree may change during a run of hours, the running worker does not
    pngs = [png_bytes(im) for im in make_images(args.model, 256, args.size)]
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        broker = stack.enter_context(LocalBroker(log_path=Path(tmp) / "broker.log"))
        if args.broker_cpus:
            pin_process(broker.pid, core_set(args.broker_cpus))
        db_url = stack.enter_context(postgres_database(PG_SERVER, "aedr_soak"))
        from worker.storage import SqlStore

        store = SqlStore.from_url(db_url)
        stack.callback(store.close)
        topic = "soak"
        ensure_topics(KafkaSettings(bootstrap_servers=broker.bootstrap), partitions=4,
                      topics=[topic, f"{topic}.alerts", f"{topic}.dlq"])
        launcher = ServeLauncher(broker.bootstrap, db_url, Path(tmp), [args.model], topic=topic, max_size=16,
                                 sections={"scoring": {"threads": 1}}, env={"OMP_NUM_THREADS": "1"})
        stack.callback(launcher.stop_all)
        serve = launcher.start()
        rate_max = args.capacity or capacity(launcher, store, broker.bootstrap, topic, pngs, args.capacity_n)
        rate = args.fraction * rate_max
        print(f"capacity {rate_max:.1f} events/s; offering {rate:.1f} events/s for {args.duration_s:.0f} s",
              file=sys.stderr, flush=True)
        producer = Producer(broker.bootstrap, topic, pngs, rate, "soak")
        started = time.monotonic()
        producer.start()
        rows: list[dict] = []
        last: datetime | None = None
        stored = 0
        with open(out_dir / "soak.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            while (elapsed := time.monotonic() - started) < args.duration_s:
                time.sleep(max(0.0, args.sample_s - (elapsed % args.sample_s)))
                if serve.proc.poll() is not None:
                    raise RuntimeError("the worker exited:\n" + serve.log()[-3000:])
                fresh = rows_since(store, "soak-", last)
                if fresh:
                    last = max(r["scored_at"] for r in fresh)
                stored += len(fresh)
                sent = producer.take([r["event_id"] for r in fresh])
                latencies = [r["scored_at"].timestamp() - sent[r["event_id"]] for r in fresh if r["event_id"] in sent]
                # the worker's own part: from the poll that received the event to its score
                own = quantiles([(r["scored_at"] - r["received_at"]).total_seconds() for r in fresh])
                rss, fds, threads = process_stats(serve.proc.pid)
                broker_pid = broker.pid
                broker_rss = process_stats(broker_pid)[0]
                gauge = lag_gauge(serve.metrics_port)
                row = {"t_s": round(time.monotonic() - started, 1), "rss_mb": round(rss, 1), "fds": fds,
                       "threads": threads, "produced": producer.count, "stored": stored,
                       "backlog": producer.count - stored, "lag_gauge": "" if gauge is None else gauge,
                       "n": len(latencies), **{k: "" if v is None else round(v, 4) for k, v in
                                                zip(("p50_s", "p95_s", "p99_s", "max_s"), quantiles(latencies))},
                       "worker_cpu_s": round(cpu_seconds(serve.proc.pid), 1),
                       "broker_cpu_s": round(cpu_seconds(broker_pid), 1), "broker_rss_mb": round(broker_rss, 1),
                       "worker_p50_s": "" if own[0] is None else round(own[0], 4),
                       "worker_p99_s": "" if own[2] is None else round(own[2], 4)}
                rows.append(row)
                writer.writerow(row)
                f.flush()
                print(" ".join(f"{k}={row[k]}" for k in COLUMNS), file=sys.stderr, flush=True)
        producer.stopping.set()
        producer.join(30)
    summary = {"machine": machine(), "model": args.model, "size": args.size, "duration_s": args.duration_s,
               "capacity_events_per_s": rate_max, "offered_events_per_s": rate, "fraction": args.fraction,
               "warmup_s": args.warmup_s, "cpus": args.cpus, "broker_cpus": args.broker_cpus,
               **summarise(rows, args.warmup_s),
               "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": made_at}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, args.warmup_s, out_dir / "soak.png")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
