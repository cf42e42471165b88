"""worker.overlap: when a CPU worker stores beside the scoring (numbers in, a choice out)."""

import pytest

from worker.config import ConfigError, load_settings
from worker.overlap import StoreOverlap


def test_auto_stores_between_batches_until_a_store_is_seen_to_be_slow():
    o = StoreOverlap("auto", threshold=0.25, weight=0.5)
    assert not o.beside()  # nothing measured
    o.scored(0.4)
    assert not o.beside()
    o.stored(0.05)  # 0.05 ≤ 0.25 × 0.4
    assert not o.beside()
    o.stored(0.35)  # smoothed: 0.05 + 0.5 × 0.30 = 0.2 > 0.1
    assert o.store_s == pytest.approx(0.2) and o.beside()
    o.scored(1.2)  # smoothed scoring 0.8: 0.2 ≤ 0.25 × 0.8
    assert o.score_s == pytest.approx(0.8) and not o.beside()


def test_a_batch_with_nothing_scored_teaches_nothing():
    o = StoreOverlap("auto")
    o.scored(0.0)
    o.stored(1.0)
    assert o.score_s is None and not o.beside()


@pytest.mark.parametrize("mode, expected", [("always", True), ("never", False)])
def test_fixed_modes_ignore_the_measurements(mode, expected):
    o = StoreOverlap(mode)
    for s in (0.0, 10.0):
        o.stored(s)
        o.scored(0.1)
        assert o.beside() is expected


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        StoreOverlap("sometimes")


def test_the_setting_is_checked_and_read_from_the_environment():
    assert load_settings(None, {}).batch.store_beside == "auto"
    assert load_settings(None, {"AEDR_BATCH__STORE_BESIDE": "never"}).batch.store_beside == "never"
    with pytest.raises(ConfigError, match="batch.store_beside must be one of auto, always, never"):
        load_settings(None, {"AEDR_BATCH__STORE_BESIDE": "0"})
