"""C2PA content credentials: read and validate the manifest store with c2pa-python, offline.

The native reader (c2pa-rs) runs in this process, so it cannot be interrupted or given its own
memory limit. It is bounded instead by what reaches it: it runs only on JPEG, PNG and WebP files
whose manifest store the container walk measured first (`containers.walk`: the bytes written, the
number of APP11 segments, and the size the first JUMBF box declares), each within the configured
limits. Files without a manifest store or a remote reference never reach it (most uploads: this
also saves its cost). docs/PROVENANCE.md has the times measured on hostile files.

It never goes to the network: remote manifests and OCSP are switched off in the settings of every
reader (`reader_settings`), and `core.allowed_network_hosts` is empty as a second lock. A file
that only points to a remote manifest gets a `remote_reference` extraction error; the URL is kept
in the message, never fetched (tests/unit/test_provenance_c2pa.py proves it with a loopback
server that counts requests).

Strength: the reader's validation state `Trusted` (chain ends at an operator anchor) → trusted,
`Valid` (valid, unknown signer) → untrusted, `Invalid` or a manifest the reader cannot verify →
invalid.
"""

from __future__ import annotations

import io
import json
from typing import Any

from . import generators
from .containers import Container
from .settings import ProvenanceSettings, TrustAnchors
from .signals import C2PA, INVALID, TRUSTED, UNTRUSTED, ExtractionError, Signal, is_generative_source_type

STATE_STRENGTH = {"Trusted": TRUSTED, "Valid": UNTRUSTED, "Invalid": INVALID}
MAX_ACTIONS = 32
MAX_TEXT = 200
# Reader failures that mean "the asset itself could not be read", not "a manifest failed".
_ASSET_ERRORS = ("_C2paIo", "_C2paNotSupported", "_C2paOther", "_C2paFileNotFound")


def reader_settings(anchors: TrustAnchors) -> dict[str, Any]:
    """c2pa settings for every read: offline, verifying, trusting only the operator's anchors.

    An empty anchor string is a parse error in c2pa-rs, so "no anchors" is null (no trust list:
    every valid signature is then `Valid`, i.e. untrusted)."""
    return {
        "verify": {
            "verify_after_reading": True,
            "verify_trust": True,
            "remote_manifest_fetch": False,
            "ocsp_fetch": False,
        },
        "core": {"allowed_network_hosts": []},
        "trust": {"trust_anchors": anchors.pem or None, "user_anchors": None, "allowed_list": None},
    }


def precheck(container: Container, settings: ProvenanceSettings) -> ExtractionError | None:
    """Refuse a manifest store the limits do not allow, before the native reader sees it."""
    limit = settings.max_manifest_bytes
    if container.manifest_segments > settings.max_manifest_segments:
        return ExtractionError(C2PA, "limit", f"{container.manifest_segments} manifest segments; limit {settings.max_manifest_segments}")
    if container.manifest_bytes > limit:
        return ExtractionError(C2PA, "limit", f"manifest store of {container.manifest_bytes} bytes; limit {limit}")
    declared = container.manifest_declared
    if declared is not None and declared > limit:
        return ExtractionError(C2PA, "limit", f"manifest box declares {declared} bytes; limit {limit}")
    return None


def read(data: bytes, container: Container, settings: ProvenanceSettings, anchors: TrustAnchors,
         remote_hint: str | None) -> tuple[list[Signal], list[ExtractionError]]:
    """Signals of the active manifest, or an error; ([], []) when the file carries none."""
    if container.mime is None or not (container.has_manifest or remote_hint):
        return [], []
    refused = precheck(container, settings)
    if refused is not None:
        return [], [refused]
    import c2pa

    try:
        with c2pa.Context.from_dict(reader_settings(anchors)) as context, \
                c2pa.Reader(container.mime, io.BytesIO(data), context=context) as reader:
            state = reader.get_validation_state()
            store = json.loads(reader.json())
    except c2pa.C2paError as exc:
        return _from_reader_error(exc, container)
    return [_signal(store, state)], []


def _from_reader_error(exc: Exception, container: Container) -> tuple[list[Signal], list[ExtractionError]]:
    name, message = type(exc).__name__, str(exc)[:MAX_TEXT]
    if name == "_C2paManifestNotFound":  # e.g. JPEG-XT boxes that are not C2PA
        return [], []
    if name == "_C2paRemoteManifest" or message.startswith("Remote"):
        return [], [ExtractionError(C2PA, "remote_reference", f"remote manifest not fetched: {message}")]
    if name in _ASSET_ERRORS or not container.has_manifest:
        return [], [ExtractionError(C2PA, "malformed", message)]
    # A manifest store is there and does not verify: tampered, truncated or forged.
    return [Signal(C2PA, INVALID, None, False, {"validation_state": "Invalid", "error": message})], []


def _agent_name(agent: Any) -> str | None:
    if isinstance(agent, dict):
        agent = agent.get("name")
    return str(agent)[:MAX_TEXT] if agent else None


def _signal(store: dict[str, Any], state: str | None) -> Signal:
    label = store.get("active_manifest")
    manifest = (store.get("manifests") or {}).get(label) or {}
    actions: list[dict[str, Any]] = []
    for assertion in manifest.get("assertions") or []:
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions") or []:
                if isinstance(action, dict) and len(actions) < MAX_ACTIONS:
                    actions.append({
                        "action": str(action.get("action", ""))[:MAX_TEXT],
                        "digitalSourceType": str(action.get("digitalSourceType") or "")[:MAX_TEXT] or None,
                        "softwareAgent": _agent_name(action.get("softwareAgent")),
                    })
    generative_actions = [a for a in actions if a["digitalSourceType"] and is_generative_source_type(a["digitalSourceType"])]
    info = manifest.get("claim_generator_info") or []
    claim_generator = _agent_name(info[0]) if info else None
    claim_generator = claim_generator or (str(manifest.get("claim_generator") or "")[:MAX_TEXT] or None)
    agent = next((a["softwareAgent"] for a in generative_actions if a["softwareAgent"]), None)
    signature = manifest.get("signature_info") or {}
    failures = sorted({s.get("code", "") for s in store.get("validation_status") or [] if isinstance(s, dict)})
    strength = STATE_STRENGTH.get(state or "", INVALID)
    detail = {
        "validation_state": state,
        "validation_codes": failures,
        "manifest": label,
        "claim_generator": claim_generator,
        "actions": actions,
        "digital_source_type": generative_actions[0]["digitalSourceType"] if generative_actions else
        next((a["digitalSourceType"] for a in actions if a["digitalSourceType"]), None),
        "signer": {"issuer": signature.get("issuer"), "common_name": signature.get("common_name")},
    }
    return Signal(C2PA, strength, generators.normalise(agent or claim_generator), bool(generative_actions), detail)
