"""Long work outside the web request: background jobs with their progress on disk.

A job builds one *target* folder (a run). It runs in its own process (``python -m drlcore.runs.jobs``,
started detached in a new session, so neither a browser tab nor a rerun of the app's script can
stop it) and records its progress in ``<target>/job.json``::

    {"state": "running" | "done" | "failed", "pid": ..., "kind": "demo" | "run",
     "message": "last thing it said", "stage": ..., "fraction": 0.42, "error": ...,
     "started": <unix time>, "updated": <unix time>}

One job per target: the worker holds an exclusive ``flock`` on ``<target>.lock`` for its whole
life, so a second request finds the lock taken and *attaches* to the running job instead of
starting another. The lock is also how death is seen: a job file that still says "running" while
nobody holds the lock belongs to a job that was killed, and reads as failed with its last message.
A folder whose job is not "done" is never a finished run (``drlcore.data.rundir.is_complete_run``).

The app calls ``start_job`` / ``read_job``; this module never imports Streamlit.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from drlcore.errors import DrlError
from drlcore.io import atomic_write_json, read_json
from drlcore.progress import CallbackReporter
from drlcore.data.rundir import JOB as JOB_FILE

__all__ = ["JOB_FILE", "JobStatus", "read_job", "start_job", "job_alive", "lock_path", "log_path",
           "reserve_run_dir", "safe_run_name", "check_free_space", "resolve_data_folder",
           "JobReporter", "main"]

STATES = ("running", "done", "failed")


@dataclass(frozen=True)
class JobStatus:
    target: Path
    state: str
    kind: str = ""
    message: str = ""
    stage: str | None = None
    fraction: float | None = None
    error: str | None = None
    pid: int | None = None
    started: float | None = None
    updated: float | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"


def lock_path(target: str | os.PathLike) -> Path:
    target = Path(target)
    return target.with_name(target.name + ".lock")


def log_path(target: str | os.PathLike) -> Path:
    """The worker's stdout and stderr (one line per start, then whatever it printed)."""
    target = Path(target)
    return target.with_name(target.name + ".job.log")


def _try_lock(target: Path) -> int | None:
    """The lock's file descriptor when we got it, None when a job holds it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(target), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def job_alive(target: str | os.PathLike) -> bool:
    """True while a worker holds the target's lock."""
    target = Path(target)
    if not lock_path(target).exists():
        return False
    fd = _try_lock(target)
    if fd is None:
        return True
    os.close(fd)  # closing releases the lock we just took
    return False


