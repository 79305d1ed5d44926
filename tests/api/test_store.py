"""The content-addressed store: atomic writes, hash checks, LRU eviction under a byte cap."""

from __future__ import annotations

import os

import pytest

from api.store import InvalidIdError, NegativeStore, validate_id


def ident(n: int) -> str:
    return f"{n:064x}"


def test_roundtrip_and_meta_hash(tmp_path):
    store = NegativeStore(tmp_path, max_bytes=10**6)
    meta = store.put(ident(1), b"png-bytes", {"seed": 3})
    entry = store.get(ident(1))
    assert entry is not None and entry.png == b"png-bytes" and entry.meta == meta
    assert meta["seed"] == 3 and meta["id"] == ident(1)
    assert not list(tmp_path.rglob("*.tmp"))  # no temp files left behind


def test_corrupt_png_or_meta_reads_as_missing_and_is_removed(tmp_path):
    store = NegativeStore(tmp_path, max_bytes=10**6)
    store.put(ident(1), b"a" * 50, {})
    store.put(ident(2), b"b" * 50, {})
    (tmp_path / "00" / f"{ident(1)}.png").write_bytes(b"a" * 49 + b"X")
    (tmp_path / "00" / f"{ident(2)}.json").write_text("[1, 2")
    assert store.get(ident(1)) is None and store.get(ident(2)) is None
    assert store.corrupt_count == 2 and len(store) == 0
    assert not (tmp_path / "00" / f"{ident(1)}.png").exists()


def test_lru_eviction_keeps_recently_read(tmp_path):
    store = NegativeStore(tmp_path, max_bytes=1)  # measure one entry's size first
    store.put(ident(0), b"x" * 100, {})
    one = store.total_bytes
    store = NegativeStore(tmp_path / "s", max_bytes=3 * one)
    for n in range(3):
        store.put(ident(n), b"x" * 100, {})
    assert store.get(ident(0)) is not None  # 0 becomes most recent; 1 is now the oldest
    store.put(ident(3), b"x" * 100, {})
    assert ident(1) not in store and store.get(ident(1)) is None
    assert all(store.get(ident(n)) is not None for n in (0, 2, 3))
    assert store.total_bytes <= 3 * one and store.evicted_count == 1


def test_index_is_rebuilt_from_disk_in_mtime_order(tmp_path):
    store = NegativeStore(tmp_path, max_bytes=10**6)
    for n in range(3):
        store.put(ident(n), b"x" * 100, {})
        os.utime(tmp_path / "00" / f"{ident(n)}.json", (1000 + n, 1000 + n))
        os.utime(tmp_path / "00" / f"{ident(n)}.png", (1000 + n, 1000 + n))
    reopened = NegativeStore(tmp_path, max_bytes=store.total_bytes)
    assert len(reopened) == 3
    reopened.put(ident(9), b"y" * 100, {})
    assert ident(0) not in reopened and ident(9) in reopened


@pytest.mark.parametrize("bad", ["../" + "a" * 61, "a" * 63, "A" * 64, "/etc/passwd", "", 5])
def test_invalid_ids_are_refused(tmp_path, bad):
    store = NegativeStore(tmp_path, max_bytes=10)
    with pytest.raises(InvalidIdError):
        validate_id(bad)
    with pytest.raises(InvalidIdError):
        store.get(bad)
