"""IPTC digital source type in XMP, generator text chunks and EXIF: exact signals, no alerts."""

from __future__ import annotations

import pytest

from tests import provenance_fixtures as F
from worker.provenance import ProvenanceSettings, alerts, extract
from worker.provenance.generators import known, normalise
from worker.provenance.metadata import a1111_fields, user_comment_text

FAST = ProvenanceSettings(kinds=("c2pa", "iptc", "metadata"))
RGB = F.photo(48, 64)
JPEG = F.encode(RGB, "JPEG", quality=90)


def signals(data: bytes, settings: ProvenanceSettings = FAST):
    result = extract(data, settings)
    assert result.errors == (), result.errors
    assert alerts(result, settings) == []  # unsigned claims never alert by default
    return [(s.kind, s.strength, s.generator, s.generative, s.detail) for s in result.signals]


@pytest.mark.parametrize("value,prop,form,term,generative", [
    (F.TRAINED, "DigitalSourceType", "element", "trainedAlgorithmicMedia", True),
    (F.COMPOSITE, "DigitalSourceType", "attribute", "compositeWithTrainedAlgorithmicMedia", True),
    ("https://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia/", "DigitalSourceType", "resource", "trainedAlgorithmicMedia", True),
    ("trainedAlgorithmicMedia", "DigitalSourcefileType", "element", "trainedAlgorithmicMedia", True),  # IPTC Ext 1.1
    ("digitalsourcetype:compositeWithTrainedAlgorithmicMedia", "DigitalSourceType", "element", "compositeWithTrainedAlgorithmicMedia", True),
    (F.CAPTURE, "DigitalSourceType", "element", "digitalCapture", False),
])
def test_iptc_digital_source_type_in_jpeg_xmp(value, prop, form, term, generative):
    data = F.jpeg_with_xmp(JPEG, F.xmp_packet(value, prop=prop, form=form, creator_tool="Adobe Firefly 2.0"))
    assert signals(data) == [("iptc", "unsigned", "adobe-firefly", generative, {
        "digital_source_type": value, "term": term, "property": f"Iptc4xmpExt:{prop}", "creator_tool": "Adobe Firefly 2.0"})]


def test_iptc_in_png_itxt_xmp_without_creator_tool():
    assert signals(F.png_with_xmp(RGB, F.xmp_packet())) == [("iptc", "unsigned", None, True, {
        "digital_source_type": F.TRAINED, "term": "trainedAlgorithmicMedia",
        "property": "Iptc4xmpExt:DigitalSourceType", "creator_tool": None})]


def test_xmp_without_a_source_type_gives_no_signal():
    assert signals(F.jpeg_with_xmp(JPEG, F.xmp_packet(None, creator_tool="GIMP 2.10"))) == []


def test_unsigned_generative_claims_alert_when_the_operator_allows_unsigned():
    lenient = ProvenanceSettings(kinds=("iptc", "metadata"), alert_strengths=("trusted", "unsigned"))
    result = extract(F.jpeg_with_xmp(JPEG, F.xmp_packet()), lenient)
    assert [(s.kind, s.strength) for s in alerts(result, lenient)] == [("iptc", "unsigned")]
    capture = extract(F.jpeg_with_xmp(JPEG, F.xmp_packet(F.CAPTURE)), lenient)
    assert alerts(capture, lenient) == []  # not a generative claim


def test_automatic1111_parameters_in_a_png_text_chunk():
    data = F.png_with_text(RGB, {"parameters": F.a1111_parameters()})
    assert signals(data) == [("metadata", "unsigned", "stable-diffusion-xl", True, {
        "tool": "AUTOMATIC1111", "field": "png:parameters", "model": "sd_xl_base_1.0",
        "model_hash": "31e35c80fc", "version": "v1.9.4"})]


def test_automatic1111_parameters_in_jpeg_exif_user_comment_either_byte_order():
    for encoding in ("utf-16-be", "utf-16-le"):
        data = F.encode(RGB, "JPEG", exif=F.exif_bytes(software="GIMP 2.10", user_comment=F.a1111_parameters(
            "v1-5-pruned-emaonly", "6ce0161689"), encoding=encoding))
        assert signals(data) == [("metadata", "unsigned", "stable-diffusion-1", True, {
            "tool": "AUTOMATIC1111", "field": "exif:UserComment", "model": "v1-5-pruned-emaonly",
            "model_hash": "6ce0161689", "version": "v1.9.4"})]  # GIMP in Software is no generator


