"""The benchmarks' report writers: what docs/PERFORMANCE.md and docs/RELIABILITY.md show is
computed from a run's numbers, so these pure parts are checked on numbers made up here, with
results worked out by hand (the runs themselves are scripts, not tests)."""

from __future__ import annotations

import pytest

from bench import bench, soak, uploads


def soak_rows(slope_mb_per_h: float, n: int = 9, sample_s: float = 600.0) -> list[dict]:
    rows = []
    for i in range(n):
        t = i * sample_s
        rows.append({"t_s": t, "rss_mb": 700.0 + slope_mb_per_h * t / 3600, "fds": 14, "threads": 6 + (i == 3),
                     "produced": 100 * i, "stored": 100 * i - 2, "backlog": 2 + i, "lag_gauge": 1.0, "n": 100,
                     "p50_s": 0.3, "p95_s": 0.5, "p99_s": 0.6 + 0.1 * i, "max_s": 1.0,
                     "worker_cpu_s": 0.5 * t, "broker_cpu_s": 0.1 * t, "broker_rss_mb": 100.0 + i,
                     "worker_p50_s": 0.2, "worker_p99_s": 0.4 + 0.01 * i})
    return rows


def test_the_soak_summary_finds_the_memory_slope_and_the_quarters():
    s = soak.summarise(soak_rows(12.0), warmup_s=1200)
    assert s["samples"] == 9 and s["samples_after_warmup"] == 7
    assert s["mb_per_hour"] == pytest.approx(12.0)
    assert s["fds"] == [14, 14] and s["threads"] == [6, 7] and s["backlog_max"] == 10
    first, last = s["quarters"][0], s["quarters"][-1]
    assert (first["from_s"], first["to_s"]) == (1200, 1800)  # the 7 samples after warm-up split 2/2/2/1
    assert first["worker_cores"] == pytest.approx(0.5) and first["broker_cores"] == pytest.approx(0.1)
    assert first["median_worker_p99_s"] == pytest.approx(0.425) and last["max_worker_p99_s"] == pytest.approx(0.48)
    assert last["max_p99_s"] == pytest.approx(1.4)


def test_the_soak_section_shows_every_quarter_with_the_worker_part_and_the_pinning():
    summary = {**soak.summarise(soak_rows(0.0, n=10), 1200), "machine": {"cpu": "x", "cores": "2"}, "model": "m",
               "size": 64, "capacity_events_per_s": 50.0, "offered_events_per_s": 25.0, "fraction": 0.5,
               "duration_s": 7200, "warmup_s": 1200, "cpus": "0", "broker_cpus": "1", "finished": "now",
               "commit": "abc"}
    text = soak.render(summary, "bench/soak.py --cpus 0 --broker-cpus 1")
    assert "the worker and producer pinned to cores `0`, the broker to `1`" in text
    assert "worker's own part: median p99 (s)" in text and "broker, cores" in text
    assert text.count("\n| ") - text.count("\n| after") - text.count("\n| minutes") == 6 + 4  # 6 rows, 4 quarters
    assert "| +0.00 MB/hour |" in text


def test_the_side_latency_log_is_read_in_quarters(tmp_path):
    log = tmp_path / "side.log"
    log.write_text("".join(f"{1000 + 60 * i} 100 0.2 {0.5 + 0.1 * i} 1.0\n" for i in range(8)) + "garbage line\n")
    table = soak.side_latency_table(log).splitlines()
    assert len(table) == 2 + 4
    assert table[2] == "| 0–1 | 200 | 0.200 | 0.550 | 0.600 |"
    assert table[-1] == "| 6–7 | 200 | 0.200 | 1.150 | 1.200 |"


def results(**extra) -> dict:
    return {"machine": {"cpu": "x", "cores": "2", "torch": "t", "date": "d"}, "command": "bench/bench.py --x",
            "commit": "abc", "args": {"model": "m", "n": 64, "size": 128, "repeats": 2, "worker_batch": 16}, **extra}


def test_the_ratio_section_gives_the_median_ratio_and_the_range_of_pairs():
    pure, e2e = [40.0, 30.0, 35.0], [36.0, 30.0, 28.0]
    r = results(interleaved={"pure": pure, "e2e": e2e}, e2e_over_pure=30.0 / 35.0,
                pairs=[e / p for p, e in zip(pure, e2e)])
    text = bench.ratio_markdown(r)
    assert "Made with `.venv/bin/python bench/bench.py --x` (commit abc;" in text
    assert "| 1 | 40.0 | 36.0 | 0.90 |" in text and "| **median** | **35.0** | **30.0** | |" in text
    assert "= 0.86** (medians); the pairs' ratios range from 0.80 to 1.00." in text


