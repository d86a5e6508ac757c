"""Background jobs (drlcore.runs.jobs): one worker per target, progress on disk, death detected, and
the guards checked before a job starts (data roots, free space, fresh run folders)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from drlcore.runs import jobs

from drlcore.data import rundir
from drlcore.errors import DrlError

sys.path.insert(0, str(Path(__file__).parent))
from app_fixtures import make_run, make_source_model, make_zip  # noqa: E402


def _wait(target: Path, until, timeout: float = 120) -> jobs.JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = jobs.read_job(target)
        if status is not None and until(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"job at {target} did not get there: {status}\n"
                        f"{jobs.log_path(target).read_text() if jobs.log_path(target).exists() else ''}")
        time.sleep(0.2)


def _wait_gone(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.1)
    pytest.fail(f"process {pid} is still alive")


# --------------------------------------------------------------------------- pure guards


def test_reserve_run_dir_gives_every_concurrent_request_its_own_folder(tmp_path):
    (tmp_path / "cells").mkdir()  # an earlier run is never reused
    got, barrier = [], threading.Barrier(12)

    def reserve():
        barrier.wait()
        got.append(jobs.reserve_run_dir(tmp_path, "cells"))

    threads = [threading.Thread(target=reserve) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 12 and tmp_path / "cells" not in got
    assert all(p.is_dir() and not any(p.iterdir()) for p in got)
    assert jobs.reserve_run_dir(tmp_path, "../../etc passwd").parent == tmp_path


def test_data_folder_refusals(tmp_path):
    root = tmp_path / "data"
    (root / "cells" / "a").mkdir(parents=True)
    outside = tmp_path / "private"
    outside.mkdir()
    (root / "escape").symlink_to(outside)  # a link inside the root pointing out of it
    (root / "inner").symlink_to(root / "cells")  # a link that stays inside is fine
    (root / "file.txt").write_text("x")

    assert jobs.resolve_data_folder(str(root / "cells"), [root]) == (root / "cells").resolve()
    assert jobs.resolve_data_folder(str(root / "inner"), [str(root)]) == (root / "cells").resolve()
    assert jobs.resolve_data_folder(str(root), [root]) == root.resolve()
    with pytest.raises(DrlError, match="without --data-root"):
        jobs.resolve_data_folder(str(root / "cells"), [])
    with pytest.raises(DrlError, match="outside the folders"):
        jobs.resolve_data_folder(str(outside), [root])
    with pytest.raises(DrlError, match="outside the folders"):
        jobs.resolve_data_folder(str(root / "escape"), [root])
    with pytest.raises(DrlError, match="outside the folders"):
        jobs.resolve_data_folder(str(root / "cells" / ".." / ".." / "private"), [root])
    with pytest.raises(DrlError, match="outside the folders"):
        jobs.resolve_data_folder(str(tmp_path / "data-other"), [root])  # a prefix is not a parent
    with pytest.raises(DrlError, match="not an absolute path"):
        jobs.resolve_data_folder("cells", [root])
    with pytest.raises(DrlError, match="does not exist"):
        jobs.resolve_data_folder(str(root / "missing"), [root])
    with pytest.raises(DrlError, match="not a folder"):
        jobs.resolve_data_folder(str(root / "file.txt"), [root])


def test_free_space_check(tmp_path):
    jobs.check_free_space(tmp_path / "not" / "yet", 1)  # a folder to be made: its parent's disk
    with pytest.raises(DrlError, match="not enough free disk space"):
        jobs.check_free_space(tmp_path, 1 << 62)


# --------------------------------------------------------------------------- job files


def test_a_running_job_without_its_worker_reads_as_failed(tmp_path):
    target = tmp_path / "run"
    make_run(tmp_path, "run", n=20)
    (target / rundir.JOB).write_text(json.dumps({"state": "running", "message": "embedding: 3/9",
                                                 "pid": None}))
    status = jobs.read_job(target)
    assert status.state == "failed" and "embedding: 3/9" in status.error
    assert not rundir.is_complete_run(target)  # a half-built folder never looks finished

    fd = jobs._try_lock(target)  # a worker that holds the lock is alive
    try:
        assert jobs.read_job(target).state == "running"
        assert jobs.start_job(target, "demo", [])[1] is False  # attaches, starts nothing
    finally:
        os.close(fd)
    (target / rundir.JOB).write_text(json.dumps({"state": "done"}))
    assert rundir.is_complete_run(target)
    (target / rundir.JOB).unlink()
    assert rundir.is_complete_run(target)  # no job file: a run made by `drl run`
    (target / rundir.ANALYSIS).unlink()
    assert not rundir.is_complete_run(target)  # ...but only once analysed


def test_worker_records_a_failure_with_the_engine_message(tmp_path):
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    target = jobs.reserve_run_dir(tmp_path / "runs", "notes")
    status, started = jobs.start_job(target, "run", ["--data", str(empty)])
    assert started and status.state == "running"
    status = _wait(target, lambda s: not s.running)
    assert status.state == "failed" and status.error and "image" in status.error.lower()
    assert "job started" in jobs.log_path(target).read_text()
    assert not rundir.is_complete_run(target)
    _wait_gone(status.pid)


def test_second_request_attaches_and_a_killed_job_shows_failed(tmp_path):
    runs = tmp_path / "runs"
    target = runs / "demo-texture-dsprites"
    env = {**os.environ, "DRL_CACHE_DIR": str(tmp_path / "cache")}
    status, started = jobs.start_job(target, "demo", ["--runs-dir", str(runs)], env=env)
    assert started
    again, started_again = jobs.start_job(target, "demo", ["--runs-dir", str(runs)], env=env)
    assert not started_again and again.running
    status = _wait(target, lambda s: s.pid is not None)
    os.kill(status.pid, signal.SIGKILL)
    _wait_gone(status.pid)
    dead = _wait(target, lambda s: not s.running, timeout=20)
    assert dead.state == "failed" and "stopped unexpectedly" in dead.error
    assert not rundir.is_complete_run(target)
    assert jobs.log_path(target).read_text().count("job started") == 1


def test_sigterm_stops_a_job_as_failed(tmp_path):
    runs = tmp_path / "runs"
    target = runs / "demo-texture-dsprites"
    env = {**os.environ, "DRL_CACHE_DIR": str(tmp_path / "cache")}
    jobs.start_job(target, "demo", ["--runs-dir", str(runs)], env=env)
    status = _wait(target, lambda s: s.pid is not None and s.message != "starting")
    os.kill(status.pid, signal.SIGTERM)
    dead = _wait(target, lambda s: not s.running, timeout=30)
    assert dead.state == "failed" and "stopped" in dead.error
    _wait_gone(status.pid)


@pytest.mark.slow
def test_a_run_job_finishes_and_opens(tmp_path):
    source = make_source_model(tmp_path / "source")
    settings = {"features": {"backbone": "test-tiny", "pretrained": False, "batch_size": 8,
                             "cache_dir": str(tmp_path / "cache")},
                "source_model": str(source), "transfer_epochs": 2}
    data = make_zip(tmp_path / "cells.zip", n_per_class=4)
    target = jobs.reserve_run_dir(tmp_path / "runs", "cells")
    jobs.start_job(target, "run", ["--data", str(data), "--config", json.dumps(settings)])
    seen_running = _wait(target, lambda s: s.running and s.message not in ("", "starting"))
    assert not rundir.is_complete_run(target) or not seen_running.running
    status = _wait(target, lambda s: not s.running, timeout=300)
    assert status.state == "done", status.error
    assert rundir.is_complete_run(target) and status.fraction == 1.0
    _wait_gone(status.pid)
