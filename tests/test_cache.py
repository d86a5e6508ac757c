"""The content-addressed cache primitive (drlcore.data.cache.ContentStore) behind the model,
morphology and projection caches."""

from __future__ import annotations

import pytest

from drlcore.data.cache import ContentStore


def _fill(text: str):
    def fill(folder):
        (folder / "a.txt").write_text(text)
        (folder / "b.txt").write_text(text * 2)
    return fill


def test_put_then_get_returns_the_complete_entry(tmp_path):
    store = ContentStore(tmp_path / "store")
    assert store.get("k1") is None and store.keys() == []
    folder = store.put("k1", _fill("x"))
    assert folder == store.get("k1") == tmp_path / "store" / "k1"
    assert (folder / "a.txt").read_text() == "x" and (folder / "b.txt").read_text() == "xx"
    assert store.keys() == ["k1"]
    # No temporary left; the entry's checksum record lies beside it.
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["k1", "k1.sums.json"]


def test_a_failed_fill_leaves_nothing_behind(tmp_path):
    store = ContentStore(tmp_path)

    def broken(folder):
        (folder / "a.txt").write_text("half")
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError):
        store.put("k", broken)
    assert store.get("k") is None and list(tmp_path.iterdir()) == []


def test_second_writer_of_a_key_keeps_the_first_entry(tmp_path):
    store = ContentStore(tmp_path)
    store.put("k", _fill("first"))
    assert store.put("k", _fill("second")) == tmp_path / "k"
    assert (tmp_path / "k" / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.sums.json"]
    assert store.get("k") == tmp_path / "k"  # the record is the first writer's


def test_discard_removes_an_entry_so_it_can_be_rewritten(tmp_path):
    store = ContentStore(tmp_path)
    store.put("k", _fill("damaged"))
    store.discard("k")
    store.discard("k")  # nothing to remove: no error
    assert store.get("k") is None and list(tmp_path.iterdir()) == []
    store.put("k", _fill("fresh"))
    assert (store.get("k") / "a.txt").read_text() == "fresh"


def test_hidden_and_partial_folders_are_not_entries(tmp_path):
    store = ContentStore(tmp_path)
    (tmp_path / ".k.123.partial").mkdir()
    store.put("k", _fill("x"))
    assert store.keys() == ["k"]


@pytest.mark.parametrize("key", ["", "../escape", "a/b", ".hidden", "-dash"])
def test_keys_that_could_leave_the_folder_are_refused(tmp_path, key):
    with pytest.raises(ValueError):
        ContentStore(tmp_path).path(key)


# --------------------------------------------------------------------------- checksums

import numpy as np  # noqa: E402

from drlcore.data.cache import FeatureCache  # noqa: E402


def _flip(path, offset: int = -5) -> None:
    """One flipped bit: same size, still a loadable file, different content."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_feature_shard_is_a_miss_never_a_result(tmp_path):
    cache = FeatureCache(tmp_path, "k")
    good, bad = np.ones((2, 4), np.float32), np.full((3, 4), 2.0, np.float32)
    cache.put(["a", "b"], good, [{"w": 1}, {"w": 2}])
    cache.put(["c", "d", "e"], bad)
    shards = sorted((tmp_path / "k").glob("shard-*.npy"))
    assert len(shards) == 2
    _flip(shards[1])
    fresh = FeatureCache(tmp_path, "k")
    got = fresh.get(["a", "b", "c", "d", "e"])
    assert sorted(got) == ["a", "b"] and np.array_equal(got["a"], good[0])
    assert fresh.metadata(["a", "c"]) == {"a": {"w": 1}}
    assert fresh.damaged == 1 and fresh.damaged_rows == 3
    assert "1 feature-cache shard(s)" in fresh.notes()[0] and "3 cached vector" in fresh.notes()[0]
    # The key list is covered too: a changed image hash in the .json is caught.
    index = shards[0].with_suffix(".json")
    index.write_text(index.read_text().replace('"a"', '"x"'))
    again = FeatureCache(tmp_path, "k")
    assert again.get(["x", "a", "b"]) == {} and again.damaged == 1  # checked when asked for


def test_a_shard_without_a_checksum_is_not_trusted(tmp_path):
    folder = tmp_path / "k"
    folder.mkdir()
    np.save(folder / "shard-1-1-1.npy", np.ones((1, 4), np.float32))
    (folder / "shard-1-1-1.json").write_text('{"hashes": ["a"], "meta": null}')
    cache = FeatureCache(tmp_path, "k")
    assert cache.get(["a"]) == {} and cache.damaged == 1


def test_a_flipped_bit_in_a_content_store_entry_discards_it(tmp_path):
    store = ContentStore(tmp_path)
    store.put("k", _fill("abcdef"))
    _flip(tmp_path / "k" / "b.txt", 0)
    assert store.get("k") is None          # a miss, not an error, never the damaged files
    assert not (tmp_path / "k").exists() and not (tmp_path / "k.sums.json").exists()
    store.put("k", _fill("abcdef"))        # recomputed and stored again
    assert (store.get("k") / "b.txt").read_text() == "abcdef" * 2


def test_an_entry_with_an_extra_or_missing_file_fails_its_check(tmp_path):
    store = ContentStore(tmp_path)
    store.put("k", _fill("x"))
    (tmp_path / "k" / "c.txt").write_text("stray")
    assert store.get("k") is None
    store.put("k", _fill("x"))
    (tmp_path / "k" / "a.txt").unlink()
    assert store.get("k") is None


def test_an_entry_without_a_record_is_a_miss_and_is_replaced(tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "a.txt").write_text("written by an older drl")
    store = ContentStore(tmp_path)
    assert store.get("k") is None
    store.put("k", _fill("new"))
    assert (store.get("k") / "a.txt").read_text() == "new"


def test_a_feature_cache_that_cannot_be_written_is_a_note(tmp_path, monkeypatch):
    import errno

    from drlcore.data import cache as cache_mod

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = FeatureCache(tmp_path / "features", "k")
    monkeypatch.setattr(cache_mod, "atomic_write_bytes", full)
    cache.put(["a"], np.ones((1, 4), np.float32))   # no error
    cache.put(["b"], np.ones((1, 4), np.float32))   # writing stays off: one note
    assert cache.get(["a", "b"]).keys() == {"a", "b"}  # this run still has what it computed
    assert cache.notes() == [cache.note]
    assert "No space left on device" in cache.note and str(tmp_path) in cache.note