def test_a_comparison_is_against_its_first_setting_and_lands_in_its_own_section(tmp_path):
    r = results(compare={"": {"runs": [10.0, 12.0], "median": 11.0},
                         "store_beside=always": {"runs": [9.0, 10.0], "median": 9.5}})
    path = tmp_path / "r.json"
    path.write_text(__import__("json").dumps(r))
    doc = tmp_path / "doc.md"
    doc.write_text("# x\n\n<!-- BEGIN bench:store-beside -->\nold\n<!-- END bench:store-beside -->\ntail\n")
    assert bench.write_doc(path, doc, "bench:store-beside") == ["bench:store-beside"]
    text = doc.read_text()
    assert "old" not in text and text.endswith("tail\n")
    assert "| defaults | 10.0, 12.0 | 11.0 | 1.00 |" in text and "| store_beside=always | 9.0, 10.0 | 9.5 | 0.86 |" in text


def test_the_model_scaling_table_has_a_row_per_watchlist_size():
    runs = {1: {"images": 64, "pure": [30.0, 32.0], "e2e": [28.0, 29.0], "e2e_over_pure": 28.5 / 31.0,
                "pairs": [28 / 30, 29 / 32], "models": ["a"]},
            8: {"images": 96, "pure": [4.0, 4.2], "e2e": [3.8, 3.9], "e2e_over_pure": 3.85 / 4.1,
                "pairs": [0.95, 3.9 / 4.2], "models": list("abcdefgh")}}
    text = bench.render_by_models(results(by_models=runs))
    assert "| 1 | 64 | 30.0, 32.0 (median 31.0) | 28.0, 29.0 (median 28.5) | 0.92 | 0.91–0.93 |" in text
    assert "| 8 | 96 |" in text and "8: a, b, c, d, e, f, g, h" in text


def full_run() -> dict:
    ref = {"images": 128, "batched": [40.0, 36.0, 44.0], "reference": [20.0, 20.0, 21.0]}
    ref["pairs"] = [b / x for b, x in zip(ref["batched"], ref["reference"])]
    ref["batched_over_reference"] = 40.0 / 20.0
    runs = {str(k): {"images": 64, "pure": [30.0 / k, 32.0 / k], "e2e": [28.0 / k, 29.0 / k],
                     "e2e_over_pure": 28.5 / 31.0, "pairs": [28 / 30, 29 / 32], "models": ["a"] * k} for k in (1, 2, 4, 8)}
    return results(pure={"1": 10.0, "16": 30.0}, reference=ref, by_models=runs, processes_images=256,
                   processes={"": {"runs": [30.0, 31.0], "median": 30.5}, "workers=2": {"runs": [31.0, 32.0], "median": 31.5}},
                   latency={"offered_events_per_s": 15.0, "p50_s": 0.25, "p95_s": 0.5, "max_s": 0.75, "n": 512},
                   **{"args": {"model": "m", "n": 512, "size": 128, "repeats": 3, "worker_batch": 16, "rate_fraction": 0.5}})


def test_the_full_run_fills_four_sections_from_one_command_and_draws_the_models_plot(tmp_path):
    r = full_run()
    assert list(bench.sections(r)) == ["bench:batch", "bench:models", "bench:processes", "bench:latency"]
    path = tmp_path / "r.json"
    path.write_text(__import__("json").dumps(r))
    doc = tmp_path / "docs" / "PERF.md"
    doc.parent.mkdir()
    assert bench.write_doc(path, doc) == ["bench:batch", "bench:models", "bench:processes", "bench:latency"]
    text = doc.read_text()
    assert text.count("Made with `.venv/bin/python bench/bench.py --x` (commit abc;") == 4
    assert "| 3 | 44.0 | 21.0 | 2.10 |" in text and "| **median** | **40.0** | **20.0** | |" in text
    assert "**Batched / reference loop = 2.00×** (medians); the rounds' ratios range from 1.80 to 2.10." in text
    assert "model m, 256 images of 128²" in text and "| workers=2 | 31.0, 32.0 | 31.5 | 1.03 |" in text
    assert "512 events offered at 15.0 events/s (0.5 of the median" in text and "p95 500 ms, max 750 ms" in text
    png = doc.parent / "img" / "bench-models.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(SystemExit, match="fills 4 sections"):
        bench.write_doc(path, doc, "bench:one")


