"""Content-addressed store of generated negatives.

Each entry is two files under ``root/<id[:2]>/``: ``<id>.png`` (the negative) and ``<id>.json``
(its metadata, including ``png_sha256``). Writes are atomic (temp file in the same directory,
then ``os.replace``), the metadata last, so a reader never sees a half-written entry as
complete. There is no fsync (it cost ~8 ms per file here): a file torn by a power loss fails the
hash check on read and is regenerated like any corrupt entry. Reads verify the PNG against the
recorded hash and the metadata against its schema (every field present with its type); a corrupt
entry is deleted, logged and reported as missing so the caller regenerates it. At start-up the
store sweeps what a kill -9 can leave behind (temp files, a PNG without its metadata, metadata
without its PNG), so every byte on disk belongs to an entry and counts against the cap. The total
size is capped with least-recently-used eviction (recency = last read or write, kept in memory,
seeded from file mtimes); the entries of the request being stored are never its victims.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.io import write_bytes_atomic
from shared.provenance import sha256_bytes

logger = logging.getLogger(__name__)

ID_PATTERN = r"^[0-9a-f]{64}$"
_ID_RE = re.compile(ID_PATTERN)


class InvalidIdError(ValueError):
    """An id that is not a 64-character lowercase hex content address."""


def validate_id(negative_id: str) -> str:
    """Return ``negative_id`` if it is a content address, else raise InvalidIdError.

    Only ``[0-9a-f]{64}`` passes, so an id can never name a path outside the store.
    """
    if not isinstance(negative_id, str) or not _ID_RE.fullmatch(negative_id):
        raise InvalidIdError(f"id must be 64 lowercase hex characters, got {negative_id!r:.80}")
    return negative_id


# Metadata fields every entry carries (api.schemas.NegativeMeta) and their JSON types.
META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str, "image_sha256": str, "mask_sha256": str, "params": dict, "seed": int,
    "method": str, "checkpoint": str, "versions": dict, "timings": dict, "scores": dict,
    "png_sha256": str, "created": str,
}


def meta_problem(meta: Any, negative_id: str) -> str | None:
    """Why ``meta`` is not a valid entry's metadata for ``negative_id`` (None when it is)."""
    if not isinstance(meta, dict):
        return f"metadata is a JSON {type(meta).__name__}, not an object"
    for name, kind in META_FIELDS.items():
        if name not in meta:
            return f"metadata lacks {name!r}"
        value = meta[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"metadata field {name!r} is a {type(value).__name__}"
    if meta["id"] != negative_id:
        return "metadata names another id"
    for name in ("timings", "scores"):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   for v in meta[name].values()):
            return f"metadata field {name!r} holds a non-number"
    return None


@dataclass(frozen=True)
class StoredNegative:
    """One entry read back from the store."""

    id: str  # content address
    png: bytes  # the negative, 8-bit PNG
    meta: dict[str, Any]  # metadata as written by put()



