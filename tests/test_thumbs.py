"""Thumbnail shards (drlcore.data.rundir.Thumbs / ThumbWriter): round trip, the one-file-per-image
layout of older runs, atomic writes, and the readers that go through them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drlcore.data import rundir
from drlcore.errors import DrlError

sys.path.insert(0, str(Path(__file__).parent))


def _jpegs(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        side = int(rng.integers(8, 40))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
            buf, format="JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_round_trip_over_several_shards(tmp_path):
    thumbs = _jpegs(300)
    shas = [_sha(t) for t in thumbs]
    with rundir.ThumbWriter(tmp_path, max_bytes=20_000, max_count=40) as writer:
        assert writer.missing(shas).all()
        for sha, data in zip(shas, thumbs):
            writer.add(sha, data)
        writer.add(shas[0], thumbs[0])  # a second add of the same image is skipped
        assert not writer.missing(shas).any()
    store = rundir.open_thumbs(tmp_path)
    assert len(store) == 300 and store.n_shards > 300 // 40
    assert all(store.get(sha) == data for sha, data in zip(shas, thumbs))
    shards = sorted((tmp_path / rundir.THUMBS).glob("shard-*.bin"))
    assert len(shards) == store.n_shards
    assert all(s.stat().st_size <= 20_000 + max(map(len, thumbs)) for s in shards)
    assert sum(s.stat().st_size for s in shards) == sum(map(len, thumbs))
    assert store.get("0" * 64) is None and not store.contains(["0" * 64])[0]
    # Nothing else in the folder: no file per image, no temporary left behind.
    names = {p.name for p in (tmp_path / rundir.THUMBS).iterdir()}
    assert names == {rundir.THUMB_TOC, rundir.THUMB_INDEX} | {s.name for s in shards}
    toc = json.loads((tmp_path / rundir.THUMBS / rundir.THUMB_TOC).read_text())
    assert toc["schema_version"] == rundir.THUMB_SCHEMA_VERSION and toc["count"] == 300


def test_adding_to_a_run_keeps_what_it_held(tmp_path):
    thumbs = _jpegs(60, seed=1)
    shas = [_sha(t) for t in thumbs]
    with rundir.ThumbWriter(tmp_path, max_count=25) as writer:
        for sha, data in zip(shas[:30], thumbs[:30]):
            writer.add(sha, data)
    first = {p.name: p.read_bytes() for p in (tmp_path / rundir.THUMBS).glob("shard-*")}
    with rundir.ThumbWriter(tmp_path, max_count=25) as writer:
        missing = writer.missing(shas)
        assert not missing[:30].any() and missing[30:].all()
        for sha, data, new in zip(shas, thumbs, missing):
            if new:
                writer.add(sha, data)
    store = rundir.open_thumbs(tmp_path)
    assert len(store) == 60 and all(store.get(s) == t for s, t in zip(shas, thumbs))
    # The shards written first are untouched; the new ones come after them.
    for name, data in first.items():
        assert (tmp_path / rundir.THUMBS / name).read_bytes() == data
    assert store.n_shards == len(first) + 2


def test_old_one_file_layout_is_still_read(tmp_path):
    """Runs written before the shards keep <sha256>.jpg files; the reader serves them, alone
    or beside shards added later."""
    old = _jpegs(5, seed=2)
    folder = tmp_path / rundir.THUMBS
    folder.mkdir()
    for data in old:
        rundir.thumb_path(tmp_path, _sha(data)).write_bytes(data)
    store = rundir.open_thumbs(tmp_path)
    assert len(store) == 0 and store.contains([_sha(d) for d in old]).all()
    assert [rundir.read_thumb(tmp_path, _sha(d)) for d in old] == old
    names, offsets, lengths = store.locations([_sha(old[0]), "f" * 64])
    assert names == [f"{_sha(old[0])}.jpg", None] and offsets.tolist() == [-1, -1]

    new = _jpegs(3, seed=3)
    with rundir.ThumbWriter(tmp_path) as writer:
        assert writer.missing([_sha(d) for d in old + new]).tolist() == [False] * 5 + [True] * 3
        for data in new:
            writer.add(_sha(data), data)
    store = rundir.open_thumbs(tmp_path)
    assert all(store.get(_sha(d)) == d for d in old + new)
    names, offsets, lengths = store.locations([_sha(new[1]), _sha(old[1])])
    assert names == [rundir.thumb_shard_name(0), f"{_sha(old[1])}.jpg"]
    shard = (folder / names[0]).read_bytes()
    assert shard[offsets[0]:offsets[0] + lengths[0]] == new[1] and lengths[1] == -1


def test_writes_are_atomic(tmp_path, monkeypatch):
    """A shard appears whole under its name or not at all, and the index only ever names
    complete shards: a writer that dies before close leaves the previous thumbnails readable
    and no half-written file under a final name."""
    thumbs = _jpegs(40, seed=4)
    shas = [_sha(t) for t in thumbs]
    with rundir.ThumbWriter(tmp_path, max_count=10) as writer:
        for sha, data in zip(shas[:10], thumbs[:10]):
            writer.add(sha, data)
    before = rundir.open_thumbs(tmp_path)
    index_bytes = (tmp_path / rundir.THUMBS / rundir.THUMB_INDEX).read_bytes()

    writer = rundir.ThumbWriter(tmp_path, max_count=10)
    for sha, data in zip(shas[10:25], thumbs[10:25]):
        writer.add(sha, data)
    folder = tmp_path / rundir.THUMBS
    # Mid-write: one new shard complete (renamed), the next one under a hidden temporary name.
    hidden = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert len(hidden) == 1 and hidden[0].endswith(".tmp")
    assert (folder / rundir.thumb_shard_name(1)).stat().st_size == sum(map(len, thumbs[10:20]))
    # Readers still see exactly the committed set.
    assert (folder / rundir.THUMB_INDEX).read_bytes() == index_bytes
    now = rundir.open_thumbs(tmp_path)
    assert len(now) == len(before) == 10 and now.get(shas[12]) is None
    assert now.get(shas[3]) == thumbs[3]

    # The writer is killed (no close); the next run rewrites the unindexed shards and commits.
    del writer
    with rundir.ThumbWriter(tmp_path, max_count=10) as again:
        for sha, data, new in zip(shas, thumbs, again.missing(shas)):
            if new:
                again.add(sha, data)
    store = rundir.open_thumbs(tmp_path)
    assert len(store) == 40 and all(store.get(s) == t for s, t in zip(shas, thumbs))

    # An index replaced while a reader holds the old one: the old reader keeps reading the
    # shards it knows (shards are never rewritten in place by a committed writer).
    assert before.get(shas[3]) == thumbs[3]


def test_a_writer_that_fails_inside_its_block_commits_what_it_added(tmp_path):
    thumbs = _jpegs(4, seed=5)
    with pytest.raises(RuntimeError):
        with rundir.ThumbWriter(tmp_path) as writer:
            for data in thumbs[:2]:
                writer.add(_sha(data), data)
            raise RuntimeError("interrupted")
    store = rundir.open_thumbs(tmp_path)
    assert [store.get(_sha(d)) for d in thumbs] == thumbs[:2] + [None, None]
    with pytest.raises(ValueError, match="closed"):
        writer.add(_sha(thumbs[2]), thumbs[2])
    with pytest.raises(ValueError, match="sha256"):
        rundir.ThumbWriter(tmp_path).add("abc", thumbs[2])


def test_an_unknown_or_damaged_layout_is_a_clear_error(tmp_path):
    data = _jpegs(1)[0]
    with rundir.ThumbWriter(tmp_path) as writer:
        writer.add(_sha(data), data)
    toc = tmp_path / rundir.THUMBS / rundir.THUMB_TOC
    meta = json.loads(toc.read_text())
    toc.write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(DrlError, match="schema_version 99"):
        rundir.open_thumbs(tmp_path)
    toc.write_text(json.dumps(meta))
    (tmp_path / rundir.THUMBS / rundir.THUMB_INDEX).write_bytes(b"not an array")
    with pytest.raises(DrlError, match="cannot be read"):
        rundir.open_thumbs(tmp_path)


def test_an_empty_writer_leaves_an_old_run_as_it_was(tmp_path):
    (tmp_path / rundir.THUMBS).mkdir()
    with rundir.ThumbWriter(tmp_path):
        pass
    assert os.listdir(tmp_path / rundir.THUMBS) == []
    assert len(rundir.open_thumbs(tmp_path)) == 0


@pytest.mark.parametrize("layout", ["shards", "files"])
def test_explorer_and_slides_read_either_layout(tmp_path, layout):
    """The app's Run and the slide figures read thumbnails through rundir in both layouts; the
    WebGL map's hover index points at whole files or at byte ranges of shards."""
    import pandas as pd

    from app_fixtures import make_run
    from explorer.data import Run
    from explorer.scatter import HoverSource, write_hover_index

    run_dir = make_run(tmp_path, "cells", n=30, thumb_layout=layout)
    assert (list((run_dir / rundir.THUMBS).glob("*.jpg")) != []) == (layout == "files")
    objects = pd.read_parquet(run_dir / rundir.OBJECTS)
    run = Run(run_dir)
    for sha in objects["sha256"]:
        data = run.thumb_bytes(sha)
        assert data == rundir.read_thumb(run_dir, sha) and data[:2] == b"\xff\xd8"
    assert run.thumb_bytes("0" * 64) is None

    names, offsets, lengths = run.thumbs.locations(objects["sha256"])
    folder = write_hover_index(HoverSource(captions=list(objects["path"]),
                                           folder=run_dir / rundir.THUMBS,
                                           files=list(zip(names, offsets.tolist(),
                                                          lengths.tolist()))),
                               len(objects), tmp_path / "hover")
    rows = json.loads((folder / "0.json").read_text())
    for row, sha in zip(rows, objects["sha256"]):
        data = (run_dir / rundir.THUMBS / row[0]).read_bytes()
        if layout == "shards":
            assert len(row) == 4 and data[row[2]:row[2] + row[3]] == run.thumb_bytes(sha)
        else:
            assert len(row) == 2 and data == run.thumb_bytes(sha)

    from drlcore.runs.slides import SlideConfig, axis_montage

    fig = axis_montage(run_dir, 0, SlideConfig(n_steps=3, n_rows=1))
    images = [ax.get_images() for ax in fig.axes]
    assert sum(len(i) for i in images) == 3  # every cell of the montage shows its thumbnail
