"""The content-addressed store: atomic writes, hash checks, LRU eviction under a byte cap."""

from __future__ import annotations

import os

import pytest

from api.store import InvalidIdError, NegativeStore, validate_id


def ident(n: int) -> str:
    return f"{n:064x}"


def meta(**fields) -> dict:
    """Metadata as the service writes it (every field of api.schemas.NegativeMeta but the two
    the store adds: id and png_sha256)."""
    base = {"image_sha256": "a" * 64, "mask_sha256": "b" * 64, "params": {"steps": 20},
            "seed": 0, "method": "diffusion", "checkpoint": "c" * 64,
            "versions": {"numpy": "2"}, "timings": {"queue_ms": 1.0, "batch_size": 1},
            "scores": {}, "created": "2026-12-02T00:00:00+00:00"}
    return {**base, **fields}


def test_roundtrip_and_meta_hash(tmp_path):
    store = NegativeStore(tmp_path, max_bytes=10**6)
    stored = store.put(ident(1), b"png-bytes", meta(seed=3))
    entry = store.get(ident(1))
    assert entry is not None and entry.png == b"png-bytes" and entry.meta == stored
    assert stored["seed"] == 3 and stored["id"] == ident(1)
    assert not list(tmp_path.rglob("*.tmp"))  # no temp files left behind


def test_corrupt_png_or_meta_reads_as_missing_and_is_removed(tmp_path):
    store = NegativeStore(tmp_path, max_bytes=10**6)
    store.put(ident(1), b"a" * 50, meta())
    store.put(ident(2), b"b" * 50, meta())
    (tmp_path / "00" / f"{ident(1)}.png").write_bytes(b"a" * 49 + b"X")
    (tmp_path / "00" / f"{ident(2)}.json").write_text("[1, 2")
    assert store.get(ident(1)) is None and store.get(ident(2)) is None
    assert store.corrupt_count == 2 and len(store) == 0
    assert not (tmp_path / "00" / f"{ident(1)}.png").exists()


def test_lru_eviction_keeps_recently_read(tmp_path):
    store = NegativeStore(tmp_path, max_bytes=1)  # measure one entry's size first
    store.put(ident(0), b"x" * 100, meta())
    one = store.total_bytes
    store = NegativeStore(tmp_path / "s", max_bytes=3 * one)
    for n in range(3):
        store.put(ident(n), b"x" * 100, meta())
    assert store.get(ident(0)) is not None  # 0 becomes most recent; 1 is now the oldest
    store.put(ident(3), b"x" * 100, meta())
    assert ident(1) not in store and store.get(ident(1)) is None
    assert all(store.get(ident(n)) is not None for n in (0, 2, 3))
    assert store.total_bytes <= 3 * one and store.evicted_count == 1


def test_index_is_rebuilt_from_disk_in_mtime_order(tmp_path):
    store = NegativeStore(tmp_path, max_bytes=10**6)
    for n in range(3):
        store.put(ident(n), b"x" * 100, meta())
        os.utime(tmp_path / "00" / f"{ident(n)}.json", (1000 + n, 1000 + n))
        os.utime(tmp_path / "00" / f"{ident(n)}.png", (1000 + n, 1000 + n))
    reopened = NegativeStore(tmp_path, max_bytes=store.total_bytes)
    assert len(reopened) == 3
    reopened.put(ident(9), b"y" * 100, meta())
    assert ident(0) not in reopened and ident(9) in reopened


@pytest.mark.parametrize("bad", ["../" + "a" * 61, "a" * 63, "A" * 64, "/etc/passwd", "", 5])
def test_invalid_ids_are_refused(tmp_path, bad):
    store = NegativeStore(tmp_path, max_bytes=10)
    with pytest.raises(InvalidIdError):
        validate_id(bad)
    with pytest.raises(InvalidIdError):
        store.get(bad)


@pytest.mark.parametrize("damage", [
    lambda m: m.pop("seed"),  # a field missing
    lambda m: m.update(seed="3"),  # a field of the wrong type
    lambda m: m.update(timings={"queue_ms": "fast"}),  # a non-number among the timings
    lambda m: m.update(id="f" * 64),  # metadata of another entry
    lambda m: m.clear(),  # valid JSON, no fields
])
def test_metadata_that_parses_but_breaks_the_schema_is_dropped(tmp_path, damage):
    """Valid JSON with a missing or mistyped field reads as missing (the service regenerates
    it), never as an entry a route would turn into a 500."""
    import json

    store = NegativeStore(tmp_path, max_bytes=10**6)
    store.put(ident(1), b"a" * 50, meta())
    path = tmp_path / "00" / f"{ident(1)}.json"
    stored = json.loads(path.read_text())
    damage(stored)
    path.write_text(json.dumps(stored))
    assert store.get(ident(1)) is None and store.corrupt_count == 1 and not path.exists()


def test_startup_sweeps_leftovers_of_a_kill(tmp_path):
    """Temp files and half-written entries (PNG without metadata or the reverse) are removed at
    start-up; every remaining byte belongs to an entry and counts against the cap."""
    store = NegativeStore(tmp_path, max_bytes=10**6)
    store.put(ident(1), b"a" * 50, meta())
    store.put(ident(2), b"b" * 50, meta())
    store.put(ident(3), b"c" * 50, meta())
    folder = tmp_path / "00"
    (folder / f"{ident(2)}.json").unlink()  # killed between the PNG and its metadata
    (folder / f"{ident(3)}.png").unlink()
    (folder / f".{ident(4)}.png.x1y2.tmp").write_bytes(b"t" * 999)
    reopened = NegativeStore(tmp_path, max_bytes=10**6)
    assert reopened.swept_count == 3 and len(reopened) == 1
    assert sorted(p.name for p in folder.iterdir()) == [f"{ident(1)}.json", f"{ident(1)}.png"]
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert reopened.total_bytes == on_disk


def test_eviction_spares_the_other_samples_of_the_same_request(tmp_path):
    store = NegativeStore(tmp_path, max_bytes=1)
    store.put(ident(0), b"x" * 100, meta())
    one = store.total_bytes
    store = NegativeStore(tmp_path / "s", max_bytes=2 * one)
    store.put(ident(9), b"x" * 100, meta())  # an older request
    request = (ident(1), ident(2), ident(3))  # three samples of one request, cap = two entries
    for n in request:
        store.put(n, b"x" * 100, meta(), keep=request)
    assert all(store.get(n) is not None for n in request) and ident(9) not in store
