"""Generator names as files write them → one normalised name per model family.

Files name their generator in many ways ("sd_xl_base_1.0.safetensors", "Stable Diffusion XL",
"SDXL 1.0", "v1-5-pruned-emaonly"). The names below are the families the AEDR watchlist speaks
about, so a provenance signal and an AEDR verdict can be compared. An unknown name is kept raw
(trimmed): a new generator is still recorded, and a rule can be added when it shows up.
"""

from __future__ import annotations

import re

# Order matters: the first pattern that matches wins (SDXL before SD 1/2, SD 3 before SD 1/2).
_RULES: tuple[tuple[str, str], ...] = (
    (r"sd[\s_-]?xl|stable[\s_-]?diffusion[\s_-]?xl|sdxl", "stable-diffusion-xl"),
    (r"sd[\s_-]?3(\.5)?\b|stable[\s_-]?diffusion[\s_-]?3|sd3", "stable-diffusion-3"),
    (r"v2-1|v2-0|768-v-ema|sd[\s_-]?2(\.[01])?\b|stable[\s_-]?diffusion[\s_-]?v?2", "stable-diffusion-2"),
    (r"v1-[45]|sd[\s_-]?1\.?[45]\b|sd15|sd14|stable[\s_-]?diffusion[\s_-]?v?1", "stable-diffusion-1"),
    (r"flux", "flux"),
    (r"dall[\s·_-]?e", "dall-e"),
    (r"gpt[\s_-]?image|gpt-4o", "gpt-image"),
    (r"firefly", "adobe-firefly"),
    (r"midjourney", "midjourney"),
    (r"imagen", "imagen"),
    (r"novelai|nai diffusion", "novelai"),
    (r"kandinsky", "kandinsky"),
    (r"playground", "playground"),
    (r"stable[\s_-]?diffusion", "stable-diffusion"),
)
_COMPILED = tuple((re.compile(pattern, re.IGNORECASE), name) for pattern, name in _RULES)
KNOWN = tuple(dict.fromkeys(name for _, name in _RULES))
MAX_RAW = 200


def normalise(raw: str | None) -> str | None:
    """The family name for a raw generator string, the trimmed raw string if none matches, or
    None for an empty value."""
    if raw is None:
        return None
    text = " ".join(str(raw).split())[:MAX_RAW]
    if not text:
        return None
    for pattern, name in _COMPILED:
        if pattern.search(text):
            return name
    return text


def known(raw: str | None) -> str | None:
    """The family name only when a rule matches (for fields such as EXIF Software that name
    ordinary editors far more often than generators)."""
    name = normalise(raw)
    return name if name in KNOWN else None