def _pid_gone(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def read_job(target: str | os.PathLike) -> JobStatus | None:
    """The job's state (None when the folder has no job file). A job recorded as running whose
    worker is gone reads as failed, with its last message."""
    target = Path(target)
    path = target / JOB_FILE
    try:
        raw = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raw = {"state": "failed", "error": f"the job file {path} cannot be read"}
    if not isinstance(raw, dict):
        raw = {"state": "failed", "error": f"the job file {path} is not a JSON object"}
    state = raw.get("state") if raw.get("state") in STATES else "failed"
    error = raw.get("error")
    if state == "running" and (_pid_gone(raw.get("pid")) or not job_alive(target)):
        state = "failed"
        last = raw.get("message") or "none"
        error = f"the job stopped unexpectedly (its process is gone). Last message: {last}"
    fraction = raw.get("fraction")
    return JobStatus(target=target, state=state, kind=str(raw.get("kind") or ""),
                     message=str(raw.get("message") or ""), stage=raw.get("stage"),
                     fraction=float(fraction) if isinstance(fraction, (int, float)) else None,
                     error=error, pid=raw.get("pid"), started=raw.get("started"),
                     updated=raw.get("updated"))


def _write(target: Path, **fields) -> None:
    path = target / JOB_FILE
    try:
        current = read_json(path)
    except (OSError, ValueError):
        current = {}
    if not isinstance(current, dict):
        current = {}
    current.update(fields, updated=time.time())
    atomic_write_json(path, current)


def start_job(target: str | os.PathLike, kind: str, worker_args: list[str],
              env: dict | None = None) -> tuple[JobStatus, bool]:
    """Start a worker for ``target`` unless one runs already; return (status, started).

    The lock is taken here and handed to the worker as an inherited file descriptor, so there is
    no moment at which two requests could both think they are first.
    """
    target = Path(target)
    fd = _try_lock(target)
    if fd is None:
        status = read_job(target)
        return (status or JobStatus(target=target, state="running", kind=kind,
                                    message="starting")), False
    try:
        target.mkdir(parents=True, exist_ok=True)
        now = time.time()
        atomic_write_json(target / JOB_FILE, {"state": "running", "kind": kind, "pid": None,
                                              "message": "starting", "stage": None,
                                              "fraction": 0.0, "error": None,
                                              "started": now, "updated": now})
        cmd = [sys.executable, "-m", "drlcore.runs.jobs", "--target", str(target), "--lock-fd", str(fd),
               kind, *worker_args]
        with open(log_path(target), "ab") as log:
            log.write(f"--- job started {time.strftime('%Y-%m-%d %H:%M:%S')}: {kind}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, pass_fds=(fd,), env=env)
        # Reap it when it ends, so a finished worker does not linger as a zombie of the server.
        threading.Thread(target=proc.wait, daemon=True).start()
    except OSError as exc:
        with contextlib.suppress(OSError):
            _write(target, state="failed", error=f"the job could not start: {exc}")
        raise DrlError(f"could not start the job for {target}: {exc}") from exc
    finally:
        os.close(fd)  # the worker holds the lock now
    return read_job(target) or JobStatus(target=target, state="running", kind=kind), True


# --------------------------------------------------------------------------- guards before a job


def safe_run_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip(".-")
    return name or "run"


def reserve_run_dir(runs_dir: str | os.PathLike, name: str) -> Path:
    """Create and return a fresh run folder ``runs_dir/<name>[-N]``. ``mkdir`` is atomic, so two
    requests at the same moment always get two different folders, and no earlier run is reused."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    base = safe_run_name(name)
    for i in range(1, 10_000):
        candidate = runs_dir / (base if i == 1 else f"{base}-{i}")
        if lock_path(candidate).exists() or candidate.with_name(candidate.name + ".partial").exists():
            continue
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise DrlError(f"too many runs named {base!r} in {runs_dir}; choose another name")


def check_free_space(folder: str | os.PathLike, needed_bytes: int) -> None:
    """Refuse to start a job when the disk holding ``folder`` has less than ``needed_bytes`` free."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise DrlError(f"not enough free disk space for a new run in {folder}: {free / 2**20:,.0f} MiB "
                       f"free, {needed_bytes / 2**20:,.0f} MiB needed. Delete old runs or start "
                       f"`drl explore` with another --runs-dir.")


def resolve_data_folder(folder: str, roots: list[str | os.PathLike]) -> Path:
    """The folder a browser named, if it lies under one of the roots the server was started with
    (``drl explore --data-root DIR``). Symlinks and ``..`` are resolved first, so neither can
    lead outside a root."""
    if not roots:
        raise DrlError("this server reads no folders: it was started without --data-root, so only "
                       "uploads are accepted. Start it with `drl explore --data-root DIR` to allow "
                       "folders under DIR.")
    text = (folder or "").strip()
    if not text:
        raise DrlError("type the path of a folder on the server")
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise DrlError(f"{text!r} is not an absolute path; give the full path of the folder")
    resolved = path.resolve()
    allowed = [Path(r).expanduser().resolve() for r in roots]
    if not any(resolved == root or resolved.is_relative_to(root) for root in allowed):
        listed = ", ".join(str(r) for r in allowed)
        raise DrlError(f"{text} is outside the folders this server may read ({listed}). "
                       "Ask whoever started `drl explore` to add a --data-root.")
    if not resolved.exists():
        raise DrlError(f"folder {text} does not exist on the server")
    if not resolved.is_dir():
        raise DrlError(f"{text} is not a folder")
    return resolved


# --------------------------------------------------------------------------- the worker


class JobReporter(CallbackReporter):
    """Progress into ``job.json`` (at most every half second per stage)."""

    def __init__(self, target: Path):
        self.target = target
        super().__init__(self._on_progress, on_message=self._on_message, min_interval=0.5)

    def _on_progress(self, stage: str, done: int, total: int | None, postfix: dict) -> None:
        fraction = min(done / total, 1.0) if total else None
        text = f"{stage}: {done}/{total}" if total else f"{stage}: {done}"
        _write(self.target, stage=stage, fraction=fraction, message=text)

    def _on_message(self, text: str) -> None:
        print(text, flush=True)
        _write(self.target, message=text)


def _run_demo(target: Path, args, reporter: JobReporter) -> None:
    from drlcore.runs.demo import build_demo, demo_run_dir

    if demo_run_dir(args.runs_dir).resolve() != target.resolve():
        raise DrlError(f"the demo is built in {demo_run_dir(args.runs_dir)}, not {target}")
    build_demo(args.runs_dir, reporter=reporter, n_images=args.n_images, cache_dir=args.cache_dir)


def _run_pipeline(target: Path, args, reporter: JobReporter) -> None:
    from drlcore.runs.pipeline import PipelineConfig, run_pipeline

    try:
        settings = json.loads(args.config) if args.config else {}
    except ValueError as exc:
        raise DrlError(f"the job's pipeline settings are not JSON: {exc}") from exc
    run_pipeline(args.data, target, PipelineConfig.from_dict(settings), reporter=reporter)


def _parser() -> argparse.ArgumentParser:
    from drlcore.runs.demo import DEMO_IMAGES

    p = argparse.ArgumentParser(prog="python -m drlcore.runs.jobs",
                                description="Run one background job and record it in TARGET/job.json.")
    p.add_argument("--target", required=True, help="the folder the job builds")
    p.add_argument("--lock-fd", type=int, default=None,
                   help="an inherited descriptor holding TARGET.lock (else the job takes the lock)")
    sub = p.add_subparsers(dest="kind", required=True)
    d = sub.add_parser("demo")
    d.add_argument("--runs-dir", required=True)
    d.add_argument("--n-images", type=int, default=DEMO_IMAGES)
    d.add_argument("--cache-dir", default=None)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--config", default=None, help="pipeline settings as JSON")
    r.add_argument("--cleanup", default=None, help="a folder to delete when the job ends (an upload)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    target = Path(args.target)
    fd = args.lock_fd
    if fd is None:
        fd = _try_lock(target)
        if fd is None:
            print(f"a job is already running for {target}", file=sys.stderr)
            return 3
        target.mkdir(parents=True, exist_ok=True)
        now = time.time()
        atomic_write_json(target / JOB_FILE, {"state": "running", "kind": args.kind,
                                              "started": now, "updated": now})

    def stop(signum, frame):  # a plain SIGTERM ends the job as failed, with a reason
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    _write(target, pid=os.getpid(), state="running", message="started")
    print(f"job pid {os.getpid()}: {args.kind} -> {target}", flush=True)
    reporter = JobReporter(target)
    code = 0
    try:
        (_run_demo if args.kind == "demo" else _run_pipeline)(target, args, reporter)
    except DrlError as exc:
        _write(target, state="failed", error=str(exc))
        print(f"error: {exc}", flush=True)
        code = 2
    except KeyboardInterrupt as exc:
        _write(target, state="failed", error=f"the job was stopped ({exc or 'interrupted'})")
        code = 130
    except BaseException as exc:  # noqa: BLE001 - record it for the app, then the log has the traceback
        traceback.print_exc()
        _write(target, state="failed", error=f"unexpected error: {type(exc).__name__}: {exc}")
        code = 1
    else:
        _write(target, state="done", fraction=1.0, message="finished", error=None)
    finally:
        if getattr(args, "cleanup", None):
            shutil.rmtree(args.cleanup, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