class NegativeStore:
    """Thread-safe content-addressed PNG store with a byte cap and LRU eviction."""

    def __init__(self, root: str | Path, *, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.corrupt_count = 0  # entries found corrupt and dropped since start
        self.evicted_count = 0  # entries evicted by the size cap since start
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # id -> bytes on disk, LRU first
        self.root.mkdir(parents=True, exist_ok=True)
        self._scan()

    # -- paths -------------------------------------------------------------------------------
    def _paths(self, negative_id: str) -> tuple[Path, Path]:
        validate_id(negative_id)
        folder = self.root / negative_id[:2]
        return folder / f"{negative_id}.png", folder / f"{negative_id}.json"

    def _scan(self) -> None:
        """Index the entries on disk, deleting the leftovers of an interrupted write."""
        swept = 0
        for path in self.root.glob("??/*"):
            if not path.is_file():
                continue
            stem, suffix = path.stem, path.suffix
            orphan = (
                suffix == ".tmp"
                or (suffix == ".png" and _ID_RE.fullmatch(stem) and not path.with_suffix(".json").exists())
                or (suffix == ".json" and _ID_RE.fullmatch(stem) and not path.with_suffix(".png").exists())
            )
            if orphan:
                path.unlink(missing_ok=True)
                swept += 1
        if swept:
            logger.warning("store: removed %d leftover file(s) of interrupted writes", swept)
        self.swept_count = swept
        entries = []
        for meta_path in self.root.glob("??/*.json"):
            negative_id = meta_path.stem
            if not _ID_RE.fullmatch(negative_id):
                continue
            png_path = meta_path.with_suffix(".png")
            try:
                size = png_path.stat().st_size + meta_path.stat().st_size
                mtime = max(png_path.stat().st_mtime, meta_path.stat().st_mtime)
            except FileNotFoundError:
                continue
            entries.append((mtime, negative_id, size))
        for _, negative_id, size in sorted(entries):
            self._sizes[negative_id] = size

    # -- public API ----------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._sizes)

    def __contains__(self, negative_id: str) -> bool:
        with self._lock:
            return negative_id in self._sizes

    def get(self, negative_id: str) -> StoredNegative | None:
        """The entry for ``negative_id``, or None when absent or corrupt (then it is removed)."""
        png_path, meta_path = self._paths(negative_id)
        try:
            png = png_path.read_bytes()
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            with self._lock:
                self._sizes.pop(negative_id, None)
            return None
        except (OSError, ValueError) as exc:
            self._drop_corrupt(negative_id, f"unreadable metadata ({exc})")
            return None
        problem = meta_problem(meta, negative_id)
        if problem is None and meta["png_sha256"] != sha256_bytes(png):
            problem = "PNG does not match its recorded sha256"
        if problem is not None:
            self._drop_corrupt(negative_id, problem)
            return None
        with self._lock:
            if negative_id in self._sizes:
                self._sizes.move_to_end(negative_id)
        return StoredNegative(id=negative_id, png=png, meta=meta)

    def put(
        self, negative_id: str, png: bytes, meta: dict[str, Any], *, keep: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """Write an entry atomically; returns the metadata as stored (with ``png_sha256``).

        Eviction spares this entry and the ids in ``keep`` (the other samples of its request,
        whose URLs the same response returns).
        """
        png_path, meta_path = self._paths(negative_id)
        stored_meta = {**meta, "id": negative_id, "png_sha256": sha256_bytes(png)}
        meta_bytes = json.dumps(stored_meta, sort_keys=True, indent=1).encode()
        png_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(png_path, png)
        write_bytes_atomic(meta_path, meta_bytes)  # last: an entry is complete once its JSON exists
        with self._lock:
            self._sizes[negative_id] = len(png) + len(meta_bytes)
            self._sizes.move_to_end(negative_id)
            victims = self._pick_victims(keep={negative_id, *keep})
        for victim in victims:
            self._remove_files(victim)
        return stored_meta

    # -- internals -----------------------------------------------------------------------------
    def _pick_victims(self, *, keep: set[str]) -> list[str]:
        """Pop least recently used ids until under the cap (caller holds the lock)."""
        total = sum(self._sizes.values())
        victims = []
        for candidate in list(self._sizes):
            if total <= self.max_bytes:
                break
            if candidate in keep:
                continue
            total -= self._sizes.pop(candidate)
            victims.append(candidate)
        self.evicted_count += len(victims)
        return victims

    def _remove_files(self, negative_id: str) -> None:
        for path in self._paths(negative_id):
            path.unlink(missing_ok=True)

    def _drop_corrupt(self, negative_id: str, reason: str) -> None:
        logger.warning("store entry %s is corrupt (%s); removing it", negative_id, reason)
        with self._lock:
            self._sizes.pop(negative_id, None)
            self.corrupt_count += 1
        self._remove_files(negative_id)
