"""Several scorers on one device (one per core on a CPU) share what is safe to share and copy
what is not: calibrations and thresholds are read once, so every scorer judges with the same
ones; the weights of an image autoencoder are shared; a video VAE (Qwen-Image, Wan) keeps
per-call feature caches on its module, so each scorer gets a module of its own. Two threads on
one video module mixed each other's caches into their scores (finite and wrong)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from worker.config import ScoringSettings, Settings, WatchlistEntry
from worker.corpus import model_images
from worker.fetch import Fetcher
from worker.provenance.settings import ProvenanceSettings
from worker.provenance_step import load as load_provenance
from worker.service import load_scoring
from worker.storage.memory import MemoryStore
from worker.zoo import zoo_model

VIDEO, IMAGE = "qwen-f8c8", "kl-f4c4"


def entries(*names: str) -> tuple[WatchlistEntry, ...]:
    return tuple(WatchlistEntry(n, str(zoo_model(n).path), str(zoo_model(n).calibration_path)) for n in names)


@pytest.fixture(scope="module")
def pool():
    settings = Settings(scoring=ScoringSettings(device="cpu", scorers=3, threads=1), watchlist=entries(IMAGE, VIDEO),
                        provenance=ProvenanceSettings(enabled=False))
    pool = load_scoring(settings, settings.watchlist, stop=threading.Event(), loaded={}, store=MemoryStore(),
                        database_url="sqlite://", fetcher=Fetcher(settings.fetch, settings.images.max_bytes),
                        provenance=load_provenance(settings.provenance))
    yield pool
    pool.close()


def test_scorers_on_one_device_share_calibrations_and_image_weights_and_copy_video_modules(pool):
    assert pool.size == 3
    first, *others = pool.scorers
    for other in others:
        image, video = other.entries
        assert image.model is first.entries[0].model  # one copy of the weights
        assert video.model is not first.entries[1].model and video.model.module is not first.entries[1].model.module
        assert video.model.weights_sha256 == first.entries[1].model.weights_sha256
        for mine, theirs in zip(other.entries, first.entries):
            assert mine.calibration is theirs.calibration  # read once: one threshold for every scorer
    assert len({id(s.entries[1].model.module) for s in pool.scorers}) == 3


def test_scorers_score_side_by_side_as_one_scorer_alone_does(pool):
    images = [pool.scorers[0].prepare(im) for im in model_images(VIDEO, 8, 64, seed=3)]
    alone = [[s.score for s in row] for row in pool.scorers[0].score(images)]
    results: dict[int, list] = {}

    def run(k: int) -> None:
        got = []
        for _ in range(12):
            got.append([[s.score for s in row] for row in pool.scorers[k].score(images)])
        results[k] = got

    threads = [threading.Thread(target=run, args=(k,)) for k in range(pool.size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, runs in results.items():
        for got in runs:
            np.testing.assert_allclose(got, alone, rtol=1e-5, err_msg=f"scorer {k}")


def test_at_most_two_uploads_decode_at_once_whatever_the_scorers(pool, monkeypatch):
    """A small upload can decode to hundreds of MB for a moment (a 16-bit PNG near the pixel
    limit): the scorers share a few decoding slots instead of each decoding at once."""
    import time

    import worker.prepare as prepare_module
    from worker.corpus import upload_event
    from worker.messages import Message

    real, lock, now, most = prepare_module.decode_image, threading.Lock(), [0], [0]

    def slow_decode(data, limits):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.2)
        with lock:
            now[0] -= 1
        return real(data, limits)

    monkeypatch.setattr(prepare_module, "decode_image", slow_decode)
    image = next(iter(model_images(IMAGE, 1, 32, seed=1)))
    messages = [Message("t", 0, i, None, upload_event(f"e{i}", image)) for i in range(6)]
    prepared: list = []
    threads = [threading.Thread(target=lambda m=m: prepared.append(pool.prepare(m))) for m in messages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2 and len(prepared) == 6 and all(p.rejection is None for p in prepared)
