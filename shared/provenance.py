"""Content addresses for generated negatives.

One function, used by the generator service's store *and* the trainer's client cache, so that the
same (image, mask, parameters, seed, checkpoint) always maps to the same id on both sides.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_VERSION = 1  # bump when the meaning of a key changes; old store entries then miss, never collide


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of raw bytes."""
    return hashlib.sha256(data).hexdigest()


def content_key(
    *, image_sha: str, mask_sha: str, params: dict[str, Any], seed: int, checkpoint: str
) -> str:
    """Hex sha256 identifying one generation request.

    ``params`` must be JSON-serialisable (ints, floats, strings); keys are sorted, so the order in
    which a caller builds the dict does not matter. Floats are serialised by ``json`` (repr), so
    ``1`` and ``1.0`` are different keys: callers normalise types before hashing.
    """
    payload = {
        "v": KEY_VERSION,
        "image": image_sha,
        "mask": mask_sha,
        "params": params,
        "seed": int(seed),
        "checkpoint": checkpoint,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