def test_comfyui_prompt_graph_names_the_checkpoint():
    data = F.png_with_text(RGB, {"prompt": F.comfyui_prompt(), "workflow": F.comfyui_workflow()}, compressed=True)
    assert signals(data) == [("metadata", "unsigned", "stable-diffusion-xl", True,
                              {"tool": "ComfyUI", "models": ["sd_xl_base_1.0.safetensors"]})]


def test_comfyui_workflow_alone_names_the_loader_model():
    data = F.png_with_text(RGB, {"workflow": F.comfyui_workflow("flux1-dev.safetensors")})
    assert signals(data) == [("metadata", "unsigned", "flux", True, {"tool": "ComfyUI", "models": ["flux1-dev.safetensors"]})]


def test_comfyui_with_broken_json_is_still_recorded_without_a_model():
    data = F.png_with_text(RGB, {"prompt": "{not json", "workflow": "[[[["})
    assert signals(data) == [("metadata", "unsigned", None, True, {"tool": "ComfyUI", "models": []})]


def test_invokeai_and_novelai():
    invoke = F.png_with_text(RGB, {"invokeai_metadata": '{"model": {"name": "juggernautXL_v9", "base": "sdxl"}}'})
    assert signals(invoke) == [("metadata", "unsigned", "juggernautXL_v9", True, {"tool": "InvokeAI", "model": "juggernautXL_v9"})]
    novel = F.png_with_text(RGB, {"Software": "NovelAI", "Source": "NovelAI Diffusion V4 4F49EC75"})
    assert signals(novel) == [("metadata", "unsigned", "novelai", True, {"tool": "NovelAI", "source": "NovelAI Diffusion V4 4F49EC75"})]


def test_exif_software_counts_only_when_it_names_a_generator():
    assert signals(F.jpeg_with_exif(RGB, software="Adobe Firefly")) == [
        ("metadata", "unsigned", "adobe-firefly", True, {"tool": "Adobe Firefly", "field": "exif:Software"})]
    assert signals(F.jpeg_with_exif(RGB, software="Adobe Photoshop 25.0")) == []


def test_a_plain_image_has_no_signals():
    assert signals(JPEG) == [] and signals(F.encode(RGB, "PNG")) == [] and signals(F.encode(RGB, "WEBP")) == []


def test_a1111_fields_parse_quoted_values_and_ignore_the_prompt():
    fields = a1111_fields(F.a1111_parameters())
    assert fields["Model"] == "sd_xl_base_1.0" and fields["Lora hashes"] == "a: 1, b: 2" and fields["Steps"] == "30"
    assert "a photo of an astronaut" not in str(fields)


def test_user_comment_charsets():
    assert user_comment_text(b"ASCII\x00\x00\x00Steps: 1") == "Steps: 1"
    assert user_comment_text(b"UNICODE\x00" + "Steps: 1".encode("utf-16-le")) == "Steps: 1"
    assert user_comment_text(b"short") is None


@pytest.mark.parametrize("raw,name", [
    ("sd_xl_base_1.0.safetensors", "stable-diffusion-xl"), ("SDXL 1.0", "stable-diffusion-xl"),
    ("v1-5-pruned-emaonly", "stable-diffusion-1"), ("Stable Diffusion 1.5", "stable-diffusion-1"),
    ("v2-1_768-ema-pruned", "stable-diffusion-2"), ("sd3.5_large", "stable-diffusion-3"),
    ("flux1-dev", "flux"), ("DALL·E 3", "dall-e"), ("Adobe Firefly", "adobe-firefly"),
    ("Midjourney v6", "midjourney"), ("realisticVision_v51", "realisticVision_v51"), ("  ", None), (None, None),
])
def test_generator_names_are_normalised(raw, name):
    assert normalise(raw) == name


def test_known_keeps_only_recognised_generators():
    assert known("GIMP 2.10") is None and known("Midjourney") == "midjourney"
