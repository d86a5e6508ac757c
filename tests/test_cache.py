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