def test_watch_sets_start_with_the_named_model_and_refuse_more_than_the_zoo():
    sets = bench.watch_sets("kl-f4c4", [1, 2, 8])
    assert sets[1] == ["kl-f4c4"] and sets[2][0] == "kl-f4c4" and len(set(sets[8])) == 8
    with pytest.raises(SystemExit):
        bench.watch_sets("kl-f4c4", [99])


def test_the_cores_to_feed_a_gpu_are_the_rate_times_the_decode_and_prepare_seconds():
    rows = [{"size": size, "width": 1, "height": 1, "format": fmt, "bytes": 10, "tiles": 1, "tile": 512,
             "decode": d, "prepare": 0.01, "score": 1.0, "peak_above_mb": 100.0}
            for size, fmt, d in (("512²", "JPEG", 0.01), ("512²", "PNG", 0.03), ("12 MP", "JPEG", 0.1),
                                 ("12 MP", "PNG", 0.4))]
    text = uploads.markdown({"machine": {"cpu": "x", "cores": "2", "torch": "t", "date": "d"}, "command": "c",
                             "commit": "abc", "model": "m", "repeats": 3, "gpu_rate": 50.0, "rows": rows})
    assert "| 512² | 1.00 | 2.00 |" in text and "| 12 MP | 5.50 | 20.50 |" in text
    assert "| 512² (1×1) | JPEG | 10 | 1 | 10.0 | 10.0 | 1000 | 50.0 | 0.98 | 100 |" in text


def test_the_uploads_plot_is_drawn_from_the_rows(tmp_path):
    rows = [{"size": size, "width": w, "height": h, "format": fmt, "decode": 0.01 * w / 512, "prepare": 0.01,
             "score": 1.0, "tile": 512} for size, w, h in (("512²", 512, 512), ("12 MP", 4000, 3000)) for fmt in ("JPEG", "PNG")]
    uploads.plot({"model": "m", "machine": {"cpu": "x"}, "rows": rows}, tmp_path / "img" / "u.png")
    assert (tmp_path / "img" / "u.png").read_bytes()[:4] == b"\x89PNG"


def test_the_steady_rate_opens_once_every_scorer_has_finished_its_first_batch():
    from datetime import datetime, timedelta

    t0 = datetime(2026, 11, 29)
    # two scorers side by side, 8 events/s together: batches of 4 complete at 1.0 and 1.1 s, then
    # every second
    # the first round is slow (start-up: 3 s instead of 1), then every second
    stamps = [k + d for k in (3, *range(4, 11)) for d in (0.0, 0.1)]
    rows = [{"scored_at": t0 + timedelta(seconds=s)} for s in stamps for _ in range(4)]
    assert bench.steady_rate(rows, 2) == pytest.approx(8.0, rel=0.01)
    assert bench.steady_rate(rows[:8], 2) == pytest.approx(4 / 0.1)  # two batches: never an empty window


def batches_taken_when_free(seconds_per_batch: list[float], batches: int, start=None) -> list[tuple[float, int]]:
    """(completion time, events) of batches of 4, each taken by the first scorer to be free."""
    free = list(start or [0.0] * len(seconds_per_batch))
    out = []
    for _ in range(batches):
        k = min(range(len(free)), key=free.__getitem__)
        free[k] += seconds_per_batch[k]
        out.append((free[k], 4))
    return out


@pytest.mark.parametrize("start", [[0.0, 0.01], [0.0, 0.5], [0.0, 0.7], [0.0, 0.9], [0.0, 0.3, 0.6]])
def test_the_window_rate_of_equal_scorers_holds_whatever_their_phase(start):
    scorers = len(start)
    completions = batches_taken_when_free([1.0] * scorers, bench.MIN_BATCHES, start)
    assert bench.window_rate(completions, scorers) == pytest.approx(4.0 * scorers, rel=0.015)


def test_the_window_rate_counts_a_faster_scorer_and_leaves_out_the_idle_tail():
    speeds = [0.78, 0.876]  # unequal: one scorer shares its core with the loop
    true = sum(4 / s for s in speeds)
    completions = batches_taken_when_free(speeds, bench.MIN_BATCHES)
    span = sum(n for _, n in sorted(completions)[2:]) / (max(completions)[0] - sorted(completions)[1][0])
    rate = bench.window_rate(completions, 2)
    assert rate == pytest.approx(true, rel=0.02)
    assert span < 0.96 * true  # the span to the last completion charges the run for its tail
    with pytest.raises(ValueError):
        bench.window_rate([(1.0, 4)], 2)
