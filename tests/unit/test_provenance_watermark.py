"""The SD/SDXL reference watermark: embedded with invisible-watermark, decoded on a bounded
region, exact payloads and channel orders, unmarked controls, and the binomial bound."""

from __future__ import annotations

import numpy as np
import pytest

from tests import provenance_fixtures as F
from worker.provenance import ProvenanceSettings, alerts, extract
from worker.provenance import watermark as W

ONLY = ProvenanceSettings(kinds=("watermark",))


@pytest.fixture(scope="module")
def rgb():
    return F.photo(384, 512)


@pytest.mark.parametrize("payload,generator,bits", [
    ("sdxl", "stable-diffusion-xl", 48), ("sd1", "stable-diffusion-1", 136), ("sd2", "stable-diffusion-2", 32)])
@pytest.mark.parametrize("order", ["bgr", "rgb"])
def test_each_reference_payload_is_decoded_exactly_and_alerts(rgb, payload, generator, bits, order):
    data = F.encode(F.watermarked(rgb, payload, order), "PNG")
    result = extract(data, ONLY)
    assert result.errors == ()
    [signal] = result.signals
    assert (signal.kind, signal.strength, signal.generator, signal.generative) == ("watermark", "unsigned", generator, True)
    d = signal.detail
    assert (d["payload"], d["bits"], d["matching_bits"], d["bit_accuracy"], d["channel_order"]) == (payload, bits, bits, 1.0, order)
    assert d["chance_probability"] == 0.5 ** bits and d["family_chance"] == 6 * 0.5 ** bits and d["hypotheses"] == 6
    assert d["region"] == [0, 0, 384, 512]
    assert alerts(result, ONLY) == [signal]


def test_unmarked_photographs_give_no_signal_and_stay_far_below_the_bound():
    worst = 0.0
    for image in F.other_photos():
        match = W.best_match(image, ONLY.watermark_max_pixels)
        if match is None:
            continue
        assert W.signal_of(match, ONLY.watermark_record_chance, ONLY.watermark_max_chance) is None
        assert match.matching < W.min_matching_bits(match.n, ONLY.watermark_max_chance)
        worst = max(worst, match.matching / match.n)
    assert 0 < worst < 42 / 48


def test_decoding_blocks_agrees_bit_for_bit_with_the_library_on_the_whole_image(rgb):
    from imwatermark import WatermarkDecoder

    for image in (F.watermarked(rgb, "sdxl"), rgb):  # marked, and unmarked (noisy bits)
        whole = W.region(*image.shape[:2], max_pixels=10**9)
        blocks = W.block_bits(image, whole, "bgr")
        mine = W.payload_bits(blocks, W.global_indices(whole, image.shape[1]), 48)
        theirs = WatermarkDecoder("bits", 48).decode(np.ascontiguousarray(image[:, :, ::-1]), "dwtDct")
        assert mine.tolist() == [int(b) for b in theirs]


def test_a_large_image_is_decoded_on_a_band_within_the_pixel_budget():
    big = F.watermarked(F.photo(1200, 1600), "sdxl")
    where = W.region(1200, 1600, ONLY.watermark_max_pixels)
    assert where.pixels <= ONLY.watermark_max_pixels and where.width == 1600 and where.y0 % 8 == 0
    [signal] = extract(F.encode(big, "PNG"), ONLY).signals
    assert signal.detail["matching_bits"] == 48 and signal.detail["region"] == [where.y0, 0, where.height, 1600]


def test_a_very_wide_image_is_decoded_on_a_centred_rectangle():
    where = W.region(4000, 100_000, 1 << 19)
    assert (where.height, where.width % 8, where.x0 % 8) == (256, 0, 0) and where.pixels <= 1 << 19


def test_images_below_the_decoder_minimum_are_skipped():
    assert W.region(255, 255, 1 << 19) is None
    assert extract(F.encode(F.photo(200, 300), "PNG"), ONLY).signals == ()


def test_the_bound_is_the_binomial_null_with_a_bonferroni_correction():
    assert W.chance(48, 48) == 2.0 ** -48 and W.chance(0, 48) == 1.0
    assert [W.min_matching_bits(n, 1e-6) for n in (48, 32, 136)] == [42, 30, 98]
    assert W.chance(42, 48) * 6 <= 1e-6 < W.chance(41, 48) * 6
    assert W.min_matching_bits(48, 1e-6, hypotheses=1) == 41


def test_a_watermark_below_the_alert_bound_is_recorded_but_does_not_alert(rgb):
    image = F.watermarked(rgb, "sdxl")
    match = W.best_match(image, ONLY.watermark_max_pixels)
    weak = W.Match(match.payload, match.order, 40, 48, match.region)  # chance 6 × 1.6e-7 ≈ 9e-6
    signal = W.signal_of(weak, ONLY.watermark_record_chance, ONLY.watermark_max_chance)
    assert signal is not None and signal.detail["alert_min_matching_bits"] == 42
    from worker.provenance import ProvenanceResult

    assert alerts(ProvenanceResult((signal,)), ONLY) == []
    strong = W.signal_of(W.Match("sdxl", "bgr", 42, 48, match.region), 1e-4, 1e-6)
    assert alerts(ProvenanceResult((strong,)), ONLY) == [strong]
    assert alerts(ProvenanceResult((strong,)), ProvenanceSettings(watermark_alert=False)) == []


def test_payload_bits_are_the_published_ones():
    assert "".join(map(str, W.SDXL_BITS)) == "101100111110110010010000011110111011000110011110"
    assert bytes(np.packbits(W.PAYLOADS["sd1"][1])) == b"StableDiffusionV1"
    assert bytes(np.packbits(W.PAYLOADS["sd2"][1])) == b"SDV2"
